"""Where code comes from: user code, a library (by distribution and version), or Python itself.

Builtins count as nothing; the standard library by the Python version.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import site
import sys
import sysconfig
import types
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from stepflow._storage.fingerprint._store import _active_store
from stepflow._storage.kept import import_path_signature

if TYPE_CHECKING:
    import importlib.metadata

_USER = "user"
_NOTHING = "nothing"
#: an external piece: (label, version) pairs, e.g. (("dist:pandas", "2.2.2"),)
_External = tuple[tuple[str, str], ...]
_Kind = str | _External

#: stepflow/ itself: this file is stepflow/_storage/fingerprint/_kinds.py
_STEPFLOW_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@functools.cache
def _roots() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Folder prefixes of installed packages and of the standard library."""
    paths = sysconfig.get_paths()
    installed = {paths["purelib"], paths["platlib"]}
    # Some virtualenv versions ship a ``site`` without these functions.
    if hasattr(site, "getsitepackages"):
        installed.update(site.getsitepackages())
    if hasattr(site, "getusersitepackages"):
        installed.add(site.getusersitepackages())
    # Distributions that patch sys.path (Debian's dist-packages) are still installed code.
    installed.update(
        p for p in sys.path if os.path.basename(p) in ("site-packages", "dist-packages")
    )
    stdlib = {paths["stdlib"], paths["platstdlib"]}

    def prefixes(dirs: Iterable[str]) -> tuple[str, ...]:
        return tuple(sorted({_norm(d) + os.sep for d in dirs if d}))

    return prefixes(installed), prefixes(stdlib)


@functools.lru_cache(maxsize=4096)
def _norm(path: str) -> str:
    return os.path.normcase(os.path.realpath(path))


@functools.lru_cache(maxsize=4096)
def _path_kind(path: str) -> str:
    """``stepflow``, ``installed``, ``stdlib`` or ``user`` for a source file."""
    real = _norm(path)
    if real.startswith(_norm(_STEPFLOW_DIR) + os.sep):
        return "stepflow"
    installed, stdlib = _roots()
    # Installed packages first: site-packages usually lies inside the stdlib folder.
    if real.startswith(installed):
        return "installed"
    if real.startswith(stdlib):
        return "stdlib"
    return _USER


@functools.lru_cache(maxsize=4096)
def _installed_distributions(path: str) -> _External:
    """The distributions of an installed file, from its top-level folder under site-packages."""
    real = _norm(path)
    for prefix in _roots()[0]:
        if real.startswith(prefix):
            first = real[len(prefix) :].split(os.sep, 1)[0]
            # six.py, _cffi_backend.cpython-311-x86_64-linux-gnu.so -> six, _cffi_backend
            return _distributions(first.split(".", 1)[0])
    return _distributions(os.path.basename(real).split(".", 1)[0])


def _python() -> _External:
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    return ((f"python:{version}", version),)


@functools.cache
def _packages_distributions() -> Mapping[str, list[str]]:
    import importlib.metadata

    # Scans every installed distribution (about a quarter of a second), so only as a fallback.
    return importlib.metadata.packages_distributions()


@functools.cache
def _distributions(top: str) -> _External:
    """The distributions that provide the top-level import name ``top``, with versions."""
    store = _active_store.get()
    if store is None:
        return _find_distributions(top)
    # Before reading any metadata: an install that lands after this changes the signature.
    signature, settled = import_path_signature()
    found = store.distributions(signature, top)
    if found is None:
        found = _find_distributions(top)
        if settled:
            store.add_distributions(signature, top, found)
    return found


def _find_distributions(top: str) -> _External:
    if top == "stepflow":
        from stepflow._version import __version__

        return (("dist:stepflow", __version__),)
    # Reads installed metadata (a few milliseconds per library): persisted by _Store.
    import importlib.metadata

    try:
        # Fast path: most distributions are named like their import (pandas, numpy, joblib).
        dist = importlib.metadata.distribution(top)
    except importlib.metadata.PackageNotFoundError:
        dist = None
    if dist is not None and _provides(dist, top):
        return ((f"dist:{dist.metadata['Name']}", dist.version),)
    names = sorted(set(_packages_distributions().get(top, ())))
    if not names:
        return ((f"dist:{top}", "unknown"),)
    return tuple((f"dist:{name}", importlib.metadata.version(name)) for name in names)


