"""The one plugin manager: hook specs, built-in plugins, entry points and ``-p`` modules."""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Iterable
from typing import Any

import pluggy

from stepflow import hookspecs
from stepflow.errors import PluginError

__all__ = ["BUILTIN_PLUGINS", "make_plugin_manager", "serializers_of"]

#: loaded first, through the same hooks third-party plugins use
BUILTIN_PLUGINS = (
    "stepflow._storage.builtin",
    "stepflow._execution.local",
    "stepflow._storage.registry_pins",
)


_ENTRY_POINTS: tuple[tuple[str, ...], list[tuple[Any, Any]]] | None = None


def _stepflow_entry_points() -> list[tuple[Any, Any]]:
    """``(distribution, entry point)`` pairs of the ``stepflow`` group, scanned once.

    Reading every installed distribution's metadata costs milliseconds, and ``Pipeline.run``
    builds a plugin manager each time: a process scans once per import path (a changed
    ``sys.path`` can bring new distributions, so it scans again).
    """
    global _ENTRY_POINTS
    path = tuple(sys.path)
    if _ENTRY_POINTS is None or _ENTRY_POINTS[0] != path:
        import importlib.metadata

        found = []
        for dist in list(importlib.metadata.distributions()):
            for ep in dist.entry_points:
                if ep.group == "stepflow":
                    found.append((dist, ep))
        _ENTRY_POINTS = (path, found)
    return _ENTRY_POINTS[1]


class _DistInfo:
    """What ``stepflow plugins`` shows of a plugin's distribution (pluggy's ``DistFacade``)."""

    def __init__(self, dist: Any) -> None:
        self.project_name = dist.metadata["name"]
        self.version = dist.version


class _PluginManager(pluggy.PluginManager):
    """Like pytest's: an undecorated ``stepflow_*`` function is a hook implementation too, so
    a misspelled hook name fails at start-up instead of being silently ignored."""

    def __init__(self, project_name: str) -> None:
        super().__init__(project_name)
        self._dists: list[tuple[object, _DistInfo]] = []

    def load_stepflow_entrypoints(self) -> None:
        for dist, ep in _stepflow_entry_points():
            if self.get_plugin(ep.name) is not None or self.is_blocked(ep.name):
                continue
            plugin = ep.load()
            _register(self, plugin, ep.name)
            self._dists.append((plugin, _DistInfo(dist)))

    def list_plugin_distinfo(self) -> list[tuple[object, Any]]:  # type: ignore[override]
        return list(self._dists)

    def parse_hookimpl_opts(self, plugin: object, name: str) -> Any:
        opts = super().parse_hookimpl_opts(plugin, name)
        if opts is None and name.startswith("stepflow_"):
            method = getattr(plugin, name, None)
            if inspect.isroutine(method):
                opts = {}
        return opts


def _register(pm: pluggy.PluginManager, plugin: object, name: str) -> None:
    try:
        pm.register(plugin, name=name)
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin {name!r}: {exc}", plugin=name) from exc


def make_plugin_manager(
    plugins: Iterable[str] = (), *, entrypoints: bool = True, builtins: bool = True
) -> pluggy.PluginManager:
    """Create the plugin manager.

    :param plugins: module names (``-p`` and ``[tool.stepflow] plugins``); ``no:NAME``
        blocks a plugin, as in pytest.
    :param entrypoints: load the ``stepflow`` entry-point group.
    """
    pm = _PluginManager("stepflow")
    pm.add_hookspecs(hookspecs)
    wanted = []
    for name in plugins:
        name = name.strip()
        if name.startswith("no:"):
            pm.set_blocked(name[3:])
        elif name:
            wanted.append(name)
    if builtins:
        for name in BUILTIN_PLUGINS:
            if not pm.is_blocked(name):
                _register(pm, importlib.import_module(name), name)
    if entrypoints:
        try:
            pm.load_stepflow_entrypoints()
        except PluginError:
            raise
        except Exception as exc:
            raise PluginError(
                f"a plugin of the 'stepflow' entry-point group failed to load: "
                f"{type(exc).__name__}: {exc}; uninstall it or block it with -p no:NAME"
            ) from exc
    for name in wanted:
        if pm.is_blocked(name) or pm.has_plugin(name):
            continue
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            raise PluginError(
                f"plugin {name!r} could not be imported: {exc}; check the module name given "
                f"to -p or in [tool.stepflow] plugins",
                plugin=name,
            ) from exc
        _register(pm, module, name)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"{exc}", plugin=getattr(exc.plugin, "__name__", None)) from exc
    return pm


def serializers_of(pm: pluggy.PluginManager) -> list[Any]:
    """Every serializer the plugins provide, in priority order (built-ins last)."""
    found: list[Any] = []
    for group in pm.hook.stepflow_serializer_types():
        found.extend(group or ())
    return found
