"""The code snapshot in the datastore: each file once, by hash, named by one hash.

The internal API that runs, backends and publishing use::

    snap = store_snapshot(root, datastore, home=home)   # a SourceSnapshot
    snapshot_id = snap.content_hash                       # what the run records
    manifest = snapshot_manifest(snapshot_id, datastore)  # path, size, hash of each file
    restore_snapshot(snapshot_id, datastore, dest)        # the exact files, into dest

What is stored, as documents of the datastore (``put_doc``/``get_doc``, so the local store, the
S3 store and any plugin store alike; documents, not objects, so that ``cache info`` and ``cache
prune`` count and remove step results only):

``source/files/<h[:2]>/<h>``
    The bytes of a file whose xxh3 hash is ``h``: a file shared by many snapshots, or moved, is
    stored once.
``source/snapshots/<id>.json``
    The manifest: for each path its hash, size, kind (``file`` or ``link``, with the link's
    target text), executable bit, and, for a file that was not stored, why (``left_out``).
    ``id`` is the snapshot's ``content_hash`` (:func:`stepflow._storage.source.content_hash`),
    the hash over the sorted (path, file hash) pairs that every run already records, so the id
    is checked against the manifest whenever one is read. Written after all its files, and only
    once (the first writer wins), so a manifest that is there names files that are there.

Left out
    Files larger than :data:`MAX_FILE_SIZE` (16 MiB: data, not code; keep data in the store
    with ``stepflow.datasets`` or list it in ``.stepflowignore``), files that cannot be read, and
    files that changed between being hashed and being stored. They stay in the manifest with
    their hash and the reason, and ``stepflow runs source RUN`` names them.

Speed
    The snapshot itself reuses the stat cache (unchanged files are not read). A memo in
    ``<home>/source-stored.json`` keeps, per store, the last snapshots stored there and the hashes
    of their files: a run whose code did not change stores nothing and asks the store nothing,
    and after an edit only the changed files are read and written. Before trusting the memo
    after a change, the last manifest it names is looked up once, so a store emptied behind the
    home's back is filled again. A memo that cannot be read is a miss; it never decides alone.

Restoring
    Every name is checked before anything is written: an absolute path, a ``..`` or ``.``
    part, an empty part or a NUL byte is refused (the manifest may come from a store other
    people write: DESIGN §7). Files are written without following symlinks, into folders
    checked to lie inside the destination; links are made last, and only when their target
    stays inside the destination (others are skipped and reported). Each file's bytes are
    checked against its hash; a missing or damaged one is an error naming it. The mode follows
    the umask, as ``git checkout`` and ``cp`` do, plus the executable bit where recorded. The
    executable bit is not part of the id: two snapshots that differ only in it share one.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from stepflow._humanize import human_size
from stepflow._slotted import Frozen
from stepflow._storage.datastore import Datastore
from stepflow._storage.faults import writing
from stepflow._storage.hashing import hash_bytes
from stepflow._storage.home import atomic_write
from stepflow._storage.source import UNREADABLE, Scan, SourceSnapshot, content_hash, link_bytes
from stepflow._storage.source import scan as scan_folder
from stepflow.errors import StepflowError, UsageError

__all__ = [
    "MAX_FILE_SIZE",
    "Restored",
    "SnapshotError",
    "SnapshotFile",
    "SnapshotManifest",
    "restore_snapshot",
    "save_scan",
    "snapshot_manifest",
    "store_snapshot",
]

#: files larger than this are not stored (their hash and size still are)
MAX_FILE_SIZE = 16 * 1024 * 1024
#: the memo of what each store holds, in the home
MEMO_NAME = "source-stored.json"
_FORMAT = "stepflow-source-manifest-1"
_MEMO_VERSION = 1
#: snapshots remembered per store
_MEMO_SNAPSHOTS = 16


class SnapshotError(StepflowError):
    """A stored snapshot is missing, damaged, or cannot be restored where asked."""


class SnapshotFile(Frozen):
    """One entry of a stored snapshot's manifest."""

    __slots__ = ("path", "hash", "size", "kind", "executable", "link", "left_out")

    path: str
    #: the hash the run recorded (``"unreadable"`` for a file that could not be read)
    hash: str
    size: int | None
    #: ``"file"`` or ``"link"``
    kind: str
    executable: bool
    #: a link's target text
    link: str | None
    #: why the file's bytes were not stored; ``None`` when they were
    left_out: str | None

    def __init__(
        self,
        path: str,
        hash: str,
        size: int | None = None,
        kind: str = "file",
        executable: bool = False,
        link: str | None = None,
        left_out: str | None = None,
    ) -> None:
        init = object.__setattr__
        init(self, "path", path)
        init(self, "hash", hash)
        init(self, "size", size)
        init(self, "kind", kind)
        init(self, "executable", executable)
        init(self, "link", link)
        init(self, "left_out", left_out)

    def to_dict(self) -> dict[str, Any]:
        data = {"hash": self.hash, "size": self.size, "kind": self.kind}
        if self.executable:
            data["executable"] = True
        if self.link is not None:
            data["link"] = self.link
        if self.left_out is not None:
            data["left_out"] = self.left_out
        return data


