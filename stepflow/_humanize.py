"""Sizes and times as people read them, for listings and messages."""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

__all__ = ["human_size", "human_time", "iso_time", "iso_times"]


def human_size(n: float) -> str:
    """``512 B``, ``1.5 KiB``, ... up to GiB.

    >>> human_size(512), human_size(1536), human_size(3 << 30)
    ('512 B', '1.5 KiB', '3.0 GiB')
    """
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def human_time(ts: float | None) -> str:
    """A timestamp in local time to the second, or ``-`` for none."""
    if ts is None:
        return "-"
    return datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def iso_time(ts: float | None) -> str | None:
    """A timestamp as ISO 8601 in UTC with its offset, as every ``--json`` listing writes it.

    >>> iso_time(0.5), iso_time(None)
    ('1970-01-01T00:00:00.500000+00:00', None)
    """
    if ts is None:
        return None
    moment = datetime.datetime.fromtimestamp(ts, tz=datetime.UTC)
    return moment.isoformat(timespec="microseconds")


def iso_times(data: Mapping[str, Any], *keys: str) -> dict[str, Any]:
    """A copy of ``data`` with the timestamps under ``keys`` written by :func:`iso_time`.

    Only the named top-level keys change: nested mappings hold the user's own names (parameters,
    tags, metrics), where a key called ``created`` is not a time of ours.
    """
    return {k: iso_time(v) if k in keys and v is not None else v for k, v in data.items()}
