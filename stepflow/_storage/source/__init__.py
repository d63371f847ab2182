"""The source snapshot of a run: which project files it ran with, and the git facts.

:func:`snapshot` walks the project folder and returns a :class:`SourceSnapshot`: a manifest
(relative posix path -> content hash of each file), one ``content_hash`` over the manifest, and
the git commit and dirty flag. Two runs with equal ``content_hash`` ran with the same files;
:func:`diff` of two manifests says which files differ (``stepflow runs compare``, ``--resume``).

Storing the files themselves, each once by hash in the datastore, and restoring them is
:mod:`stepflow._storage.source.store` (``store_snapshot``, ``snapshot_manifest``,
``restore_snapshot``): the snapshot id is the ``content_hash`` below.

Which files count
    Ignore files use git's syntax and are compiled by :mod:`pathspec` (``GitIgnoreSpec``), never
    matched by hand. For each path, the first of these that has an opinion decides:

    1. always excluded, whatever the ignore files say: ``.git``, ``__pycache__/``, ``*.pyc`` and
       the stepflow home folder when it lies inside the project;
    2. ``.stepflowignore`` in the project root (it can re-include with ``!`` what a
       ``.gitignore`` ignores);
    3. the ``.gitignore`` files, deepest folder first, each relative to its own folder, with the
       last matching pattern in a file winning (git's rules);
    4. when the project root has no ``.gitignore``, a default list of heavy folders
       (``.venv``, ``node_modules``, ``build``, ... see ``_DEFAULT_IGNORES``), so a project
       without ignore files does not hash a virtualenv.

    An ignored folder is not entered, so, as in git, a file inside it cannot be re-included on
    its own: re-include the folder (``!data/``) and ignore what you do not want inside it.
    Symbolic links are not followed; a link counts by the text of its target. Other special
    files (sockets, FIFOs) do not count. A file that cannot be read counts as ``"unreadable"``
    (a folder as ``"folder/": "unreadable"``) rather than failing the run; a file that vanishes
    during the walk does not count. Ignore files of folders above the project root and git's
    ``info/exclude`` and ``core.excludesFile`` are not read.

Speed
    Files are hashed with xxh3 (:func:`~stepflow._storage.hashing.hash_file`). A stat cache in
    ``<home>/source-cache.json`` maps each path to its (size, mtime, ctime, inode) and hash, so
    an unchanged file is not read again. A file modified within the last two seconds is not
    cached: file times are coarse (a few milliseconds on Linux, seconds elsewhere), and a second
    same-size write within one tick would otherwise leave a stale hash in the cache.

    The same file keeps the walk itself: each folder entered, with its modification time, the
    files that counted in it, and the stamp of every ignore file read. When no folder and no
    ignore file changed since, the walk is not repeated: files can only be added, removed or
    renamed by changing their folder's modification time. Only the files are stat-ed, and
    :mod:`pathspec` (about 50 ms to import) is not even imported. The two-second rule applies
    here too: a walk is kept only when every folder and ignore file is older than that.

Git
    One ``git status --porcelain=v2 --branch`` call gives both the commit (``None`` before the
    first commit) and the dirty flag (any change or untracked file in the work tree, the stepflow
    home excepted), from the same moment. It runs with a timeout and without taking git's
    optional locks, so it never blocks a ``git commit`` running beside it. Without git, outside
    a repository, or on any git error, both facts are ``None``; when no folder from the project
    up has a ``.git`` and no ``GIT_DIR``/``GIT_WORK_TREE`` is set, git is not even started.
"""

from __future__ import annotations

import functools
import json
import os
import stat
import struct
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import xxhash

from stepflow._slotted import Frozen
from stepflow._storage.hashing import hash_bytes, hash_file
from stepflow._storage.home import atomic_write
from stepflow.errors import StepflowError, StepflowWarning, UsageError

if TYPE_CHECKING:
    import pathspec

__all__ = [
    "Scan",
    "SourceDiff",
    "SourceRecordError",
    "SourceSnapshot",
    "content_hash",
    "diff",
    "git_facts",
    "scan",
    "snapshot",
]

