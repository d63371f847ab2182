"""Which datastore ``stepflow.datasets`` and ``stepflow.models`` work on.

Inside a running step: the run's own store, serializers and home, and the run and step are
recorded as the source of what is registered. Anywhere else (a notebook, a script, the
command line): the store of the configuration found from the working folder, or of the
``home``/``config`` given.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from stepflow._execution.context import current

if TYPE_CHECKING:
    from stepflow._config import Config
    from stepflow._storage.datastore import Datastore

__all__ = ["Session", "registry_session"]


@attrs.frozen
class Session:
    store: Datastore
    serializers: Sequence[Any]
    home: Path
    #: what registering records as the source: ``{"kind": "run", "run_id": ...}`` in a step
    source: dict[str, Any]


@contextlib.contextmanager
def registry_session(
    home: str | os.PathLike[str] | None = None, config: Config | None = None
) -> Iterator[Session]:
    """The datastore to register in and read from; see the module docstring."""
    ctx = current()
    if home is None and config is None and ctx is not None and ctx.store is not None:
        source = {"kind": "run", "run_id": ctx.run_id, "pipeline": ctx.pipeline, "step": ctx.step}
        yield Session(
            ctx.store,
            tuple(ctx.serializers),
            Path(ctx.home) if ctx.home is not None else Path.cwd() / ".stepflow",
            source,
        )
        return
    from stepflow._config import config_or_load
    from stepflow._execution.store import open_configured_store
    from stepflow._pluginmanager import make_plugin_manager, serializers_of
    from stepflow._storage.kept import kept_in_home

    config = config_or_load(home, config)
    pm = make_plugin_manager(config.plugins, keep=kept_in_home(config.home))
    store = open_configured_store(config, pm)
    try:
        yield Session(store, tuple(serializers_of(pm)), config.home, {"kind": "api"})
    finally:
        store.close()
