"""Open the datastore a configuration (or a task) names.

``None`` or a plain path is the local folder store; a URL is opened by the datastore kind
registered for its scheme through the ``stepflow_datastore_types`` hook (``s3://`` by the
built-in fsspec store). Workers call the same function with what the ``Task`` carries.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stepflow._storage.datastore import Datastore, LocalDatastore
from stepflow._storage.home import check_home
from stepflow.errors import UsageError

if TYPE_CHECKING:
    import pluggy

__all__ = ["open_datastore", "store_kind"]


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
    if kind == "local":
        root = Path(uri) if uri else home / "objects"
        if uri:
            check_home(root)
        return LocalDatastore(root)
    factories: dict[str, Any] = {}
    if pm is None:
        from stepflow._pluginmanager import make_plugin_manager

        pm = make_plugin_manager(())
    for found in pm.hook.stepflow_datastore_types():
        factories.update(found or {})
    factory = factories.get(kind)
    if factory is None:
        known = ", ".join(sorted({"local", *factories})) or "local"
        raise UsageError(
            f"no datastore plugin handles {kind}:// URLs (store = {uri!r}); installed kinds: "
            f"{known}"
        )
    return factory(uri, home=home, options=dict(options or {}))
