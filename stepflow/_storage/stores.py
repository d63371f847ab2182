"""Open the datastore a configuration (or a task) names.

``None`` or a plain path is the ``local`` kind (a folder store), a URL the kind registered for
its scheme. Every kind, ``local`` included, is a factory a plugin registers through the
``stepflow_datastore_types`` hook (``local`` and ``s3://`` come from the built-in storage
plugin); storage sits below the plugins, so the caller hands the factories in
(``stepflow._pluginmanager.datastore_kinds``). Workers call the same function with what the
``Task`` carries.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from stepflow._storage.datastore import Datastore
from stepflow._storage.home import check_home
from stepflow.errors import PluginError, UsageError

__all__ = ["DatastoreKinds", "open_datastore", "store_kind"]

#: ``kinds(kind)``: the registered datastore factories, ``{kind: (plugin, factory)}``, among
#: which the one for ``kind`` (the caller may look further for a kind it lacks)
DatastoreKinds = Callable[[str], Mapping[str, tuple[str, Any]]]


def store_kind(uri: str | None) -> str:
    """``"local"`` for ``None`` or a path, else the URL's scheme (``"s3"``)."""
    if not uri or "://" not in uri:
        return "local"
    return uri.split("://", 1)[0].lower()


def open_datastore(
    uri: str | None,
    *,
    home: Path,
    options: Mapping[str, Any] | None = None,
    kinds: DatastoreKinds,
) -> Datastore:
    """The datastore at ``uri`` (``None``: ``<home>/objects``), made by its kind's factory.

    :raises UsageError: no installed plugin handles the URL's scheme.
    :raises UnsafeHomeError: another user could change the home (or the local store's folder).
    """
    # Once per process and folder: results stored there are unpickled.
    check_home(home)
    kind = store_kind(uri)
    factories = kinds(kind)
    if kind not in factories:
        known = ", ".join(sorted(factories)) or "none"
        raise UsageError(
            f"no datastore plugin handles {kind}:// URLs (store = {uri!r}); installed kinds: "
            f"{known}"
        )
    plugin, factory = factories[kind]
    store = factory(uri, home=home, options=dict(options or {}))
    if not isinstance(store, Datastore):
        raise PluginError(
            f"plugin {plugin!r}: the {kind!r} factory of stepflow_datastore_types() returned "
            f"{type(store).__name__}, not a stepflow Datastore",
            plugin=plugin,
        )
    return store
