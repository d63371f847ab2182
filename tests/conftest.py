"""Fixtures shared by the whole suite; user-facing fixtures live in ``stepflow.testing``."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

RESOURCES = Path(__file__).parent / "resources"


@pytest.fixture
def resource_module() -> Iterator[callable]:
    """Import a module from ``tests/resources`` by name, fresh for each test."""
    loaded: list[str] = []

    def load(name: str) -> ModuleType:
        if str(RESOURCES) not in sys.path:
            sys.path.insert(0, str(RESOURCES))
        sys.modules.pop(name, None)
        loaded.append(name)
        return importlib.import_module(name)

    yield load
    for name in loaded:
        sys.modules.pop(name, None)


@pytest.fixture
def make_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[callable]:
    """Write a module into ``tmp_path`` and import it, so worker processes can import it too."""
    monkeypatch.syspath_prepend(str(tmp_path))
    names: list[str] = []

    def make(name: str, source: str) -> ModuleType:
        import textwrap

        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        sys.modules.pop(name, None)
        names.append(name)
        importlib.invalidate_caches()
        return importlib.import_module(name)

    yield make
    for name in names:
        sys.modules.pop(name, None)
