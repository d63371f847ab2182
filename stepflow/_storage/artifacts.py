"""Save step outputs into a datastore and load them back, verified.

An artifact is addressed by the content hash of its value (``hash_value``): equal values
share one object, and a consumer's cache key depends on what its inputs *are*, not on
which run made them (early cutoff). The digest of the object's bytes is kept beside it
and checked before a load, so a truncated or tampered file is a miss, never a wrong answer.

A step's output under 32 KiB (``INLINE_LIMIT``) written by an ``inline`` serializer is not
a file: its bytes travel in its ``ArtifactRef`` (``data``) and are kept inside the step's
cache-index record, committed in the same transaction (DESIGN.md section 2, as diskcache
keeps small values in its SQLite rows). A file cost a create, a write, a chmod and a rename
per output, more than the index transaction itself. The same digest is checked before the
bytes are loaded, so a damaged record is a miss too. Inline bytes go wherever the reference
goes: into a worker's ``Task`` (SSH, Docker and Dask workers get them with the task, not
from the store) and back in its ``TaskResult``.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, BinaryIO

import attrs

from stepflow._humanize import human_size
from stepflow._slotted import Slotted
from stepflow._storage.datastore import ArtifactMissingError, CorruptedObjectError, Datastore
from stepflow._storage.faults import is_known_fault, storage_error
from stepflow._storage.hashing import hash_bytes, hash_file, hash_value
from stepflow._storage.serializers import Serializer, serialization_error
from stepflow.errors import StoreUnavailableError

__all__ = ["INLINE_LIMIT", "ArtifactIO", "ArtifactRef", "inline_intact"]

#: an output whose serialized bytes are fewer than this lives inside its index record
INLINE_LIMIT = 32 * 1024


@attrs.frozen
class ArtifactRef:
    """A stored output."""

    #: the object's name in the datastore: ``<content hash>.<serializer>``
    name: str
    #: the hash of the value; what consumers' cache keys use
    content_hash: str
    serializer: str
    #: bytes on disk
    size: int
    #: the hash of the object's bytes, checked before loading
    digest: str
    #: the object's bytes themselves, for an output kept inside its cache-index record
    #: instead of a file (``None``: the object is ``name`` in the datastore)
    data: bytes | None = attrs.field(default=None, repr=False)

    @property
    def inline(self) -> bool:
        """Whether the bytes are held here (and in the index record), not in a file."""
        return self.data is not None

    def without_data(self) -> ArtifactRef:
        """The same reference to the object ``name`` in the datastore."""
        return attrs.evolve(self, data=None) if self.data is not None else self


def inline_intact(ref: ArtifactRef) -> bool:
    """Whether an inline reference's bytes still match their digest."""
    return ref.data is not None and hash_bytes(ref.data) == ref.digest


