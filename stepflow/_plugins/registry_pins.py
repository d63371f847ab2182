"""Plugin: ``stepflow cache prune`` keeps every object a registered data set or model needs.

A module of its own, so that loading the built-in plugins does not import the registry: it is
imported only when the cache is pruned.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stepflow.hookspecs import hookimpl

if TYPE_CHECKING:
    from stepflow._config import Config


@hookimpl
def stepflow_cache_pinned(config: Config) -> set[str]:
    """The object names of every version of every registered data set and model."""
    from stepflow._execution.store import open_configured_store
    from stepflow._storage.registry import Registry

    store = open_configured_store(config)
    try:
        return Registry(store).pinned()
    finally:
        store.close()