class SnapshotManifest(Frozen):
    """What a stored snapshot holds; ``id`` is its ``content_hash``."""

    __slots__ = ("id", "files", "git_commit", "git_dirty")

    id: str
    files: tuple[SnapshotFile, ...]
    git_commit: str | None
    git_dirty: bool | None

    def __init__(
        self,
        id: str,
        files: tuple[SnapshotFile, ...],
        git_commit: str | None = None,
        git_dirty: bool | None = None,
    ) -> None:
        init = object.__setattr__
        init(self, "id", id)
        init(self, "files", files)
        init(self, "git_commit", git_commit)
        init(self, "git_dirty", git_dirty)

    def to_json(self) -> bytes:
        data = {
            "format": _FORMAT,
            "id": self.id,
            "git_commit": self.git_commit,
            "git_dirty": self.git_dirty,
            "files": {f.path: f.to_dict() for f in self.files},
        }
        return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes, snapshot_id: str) -> SnapshotManifest:
        """Read a manifest and check it against ``snapshot_id``.

        :raises SnapshotError: it is not a manifest, or its files do not hash to the id.
        """
        damaged = f"the manifest of source snapshot {snapshot_id} is damaged"
        try:
            data = json.loads(raw)
            if data.get("format") != _FORMAT:
                raise SnapshotError(f"{damaged}: unknown format {data.get('format')!r}")
            files = []
            for path, entry in data["files"].items():
                size = entry.get("size")
                link = entry.get("link")
                left_out = entry.get("left_out")
                if not (
                    isinstance(path, str)
                    and isinstance(entry["hash"], str)
                    and isinstance(size, int | None)
                    and entry.get("kind", "file") in ("file", "link")
                    and isinstance(link, str | None)
                    and isinstance(left_out, str | None)
                ):
                    raise SnapshotError(f"{damaged}: the entry of {path!r} is malformed")
                files.append(
                    SnapshotFile(
                        path,
                        entry["hash"],
                        size,
                        entry.get("kind", "file"),
                        bool(entry.get("executable", False)),
                        link,
                        left_out,
                    )
                )
            commit, dirty = data.get("git_commit"), data.get("git_dirty")
        except SnapshotError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise SnapshotError(f"{damaged} ({type(exc).__name__}: {exc})") from exc
        if content_hash({f.path: f.hash for f in files}) != snapshot_id:
            raise SnapshotError(f"{damaged}: its files do not hash to its id")
        return cls(
            snapshot_id,
            tuple(sorted(files, key=lambda f: f.path)),
            commit if isinstance(commit, str) else None,
            dirty if isinstance(dirty, bool) else None,
        )


def file_doc(digest: str) -> str:
    """The document holding the bytes whose hash is ``digest``."""
    return f"source/files/{digest[:2]}/{digest}"


def manifest_doc(snapshot_id: str) -> str:
    """The document holding the manifest of snapshot ``snapshot_id``."""
    return f"source/snapshots/{snapshot_id}.json"


# --- storing -------------------------------------------------------------------------------


