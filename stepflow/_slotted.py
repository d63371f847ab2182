"""Small value classes for the run path, written by hand instead of with attrs.

attrs generates and compiles each class's ``__init__``/``__eq__``/``__repr__``/``__hash__``
when the class is defined, about a millisecond a class, in every fresh process: a fully
cached rerun paid that for some twenty classes it only reads a field or two of. A class here
lists its fields in ``__slots__`` and writes its ``__init__``; equality, ``repr``, hashing and
pickling come from these bases, field by field in ``__slots__`` order, as attrs would give
them. The public and STYLE-listed value classes (``StepSpec``, ``Port``, ``Task``,
``ArtifactRef``, ``CacheKey``, the reports) stay attrs classes.
"""

from __future__ import annotations

from typing import Any, ClassVar


class FrozenError(AttributeError):
    """A field of a frozen value was assigned (like attrs' ``FrozenInstanceError``)."""


class Slotted:
    """Mutable fields in ``__slots__``; equal when the class and every field are equal."""

    __slots__ = ()

    def _values(self) -> tuple[Any, ...]:
        return tuple([getattr(self, name) for name in self.__slots__])

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__qualname__}({fields})"

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._values() == other._values()  # type: ignore[attr-defined]

    __hash__ = None  # type: ignore[assignment]  # mutable: unhashable, as attrs.define

    # Pickling (a slotted class has no __dict__); frozen classes cannot use setattr.
    def __getstate__(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            object.__setattr__(self, name, value)


class Frozen(Slotted):
    """Like :class:`Slotted`, but fields cannot be assigned after ``__init__`` (which sets
    them with ``object.__setattr__``) and the value hashes by its fields."""

    __slots__ = ()

    #: fields left out of the hash (mappings, as ``attrs.field(hash=False)``)
    _unhashed: ClassVar[frozenset[str]] = frozenset()

    def __setattr__(self, name: str, value: object) -> None:
        raise FrozenError(f"{type(self).__qualname__} is frozen: cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenError(f"{type(self).__qualname__} is frozen: cannot delete {name!r}")

    def __hash__(self) -> int:
        skip = self._unhashed
        fields = [getattr(self, n) for n in self.__slots__ if n not in skip]
        return hash((type(self).__qualname__, *fields))


#: what a frozen class's ``__init__`` sets its fields with (its own ``__setattr__`` refuses)
set_field = object.__setattr__


def as_dict(value: Slotted) -> dict[str, Any]:
    """``value``'s fields as a dict, as ``attrs.asdict`` gave them: slotted values inside as
    dicts too, collections copied with their types kept."""
    return {name: _plain(getattr(value, name)) for name in value.__slots__}


def _plain(value: Any) -> Any:
    if isinstance(value, Slotted):
        return as_dict(value)
    if isinstance(value, (tuple, list, set, frozenset)):
        return type(value)([_plain(v) for v in value])
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    return value
