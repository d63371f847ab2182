"""Registers the built-in serializers and datastores (the local folder store and the
object stores) through the same hooks plugins use."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from stepflow._storage.datastore import Datastore, LocalDatastore
from stepflow._storage.home import check_home
from stepflow._storage.serializers import Serializer, builtin_serializers
from stepflow.hookspecs import hookimpl


@hookimpl
def stepflow_serializer_types() -> list[Serializer]:
    return builtin_serializers()


@hookimpl
def stepflow_datastore_types() -> Mapping[str, Any]:
    # One fsspec-based store for every object-store scheme; only s3:// is tested.
    kinds: dict[str, Any] = {"local": open_local_datastore}
    kinds.update((scheme, _open_object_store) for scheme in ("s3", "gs", "gcs", "az", "abfs"))
    return kinds


def _open_object_store(uri: str, *, home: Path, options: Mapping[str, Any]) -> Datastore:
    # Imported on use: every run registers these schemes, few runs use one.
    from stepflow._storage.objectstore import open_object_store

    return open_object_store(uri, home=home, options=options)


def open_local_datastore(
    uri: str | None, *, home: Path, options: Mapping[str, Any]
) -> LocalDatastore:
    """The ``local`` kind: the folder store at ``uri`` (a path), or ``<home>/objects``."""
    root = Path(uri) if uri else home / "objects"
    if uri:
        check_home(root)
    return LocalDatastore(root)