def store_snapshot(
    rootdir: Path, datastore: Datastore, *, home: Path | None = None
) -> SourceSnapshot:
    """Take the snapshot of ``rootdir`` and store it in ``datastore``.

    Returns the snapshot; its ``content_hash`` is the snapshot id. ``home`` keeps the stat cache
    and the memo of what the store holds (without it every file is read and written).

    :raises UsageError: ``rootdir`` is not a folder.
    :raises StorageError: the store could not be written.
    """
    found = scan_folder(rootdir, home=home)
    save_scan(found, datastore, home=home)
    return found.snapshot


def save_scan(found: Scan, datastore: Datastore, *, home: Path | None = None) -> str:
    """Store what :func:`~stepflow._storage.source.scan` found; returns the snapshot id.

    :raises StorageError: the store could not be written.
    """
    snap = found.snapshot
    snapshot_id = snap.content_hash
    memo = _Memo(None if home is None else Path(home) / MEMO_NAME, datastore.uri)
    if snapshot_id in memo.snapshots:
        return snapshot_id
    if memo.snapshots and datastore.get_doc(manifest_doc(memo.snapshots[0])) is None:
        memo.forget()  # the store lost what the memo says it holds
    raw = datastore.get_doc(manifest_doc(snapshot_id))
    if raw is not None:
        # Stored already (by another home sharing the store, or before the memo was lost).
        there = SnapshotManifest.from_json(raw, snapshot_id)
        memo.stored(snapshot_id, (e.hash for e in there.files if e.left_out is None))
        return snapshot_id
    entries = []
    for path, digest in sorted(snap.files.items()):
        entries.append(_store_file(found, path, digest, datastore, memo.files))
    manifest = SnapshotManifest(snapshot_id, tuple(entries), snap.git_commit, snap.git_dirty)
    doc = manifest_doc(snapshot_id)
    with writing(f"{datastore.uri}/{doc}", f"the manifest of source snapshot {snapshot_id}"):
        datastore.put_doc(doc, manifest.to_json(), exclusive=True)
    memo.stored(snapshot_id, (e.hash for e in entries if e.left_out is None))
    return snapshot_id


def _store_file(
    found: Scan, path: str, digest: str, datastore: Datastore, known: set[str]
) -> SnapshotFile:
    st = found.stats.get(path)
    if digest == UNREADABLE or st is None:
        return SnapshotFile(path, digest, None, left_out="it could not be read")
    size = st.st_size
    full = os.path.join(found.root, path)
    if stat.S_ISLNK(st.st_mode):
        try:
            target = os.readlink(full)
        except OSError:
            return SnapshotFile(path, digest, size, "link", left_out="it could not be read")
        if hash_bytes(link_bytes(target)) != digest:
            return SnapshotFile(path, digest, size, "link", left_out=_CHANGED)
        return SnapshotFile(path, digest, size, "link", link=target)
    executable = bool(st.st_mode & stat.S_IXUSR)
    if size > MAX_FILE_SIZE:
        reason = f"it is larger than {human_size(MAX_FILE_SIZE)}, the limit for stored source"
        return SnapshotFile(path, digest, size, executable=executable, left_out=reason)
    if digest not in known:
        try:
            with open(full, "rb") as fh:
                data = fh.read(MAX_FILE_SIZE + 1)
        except OSError:
            return SnapshotFile(path, digest, size, left_out="it could not be read")
        if hash_bytes(data) != digest:
            return SnapshotFile(path, digest, size, executable=executable, left_out=_CHANGED)
        doc = file_doc(digest)
        with writing(f"{datastore.uri}/{doc}", f"the source file {path}"):
            # Not fsynced, as objects are not: a restore checks every file's hash.
            datastore.put_doc(doc, data, sync=False)
        known.add(digest)
    return SnapshotFile(path, digest, size, executable=executable)


_CHANGED = "it changed while the snapshot was taken"


