"""Retrying what SQLite refuses at once as busy while a database file is being set up."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["while_busy"]

T = TypeVar("T")


def while_busy(action: Callable[[], T], *, seconds: float = 30.0) -> T:
    """``action()``, tried again while SQLite answers "database is locked" or "busy".

    The busy timeout covers ordinary writes, but not every statement waits for it: when two
    processes open a brand-new file together, one can switch it to WAL or read its header
    while the other does, and SQLite then answers "database is locked" at once (seen with two
    runs started together in a new home). Opening is idempotent, so it is simply tried again,
    with a short growing pause, until ``seconds`` have passed; the last error is raised then.
    """
    deadline = time.monotonic() + seconds
    pause = 0.005
    while True:
        try:
            return action()
        except sqlite3.OperationalError as exc:
            text = str(exc).lower()
            if ("locked" not in text and "busy" not in text) or time.monotonic() > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.25)
