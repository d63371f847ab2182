"""Open the datastore a configuration names, with the kinds its plugins register.

Storage sits below the plugins and is handed its kinds (``open_datastore(kinds=...)``); this
is where a run, a registry session, publishing and the CLI's commands collect them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stepflow._storage.stores import open_datastore

if TYPE_CHECKING:
    import pluggy

    from stepflow._config import Config
    from stepflow._storage.datastore import Datastore

__all__ = ["open_configured_store"]


def open_configured_store(config: Config, pm: pluggy.PluginManager | None = None) -> Datastore:
    """The datastore ``config`` names (its ``store`` and ``store_options``, in its home).

    Its kinds are those of ``pm``'s plugins when given; without, the built-in ones, then
    those of the plugins ``config`` names (what ``datastore_kinds`` says).
    """
    from stepflow._pluginmanager import datastore_kinds
    from stepflow._storage.kept import kept_in_home

    if pm is not None:
        kinds = datastore_kinds(pm)
    else:
        kinds = datastore_kinds(plugins=config.plugins, keep=kept_in_home(config.home))
    return open_datastore(config.store, home=config.home, options=config.store_options, kinds=kinds)
