"""Storage faults in words: a full disk, a read-only home, a locked index.

Every write stepflow makes to its home or datastore goes through ``writing`` (or calls
``storage_error``), so that an ``OSError``, an SQLite error or diskcache's ``Timeout`` reaches
the user as a ``StorageError`` naming the path, what was being written and the fix, never as
a raw traceback.
"""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from stepflow._humanize import human_size
from stepflow.errors import StorageError

__all__ = ["fault_reason", "is_known_fault", "is_storage_fault", "storage_error", "writing"]

_FULL = "the disk is full"
_READ_ONLY = "the file system is read-only"
_DENIED = "permission denied"
_LOCKED = "another process holds it locked"

_ERRNO_REASONS = {
    errno.ENOSPC: _FULL,
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: _READ_ONLY,
    errno.EACCES: _DENIED,
    errno.EPERM: _DENIED,
}

_FIXES = {
    _FULL: "free some space on that disk (`stepflow cache prune` drops old results), or set "
    "STEPFLOW_HOME to a folder on another disk, and run again",
    "the disk quota is exceeded": "free some space or ask for a larger quota, and run again",
    _READ_ONLY: "make it writable, or set STEPFLOW_HOME to a writable folder",
    _DENIED: "make it writable by this user, or set STEPFLOW_HOME to a writable folder",
    _LOCKED: "wait for the other stepflow process using this home to finish (or stop it), "
    "and run again",
}


def _is_diskcache_timeout(exc: BaseException) -> bool:
    # Checked by name: diskcache is imported only where the index is used.
    cls = type(exc)
    return cls.__name__ == "Timeout" and cls.__module__.startswith("diskcache")


def is_storage_fault(exc: BaseException) -> bool:
    """Whether ``exc`` is a failed write to disk or database (not a bug in stepflow)."""
    return isinstance(exc, (OSError, sqlite3.Error, StorageError)) or _is_diskcache_timeout(exc)


def is_known_fault(exc: BaseException) -> bool:
    """Whether ``exc`` is one of the faults named here (a full disk, a read-only or
    forbidden path, a lock), as opposed to, say, a damaged database file."""
    return is_storage_fault(exc) and fault_reason(exc) in _FIXES


def fault_reason(exc: BaseException) -> str:
    """Why a write failed, in words."""
    if isinstance(exc, StorageError):
        return exc.reason
    if _is_diskcache_timeout(exc):
        # diskcache raises Timeout (``from None``) when SQLite refused to begin its
        # transaction; the refusal itself says whether it was a lock or a full disk.
        cause = exc.__context__
        if cause is not None and not _is_diskcache_timeout(cause):
            return fault_reason(cause)
        return _LOCKED
    if isinstance(exc, OSError):
        if exc.errno in _ERRNO_REASONS:
            return _ERRNO_REASONS[exc.errno]
        return exc.strerror or str(exc) or type(exc).__name__
    if isinstance(exc, sqlite3.Error):
        text = str(exc).lower()
        if "locked" in text or "busy" in text:
            return _LOCKED
        if "full" in text:
            return _FULL
        if "readonly" in text or "read-only" in text:
            return _READ_ONLY
        return f"SQLite: {exc}"
    return f"{type(exc).__name__}: {exc}"


#: below this much free space, a vague failure ("disk I/O error") is taken for a full disk
_NEARLY_FULL = 64 * 1024


def _free_bytes(path: Path) -> int | None:
    folder = path
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def storage_error(
    exc: BaseException, *, path: os.PathLike[str] | str, what: str, detail: str = ""
) -> StorageError:
    """The ``StorageError`` for ``exc``, raised while writing ``what`` to ``path``.

    ``detail`` is added after the reason (e.g. how large the value being written was).
    """
    if isinstance(exc, StorageError):
        return exc
    reason = fault_reason(exc)
    path = Path(path)
    free = _free_bytes(path)
    if reason not in _FIXES and free is not None and free < _NEARLY_FULL:
        # SQLite reports a full disk met while growing its journal as "disk I/O error".
        reason = _FULL
    where = f" ({human_size(free)} free there)" if reason == _FULL and free is not None else ""
    fix = _FIXES.get(reason, f"check that {path} can be written, and run again")
    extra = f"; {detail}" if detail else ""
    return StorageError(
        f"could not write {what} to {path}: {reason}{where}{extra}. To fix: {fix}.",
        path=str(path),
        what=what,
        reason=reason,
    )


@contextmanager
def writing(path: os.PathLike[str] | str, what: str) -> Iterator[None]:
    """Turn a storage fault raised in the block into a ``StorageError`` about ``path``."""
    try:
        yield
    except StorageError:
        raise
    except Exception as exc:
        if not is_storage_fault(exc):
            raise
        raise storage_error(exc, path=path, what=what) from exc
