"""What a fingerprint computed in this process depends on, and whether each of those still holds.

Each witness records one lookup or value the walk read (a global, a closure cell, an attribute,
a mutable value, what an import inside a function binds), with what it found; ``holds()`` asks
again. A reused fingerprint is one whose witnesses all still hold.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from collections.abc import Mapping
from typing import Any

from stepflow._storage.fingerprint._kinds import _USER, _External, _locate, _located
from stepflow._storage.fingerprint._source import _hash, _Import
from stepflow._storage.fingerprint._values import _content, _describe, _encode, _members

#: what a lookup finds when the name is not bound (unlike None, which a name can be bound to)
_MISSING = object()


def _cell_contents(cell: types.CellType) -> Any:
    try:
        return cell.cell_contents
    except ValueError:
        return _MISSING


class _Witness:
    """One thing a fingerprint depends on, with what was found; ``holds()`` looks again.

    Plain slotted classes rather than NamedTuples or attrs: each of those costs a fraction of a
    millisecond to define, and this module is imported on every run, cached or not.
    """

    __slots__ = ()

    def holds(self) -> bool:
        raise NotImplementedError


class _Lookup(_Witness):
    """A name looked up in a namespace (module globals, a module's attributes)."""

    __slots__ = ("found", "key", "mapping")

    def __init__(self, mapping: Mapping[str, Any], key: str, found: Any) -> None:
        self.mapping = mapping
        self.key = key
        #: the object found, or _MISSING
        self.found = found

    def holds(self) -> bool:
        return self.mapping.get(self.key, _MISSING) is self.found


class _Cell(_Witness):
    """A closure variable."""

    __slots__ = ("cell", "contents")

    def __init__(self, cell: types.CellType, contents: Any) -> None:
        self.cell = cell
        #: its contents, or _MISSING while the variable is not assigned
        self.contents = contents

    def holds(self) -> bool:
        return _cell_contents(self.cell) is self.contents


class _Attr(_Witness):
    """An attribute of a function that the result depends on (``__code__``, defaults)."""

    __slots__ = ("name", "obj", "value")

    def __init__(self, obj: Any, name: str, value: Any) -> None:
        self.obj = obj
        self.name = name
        self.value = value

    def holds(self) -> bool:
        return getattr(self.obj, self.name, _MISSING) is self.value


class _Value(_Witness):
    """A mutable simple constant (a list, dict or set of constants), by its encoding."""

    __slots__ = ("digest", "value")

    def __init__(self, value: Any, digest: str) -> None:
        self.value = value
        #: digest of its encoding
        self.digest = digest

    def holds(self) -> bool:
        encoded = _encode(self.value)
        return encoded is not None and _hash(encoded) == self.digest


class _Object(_Witness):
    """Code referred to as a value, or an object that cannot be hashed, by type and repr."""

    __slots__ = ("digest", "obj")

    def __init__(self, obj: Any, digest: str) -> None:
        self.obj = obj
        #: digest of its type and repr
        self.digest = digest

    def holds(self) -> bool:
        return _hash(_describe(self.obj)) == self.digest


class _Members(_Witness):
    """A container or user-class instance counted member by member."""

    __slots__ = ("members", "obj")

    def __init__(self, obj: Any, members: list[tuple[str, str, Any]]) -> None:
        self.obj = obj
        #: its ``_members`` then: which members, and which object each one was
        self.members = members

    def holds(self) -> bool:
        now = _members(self.obj)
        return (
            now is not None
            and len(now) == len(self.members)
            and all(a[0] == b[0] and a[2] is b[2] for a, b in zip(now, self.members, strict=True))
        )


class _Content(_Witness):
    """Data counted by content (an array, a frame, a large container)."""

    __slots__ = ("digest", "obj")

    def __init__(self, obj: Any, digest: str) -> None:
        self.obj = obj
        #: digest of its content
        self.digest = digest

    def holds(self) -> bool:
        # Hashed again: an array or frame can be changed in place under the same name.
        return _content(self.obj) == self.digest


class _Imports(_Witness):
    """The imports inside a function or class, and what they bound."""

    __slots__ = ("bound", "imports", "package")

    def __init__(
        self, imports: tuple[_Import, ...], package: str | None, bound: dict[str, Any]
    ) -> None:
        self.imports = imports
        self.package = package
        self.bound = bound

    def holds(self) -> bool:
        now = _resolve_imports(self.imports, self.package)
        then = self.bound
        return now.keys() == then.keys() and all(
            # _Unimported markers are made afresh each time: compare them by value.
            now[k] is then[k] or (isinstance(now[k], _Unimported) and now[k] == then[k])
            for k in now
        )


def _still_valid(witnesses: tuple[_Witness, ...]) -> bool:
    for witness in witnesses:
        if not witness.holds():
            return False
    return True


# --- what an import inside a function binds ----------------------------------------------


class _Unimported:
    """A library module (or a name in one) that a function imports but nobody has yet."""

    __slots__ = ("kind", "name")

    def __init__(self, kind: _External, name: str) -> None:
        self.kind = kind
        self.name = name

    def __eq__(self, other: object) -> bool:
        # Made afresh on each resolution: equal when they name the same thing.
        if not isinstance(other, _Unimported):
            return NotImplemented
        return self.kind == other.kind and self.name == other.name

    def __hash__(self) -> int:
        return hash((self.kind, self.name))


def _resolve_imports(imports: tuple[_Import, ...], package: str | None) -> dict[str, Any]:
    """What each import inside a function binds, without importing any library."""
    bound: dict[str, Any] = {}
    for imp in imports:
        target = _import(imp.module, imp.level, package)
        if target is None:
            continue  # fails when it runs; failures are never cached
        if imp.top and isinstance(target, types.ModuleType):
            target = sys.modules.get(imp.module.partition(".")[0], target)
        elif imp.top:
            target = _Unimported(target.kind, imp.module.partition(".")[0])
        if imp.attr:
            if isinstance(target, _Unimported):
                target = _Unimported(target.kind, f"{target.name}.{imp.attr}")
            else:
                attr = vars(target).get(imp.attr, _MISSING)
                if attr is _MISSING:
                    # ``from pkg import submodule``, with the submodule not imported yet
                    attr = _import(f"{target.__name__}.{imp.attr}", 0, None)
                if attr is None or attr is _MISSING:
                    continue
                target = attr
        bound[imp.bound] = target
    return bound


def _import(module: str, level: int, package: str | None) -> types.ModuleType | _Unimported | None:
    """The module, imported if it is user code; a library is only located, never imported:
    a fully cached run must not pay for importing pandas."""
    try:
        name = importlib.util.resolve_name("." * level + module, package) if level else module
    except (ImportError, ValueError):
        return None
    found = sys.modules.get(name)
    if found is not None:
        return found
    top = name.partition(".")[0]
    kind = _located.get(top) or _locate(top)
    if kind is None:
        return None
    if kind != _USER:
        return _Unimported(kind, name)  # type: ignore[arg-type]
    try:
        # User code imported inside a step: importing it here is what running the step does.
        return importlib.import_module(name)
    except Exception:  # an import that fails fails the step too, and is never cached
        return None