def _provides(dist: importlib.metadata.Distribution, top: str) -> bool:
    # A distribution named like the import might be an unrelated one (PyPI's ``attr`` is not
    # ``attrs``), so check that it really installs that top-level name.
    listed = dist.read_text("top_level.txt")
    if listed is not None:
        return top in listed.split()
    record = "\n" + (dist.read_text("RECORD") or "")
    return f"\n{top}/" in record or f"\n{top}." in record


def _module_kind(name: str) -> _Kind:
    """How code from the module called ``name`` counts: user code, external, or nothing."""
    module = sys.modules.get(name)
    if module is None:
        # Not imported (a pickled function's home, say): not cached, it may be imported later.
        return _uncached_module_kind(name, None)
    file = getattr(module, "__file__", None)
    # Keyed by file too: one name can be imported from different places in one process.
    return _cached_module_kind(name, file if isinstance(file, str) else None)


@functools.lru_cache(maxsize=4096)
def _cached_module_kind(name: str, file: str | None) -> _Kind:
    return _uncached_module_kind(name, file)


def _uncached_module_kind(name: str, file: str | None) -> _Kind:
    top = name.partition(".")[0]
    if top == "stepflow":
        return _distributions("stepflow")
    if name == "builtins":
        return _NOTHING
    module = sys.modules.get(name)
    if file is not None:
        kind = _path_kind(file)
    elif name in sys.builtin_module_names or top in sys.stdlib_module_names:
        return _python()
    elif module is not None and getattr(module, "__path__", None):
        # A namespace package: where its folders are tells.
        kind = _path_kind(next(iter(module.__path__)))
    else:
        # Not imported: a function's code is then judged by its own file.
        return _USER
    if kind == "installed":
        return _installed_distributions(file) if file is not None else _distributions(top)
    if kind == "stdlib":
        return _python()
    if kind == "stepflow":
        return _distributions("stepflow")
    return _USER


def _function_kind(func: types.FunctionType) -> _Kind:
    file = func.__code__.co_filename
    if not file.startswith("<"):
        kind = _path_kind(file)
        if kind == _USER:
            return _USER
        if kind == "stdlib":
            return _python()
        if kind == "stepflow":
            return _distributions("stepflow")
        # By the file, not __module__: a library's wrapper copies its __module__ from the user
        # function it wraps (functools.wraps).
        return _installed_distributions(file)
    # Code without a file (``exec``, generated code): its module tells which library.
    module = func.__module__
    return _module_kind(module) if isinstance(module, str) else _USER


# --- import names nobody has imported yet ------------------------------------------------

#: top-level library names located without importing them; user code is not kept here,
#: since it ends up in sys.modules
_located: dict[str, _External] = {}


def _locate(top: str) -> _Kind | None:
    if top == "stepflow":
        return _distributions("stepflow")
    if top in sys.builtin_module_names:
        return _python()
    try:
        spec = importlib.util.find_spec(top)  # a top-level name: finders only, no import
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    origin = spec.origin
    kind: _Kind
    if origin in ("built-in", "frozen"):
        kind = _python()
    else:
        if origin is None:  # a namespace package: where its folders are tells
            origin = next(iter(spec.submodule_search_locations or ()), None)
        where = _path_kind(origin) if origin else _USER
        if where == "installed":
            kind = _installed_distributions(origin)  # type: ignore[arg-type]
        elif where == "stdlib":
            kind = _python()
        elif where == "stepflow":
            kind = _distributions("stepflow")
        else:
            kind = _USER
    if not isinstance(kind, str):
        _located[top] = kind
    return kind