#: The name of the stat cache file in the stepflow home.
CACHE_NAME = "source-cache.json"
#: The manifest value of a file or folder that exists but cannot be read.
UNREADABLE = "unreadable"

# Changes whenever the manifest or the content hash is computed differently, so snapshots made
# by an older algorithm never compare equal by accident.
_ALGORITHM = b"stepflow-source-1"
# Also covers the kept walks: bump it when the rules of which files count change.
_CACHE_VERSION = 1
# Files modified more recently than this are hashed but not cached (see the module docstring).
_RACY_NS = 2_000_000_000
_GIT_TIMEOUT_S = 5.0

_ALWAYS_IGNORED = (".git", "__pycache__/", "*.pyc")
_DEFAULT_IGNORES = (
    ".venv/",
    "venv/",
    ".tox/",
    "node_modules/",
    ".mypy_cache/",
    ".pytest_cache/",
    ".ruff_cache/",
    "build/",
    "dist/",
    "*.egg-info/",
)
_U64 = struct.Struct("<Q")


class SourceRecordError(StepflowError, ValueError):
    """A stored source snapshot does not have the shape :meth:`SourceSnapshot.from_dict` reads."""


class SourceSnapshot(Frozen):
    """What a run's project folder held, and where it stood in git."""

    __slots__ = ("content_hash", "files", "git_commit", "git_dirty")
    _unhashed = frozenset(("files",))

    #: hex digest over the sorted (path, file hash) pairs of ``files``
    content_hash: str
    #: relative posix path -> 32-hex xxh3_128 digest of the file's bytes (a symlink: of its
    #: target text, tagged so that it differs from a file holding that text)
    files: Mapping[str, str]
    #: ``HEAD``'s commit id; ``None`` outside a repository, without git, or before any commit
    git_commit: str | None
    #: whether the work tree differs from ``HEAD`` (untracked files count); ``None`` outside a
    #: repository or without git
    git_dirty: bool | None

    def __init__(
        self,
        content_hash: str,
        files: Mapping[str, str],
        git_commit: str | None = None,
        git_dirty: bool | None = None,
    ) -> None:
        init = object.__setattr__
        init(self, "content_hash", content_hash)
        init(self, "files", dict(files))
        init(self, "git_commit", git_commit)
        init(self, "git_dirty", git_dirty)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; :meth:`from_dict` reads it back."""
        return {
            "content_hash": self.content_hash,
            "files": dict(self.files),
            "git_commit": self.git_commit,
            "git_dirty": self.git_dirty,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SourceSnapshot:
        """Read back what :meth:`to_dict` wrote.

        :raises SourceRecordError: a key is missing or holds a value of the wrong type.
        """
        if not isinstance(data, Mapping):
            raise SourceRecordError(
                f"a source snapshot must be a mapping, not {type(data).__name__}"
            )
        missing = {"content_hash", "files"} - data.keys()
        if missing:
            raise SourceRecordError(
                f"source snapshot record lacks {', '.join(sorted(missing))}; it was not written "
                f"by SourceSnapshot.to_dict()"
            )
        files = data["files"]
        checks = (
            ("content_hash", isinstance(data["content_hash"], str), "a string"),
            (
                "files",
                isinstance(files, Mapping)
                and all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()),
                "a mapping of path strings to hash strings",
            ),
            ("git_commit", isinstance(data.get("git_commit"), str | None), "a string or None"),
            ("git_dirty", isinstance(data.get("git_dirty"), bool | None), "a bool or None"),
        )
        for key, ok, expected in checks:
            if not ok:
                raise SourceRecordError(
                    f"source snapshot record: {key!r} must be {expected} "
                    f"(got {type(data.get(key)).__name__})"
                )
        return cls(data["content_hash"], files, data.get("git_commit"), data.get("git_dirty"))


class SourceDiff(Frozen):
    """How two source manifests differ; each field is a sorted tuple of paths."""

    __slots__ = ("added", "removed", "changed")

    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]

    def __init__(
        self,
        added: tuple[str, ...] = (),
        removed: tuple[str, ...] = (),
        changed: tuple[str, ...] = (),
    ) -> None:
        init = object.__setattr__
        init(self, "added", added)
        init(self, "removed", removed)
        init(self, "changed", changed)

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)

    def text(self, limit: int | None = 10) -> str:
        """One line such as ``changed: a.py; added: b.py``, or ``no changes``.

        At most ``limit`` paths are named per kind (``None``: all), then ``(+N more)``.
        """
        parts = []
        for label, paths in (
            ("changed", self.changed),
            ("added", self.added),
            ("removed", self.removed),
        ):
            if not paths:
                continue
            shown = paths if limit is None else paths[:limit]
            more = f" (+{len(paths) - len(shown)} more)" if len(shown) < len(paths) else ""
            parts.append(f"{label}: {', '.join(shown)}{more}")
        return "; ".join(parts) or "no changes"


def diff(old: Mapping[str, str], new: Mapping[str, str]) -> SourceDiff:
    """Which paths were added, removed or changed from manifest ``old`` to manifest ``new``.

    >>> diff({"a.py": "1", "c.py": "3"}, {"a.py": "2", "b.py": "2", "c.py": "3"}).text()
    'changed: a.py; added: b.py'
    """
    return SourceDiff(
        added=tuple(sorted(new.keys() - old.keys())),
        removed=tuple(sorted(old.keys() - new.keys())),
        changed=tuple(sorted(p for p in old.keys() & new.keys() if old[p] != new[p])),
    )


def snapshot(rootdir: Path, *, home: Path | None = None) -> SourceSnapshot:
    """Hash the project folder ``rootdir`` and read its git facts.

    ``home`` is the stepflow home: it is never part of the snapshot, and it keeps the stat cache
    that lets unchanged files go unread (without it every file is read).

    :raises UsageError: ``rootdir`` is not a folder.
    """
    return scan(rootdir, home=home).snapshot


class Scan(Frozen):
    """A snapshot with what storing it needs: where the project is and each file's stat."""

    __slots__ = ("snapshot", "root", "stats")
    _unhashed = frozenset(("stats",))

    snapshot: SourceSnapshot
    root: Path
    #: relative posix path -> the ``lstat`` taken when the file was hashed (absent for the
    #: entries that are ``UNREADABLE``)
    stats: Mapping[str, os.stat_result]

    def __init__(
        self,
        snapshot: SourceSnapshot,
        root: Path,
        stats: Mapping[str, os.stat_result],
    ) -> None:
        init = object.__setattr__
        init(self, "snapshot", snapshot)
        init(self, "root", root)
        init(self, "stats", stats)


