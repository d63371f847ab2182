"""The one plugin manager: hook specs, built-in plugins, entry points and ``-p`` modules."""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from collections.abc import Callable, Iterable
from typing import Any

import pluggy

from stepflow import hookspecs
from stepflow.errors import PluginError

__all__ = ["BUILTIN_PLUGINS", "Keep", "make_plugin_manager", "serializers_of"]

#: loaded first, through the same hooks third-party plugins use
BUILTIN_PLUGINS = (
    "stepflow._plugins.storage",
    "stepflow._plugins.backends",
    "stepflow._plugins.registry_pins",
)


#: ``keep(kind, compute)``: ``compute()``, or what it returned in an earlier process with the
#: same import path (``stepflow._storage.kept.kept_in_home`` makes one for a home)
Keep = Callable[[str, Callable[[], Any]], Any]

#: (distribution, its version, entry-point name, entry-point value)
_EntryPoint = tuple[str, str, str, str]

_ENTRY_POINTS: tuple[tuple[str, ...], list[_EntryPoint]] | None = None


def _stepflow_entry_points(keep: Keep | None = None) -> list[_EntryPoint]:
    """The entry points of the ``stepflow`` group, scanned once per process and import path.

    Reading every installed distribution's metadata costs a fresh process 10-20 ms (with the
    import of ``importlib.metadata``). With ``keep`` (files in ``<home>/fingerprints``) the
    scan is kept for later processes until a ``sys.path`` folder changes, as installing or
    removing a distribution does.
    """
    global _ENTRY_POINTS
    path = tuple(sys.path)
    if _ENTRY_POINTS is None or _ENTRY_POINTS[0] != path:
        found = None
        if keep is not None:
            found = _valid(keep("entry-points", _scan_entry_points))
        if found is None:
            found = _scan_entry_points()
        _ENTRY_POINTS = (path, found)
    return _ENTRY_POINTS[1]


def _scan_entry_points() -> list[_EntryPoint]:
    import importlib.metadata

    found = []
    for dist in list(importlib.metadata.distributions()):
        for ep in dist.entry_points:
            if ep.group == "stepflow":
                found.append((dist.metadata["name"], dist.version, ep.name, ep.value))
    return found


def _valid(data: Any) -> list[_EntryPoint] | None:
    if not isinstance(data, list):
        return None
    if not all(
        isinstance(e, list | tuple) and len(e) == 4 and all(isinstance(x, str) for x in e)
        for e in data
    ):
        return None
    return [tuple(e) for e in data]  # type: ignore[misc]


_ENTRY_POINT_VALUE = re.compile(r"(?P<module>[\w.]+)\s*(:\s*(?P<attr>[\w.]+)\s*)?(\[.*\])?\s*$")


def _load_entry_point(value: str) -> Any:
    """What ``importlib.metadata.EntryPoint.load`` does, without importing that module."""
    match = _ENTRY_POINT_VALUE.match(value)
    if match is None:
        raise ValueError(f"malformed entry point value {value!r}")
    found = importlib.import_module(match["module"])
    for attr in (match["attr"] or "").split("."):
        if attr:
            found = getattr(found, attr)
    return found


class _DistInfo:
    """What ``stepflow plugins`` shows of a plugin's distribution (pluggy's ``DistFacade``)."""

    def __init__(self, name: str, version: str) -> None:
        self.project_name = name
        self.version = version


class _PluginManager(pluggy.PluginManager):
    """Like pytest's: an undecorated ``stepflow_*`` function is a hook implementation too, so
    a misspelled hook name fails at start-up instead of being silently ignored."""

    def __init__(self, project_name: str) -> None:
        super().__init__(project_name)
        self._dists: list[tuple[object, _DistInfo]] = []

    def load_stepflow_entrypoints(self, keep: Keep | None = None) -> None:
        for dist, version, name, value in _stepflow_entry_points(keep):
            if self.get_plugin(name) is not None or self.is_blocked(name):
                continue
            plugin = _load_entry_point(value)
            _register(self, plugin, name)
            self._dists.append((plugin, _DistInfo(dist, version)))

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
    plugins: Iterable[str] = (),
    *,
    entrypoints: bool = True,
    builtins: bool = True,
    keep: Keep | None = None,
) -> pluggy.PluginManager:
    """Create the plugin manager.

    :param plugins: module names (``-p`` and ``[tool.stepflow] plugins``); ``no:NAME``
        blocks a plugin, as in pytest.
    :param entrypoints: load the ``stepflow`` entry-point group.
    :param keep: where the scan of entry points is kept between processes (see ``Keep``);
        the plugin manager sits below storage, so the home's files are handed in.
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
            pm.load_stepflow_entrypoints(keep)
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
