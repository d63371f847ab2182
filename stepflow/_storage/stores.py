"""Open the datastore a configuration (or a task) names.

``None`` or a plain path is the ``local`` kind (a folder store), a URL the kind registered for
its scheme; every kind comes from the ``stepflow_datastore_types`` hook (``local`` and
``s3://`` from the built-in storage plugin). Workers call the same function with what the
``Task`` carries.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stepflow._storage.datastore import Datastore, LocalDatastore
from stepflow._storage.home import check_home
from stepflow.errors import PluginError, UsageError

if TYPE_CHECKING:
    import pluggy

__all__ = ["open_datastore", "open_local_datastore", "store_kind"]


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
    pm: pluggy.PluginManager | None = None,
) -> Datastore:
    """The datastore at ``uri`` (``None``: ``<home>/objects``).

    :raises UsageError: no installed plugin handles the URL's scheme.
    :raises UnsafeHomeError: another user could change the home (or the local store's folder).
    """
    # Once per process and folder: results stored there are unpickled.
    check_home(home)
    kind = store_kind(uri)
    if kind == "local" and pm is None:
        # Every command and worker opens the local store; making a plugin manager (and
        # scanning installed plugins) only for that would cost each of them milliseconds.
        return open_local_datastore(uri, home=home, options=options or {})
    if pm is None:
        from stepflow._pluginmanager import make_plugin_manager

        pm = make_plugin_manager(())
    from stepflow._pluginmanager import datastore_types

    factories = datastore_types(pm)
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


def open_local_datastore(
    uri: str | None, *, home: Path, options: Mapping[str, Any]
) -> LocalDatastore:
    """The folder store at ``uri`` (a path), or ``<home>/objects``: the ``local`` kind the
    built-in storage plugin registers."""
    root = Path(uri) if uri else home / "objects"
    if uri:
        check_home(root)
    return LocalDatastore(root)