class ArtifactIO(Slotted):
    """Reads and writes artifacts of one datastore with a list of serializers."""

    __slots__ = ("store", "serializers")

    store: Datastore
    serializers: Sequence[Serializer]

    def __init__(self, store: Datastore, serializers: Sequence[Serializer]) -> None:
        self.store = store
        self.serializers = serializers

    def _serializer(self, name: str) -> Serializer:
        for serializer in self.serializers:
            if serializer.name == name:
                return serializer
        raise ArtifactMissingError(
            f"no serializer named {name!r} is installed (the plugin that wrote this object "
            f"is missing); install it or regenerate the step"
        )

    def save(
        self, value: Any, content_hash: str | None = None, *, inline: bool = False
    ) -> ArtifactRef:
        """Store ``value`` (once per content) and return its reference.

        ``inline``: when its serializer is ``inline`` and its bytes come to fewer than
        ``INLINE_LIMIT``, write no file and return them in the reference, for the caller
        to commit inside the index record (only for outputs that go into one).

        :raises SerializationError: no serializer can write the value.
        :raises StorageError: the store cannot be written (a full disk, a read-only home):
            another serializer would fail alike, so none is tried.
        """
        if content_hash is None:
            content_hash = hash_value(value)
        failures: list[tuple[str, BaseException]] = []
        small = inline and _maybe_small(value)
        for serializer in self.serializers:
            if not serializer.can_dump(value):
                continue
            name = f"{content_hash}.{serializer.name}"
            if small and serializer.inline:
                spool = _Spool(INLINE_LIMIT, functools.partial(self.store.writer, name))
                try:
                    return spool.save(value, serializer, content_hash, name)
                except StoreUnavailableError:
                    raise
                except Exception as exc:
                    if is_known_fault(exc):
                        where = [spool.path or f"{self.store.uri}/{name}", spool.size]
                        raise _does_not_fit(value, serializer.name, where, exc) from exc
                    failures.append((serializer.name, exc))
                    continue
            # Written even when an object of that name exists: the existing file may be the
            # damaged copy that made this step run again, and replacing it repairs the store.
            written: list[Any] = [f"{self.store.uri}/{name}", 0]
            try:
                with self.store.writer(name) as tmp:
                    written[0] = tmp
                    try:
                        digest = serializer.dump(value, tmp)
                    finally:
                        with contextlib.suppress(OSError):
                            written[1] = os.stat(tmp).st_size
                    if not isinstance(digest, str):
                        digest = hash_file(tmp, mapped=True)
                    size = os.stat(tmp).st_size
            except StoreUnavailableError:
                raise  # the store, not the value, failed: another serializer would fail alike
            except Exception as exc:
                if is_known_fault(exc):
                    raise _does_not_fit(value, serializer.name, written, exc) from exc
                failures.append((serializer.name, exc))
                continue
            return ArtifactRef(name, content_hash, serializer.name, size, digest)
        raise serialization_error(type(value), failures)

    def load(self, ref: ArtifactRef) -> Any:
        """Load an artifact after checking its bytes.

        :raises ArtifactMissingError: the object is missing (``CorruptedObjectError``: it
            does not match its digest).
        """
        if ref.data is not None:
            if not inline_intact(ref):
                raise CorruptedObjectError(
                    f"output {ref.name} kept inside its cache-index record is corrupted (its "
                    f"bytes do not match the recorded digest)"
                )
            serializer = self._serializer(ref.serializer)
            if not serializer.inline:
                raise ArtifactMissingError(
                    f"serializer {ref.serializer!r} cannot read output {ref.name}, which is "
                    f"kept inside its cache-index record; regenerate the step"
                )
            return serializer.loads(ref.data)
        path = self.store.local_path(ref.name)
        matches = hash_file(path, mapped=True) == ref.digest
        if not matches and self.store.discard_copy(ref.name):
            # Only this machine's copy of a remote object may be damaged: fetch it again
            # before calling the stored object corrupted (which drops it for every home).
            path = self.store.local_path(ref.name)
            matches = hash_file(path, mapped=True) == ref.digest
        if not matches:
            raise CorruptedObjectError(
                f"object {ref.name} in {self.store.uri} is corrupted (its bytes do not match "
                f"the recorded digest)"
            )
        return self._serializer(ref.serializer).load(path)

    def available(self, ref: ArtifactRef) -> bool:
        """A cheap check (no hashing) that the object is there with the recorded size."""
        if ref.data is not None:
            return len(ref.data) == ref.size
        with contextlib.suppress(OSError, ArtifactMissingError):
            return self.store.size(ref.name) == ref.size
        return False

    def materialize(self, ref: ArtifactRef) -> ArtifactRef:
        """``ref`` as an object in the datastore: an output kept inline is written out as
        the file it would have been (for what must outlive its cache entry, such as a
        registered data set). A reference to a file is returned as it is.

        :raises CorruptedObjectError: the inline bytes do not match their digest.
        """
        if ref.data is None:
            return ref
        if not inline_intact(ref):
            raise CorruptedObjectError(
                f"output {ref.name} kept inside its cache-index record is corrupted (its "
                f"bytes do not match the recorded digest)"
            )
        plain = ref.without_data()
        if not self.available(plain):
            with self.store.writer(ref.name) as tmp:
                with open(tmp, "wb") as fh:
                    fh.write(ref.data)
        return plain


