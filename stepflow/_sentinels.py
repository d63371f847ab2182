"""Sentinels, so that ``None`` stays an ordinary value (a step may return ``None``)."""

from __future__ import annotations

import enum


class _Missing(enum.Enum):
    MISSING = "MISSING"

    def __repr__(self) -> str:
        return "MISSING"


#: "no value": no default, not computed, not loaded
MISSING = _Missing.MISSING
