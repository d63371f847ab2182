"""Fixtures the first-party plugins' tests share."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture
def live_log() -> Callable[[Path, str], str]:
    """``live_log(home, step)``: what ``stepflow ui`` shows of ``step``'s log in the last run
    of ``home`` while it runs (``[stream #attempt] text``), or "" before any run is recorded."""

    def read(home: Path, step: str) -> str:
        from stepflow._config import load_config
        from stepflow._storage.read import ReadAPI

        try:
            with ReadAPI(load_config(home=home), read_only=True) as api:
                entries = api.live_log("last", step) or []
        except Exception:  # no run recorded yet
            return ""
        return "".join(f"[{e.stream} #{e.attempt}] {e.text}" for e in entries)

    return read
