"""Sizes and times as people read them, for listings and messages."""

from __future__ import annotations

import datetime

__all__ = ["human_size", "human_time"]


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
