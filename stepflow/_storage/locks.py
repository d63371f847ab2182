"""Single flight: one process computes a missing key while the others wait for it.

The lease on a key is an exclusive POSIX record lock (``lockf``) on one byte of a single
lease file in the home, at an offset taken from the key. The kernel drops it when its
holder exits for any reason, ``kill -9`` included, so a crashed holder never deadlocks
the rest. One file serves every key: a file per key cost a create, a lock and an unlink
per step, 0.1-0.2 ms of the 0.5 ms a step may add on a first run.

Record locks belong to a process, not to a thread or a file descriptor, which shapes this
module: threads of one process exclude each other with an in-process lock per key first;
each process keeps one descriptor per lease file open for good, because closing any
descriptor of the file would drop all of the process's locks on it; and a forked child,
which holds none of its parent's locks, opens its own.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["LEASE_FILE", "Lease", "key_lock"]

#: the lease file's name in the home
LEASE_FILE = "leases"

# 15 hex digits: 60 bits, below the largest offset a lock may start at (2**63 - 1).
_OFFSET_DIGITS = 15
# The kernel reports a deadlock when two processes each wait for a key the other holds in
# another thread, which is no deadlock here (the holding threads finish without waiting):
# wait a little and try again.
_DEADLOCK_RETRY_S = 0.005

_guard = threading.Lock()
#: descriptors kept open per process without a lease held on them
_IDLE_MAX = 4


class _LeaseFile:
    """One open lease file and how many leases this process holds on it."""

    __slots__ = ("fd", "holders", "ino")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.ino = os.fstat(fd).st_ino
        self.holders = 0


class _KeyQueue:
    """The threads of this process that want one key."""

    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users = 0


#: (pid, path) -> the lease file this process locks for that path
_files: dict[tuple[int, str], _LeaseFile] = {}
_queues: dict[str, _KeyQueue] = {}


def _offset(key: str) -> int:
    try:
        return int(key[:_OFFSET_DIGITS], 16)
    except ValueError:
        # Keys are hex digests; anything else still gets a stable offset.
        import zlib

        return zlib.crc32(key.encode())


def _open(path: Path) -> _LeaseFile:
    """This process's lease file at ``path``, opened once, with a holder counted on it.

    A lease file deleted or replaced since (``rm -rf .stepflow``) is opened again, so this
    process and a new one lock the same file; the old descriptor closes once no lease is
    held on it, because closing it earlier would drop those leases.
    """
    slot = (os.getpid(), str(path))
    with _guard:
        found = _files.get(slot)
        if found is not None:
            try:
                current = os.stat(path).st_ino == found.ino
            except FileNotFoundError:
                current = False
            if current:
                found.holders += 1
                return found
            del _files[slot]
            if found.holders == 0:
                os.close(found.fd)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        opened = _LeaseFile(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
        opened.holders = 1
        _files[slot] = opened
        idle = [s for s, f in _files.items() if f.holders == 0 and s[0] == slot[0]]
        for old in idle[: max(0, len(idle) - _IDLE_MAX)]:
            os.close(_files.pop(old).fd)
        return opened


def _release(slot: tuple[int, str], lease_file: _LeaseFile) -> None:
    with _guard:
        lease_file.holders -= 1
        if lease_file.holders == 0 and _files.get(slot) is not lease_file:
            os.close(lease_file.fd)


def _lock_record(fd: int, offset: int) -> bool:
    """Lock one byte at ``offset``; ``True`` if another process held it first."""
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, offset)
        return False
    except OSError as exc:
        if exc.errno not in (errno.EAGAIN, errno.EACCES):
            raise
    while True:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX, 1, offset)
            return True
        except OSError as exc:
            if exc.errno != errno.EDEADLK:
                raise
            time.sleep(_DEADLOCK_RETRY_S)


class Lease:
    """A held lease on one key; ``release`` lets the next holder in (once)."""

    __slots__ = ("_file", "_offset", "_queue", "_slot", "key", "waited")

    def __init__(self, home: Path, key: str) -> None:
        self.key = key
        queue = _join(key)
        try:
            #: whether another holder (thread or process) had to be waited for
            self.waited = not queue.lock.acquire(blocking=False)
            if self.waited:
                queue.lock.acquire()
        except BaseException:
            _leave(key, queue, held=False)
            raise
        try:
            path = home / LEASE_FILE
            self._slot = (os.getpid(), str(path))
            self._file = _open(path)
            self._offset = _offset(key)
            try:
                self.waited = _lock_record(self._file.fd, self._offset) or self.waited
            except BaseException:
                _release(self._slot, self._file)
                raise
        except BaseException:
            _leave(key, queue, held=True)
            raise
        self._queue: _KeyQueue | None = queue

    def release(self) -> None:
        queue, self._queue = self._queue, None
        if queue is None:
            return
        try:
            try:
                fcntl.lockf(self._file.fd, fcntl.LOCK_UN, 1, self._offset)
            finally:
                _release(self._slot, self._file)
        finally:
            _leave(self.key, queue, held=True)


def _join(key: str) -> _KeyQueue:
    with _guard:
        queue = _queues.get(key)
        if queue is None:
            queue = _queues[key] = _KeyQueue()
        queue.users += 1
        return queue


def _leave(key: str, queue: _KeyQueue, *, held: bool) -> None:
    if held:
        queue.lock.release()
    with _guard:
        queue.users -= 1
        if queue.users == 0:
            del _queues[key]


@contextlib.contextmanager
def key_lock(home: Path, key: str) -> Iterator[bool]:
    """Hold the lease for ``key`` in ``home``; yields ``True`` if another holder (thread or
    process) had to be waited for."""
    lease = Lease(home, key)
    try:
        yield lease.waited
    finally:
        lease.release()