class _Memo:
    """Which snapshots and file hashes a store is known to hold, kept in the home.

    Only ever saves work: anything unexpected in the file is a miss.
    """

    def __init__(self, path: Path | None, uri: str) -> None:
        self.path = path
        self.uri = uri
        self.snapshots: list[str] = []
        self.files: set[str] = set()
        self._all: dict[str, Any] = {}
        if path is None:
            return
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("version") == _MEMO_VERSION and isinstance(data.get("stores"), dict):
                self._all = data["stores"]
                mine = self._all.get(uri) or {}
                self.snapshots = [s for s in mine.get("snapshots", ()) if isinstance(s, str)]
                self.files = {h for h in mine.get("files", ()) if isinstance(h, str)}
        except (OSError, ValueError, TypeError, AttributeError):
            self.snapshots, self.files, self._all = [], set(), {}

    def forget(self) -> None:
        self.snapshots, self.files = [], set()

    def stored(self, snapshot_id: str, hashes: Any) -> None:
        self.snapshots = [snapshot_id, *self.snapshots][:_MEMO_SNAPSHOTS]
        # The files of the latest snapshot: what the next one most likely shares.
        self.files = set(hashes)
        if self.path is None:
            return
        stores = {
            **self._all,
            self.uri: {"snapshots": self.snapshots, "files": sorted(self.files)},
        }
        text = json.dumps({"version": _MEMO_VERSION, "stores": stores}, separators=(",", ":"))
        with writing(self.path, "the memo of stored source snapshots"):
            atomic_write(self.path, text, prefix=".tmp-source-stored-")


# --- reading and restoring -----------------------------------------------------------------


def snapshot_manifest(snapshot_id: str, datastore: Datastore) -> SnapshotManifest | None:
    """The manifest of stored snapshot ``snapshot_id``; ``None`` when the store lacks it.

    :raises SnapshotError: the stored manifest is damaged.
    """
    raw = datastore.get_doc(manifest_doc(_check_id(snapshot_id)))
    return None if raw is None else SnapshotManifest.from_json(raw, snapshot_id)


def _check_id(snapshot_id: str) -> str:
    if not (
        isinstance(snapshot_id, str)
        and 8 <= len(snapshot_id) <= 128
        and all(c in "0123456789abcdef" for c in snapshot_id)
    ):
        raise SnapshotError(f"{snapshot_id!r} is not a source snapshot id (a hex hash)")
    return snapshot_id


def check_name(path: str) -> str:
    """Refuse a manifest name that could write outside the destination folder.

    :raises SnapshotError: naming the path.
    """
    parts = path.split("/")
    bad = (
        not path
        or "\0" in path
        or path.startswith("/")
        or "\\" in path
        or any(p in ("", ".", "..") for p in parts)
        or (len(parts[0]) >= 2 and parts[0][1] == ":")  # a Windows drive
    )
    if bad:
        raise SnapshotError(
            f"the snapshot names a file {path!r} that would be written outside the folder; "
            f"the manifest was not written by stepflow, so nothing was restored"
        )
    return path


class Restored(Frozen):
    """What :func:`restore_snapshot` did."""

    __slots__ = ("manifest", "written", "skipped")

    manifest: SnapshotManifest
    written: int
    #: path -> why it was not restored (left out when stored, or a link pointing outside)
    skipped: Mapping[str, str]

    def __init__(
        self,
        manifest: SnapshotManifest,
        written: int,
        skipped: Mapping[str, str],
    ) -> None:
        init = object.__setattr__
        init(self, "manifest", manifest)
        init(self, "written", written)
        init(self, "skipped", skipped)


