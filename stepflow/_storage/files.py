"""Plain files in the datastore: logged artifacts and file or folder data sets.

A file is stored as it is (no serializer), named by the hash of its bytes with the suffix
``.file``; ``fetch_file`` returns a verified local copy.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from stepflow._storage.artifacts import ArtifactRef
from stepflow._storage.datastore import ArtifactMissingError, Datastore
from stepflow._storage.hashing import hash_file

__all__ = ["FILE_SERIALIZER", "fetch_file", "store_file"]

#: the ``serializer`` of references to plain files
FILE_SERIALIZER = "file"


def store_file(store: Datastore, path: Path) -> ArtifactRef:
    """Copy ``path`` into ``store`` (once per content) and return its reference."""
    digest = hash_file(path)
    name = f"{digest}.{FILE_SERIALIZER}"
    size = path.stat().st_size
    if not (store.exists(name) and store.size(name) == size):
        with store.writer(name) as tmp:
            shutil.copyfile(path, tmp)
            if hash_file(tmp) != digest:
                raise OSError(f"{path} changed while it was being stored; try again")
    return ArtifactRef(name, digest, FILE_SERIALIZER, size, digest)


def fetch_file(store: Datastore, ref: ArtifactRef) -> Path:
    """A local, verified copy of a stored file (do not modify it: it may be the store's own).

    :raises ArtifactMissingError: the object is missing or its bytes do not match.
    """
    path = store.local_path(ref.name)
    if hash_file(path) != ref.digest:
        raise ArtifactMissingError(
            f"object {ref.name} in {store.uri} is corrupted (its bytes do not match the "
            f"recorded digest)"
        )
    return path
