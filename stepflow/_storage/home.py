"""The home as a trust boundary: owner-only folders and files, and the check of the home.

Stored results are unpickled, so whoever can write into the home can run code as its user.
Every folder stepflow makes under the home is therefore owner-only at each level
(``mkdir(parents=True, mode=...)`` gives the mode to the last level only, and the umask can
loosen nothing but can leave group and world bits of parents), every file it writes is
owner-only, and a home someone else could change is refused (:func:`check_home`).

A team that shares a home on purpose sets ``[tool.stepflow] shared_home = true`` (or
``STEPFLOW_SHARED_HOME=1``): folders are then made ``2770`` (the set-group-ID bit keeps the
folder's group on what is made in it) and files ``0660``, and a home owned by a teammate is
accepted. A world-writable home is refused either way.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from stepflow.errors import UnsafeHomeError

__all__ = [
    "atomic_write",
    "check_home",
    "dir_mode",
    "file_mode",
    "home_is_safe",
    "make_private_dirs",
    "make_private_file",
    "make_private_sqlite",
    "private_opener",
    "replacing",
    "set_shared_home",
    "shared_home",
]

_TRUE = frozenset({"1", "true", "yes", "on"})
#: homes already checked by this process (one check per process, not per use)
_checked: set[tuple[str, bool]] = set()


def shared_home() -> bool:
    """Whether this process writes group-accessible folders and files (a shared home)."""
    # The variable is the one switch, read on each use: the configuration (which sits below
    # storage and cannot call into it) sets it, and a run's workers inherit it.
    return os.environ.get("STEPFLOW_SHARED_HOME", "").strip().lower() in _TRUE


def set_shared_home(shared: bool) -> None:
    """Make this process (and the workers it starts) write private or group modes."""
    # Workers are other processes that open the store without a configuration: they read
    # the variable too.
    if shared:
        os.environ["STEPFLOW_SHARED_HOME"] = "1"
    else:
        os.environ.pop("STEPFLOW_SHARED_HOME", None)


def dir_mode() -> int:
    """The mode of a folder stepflow makes in the home."""
    return 0o2770 if shared_home() else 0o700


def file_mode() -> int:
    """The mode of a file stepflow writes in the home."""
    return 0o660 if shared_home() else 0o600


def make_private_dirs(path: Path | str) -> None:
    """``mkdir -p path``, each folder it makes set to :func:`dir_mode` (not only the last).

    Folders that exist are left as they are. An existing ``path`` costs one failed ``mkdir``,
    as ``mkdir(exist_ok=True)`` did.
    """
    mode = dir_mode()
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        if not os.path.isdir(path):
            raise
        return
    except FileNotFoundError:
        parent = os.path.dirname(os.path.abspath(path))
        if parent == os.path.abspath(path):
            raise
        make_private_dirs(parent)
        try:
            os.mkdir(path, mode)
        except FileExistsError:
            # Another process made it first, with its own mode.
            return
    # mkdir's mode is filtered by the umask; chmod's is not (and sets the group bits the
    # umask took away in a shared home).
    os.chmod(path, mode)


def make_private_file(path: Path | str | int) -> None:
    """Set a file stepflow wrote (a path or an open descriptor) to :func:`file_mode`."""
    if isinstance(path, int):
        os.fchmod(path, file_mode())
    else:
        os.chmod(path, file_mode())


def private_opener(path: str, flags: int) -> int:
    """An ``opener`` for :func:`open` that creates the file with :func:`file_mode`."""
    fd = os.open(path, flags, file_mode())
    if shared_home():
        os.fchmod(fd, file_mode())  # the umask may have taken the group bits away
    return fd


def atomic_write(
    path: Path | str,
    data: bytes | str,
    *,
    fsync: bool = False,
    exclusive: bool = False,
    prefix: str = ".tmp-",
) -> bool:
    """Write ``data`` to ``path`` whole or not at all; returns whether ``path`` was written.

    The bytes (a ``str`` as UTF-8) go to a temporary name (``prefix`` and random letters) in
    the same folder, made with :func:`make_private_dirs`, in :func:`file_mode`, then are
    renamed over ``path``: a reader sees the old file or the new one, never half of one, and a
    crash leaves only the temporary file. ``fsync`` flushes the bytes to disk before the rename,
    for files a power loss must not leave torn; each caller chooses, as it costs about 0.3 ms.
    ``exclusive`` creates ``path`` only if it does not exist (a hard link, which fails when the
    target exists) and returns False when it did.

    Faults are raised as they are: callers turn them into a ``StorageError``
    (``faults.writing``), a warning or a silent skip, as suits what they write.
    """
    folder = os.path.dirname(path) or "."
    make_private_dirs(folder)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=prefix)
    try:
        with os.fdopen(fd, "wb") as fh:
            if shared_home():
                make_private_file(fd)  # mkstemp made it 0600
            fh.write(data.encode("utf-8") if isinstance(data, str) else data)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        if exclusive:
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
        else:
            os.replace(tmp, path)
            tmp = ""
        return True
    finally:
        if tmp:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


@contextlib.contextmanager
def replacing(path: Path, *, suffix: str = "") -> Iterator[Path]:
    """A new empty file beside ``path``, in :func:`file_mode`, renamed over ``path`` when the
    block ends without an error and removed when it raises.

    For writers that need a path rather than bytes (a serializer, a download): the same
    whole-or-nothing promise as :func:`atomic_write`. The folder must exist.
    """
    fd, tmp_name = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-", suffix=suffix)
    tmp = Path(tmp_name)
    try:
        try:
            if shared_home():
                make_private_file(fd)  # mkstemp made it 0600
        finally:
            os.close(fd)
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def make_private_sqlite(path: Path) -> None:
    """Set an SQLite database and its ``-wal``/``-shm`` files to :func:`file_mode`.

    SQLite makes later ``-wal``/``-shm`` files with the database's mode, so once the
    database is right they are too; a chmod is made only where a mode is wrong.
    """
    mode = file_mode()
    for name in (str(path), f"{path}-wal", f"{path}-shm"):
        try:
            if stat.S_IMODE(os.stat(name).st_mode) != mode:
                os.chmod(name, mode)
        except FileNotFoundError:
            pass


def check_home(home: Path | str) -> None:
    """Refuse a home another user could change; checked once per process and home.

    Refused: a home that is world-writable (even with the sticky bit: others could make the
    folders stepflow expects), one owned by another user, and a path whose components
    include a symlink owned by a user other than this one or root. With a shared home
    (:func:`shared_home`) another owner and another user's symlinks are accepted. A home
    that does not exist yet passes: stepflow makes it owner-only.

    :raises UnsafeHomeError: naming the path and the fix.
    """
    shared = shared_home()
    key = (str(home), shared)
    if key in _checked or not hasattr(os, "geteuid"):
        return
    _check(os.path.abspath(home), shared)
    _checked.add(key)


def home_is_safe(home: Path | str) -> bool:
    """Whether :func:`check_home` passes, for writes that may be skipped instead of refused."""
    try:
        check_home(home)
    except UnsafeHomeError:
        return False
    return True


def _check(home: str, shared: bool) -> None:
    uid = os.geteuid()
    own = (
        "use a home of your own (--home PATH, STEPFLOW_HOME or [tool.stepflow] home), or, for "
        "a folder a team shares on purpose, set [tool.stepflow] shared_home = true"
    )
    # Each component as the path spells it, so a symlink on the way is seen as a symlink.
    # Plain strings: the check is part of every start.
    prefix = ""
    for part in home.split(os.sep)[1:]:
        prefix = f"{prefix}{os.sep}{part}"
        try:
            info = os.lstat(prefix)
        except (FileNotFoundError, NotADirectoryError):
            return  # the rest does not exist yet: stepflow makes it owner-only
        if stat.S_ISLNK(info.st_mode) and info.st_uid not in (uid, 0) and not shared:
            raise UnsafeHomeError(
                f"the stepflow home {home} is reached through the symlink {prefix}, owned by "
                f"another user (uid {info.st_uid}), who can point it anywhere; {own}",
                path=str(prefix),
            )
    info = os.stat(home)
    if info.st_mode & stat.S_IWOTH:
        raise UnsafeHomeError(
            f"the stepflow home {home} is world-writable: any user could plant results that "
            f"stepflow would load; run `chmod o-w {home}` (`chmod 700` for a home of your own) "
            f"or use another home (--home PATH or STEPFLOW_HOME)",
            path=str(home),
        )
    if info.st_uid != uid and not shared:
        raise UnsafeHomeError(
            f"the stepflow home {home} is owned by another user (uid {info.st_uid}), who could "
            f"change the results stepflow loads; {own}",
            path=str(home),
        )
