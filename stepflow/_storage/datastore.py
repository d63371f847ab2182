"""Content-addressed object storage for step outputs.

An object is named by the content hash of the value it holds and the serializer that wrote
it, so identical outputs are stored once. Every write goes to a temporary name in the same
folder, is flushed and closed, then renamed into place: a reader never sees half an
object, and a crash leaves only a temporary file, which ``sweep`` removes later. Objects
are verified against the digest of their bytes before anything reads them.

Objects are not fsynced, as git does not fsync its objects by default. An fsync cost 0.3 ms
for each small output and 0.15 s for a 400 MB one here, which is most of a step's overhead.
What it would guard against is a power loss (not a crash or kill -9, after which the kernel
still writes the file out) leaving an object empty or torn behind its index entry. The
digest check on load turns that into a miss, so the step runs again; it can never give a
wrong result.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from stepflow._storage.home import atomic_write, make_private_dirs, make_private_file
from stepflow.errors import StepflowError

__all__ = ["ArtifactMissingError", "CorruptedObjectError", "Datastore", "LocalDatastore"]

_NAME_RE = re.compile(r"^[0-9a-f]{8,128}\.[a-z0-9_\-]{1,32}$")
_DOC_PART_RE = re.compile(r"^[A-Za-z0-9_@+=,\-][A-Za-z0-9_.@+=,\-]{0,199}$")


#: the document holding the key that hashes ``Secret`` parameters (see ``secret_key``)
KEYED_HASH_DOC = "keys/secret-params.key"
KEYED_HASH_SIZE = 32


class ArtifactMissingError(StepflowError):
    """An object is missing, or its bytes do not match the digest recorded for it."""


class CorruptedObjectError(ArtifactMissingError):
    """An object is there with its recorded size, but its bytes do not match its digest:
    the cheap check before reuse passes, so whoever finds it must drop it."""


def check_name(name: str) -> str:
    """Object names come from our own hashes; anything else could escape the store."""
    if not _NAME_RE.match(name):
        raise ArtifactMissingError(f"invalid object name {name!r}")
    return name


def check_doc_path(path: str) -> str:
    """Document paths are ``/``-separated names: no ``..``, no absolute paths, no odd bytes."""
    parts = path.split("/")
    if not path or not all(_DOC_PART_RE.match(p) and p not in (".", "..") for p in parts):
        raise ValueError(
            f"invalid document path {path!r}: use '/'-separated names of letters, digits "
            f"and '_.-@+=,'"
        )
    return path


class Datastore:
    """Base class for datastores: named, immutable objects.

    Plugins subclass it (an object store, say) and return factories from
    ``stepflow_datastore_types``. Objects are written through ``writer`` and read through
    ``local_path``; a remote store downloads to a local cache there.
    """

    #: how a worker process opens the same store, e.g. a folder path or a URL
    uri: str = ""
    #: the name the ``stepflow_datastore_types`` hook registered the kind under
    kind: str = ""

    @contextlib.contextmanager
    def writer(self, name: str) -> Iterator[Path]:
        """Yield a local temporary path to write object ``name`` to; publish it on exit.

        Nothing is published if the block raises.
        """
        raise NotImplementedError
        yield Path()  # pragma: no cover

    def local_path(self, name: str) -> Path:
        """A local file holding object ``name``.

        :raises ArtifactMissingError: there is no such object.
        """
        raise NotImplementedError

    def discard_copy(self, name: str) -> bool:
        """Forget this machine's copy of a remote object, so that ``local_path`` fetches it
        again; ``False`` when there is no separate copy (a local store)."""
        return False

    def exists(self, name: str) -> bool:
        raise NotImplementedError

    def delete(self, name: str) -> None:
        raise NotImplementedError

    def names(self) -> Iterator[str]:
        """Every object name in the store."""
        raise NotImplementedError

    def size(self, name: str) -> int:
        raise NotImplementedError

    # --- documents: small, named, mutable records (registries, shared index entries) -----

    #: ``True`` when other machines may read this store, so cache-index entries are
    #: published to it as documents (see ``stepflow._storage.index``)
    shared: bool = False

    def put_doc(
        self, path: str, data: bytes, *, exclusive: bool = False, sync: bool = True
    ) -> bool:
        """Write document ``path`` atomically; return ``False`` (and write nothing) when
        ``exclusive`` and it exists already. ``sync=False``: the document is checked by its
        hash when read, so like an object it need not be flushed to the disk first (a store
        whose writes are durable anyway ignores it)."""
        raise NotImplementedError

    def get_doc(self, path: str) -> bytes | None:
        """The document's bytes, or ``None`` when there is none."""
        raise NotImplementedError

    def list_docs(self, prefix: str) -> list[str]:
        """Paths of the documents directly or indirectly under folder ``prefix``, sorted."""
        raise NotImplementedError

    def delete_doc(self, path: str) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release connections; the store may not be used afterwards."""

    # --- the key that hashes ``Secret`` parameters ----------------------------------------

    def secret_key(self) -> bytes:
        """The key of the keyed hash that puts ``Secret`` parameters into cache keys.

        It belongs to the store, not to a home, so every home sharing the store makes the
        same cache keys and reuses the same results. Made on first use by an exclusive
        write, so two homes racing to make it end up with one key. Never printed.

        :raises StepflowError: the stored key is damaged.
        """
        cached = self.__dict__.get("_secret_key")
        if cached is not None:
            return cached
        key = self.get_doc(KEYED_HASH_DOC)
        if key is None:
            # The loser of a race keeps nothing of its own and reads the winner's key.
            self.put_doc(KEYED_HASH_DOC, self._new_secret_key(), exclusive=True)
            key = self.get_doc(KEYED_HASH_DOC)
        if key is None or len(key) != KEYED_HASH_SIZE:
            size = "missing" if key is None else f"{len(key)} bytes, not {KEYED_HASH_SIZE}"
            raise StepflowError(
                f"the key that hashes secret parameters, document {KEYED_HASH_DOC!r} of "
                f"store {self.uri}, is damaged ({size}); delete it and a new one is made "
                f"(steps that take a Secret then run again once)"
            )
        self.__dict__["_secret_key"] = key
        return key

    def _new_secret_key(self) -> bytes:
        # What secrets.token_bytes does, without importing secrets (hmac, base64, random):
        # this module is on every run's path and the key is made once per store.
        return os.urandom(KEYED_HASH_SIZE)


_TMP_IDS = itertools.count()

#: root folder -> (its inode and time, the object folders known to exist in it)
_KNOWN: dict[str, tuple[tuple[int, int], set[Path]]] = {}
_KNOWN_MAX = 8


def _known_folders(root: Path) -> set[Path]:
    """The object folders this process made or found under ``root``.

    Kept between runs: a first run in a used home otherwise asked for each folder again, a
    ``mkdir`` per object folder per run. Kept only while the root's inode and modification
    time stay the same: an object folder made or removed, or the root deleted and made
    anew (``rm -rf .stepflow``), changes them, and the set starts empty again. A time less
    than a second old proves nothing (the kernel stamps folders with a coarse clock, so two
    changes a few milliseconds apart can leave the same time), so then it starts empty too.
    """
    try:
        stat = os.stat(root)
    except OSError:
        return set()
    signature = (stat.st_ino, stat.st_mtime_ns)
    known = _KNOWN.get(str(root))
    if known is None or known[0] != signature or time.time_ns() - stat.st_mtime_ns < 10**9:
        if len(_KNOWN) >= _KNOWN_MAX:
            _KNOWN.clear()
        known = _KNOWN[str(root)] = (signature, set())
    return known[1]


class LocalDatastore(Datastore):
    """A datastore in a local folder (``<home>/objects`` by default).

    Written by hand, not with attrs: every run opens one, and attrs would compile its
    methods in every fresh process (see ``stepflow/_slotted.py``).
    """

    __slots__ = ("root", "kind", "docs_root", "_folders")

    root: Path
    kind: str
    #: where documents live (default: ``refs`` beside ``root``)
    docs_root: Path
    #: object folders known to exist (no mkdir per write), shared by the instances of one
    #: process on the same root folder (see ``_known_folders``)
    _folders: set[Path]

    def __init__(
        self,
        root: str | os.PathLike[str],
        kind: str = "local",
        docs_root: str | os.PathLike[str] | None = None,
    ) -> None:
        self.root = Path(root)
        self.kind = kind
        self.docs_root = self.root.parent / "refs" if docs_root is None else Path(docs_root)
        self._folders = _known_folders(self.root)

    def __repr__(self) -> str:
        return (
            f"{type(self).__qualname__}(root={self.root!r}, kind={self.kind!r}, "
            f"docs_root={self.docs_root!r})"
        )

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        mine = (self.root, self.kind, self.docs_root)
        return mine == (other.root, other.kind, other.docs_root)  # type: ignore[attr-defined]

    __hash__ = None  # type: ignore[assignment]  # mutable, as it was with attrs.define

    @property
    def uri(self) -> str:  # type: ignore[override]
        return str(self.root)

    def _path(self, name: str) -> Path:
        check_name(name)
        return self.root / name[:2] / name[2:]

    @contextlib.contextmanager
    def writer(self, name: str) -> Iterator[Path]:
        path = self._path(name)
        if path.parent not in self._folders:
            make_private_dirs(path.parent)
            self._folders.add(path.parent)
        # Not home.atomic_write: a serializer writes the file itself (a path, not bytes), and
        # this is every step's hot path. A name no other writer can pick (process, thread,
        # counter), left for the serializer to create: making the file here first, as mkstemp
        # does, would cost an open and a close per object.
        tmp = path.parent / (
            f".tmp-{os.getpid()}-{threading.get_ident()}-{next(_TMP_IDS)}{path.suffix}"
        )
        try:
            yield tmp
            # Serializers create the file with open(): its mode follows the umask (0644).
            make_private_file(tmp)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def local_path(self, name: str) -> Path:
        path = self._path(name)
        if path.is_symlink() or not path.is_file():
            raise ArtifactMissingError(f"object {name} is missing from {self.root}")
        return path

    def exists(self, name: str) -> bool:
        return self._path(name).is_file()

    def delete(self, name: str) -> None:
        self._path(name).unlink(missing_ok=True)

    def size(self, name: str) -> int:
        # Plain strings, not Path objects: a fully cached rerun asks this once per output,
        # and building paths cost more than the stat itself.
        check_name(name)
        return os.stat(f"{self.root}/{name[:2]}/{name[2:]}").st_size

    def names(self) -> Iterator[str]:
        if not self.root.is_dir():
            return
        for folder in sorted(self.root.iterdir()):
            if folder.is_dir() and len(folder.name) == 2:
                for entry in sorted(folder.iterdir()):
                    if not entry.name.startswith(".tmp-"):
                        yield folder.name + entry.name

    def _new_secret_key(self) -> bytes:
        # A home made before the key moved into the store kept it at <home>/secret.key
        # (the folder above the default objects folder): adopted, so that the results of
        # steps taking a Secret are still reused.
        with contextlib.suppress(OSError):
            legacy = (self.root.parent / "secret.key").read_bytes()
            if len(legacy) == KEYED_HASH_SIZE:
                return legacy
        return super()._new_secret_key()

    def sweep(self, older_than: float = 3600.0) -> int:
        """Remove temporary files left by crashed writers; returns how many."""
        removed = 0
        cutoff = time.time() - older_than
        if not self.root.is_dir():
            return 0
        for tmp in self.root.glob("*/.tmp-*"):
            with contextlib.suppress(OSError):
                if tmp.stat().st_mtime < cutoff:
                    tmp.unlink()
                    removed += 1
        return removed

    # --- documents ----------------------------------------------------------------------

    def _doc(self, path: str) -> Path:
        return self.docs_root / check_doc_path(path)

    def put_doc(
        self, path: str, data: bytes, *, exclusive: bool = False, sync: bool = True
    ) -> bool:
        # Documents (index entries, registry versions, the secret key) are few and small, so
        # unlike objects (see the module's docstring) they are fsynced, unless the caller
        # checks them by hash on reading (a code snapshot's files).
        return atomic_write(self._doc(path), data, fsync=sync, exclusive=exclusive)

    def get_doc(self, path: str) -> bytes | None:
        target = self._doc(path)
        if target.is_symlink():
            return None
        try:
            return target.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None

    def list_docs(self, prefix: str) -> list[str]:
        folder = self._doc(prefix.rstrip("/")) if prefix.strip("/") else self.docs_root
        if not folder.is_dir():
            return []
        found = []
        for path in folder.rglob("*"):
            if path.is_file() and not path.name.startswith(".tmp-"):
                found.append(path.relative_to(self.docs_root).as_posix())
        return sorted(found)

    def delete_doc(self, path: str) -> None:
        self._doc(path).unlink(missing_ok=True)
