"""Content-addressed object storage for step outputs.

Objects are stored under the hex digest of their bytes, so identical outputs are stored once.
Every write goes to a temporary name in the same folder, is flushed and fsynced, then renamed
into place: a reader never sees half an object, and a crash leaves only a temporary file.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import attrs

from stepflow.errors import StepflowError

__all__ = ["ArtifactMissingError", "Datastore", "LocalDatastore", "content_hash"]


class ArtifactMissingError(StepflowError):
    """An object the index points to is missing or does not match its hash."""


def content_hash(data: bytes | memoryview) -> str:
    """The key of ``data`` in a datastore."""
    return hashlib.blake2b(data, digest_size=20).hexdigest()


class Datastore:
    """Base class for datastores: a flat, content-addressed map from key to bytes.

    Plugins subclass it and return instances from ``stepflow_datastore_types``.
    """

    #: how a worker process finds the same store again, e.g. a folder path or a URL
    uri: str = ""

    def put(self, data: bytes) -> str:
        """Store ``data`` and return its key; storing the same bytes twice is cheap."""
        raise NotImplementedError

    def get(self, key: str) -> bytes:
        """Return the bytes stored under ``key``, verified against the key.

        :raises ArtifactMissingError: the object is missing or corrupted.
        """
        raise NotImplementedError

    def exists(self, key: str) -> bool:
        raise NotImplementedError


@attrs.define
class LocalDatastore(Datastore):
    """A datastore in a local folder (``<home>/objects`` by default)."""

    root: Path = attrs.field(converter=Path)

    @property
    def uri(self) -> str:  # type: ignore[override]
        return str(self.root)

    def _path(self, key: str) -> Path:
        if len(key) < 3 or not all(c in "0123456789abcdef" for c in key):
            # Keys come from our own hash; anything else could name a path outside the store.
            raise ArtifactMissingError(f"invalid object key {key!r}")
        return self.root / key[:2] / key[2:]

    def put(self, data: bytes) -> str:
        key = content_hash(data)
        path = self._path(key)
        if path.exists():
            return key
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return key

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ArtifactMissingError(f"object {key} is missing from {self.root}") from None
        if content_hash(data) != key:
            raise ArtifactMissingError(f"object {key} in {self.root} is corrupted")
        return data

    def exists(self, key: str) -> bool:
        return self._path(key).exists()