def scan(rootdir: Path, *, home: Path | None = None) -> Scan:
    """:func:`snapshot`, keeping each file's stat (for sizes and modes) beside it.

    :raises UsageError: ``rootdir`` is not a folder.
    """
    root = Path(rootdir)
    if not root.is_dir():
        raise UsageError(
            f"cannot take a source snapshot of {str(root)!r}: it is not a folder; pass the "
            f"project folder (the one that holds pyproject.toml)"
        )
    root = root.absolute()
    home_rel = None if home is None else _inside(Path(home), root)
    cache = _StatCache(None if home is None else Path(home) / CACHE_NAME, root)
    now = time.time_ns()
    listing = cache.walk(home_rel)
    if listing is None:
        seen = _Seen(now)
        listing = [
            (rel, None if entry is None else entry.path)
            for rel, entry in _walk(str(root), home_rel, seen)
        ]
        cache.keep_walk(seen.record(home_rel))
    files: dict[str, str] = {}
    stats: dict[str, os.stat_result] = {}
    for rel, path in listing:
        if path is None:
            files[rel] = UNREADABLE
            continue
        digest, st = _digest(rel, path, cache, now)
        if digest is not None:
            files[rel] = digest
            if st is not None and digest != UNREADABLE:
                stats[rel] = st
    cache.save()
    commit, dirty = git_facts(root, exclude=() if home_rel is None else (home_rel,))
    return Scan(SourceSnapshot(content_hash(files), files, commit, dirty), root, stats)


