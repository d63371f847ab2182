"""Save step outputs into a datastore and load them back, verified.

An artifact is addressed by the content hash of its value (``hash_value``): equal values
share one object, and a consumer's cache key depends on what its inputs *are*, not on
which run made them (early cutoff). The digest of the object's bytes is kept beside it
and checked before a load, so a truncated or tampered file is a miss, never a wrong answer.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from stepflow._humanize import human_size
from stepflow._storage.datastore import ArtifactMissingError, CorruptedObjectError, Datastore
from stepflow._storage.faults import is_known_fault, storage_error
from stepflow._storage.hashing import hash_file, hash_value
from stepflow._storage.serializers import Serializer, serialization_error
from stepflow.errors import StoreUnavailableError

__all__ = ["ArtifactIO", "ArtifactRef"]


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


@attrs.define
class ArtifactIO:
    """Reads and writes artifacts of one datastore with a list of serializers."""

    store: Datastore
    serializers: Sequence[Serializer]

    def _serializer(self, name: str) -> Serializer:
        for serializer in self.serializers:
            if serializer.name == name:
                return serializer
        raise ArtifactMissingError(
            f"no serializer named {name!r} is installed (the plugin that wrote this object "
            f"is missing); install it or regenerate the step"
        )

    def save(self, value: Any, content_hash: str | None = None) -> ArtifactRef:
        """Store ``value`` (once per content) and return its reference.

        :raises SerializationError: no serializer can write the value.
        :raises StorageError: the store cannot be written (a full disk, a read-only home):
            another serializer would fail alike, so none is tried.
        """
        if content_hash is None:
            content_hash = hash_value(value)
        failures: list[tuple[str, BaseException]] = []
        for serializer in self.serializers:
            if not serializer.can_dump(value):
                continue
            name = f"{content_hash}.{serializer.name}"
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
        with contextlib.suppress(OSError, ArtifactMissingError):
            return self.store.size(ref.name) == ref.size
        return False


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
