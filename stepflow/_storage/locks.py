"""Single flight: one process computes a missing key while the others wait for it.

The lease is an exclusive ``flock`` on a file per key. The kernel drops it when its holder
exits for any reason, ``kill -9`` included, so a crashed holder never deadlocks the rest.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["key_lock"]


@contextlib.contextmanager
def key_lock(folder: Path, key: str) -> Iterator[bool]:
    """Hold the lease for ``key``; yields ``True`` if another holder had to be waited for."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / f"{key}.lock"
    waited = False
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            waited = True
            fcntl.flock(fd, fcntl.LOCK_EX)
        # The holder before us unlinks the file on release; if ours is no longer the file
        # at that path, someone else may lock the new one, so start again with it.
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        yield waited
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