class _Spool:
    """The file object an ``inline`` serializer writes through: what it writes stays in
    memory while it is fewer than ``limit`` bytes, then moves to a temporary file of the
    store (``writer``) and goes on there, so a large value is written once, never held
    whole. Hashes what passes, as ``HashingWriter`` does."""

    def __init__(self, limit: int, writer: Callable[[], AbstractContextManager[Path]]) -> None:
        import xxhash

        self._limit = limit
        self._writer = writer
        self._chunks: list[bytes] = []
        self._state = xxhash.xxh3_128()
        self._file: BinaryIO | None = None
        #: closes the file, then publishes it (or removes it, on an error)
        self._stack = contextlib.ExitStack()
        #: bytes written so far
        self.size = 0
        #: the temporary file, once the bytes moved there
        self.path: Path | None = None

    def write(self, data: Any) -> int:
        view = memoryview(data)
        if not view.c_contiguous:
            view = memoryview(view.tobytes())
        view = view.cast("B")
        self._state.update(view)
        self.size += len(view)
        if self._file is None:
            if self.size < self._limit:
                self._chunks.append(bytes(view))
                return len(view)
            self._spill()
            assert self._file is not None
        self._file.write(view)
        return len(view)

    def _spill(self) -> None:
        self.path = self._stack.enter_context(self._writer())
        self._file = self._stack.enter_context(open(self.path, "wb"))
        for chunk in self._chunks:
            self._file.write(chunk)
        self._chunks = []

    def save(self, value: Any, serializer: Serializer, content_hash: str, name: str) -> ArtifactRef:
        """Write ``value`` with ``serializer``; its reference, inline when it stayed small."""
        with self._stack:
            serializer.write(value, self)
            digest = self._state.hexdigest()
            if self._file is None:
                data = b"".join(self._chunks)
                return ArtifactRef(name, content_hash, serializer.name, len(data), digest, data)
            # Leaving the stack closes the file, then publishes it under ``name``.
        return ArtifactRef(name, content_hash, serializer.name, self.size, digest)


def _maybe_small(value: Any) -> bool:
    """Whether ``value`` may serialize to fewer than ``INLINE_LIMIT`` bytes (``False``
    only when its size is cheap to know and too large: then its file is written directly,
    by the serializer's own, faster path)."""
    if isinstance(value, str):
        return len(value) < INLINE_LIMIT
    nbytes = _value_size(value)
    return nbytes is None or nbytes < INLINE_LIMIT


def _does_not_fit(value: Any, serializer: str, written: list[Any], exc: BaseException) -> Exception:
    """The error for an object the store had no room (or no right) to write: it names the
    folder it was going to, and how large the value is."""
    tmp, done = written
    cls = type(value)
    nbytes = _value_size(value)
    size = f"{human_size(nbytes)} in memory" if nbytes is not None else "size unknown"
    return storage_error(
        exc,
        path=tmp.parent if isinstance(tmp, Path) else tmp,
        what=f"a {cls.__module__}.{cls.__qualname__} value ({size}, serializer {serializer!r})",
        detail=f"{human_size(done)} of it had been written",
    )


def _value_size(value: Any) -> int | None:
    """The value's size in bytes where it is cheap to know (bytes, arrays), else ``None``."""
    if isinstance(value, memoryview):
        return value.nbytes
    if isinstance(value, (bytes, bytearray)):
        return len(value)
    nbytes = getattr(value, "nbytes", None)
    return nbytes if isinstance(nbytes, int) else None