def git_facts(rootdir: Path, *, exclude: tuple[str, ...] = ()) -> tuple[str | None, bool | None]:
    """``(commit, dirty)`` of the git work tree holding ``rootdir``; ``(None, None)`` if none.

    ``exclude`` lists paths relative to ``rootdir`` whose changes do not make the tree dirty.
    """
    if not _may_be_in_git(rootdir):
        # Outside any repository git would only say so: no process started for that.
        return None, None
    import subprocess  # here: 9 ms to import, and only needed inside a repository

    argv = ["git", "status", "--porcelain=v2", "--branch", "--untracked-files=normal", "--"]
    argv += [":/", *(f":(exclude,literal){path}" for path in exclude)]
    # No optional locks: status would otherwise refresh and rewrite the index, racing with a
    # git command the user runs at the same time. LC_ALL: messages we never show, kept plain.
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"}
    try:
        proc = subprocess.run(
            argv,
            cwd=rootdir,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=_GIT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        # git missing, not executable, or too slow: the run goes on without git facts.
        return None, None
    if proc.returncode != 0:
        return None, None
    commit: str | None = None
    dirty = False
    for line in proc.stdout.splitlines():
        if line.startswith(b"# branch.oid "):
            oid = line.removeprefix(b"# branch.oid ").decode("ascii", "replace").strip()
            commit = None if oid == "(initial)" else oid
        elif line and not line.startswith(b"#"):
            dirty = True
    return commit, dirty


def _may_be_in_git(rootdir: Path) -> bool:
    """``False`` only when ``git status`` in ``rootdir`` can only fail for want of a
    repository: no ``.git`` (folder or file, as a worktree or submodule has) in ``rootdir``
    or any folder above it, by its path as given or resolved, and no ``GIT_DIR`` or
    ``GIT_WORK_TREE`` telling git where to look instead. Erring towards ``True`` is safe:
    git then decides, as before."""
    if any(name in os.environ for name in ("GIT_DIR", "GIT_WORK_TREE")):
        return True
    seen: set[str] = set()
    for start in (os.path.abspath(rootdir), os.path.realpath(rootdir)):
        folder = start
        while folder not in seen:
            seen.add(folder)
            if os.path.lexists(os.path.join(folder, ".git")):
                return True
            folder = os.path.dirname(folder)
    return False


# --- walking the folder ---------------------------------------------------------------------


def _inside(path: Path, root: Path) -> str | None:
    """``path`` relative to ``root`` as ``a/b/`` when it is strictly inside, else None."""
    real_path, real_root = os.path.realpath(path), os.path.realpath(root)
    if os.path.commonpath([real_path, real_root]) != real_root or real_path == real_root:
        return None
    return Path(os.path.relpath(real_path, real_root)).as_posix() + "/"


# Cached: a long-running process (the scheduler, a notebook) snapshots the same ignore files
# again and again.
@functools.lru_cache(maxsize=256)
def _compile(lines: tuple[str, ...]) -> pathspec.GitIgnoreSpec:
    # Imported here: pathspec costs ~50 ms to import (it pulls in asyncio), which the CLI and
    # readers of stored snapshots should not pay; snapshots are taken in a background thread.
    import pathspec

    return pathspec.GitIgnoreSpec.from_lines(lines)


def _read_spec(path: str, seen: _Seen | None = None) -> pathspec.GitIgnoreSpec | None:
    if seen is not None:
        seen.ignore_file(path)
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            lines = fh.read().splitlines()
    except OSError:
        # Absent, or present but unreadable (which git skips too).
        return None
    return _compile(tuple(lines))


# (folder prefix such as "" or "sub/", its compiled .gitignore), root first
_Chain = tuple[tuple[str, "pathspec.GitIgnoreSpec"], ...]


def _walk(
    root: str, home_rel: str | None, seen: _Seen | None = None
) -> Iterator[tuple[str, os.DirEntry[str] | None]]:
    """Yield (relative posix path, entry) for every file and symlink that counts.

    The entry is None for a folder that cannot be listed (its path then ends with ``/``).
    ``seen`` collects what the walk depended on, so that a later one can be skipped.
    """
    seen = seen or _Seen(time.time_ns())
    always = _compile(_ALWAYS_IGNORED)
    stepflowignore = _read_spec(os.path.join(root, ".stepflowignore"), seen)
    root_gitignore = _read_spec(os.path.join(root, ".gitignore"), seen)
    chain: _Chain = (("", root_gitignore or _compile(_DEFAULT_IGNORES)),)

    def ignored(rel: str, chain: _Chain) -> bool:
        if always.match_file(rel) or rel == home_rel:
            return True
        if stepflowignore is not None:
            verdict = stepflowignore.check_file(rel).include
            if verdict is not None:
                return verdict
        for prefix, spec in reversed(chain):
            verdict = spec.check_file(rel[len(prefix) :]).include
            if verdict is not None:
                return verdict
        return False

    stack: list[tuple[str, str, _Chain]] = [(root, "", chain)]
    while stack:
        folder, prefix, chain = stack.pop()
        if prefix:
            nested = _read_spec(os.path.join(folder, ".gitignore"), seen)
            if nested is not None:
                chain = (*chain, (prefix, nested))
        try:
            stamp = seen.folder(folder, prefix)
            with os.scandir(folder) as entries:
                listed = list(entries)
        except FileNotFoundError:
            seen.keepable = False
            continue
        except OSError as exc:
            if not prefix:
                raise UsageError(
                    f"cannot take a source snapshot of {root!r}: the folder cannot be listed "
                    f"({exc.strerror}); check its permissions"
                ) from exc
            seen.keepable = False
            yield prefix, None
            continue
        for entry in listed:
            rel = prefix + entry.name
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
                # Sockets, FIFOs and devices are not source.
                is_file = not is_dir and (
                    entry.is_file(follow_symlinks=False) or entry.is_symlink()
                )
            except OSError:
                continue
            if is_dir:
                if not ignored(rel + "/", chain):
                    stack.append((entry.path, rel + "/", chain))
            elif is_file and not ignored(rel, chain):
                stamp.append(entry.name)
                yield rel, entry


class _Seen:
    """What one walk depended on: the folders it listed and the ignore files it read."""

    def __init__(self, now: int) -> None:
        self.now = now
        #: prefix ("" or "sub/") -> [mtime_ns, ctime_ns, inode, names of the files that count]
        self.folders: dict[str, list[Any]] = {}
        #: path relative to the root -> stamp, or None when absent
        self.ignores: dict[str, list[int] | None] = {}
        self.keepable = True
        self._root_len = -1

    def folder(self, path: str, prefix: str) -> list[Any]:
        if not prefix:
            self._root_len = len(path) + 1
        st = os.stat(path)
        # As for files: an entry added within the tick of a recent modification time would
        # leave that time unchanged.
        if self.now - st.st_mtime_ns <= _RACY_NS:
            self.keepable = False
        found = self.folders[prefix] = [st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
        return found

    def ignore_file(self, path: str) -> None:
        stamp = _stamp(path)
        if stamp is not None and self.now - stamp[1] <= _RACY_NS:
            self.keepable = False
        rel = os.path.basename(path) if self._root_len < 0 else path[self._root_len :]
        self.ignores[rel] = stamp

    def record(self, home_rel: str | None) -> dict[str, Any] | None:
        if not self.keepable:
            return None
        return {"home": home_rel, "folders": self.folders, "ignores": self.ignores}


def _stamp(path: str) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _unchanged_walk(
    root: str, kept: Any, home_rel: str | None
) -> list[tuple[str, str | None]] | None:
    """The files of a kept walk, if no folder or ignore file it depended on changed."""
    try:
        if kept["home"] != home_rel:
            return None
        for rel, stamp in kept["ignores"].items():
            if _stamp(os.path.join(root, rel)) != stamp:
                return None
        listing: list[tuple[str, str | None]] = []
        for prefix, (mtime, ctime, inode, *names) in kept["folders"].items():
            folder = os.path.join(root, prefix)
            try:
                st = os.stat(folder)
            except OSError:
                return None
            if [st.st_mtime_ns, st.st_ctime_ns, st.st_ino] != [mtime, ctime, inode]:
                return None
            listing += [(prefix + name, os.path.join(folder, name)) for name in names]
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    return listing


def _digest(
    rel: str, path: str, cache: _StatCache, now: int
) -> tuple[str | None, os.stat_result | None]:
    """The hash of one file or symlink (None if it vanished) and its stat, through the stat
    cache."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None, None
    except OSError:
        return UNREADABLE, None
    stamp = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
    cached = cache.get(rel, stamp)
    if cached is not None:
        return cached, st
    try:
        if stat.S_ISLNK(st.st_mode):
            # Tagged, so a link and a file holding its target text hash apart.
            digest = hash_bytes(link_bytes(os.readlink(path)))
        else:
            digest = hash_file(path)
    except FileNotFoundError:
        return None, None
    except OSError:
        return UNREADABLE, None
    if now - st.st_mtime_ns > _RACY_NS:
        cache.put(rel, stamp, digest)
    return digest, st


def link_bytes(target: str) -> bytes:
    """What a symlink's manifest hash is taken over: its target text, tagged."""
    return b"symlink\0" + os.fsencode(target)


def content_hash(files: Mapping[str, str]) -> str:
    """The hash over a manifest (path -> file hash): a snapshot's ``content_hash``."""
    state = xxhash.xxh3_128(_ALGORITHM)
    for path in sorted(files):
        # Length prefixes: no two different manifests can produce the same byte stream.
        raw = path.encode("utf-8", "surrogateescape")
        state.update(_U64.pack(len(raw)) + raw)
        digest = files[path].encode("utf-8", "surrogateescape")
        state.update(_U64.pack(len(digest)) + digest)
    return state.hexdigest()


# --- the stat cache ---------------------------------------------------------------------------


class _StatCache:
    """path -> ([size, mtime_ns, ctime_ns, inode], hash) for one project root, kept in JSON.

    One file serves every project that shares the home, keyed by the project's real path.
    Anything unexpected in the file (bad JSON, another version, odd entries) is a miss: the
    cache only ever saves work, it never decides a hash on its own.
    """

    def __init__(self, path: Path | None, root: Path) -> None:
        self.path = path
        self._root = str(root)
        self._key = os.path.realpath(root)
        self._roots: dict[str, Any] = {}
        self._old: dict[str, Any] = {}
        self._new: dict[str, list[Any]] = {}
        self._walks: dict[str, Any] = {}
        self._walk_changed = False
        if path is None:
            return
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return
        if not (isinstance(data, dict) and data.get("version") == _CACHE_VERSION):
            return
        roots = data.get("roots")
        if isinstance(roots, dict):
            self._roots = roots
            old = roots.get(self._key)
            self._old = old if isinstance(old, dict) else {}
        walks = data.get("walks")
        if isinstance(walks, dict):
            self._walks = walks

    def walk(self, home_rel: str | None) -> list[tuple[str, str | None]] | None:
        """The kept walk of this root, if nothing it depended on changed."""
        kept = self._walks.get(self._key)
        return None if kept is None else _unchanged_walk(self._root, kept, home_rel)

    def keep_walk(self, record: dict[str, Any] | None) -> None:
        if record is None:
            if self._walks.pop(self._key, None) is not None:
                self._walk_changed = True
            return
        self._walks[self._key] = record
        self._walk_changed = True

    def get(self, rel: str, stamp: list[int]) -> str | None:
        cached = self._old.get(rel)
        if (
            isinstance(cached, list)
            and len(cached) == 2
            and cached[0] == stamp
            and isinstance(cached[1], str)
        ):
            self._new[rel] = cached
            return cached[1]
        return None

    def put(self, rel: str, stamp: list[int], digest: str) -> None:
        self._new[rel] = [stamp, digest]

    def save(self) -> None:
        """Write the entries seen in this walk (dropping the rest), only if anything changed."""
        if self.path is None or (self._new == self._old and not self._walk_changed):
            return
        roots = {**self._roots, self._key: self._new}
        data = {"version": _CACHE_VERSION, "roots": roots, "walks": self._walks}
        text = json.dumps(data, separators=(",", ":"))
        try:
            # No fsync: after a power loss a torn cache is only a miss, never a wrong hash.
            atomic_write(self.path, text, prefix=".tmp-source-cache-")
        except OSError as exc:
            warnings.warn(
                StepflowWarning(
                    f"could not write the source stat cache {self.path} ({exc}); the snapshot "
                    f"is correct, but the next run reads every project file again"
                ),
                stacklevel=3,
            )
