"""The one plugin manager: hook specs, built-in plugins, entry points and ``-p`` modules."""

from __future__ import annotations

import importlib
import inspect
import re
import sys
import types
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import pluggy

from stepflow import hookspecs
from stepflow.errors import PluginError

__all__ = [
    "BUILTIN_PLUGINS",
    "Keep",
    "backend_types",
    "datastore_kinds",
    "datastore_types",
    "hasher_plugin_modules",
    "hashers_of",
    "implementations",
    "install_hasher_plugins",
    "make_plugin_manager",
    "plugin_hashers",
    "serializers_of",
]

#: loaded first, through the same hooks third-party plugins use
BUILTIN_PLUGINS = (
    "stepflow._plugins.storage",
    "stepflow._plugins.backends",
    "stepflow._plugins.registry_pins",
    "stepflow._plugins.terminal",
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
        if _not_a_function(plugin, name):
            return None
        opts = super().parse_hookimpl_opts(plugin, name)
        if opts is None and name.startswith("stepflow_"):
            method = getattr(plugin, name, None)
            if inspect.isroutine(method):
                opts = {}
        return opts

    def parse_hookspec_opts(self, module_or_class: Any, name: str) -> Any:
        if _not_a_function(module_or_class, name):
            return None
        return super().parse_hookspec_opts(module_or_class, name)


def _not_a_function(namespace: object, name: str) -> bool:
    """Whether ``name`` of a module is plainly no hook: not a function in its namespace.

    pluggy looks up every name of a plugin (its imports too) with ``inspect.getattr_static``,
    which cost more than the rest of making the plugin manager; a module's own dict says
    the same for the names that are not functions. Anything else is left to pluggy.
    """
    if not isinstance(namespace, types.ModuleType):
        return False
    return not inspect.isroutine(namespace.__dict__.get(name))


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
    _install_hashers(hashers_of(pm))
    return pm


# -------------------------------------------------------------------------------------------
# What the registration hooks return: checked, and one owner per name
# -------------------------------------------------------------------------------------------


def _answers(pm: pluggy.PluginManager, hook: str, **kwargs: Any) -> Iterator[tuple[str, Any]]:
    """(plugin name, answer) of each implementation of ``hook``, in pluggy's call order.

    The implementations are called one by one, not through ``pm.hook``, because a hook call
    returns bare answers and the errors below must name the plugin that gave a wrong one.
    Registration hooks take no part in hook wrappers; a wrapper around one is not called.
    """
    for plugin, function in implementations(pm, hook):
        answer = function(**kwargs)
        if answer is not None:
            yield plugin, answer


def _mapping_answers(
    pm: pluggy.PluginManager, hook: str, expected: str
) -> Iterator[tuple[str, Mapping[Any, Any]]]:
    """``_answers`` of a hook whose answers are dicts; ``expected`` describes the dict.

    :raises PluginError: an answer is not a mapping.
    """
    for plugin, mapping in _answers(pm, hook):
        if not isinstance(mapping, Mapping):
            raise PluginError(
                f"plugin {plugin!r}: {hook}() returned {type(mapping).__name__}, not a dict "
                f"{expected}",
                plugin=plugin,
            )
        yield plugin, mapping


def implementations(pm: pluggy.PluginManager, hook: str) -> list[tuple[str, Callable[..., Any]]]:
    """(plugin name, ``fn(**hook_kwargs)``) of each implementation of ``hook`` (not the
    wrappers), in the order a hook call would call them: to tell whose answer is whose."""
    found = []
    for impl in reversed(getattr(pm.hook, hook).get_hookimpls()):
        if impl.hookwrapper or getattr(impl, "wrapper", False):
            continue

        def call(*, _impl: Any = impl, **kwargs: Any) -> Any:
            return _impl.function(*(kwargs[name] for name in _impl.argnames))

        found.append((impl.plugin_name, call))
    return found


def _registered(
    pm: pluggy.PluginManager, hook: str, what: str, problem: Callable[[Any], str | None]
) -> dict[str, tuple[str, Any]]:
    """``{name: (plugin, value)}`` from a hook that returns ``{name: value}`` mappings.

    :raises PluginError: an answer is not a mapping, a value fails ``problem`` (which says
        what is wrong with it, or ``None``), or two plugins give the same name.
    """
    found: dict[str, tuple[str, Any]] = {}
    for plugin, mapping in _mapping_answers(pm, hook, f"of {what}s by name"):
        for name, value in mapping.items():
            if not isinstance(name, str) or not name:
                raise PluginError(
                    f"plugin {plugin!r}: {hook}() gave a {what} named {name!r}; names are "
                    f"non-empty strings",
                    plugin=plugin,
                )
            wrong = problem(value)
            if wrong is not None:
                raise PluginError(
                    f"plugin {plugin!r}: {hook}() gave {what} {name!r} = {value!r}, which {wrong}",
                    plugin=plugin,
                )
            _one_owner(found, name, plugin, what)
            found[name] = (plugin, value)
    return found


def _one_owner(found: Mapping[Any, tuple[str, Any]], name: Any, plugin: str, what: str) -> None:
    if name in found and found[name][0] != plugin:
        shown = name.__qualname__ if isinstance(name, type) else name
        raise PluginError(
            f"two plugins register the {what} {shown!r}: {found[name][0]!r} and {plugin!r}; "
            f'uninstall one, or block it with -p no:NAME (or plugins = ["no:NAME"] in '
            f"[tool.stepflow])",
            plugin=plugin,
        )


def _loaded_class(module: str, name: str) -> type | None:
    """A class of a layer above, if its module is imported; not importing it is exact: an
    instance or subclass of a class exists only once the class's module has run."""
    found = getattr(sys.modules.get(module), name, None)
    return found if isinstance(found, type) else None


def _backend_problem(value: Any) -> str | None:
    backend = _loaded_class("stepflow._execution.backend", "Backend")
    if isinstance(value, type):
        if backend is None or not issubclass(value, backend):
            return "is not a stepflow.Backend subclass"
        return None
    if not callable(value):
        return "is neither a stepflow.Backend subclass nor a factory(name, options, context)"
    return None


def backend_types(pm: pluggy.PluginManager) -> dict[str, Any]:
    """``{kind: Backend subclass or factory}`` from every plugin's ``stepflow_backend_types``.

    :raises PluginError: two plugins give the same kind, or a value is not a backend.
    """
    found = _registered(pm, "stepflow_backend_types", "backend kind", _backend_problem)
    return {kind: factory for kind, (_, factory) in found.items()}


def _factory_problem(value: Any) -> str | None:
    return None if callable(value) else "is not callable: give a factory(uri, *, home, options)"


def datastore_types(pm: pluggy.PluginManager) -> dict[str, tuple[str, Any]]:
    """``{kind: (plugin, factory)}`` from every plugin's ``stepflow_datastore_types``.

    :raises PluginError: two plugins give the same kind or URL scheme, or a factory is not
        callable.
    """
    return _registered(pm, "stepflow_datastore_types", "datastore kind", _factory_problem)


#: the built-in storage plugin's datastore kinds, ``{kind: (plugin, factory)}``, once loaded
_BUILTIN_STORES: dict[str, tuple[str, Any]] | None = None


def datastore_kinds(
    pm: pluggy.PluginManager | None = None,
    *,
    plugins: Iterable[str] = (),
    keep: Keep | None = None,
) -> Callable[[str], dict[str, tuple[str, Any]]]:
    """What ``stepflow._storage.stores.open_datastore`` takes as ``kinds``.

    With ``pm``, its plugins' ``stepflow_datastore_types``. Without, the built-in storage
    plugin's when it has the kind asked for (every command and worker opens the local
    store; making a plugin manager, and scanning installed plugins, only for that would cost
    each of them milliseconds), else those of a plugin manager made with ``plugins``.
    """

    def kinds(kind: str) -> dict[str, tuple[str, Any]]:
        if pm is not None:
            return datastore_types(pm)
        builtin = _builtin_datastore_types()
        if kind in builtin:
            return builtin
        return datastore_types(make_plugin_manager(plugins, keep=keep))

    return kinds


def _builtin_datastore_types() -> dict[str, tuple[str, Any]]:
    global _BUILTIN_STORES
    if _BUILTIN_STORES is None:
        name = BUILTIN_PLUGINS[0]
        module = importlib.import_module(name)
        _BUILTIN_STORES = {k: (name, f) for k, f in module.stepflow_datastore_types().items()}
    return _BUILTIN_STORES


def serializers_of(pm: pluggy.PluginManager) -> list[Any]:
    """Every serializer the plugins provide, in priority order (built-ins last).

    :raises PluginError: an answer holds something that is not a ``stepflow.Serializer``, or
        two plugins give serializers of the same ``name``.
    """
    hook = "stepflow_serializer_types"
    found: list[Any] = []
    owners: dict[str, tuple[str, Any]] = {}
    for plugin, group in _answers(pm, hook):
        if isinstance(group, str | bytes | Mapping) or not isinstance(group, Iterable):
            raise PluginError(
                f"plugin {plugin!r}: {hook}() returned {type(group).__name__}, not a list of "
                f"stepflow.Serializer instances",
                plugin=plugin,
            )
        serializer = _loaded_class("stepflow._storage.serializers", "Serializer")
        for item in group:
            if serializer is None or not isinstance(item, serializer):
                kind = "a class; return an instance" if isinstance(item, type) else "not one"
                raise PluginError(
                    f"plugin {plugin!r}: {hook}() gave {item!r}, which is not a "
                    f"stepflow.Serializer instance ({kind})",
                    plugin=plugin,
                )
            _one_owner(owners, item.name, plugin, "serializer")
            owners[item.name] = (plugin, item)
            found.append(item)
    return found


def _hasher_problem(value: Any) -> str | None:
    return None if callable(value) else "is not callable: give a function fn(obj, hasher)"


def hashers_of(pm: pluggy.PluginManager) -> dict[type, tuple[str, Any]]:
    """``{class: (plugin, fn)}`` from every plugin's ``stepflow_hashers``.

    :raises PluginError: a key is not a class, a value is not callable, or two plugins give
        a hasher for the same class.
    """
    hook = "stepflow_hashers"
    found: dict[type, tuple[str, Any]] = {}
    for plugin, mapping in _mapping_answers(pm, hook, "{class: fn(obj, hasher)}"):
        for cls, fn in mapping.items():
            if not isinstance(cls, type):
                raise PluginError(
                    f"plugin {plugin!r}: {hook}() gave the key {cls!r}, which is not a class",
                    plugin=plugin,
                )
            wrong = _hasher_problem(fn)
            if wrong is not None:
                raise PluginError(
                    f"plugin {plugin!r}: {hook}() gave the hasher of {cls.__qualname__} = "
                    f"{fn!r}, which {wrong}",
                    plugin=plugin,
                )
            _one_owner(found, cls, plugin, "hasher of class")
            found[cls] = (plugin, fn)
    return found


#: every hasher plugin managers of this process were given, in order, as (class, plugin, fn):
#: the plugin manager sits below storage and does not import it, so hashing reads them
_PLUGIN_HASHERS: list[tuple[type, str, Callable[..., Any]]] = []


def plugin_hashers() -> list[tuple[type, str, Callable[..., Any]]]:
    """``(class, plugin, fn)`` of each hasher plugins gave in this process so far, oldest
    first; ``stepflow._storage.hashing`` registers the ones it has not seen yet."""
    return _PLUGIN_HASHERS


def hasher_plugin_modules(pm: pluggy.PluginManager) -> tuple[str, ...]:
    """The importable module names of the plugins that give ``stepflow_hashers`` (built-ins
    excluded): what a worker process loads with ``install_hasher_plugins`` so that it hashes
    values the way this process does. A plugin registered as an object, not a module, has no
    name a worker could import, and is left out."""
    names = []
    for _, (plugin_name, _fn) in hashers_of(pm).items():
        plugin = pm.get_plugin(plugin_name)
        module = getattr(plugin, "__name__", None)
        if isinstance(plugin, types.ModuleType) and module and module not in BUILTIN_PLUGINS:
            names.append(module)
    return tuple(dict.fromkeys(names))


#: hasher plugin modules a worker process has installed (``install_hasher_plugins``)
_INSTALLED_HASHER_PLUGINS: set[str] = set()


def install_hasher_plugins(modules: Iterable[str]) -> None:
    """Install the hashers of plugin ``modules`` (``hasher_plugin_modules`` of the run), once
    per process: a worker hashes the outputs it stores the way the run would.

    :raises PluginError: a module cannot be imported or gives a wrong hasher.
    """
    wanted = [m for m in modules if m not in _INSTALLED_HASHER_PLUGINS]
    if not wanted:
        return
    make_plugin_manager(wanted, entrypoints=False, builtins=False)
    _INSTALLED_HASHER_PLUGINS.update(wanted)


def _install_hashers(found: Mapping[type, tuple[str, Any]]) -> None:
    latest = {cls: fn for cls, _, fn in _PLUGIN_HASHERS}
    new = [(cls, plugin, fn) for cls, (plugin, fn) in found.items() if latest.get(cls) is not fn]
    if not new:
        return
    _PLUGIN_HASHERS.extend(new)
    # Already imported: register them now (a hasher it refuses is an error here, naming the
    # plugin); otherwise hashing registers them when it is first used.
    hashing = sys.modules.get("stepflow._storage.hashing")
    if hashing is not None:
        hashing.install_plugin_hashers()