def restore_snapshot(
    snapshot_id: str, datastore: Datastore, dest: Path, *, force: bool = False
) -> Restored:
    """Write the files of stored snapshot ``snapshot_id`` into folder ``dest``.

    ``dest`` must be absent or empty unless ``force``; then files of the snapshot are written
    over what is there, and other files are left alone.

    :raises SnapshotError: the snapshot or one of its files is missing or damaged, or a name
        would escape ``dest`` (then nothing is written).
    :raises UsageError: ``dest`` is not a folder, or is not empty and ``force`` is not given.
    :raises StorageError: ``dest`` cannot be written.
    """
    manifest = snapshot_manifest(snapshot_id, datastore)
    if manifest is None:
        raise SnapshotError(
            f"source snapshot {snapshot_id} is not in the store {datastore.uri}: it was never "
            f"stored there (runs before code snapshots were stored keep only the list of "
            f"files), or the store was emptied"
        )
    for entry in manifest.files:
        check_name(entry.path.rstrip("/") if entry.hash == UNREADABLE else entry.path)
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise UsageError(f"{str(dest)!r} is not a folder; pass a new or empty folder")
    if dest.is_dir() and any(dest.iterdir()) and not force:
        raise UsageError(
            f"{str(dest)!r} is not empty; pass a new or empty folder, or --force to write the "
            f"snapshot's files over the ones there (other files are left alone)"
        )
    with writing(dest, f"the files of source snapshot {snapshot_id}"):
        dest.mkdir(parents=True, exist_ok=True)
    real_dest = os.path.realpath(dest)
    skipped: dict[str, str] = {}
    written = 0
    links = []
    made: list[tuple[str, str, str]] = []
    for entry in manifest.files:
        if entry.left_out is not None or entry.hash == UNREADABLE:
            skipped[entry.path] = entry.left_out or "it could not be read"
        elif entry.kind == "link":
            links.append(entry)
        else:
            data = _fetch(datastore, entry)
            with writing(dest / entry.path, f"the source file {entry.path}"):
                _write(real_dest, entry.path, data, entry.executable)
            written += 1
    # Last: no file is ever written through a link the snapshot made.
    for entry in links:
        target = entry.link or ""
        if hash_bytes(link_bytes(target)) != entry.hash:
            raise SnapshotError(
                f"the link {entry.path!r} of source snapshot {snapshot_id} is damaged: its "
                f"target does not match its hash"
            )
        if not _link_inside(entry.path, target):
            skipped[entry.path] = f"it is a link to {target!r}, which leads outside the folder"
            continue
        with writing(dest / entry.path, f"the source link {entry.path}"):
            folder = _folder_inside(real_dest, entry.path)
            full = os.path.join(folder, posixpath.basename(entry.path))
            if os.path.lexists(full):
                if os.path.isdir(full) and not os.path.islink(full):
                    raise SnapshotError(f"cannot make link {entry.path!r}: a folder is there")
                os.unlink(full)
            os.symlink(target, full)
            made.append((entry.path, full, target))
    # Each target looked inside on its own, but a chain of links can still lead out (``a ->
    # .`` and ``b -> a/..``): checked again as the file system resolves them, until none does.
    while True:
        outside = [
            (path, full, target)
            for path, full, target in made
            if os.path.commonpath([os.path.realpath(full), real_dest]) != real_dest
        ]
        if not outside:
            break
        for path, full, target in outside:
            os.unlink(full)
            made.remove((path, full, target))
            skipped[path] = f"it is a link to {target!r}, which leads outside the folder"
    return Restored(manifest, written + len(made), skipped)


def _fetch(datastore: Datastore, entry: SnapshotFile) -> bytes:
    data = datastore.get_doc(file_doc(entry.hash))
    if data is None:
        raise SnapshotError(
            f"the file {entry.path!r} (hash {entry.hash}) is missing from the store {datastore.uri}"
        )
    if hash_bytes(data) != entry.hash:
        raise SnapshotError(
            f"the file {entry.path!r} is damaged in the store {datastore.uri}: its bytes do not "
            f"match hash {entry.hash}"
        )
    return data


def _folder_inside(real_dest: str, path: str) -> str:
    """Make the folders of ``path`` under ``real_dest``, refusing any that lead outside."""
    folder = real_dest
    for part in path.split("/")[:-1]:
        folder = os.path.join(folder, part)
        if os.path.islink(folder):
            raise SnapshotError(
                f"cannot write {path!r}: {part!r} on its way is a link; restore into an empty "
                f"folder"
            )
        with contextlib.suppress(FileExistsError):
            os.mkdir(folder)
    if os.path.commonpath([os.path.realpath(folder), real_dest]) != real_dest:
        raise SnapshotError(f"cannot write {path!r}: its folder lies outside the destination")
    return folder


def _write(real_dest: str, path: str, data: bytes, executable: bool) -> None:
    full = os.path.join(_folder_inside(real_dest, path), posixpath.basename(path))
    if os.path.islink(full):
        os.unlink(full)  # --force over a link: replace it, never write through it
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(full, flags, 0o777 if executable else 0o666)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    if executable:
        mode = os.stat(full).st_mode
        # As git does: the executable bit wherever the umask lets reading through.
        os.chmod(full, mode | ((mode & 0o444) >> 2))


def _link_inside(path: str, target: str) -> bool:
    if not target or target.startswith("/") or "\0" in target:
        return False
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
    return resolved != ".." and not resolved.startswith("../") and not resolved.startswith("/")
