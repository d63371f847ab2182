"""The one plugin manager: hook specs, built-in plugins, entry points and ``-p`` modules."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterable
from typing import Any

import pluggy

from stepflow import hookspecs
from stepflow.errors import PluginError

__all__ = ["BUILTIN_PLUGINS", "make_plugin_manager"]

#: loaded first, through the same hooks third-party plugins use
BUILTIN_PLUGINS = ("stepflow._storage.builtin", "stepflow._execution.local")


class _PluginManager(pluggy.PluginManager):
    """Like pytest's: an undecorated ``stepflow_*`` function is a hook implementation too, so
    a misspelled hook name fails at start-up instead of being silently ignored."""

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
            pm.load_setuptools_entrypoints("stepflow")
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
