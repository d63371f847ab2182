"""Single flight: one process computes a missing key while the others wait for it.

The lease on a key is an exclusive POSIX record lock (``lockf``) on one byte of a single
lease file in the home, at an offset taken from the key. The kernel drops it when its
holder exits for any reason, ``kill -9`` included, so a crashed holder never deadlocks
the rest. One file serves every key: a file per key cost a create, a lock and an unlink
per step, 0.1-0.2 ms of the 0.5 ms a step may add on a first run.

Record locks belong to a process, not to a thread or a file descriptor, which shapes this
module: threads of one process exclude each other with an in-process lock per key first;
a process opens each lease file (each inode) once and closes it only while it holds no
lease on it, because closing any descriptor of a file drops all of the process's locks on
it; and a forked child, which holds none of its parent's locks, opens its own.
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

from stepflow._storage.home import make_private_dirs, make_private_file, shared_home

__all__ = ["LEASE_FILE", "KeyLease", "key_lock"]

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

    __slots__ = ("extra", "fd", "holders")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.holders = 0
        #: descriptors of the same file opened in a race, closed with ``fd``
        self.extra: list[int] = []

    def close(self) -> None:
        for fd in (self.fd, *self.extra):
            os.close(fd)


class _KeyQueue:
    """The threads of this process that want one key."""

    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users = 0


#: (pid, device, inode) -> this process's descriptor of that lease file
_files: dict[tuple[int, int, int], _LeaseFile] = {}
_queues: dict[str, _KeyQueue] = {}


def _offset(key: str) -> int:
    # Keys are hex digests (cache keys).
    return int(key[:_OFFSET_DIGITS], 16)


def _open(path: Path) -> _LeaseFile:
    """This process's lease file at ``path``, with a holder counted on it.

    Found by inode, not by path: a lease file deleted or replaced since (``rm -rf
    .stepflow``) is opened again, so this process and a new one lock the same file, and two
    spellings of one path share one descriptor.
    """
    pid = os.getpid()
    with _guard:
        try:
            stat = os.stat(path)
            found = _files.get((pid, stat.st_dev, stat.st_ino))
        except FileNotFoundError:
            found = None
        if found is None:
            make_private_dirs(path.parent)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            if shared_home():
                make_private_file(fd)
            stat = os.fstat(fd)
            slot = (pid, stat.st_dev, stat.st_ino)
            found = _files.get(slot)
            if found is not None:
                found.extra.append(fd)  # closing it now would drop this process's leases
            else:
                found = _files[slot] = _LeaseFile(fd)
                idle = [k for k, f in _files.items() if f.holders == 0 and k[0] == pid]
                for old in idle[: max(0, len(idle) - _IDLE_MAX)]:
                    if old != slot:
                        _files.pop(old).close()
        found.holders += 1
        return found


def _release(lease_file: _LeaseFile) -> None:
    with _guard:
        lease_file.holders -= 1


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


class KeyLease:
    """The lease for one key in a home, taken in two steps: ``try_take`` never waits, so a
    caller that must not block (the run loop's few dispatch threads) waits with ``take``
    elsewhere only when another holder has it. ``key_lock`` is the same as a ``with`` block.

    Its holder may give it back from another thread than the one that took it.
    """

    __slots__ = ("_file", "_key", "_path", "_queue")

    def __init__(self, home: Path, key: str) -> None:
        self._path = home / LEASE_FILE
        self._key = key
        self._queue: _KeyQueue | None = None
        self._file: _LeaseFile | None = None

    def try_take(self) -> bool:
        """Take the lease if nobody holds it now; ``False`` (holding nothing) otherwise."""
        key = self._key
        queue = _join(key)
        if not queue.lock.acquire(blocking=False):
            _leave(key, queue, held=False)
            return False
        try:
            lease_file = _open(self._path)
        except BaseException:
            _leave(key, queue, held=True)
            raise
        try:
            fcntl.lockf(lease_file.fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, _offset(key))
        except BaseException as exc:
            _release(lease_file)
            _leave(key, queue, held=True)
            if isinstance(exc, OSError) and exc.errno in (errno.EAGAIN, errno.EACCES):
                return False
            raise
        self._queue, self._file = queue, lease_file
        return True

    def take(self) -> bool:
        """Wait until the lease is this holder's; ``True`` if another holder (thread or
        process) had to be waited for."""
        key = self._key
        queue = _join(key)
        held = False
        try:
            waited = not queue.lock.acquire(blocking=False)
            if waited:
                queue.lock.acquire()
            held = True
            lease_file = _open(self._path)
            try:
                waited = _lock_record(lease_file.fd, _offset(key)) or waited
            except BaseException:
                _release(lease_file)
                raise
        except BaseException:
            _leave(key, queue, held=held)
            raise
        self._queue, self._file = queue, lease_file
        return waited

    def give_back(self) -> None:
        """Give the lease back (nothing when not held)."""
        queue, lease_file = self._queue, self._file
        if queue is None or lease_file is None:
            return
        self._queue = self._file = None
        try:
            fcntl.lockf(lease_file.fd, fcntl.LOCK_UN, 1, _offset(self._key))
        finally:
            _release(lease_file)
            _leave(self._key, queue, held=True)


@contextlib.contextmanager
def key_lock(home: Path, key: str) -> Iterator[bool]:
    """Hold the lease for ``key`` in ``home``; yields ``True`` if another holder (thread or
    process) had to be waited for."""
    lease = KeyLease(home, key)
    waited = lease.take()
    try:
        yield waited
    finally:
        lease.give_back()
