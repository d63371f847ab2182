"""How values count: constants by a canonical encoding, data by content, code by reference."""

from __future__ import annotations

import enum
import functools
import logging
import re
import struct
import types
from typing import Any

from stepflow._storage.fingerprint._kinds import _USER, _module_kind
from stepflow._storage.fingerprint._source import _hash
from stepflow._storage.hashing import hash_value


def _encode(value: Any, _active: set[int] | None = None) -> str | None:
    """A canonical encoding of a simple constant, or None for anything else.

    Exact builtin types only: a subclass (a namedtuple, an IntEnum) may behave differently from
    its base and is handled as an object.
    """
    kind = type(value)
    if value is None:
        return "N"
    if kind is bool:
        return "T" if value else "F"
    if kind is int:
        return f"i{value}"
    if kind is float:
        return "f" + _float_hex(value)
    if kind is complex:
        return "c" + _float_hex(value.real) + _float_hex(value.imag)
    if kind is str:
        return f"s{len(value)}:{value}"
    if kind is bytes or kind is bytearray:
        return f"{'b' if kind is bytes else 'B'}{len(value)}:{value.hex()}"
    if kind not in (tuple, list, dict, set, frozenset):
        return None
    active = _active if _active is not None else set()
    if id(value) in active:
        return None  # a container that contains itself
    active.add(id(value))
    try:
        if kind is dict:
            items = []
            for key, item in value.items():
                ekey, eitem = _encode(key, active), _encode(item, active)
                if ekey is None or eitem is None:
                    return None
                items.append(f"{ekey}={eitem}")
            # Sorted: insertion order does not change what a dict means.
            return f"d{len(items)}[" + ",".join(sorted(items)) + "]"
        encoded = [_encode(item, active) for item in value]
        if any(e is None for e in encoded):
            return None
        if kind is set or kind is frozenset:
            # Sorted: iteration order of a set depends on hashing, not on its contents.
            encoded.sort()  # type: ignore[arg-type]
        tag = {tuple: "t", list: "l", set: "S", frozenset: "Z"}[kind]
        return f"{tag}{len(encoded)}[" + ",".join(encoded) + "]"  # type: ignore[arg-type]
    finally:
        active.discard(id(value))


def _float_hex(value: float) -> str:
    # The bytes, not repr: -0.0 differs from 0.0 (copysign and 1/x tell them apart); but every
    # NaN is one value, whatever its payload or sign bits (hashing.py's rule for inputs).
    return "nan" if value != value else struct.pack("<d", value).hex()


def _immutable(value: Any) -> bool:
    """True for simple constants that cannot change in place (checked after _encode)."""
    kind = type(value)
    if kind is tuple or kind is frozenset:
        return all(_immutable(item) for item in value)
    return kind is not list and kind is not dict and kind is not set and kind is not bytearray


_ADDRESS = re.compile(r"0x[0-9a-fA-F]{4,}")


def _is_reference(value: Any) -> bool:
    """True for objects that name code rather than hold data (a bound method, a partial, a
    builtin function, a wrapper, an enum member, a logger): they count by what they refer to,
    through their type and ``repr`` and the edges ``expand_object`` adds."""
    if isinstance(value, _REFERENCE_TYPES):
        return True
    try:
        wrapped = getattr(value, "__wrapped__", None)
    except Exception:  # a proxy whose __getattr__ fails in its own way wraps nothing
        return False
    return wrapped is not None and wrapped is not value


_REFERENCE_TYPES = (
    types.MethodType,
    types.BuiltinFunctionType,
    types.BuiltinMethodType,
    types.MethodWrapperType,
    types.WrapperDescriptorType,
    types.MethodDescriptorType,
    types.ClassMethodDescriptorType,
    functools.partial,
    enum.Enum,
    logging.Logger,
)


def _members(value: Any) -> list[tuple[str, str, Any]] | None:
    """The parts of a value that is fingerprinted member by member, as (name in the digest,
    name for ``explain``, member), or None for a value that is not.

    Lists, tuples and dicts (with simple keys) whose items are not all simple constants, and
    instances of classes written in user code only: each member then counts as a reference of
    its own, so a function in a dict counts by its code, an array in a list by its content, and
    ``explain`` can name ``CONFIG.weights`` or ``TABLES['a']``.
    """
    kind = type(value)
    if kind is list or kind is tuple or kind is dict:
        if len(value) > _MEMBERS_MAX:
            return None  # a large container counts as a whole, by content
    if kind is list or kind is tuple:
        return [(f"[{i}]", f"[{i}]", item) for i, item in enumerate(value)]
    if kind is dict:
        keyed = []
        for key, item in value.items():
            encoded = _encode(key)
            if encoded is None:
                return None  # counted as a whole, by content
            keyed.append((f"[{encoded}]", f"[{key!r}]", item))
        keyed.sort(key=_first)  # insertion order does not change what a dict means
        return keyed
    if not _user_instance(kind):
        return None
    found: list[tuple[str, str, Any]] = []
    state = getattr(value, "__dict__", None)
    if isinstance(state, dict):
        for name in sorted(state):
            if type(name) is str:
                found.append((f".{name}", f".{name}", state[name]))
    for cls in kind.__mro__:
        slots = vars(cls).get("__slots__", ())
        for name in (slots,) if isinstance(slots, str) else slots:
            if name in ("__dict__", "__weakref__"):
                continue
            try:
                item = getattr(value, name)
            except AttributeError:
                continue  # a slot not assigned yet; the names below still say which are
            except Exception:  # a __getattr__ of its own: count the object as a whole
                return None
            found.append((f".{cls.__qualname__}.{name}", f".{name}", item))
    return found


#: containers longer than this count as a whole: a piece per item would swell every record
_MEMBERS_MAX = 64


def _first(item: tuple[str, str, Any]) -> str:
    return item[0]


@functools.lru_cache(maxsize=1024)
def _user_instance(kind: type) -> bool:
    """True for a class built from user classes alone (and object): all of its instances'
    state is then in ``__dict__`` and slots, which ``_members`` reads."""
    return kind is not object and all(
        cls is object or _module_kind(cls.__module__) == _USER for cls in kind.__mro__
    )


def _content(value: Any) -> str | None:
    """A digest of a value's content, the way inputs are hashed (``hashing.hash_value``), or
    None when it cannot be hashed that way (a lock, an open file)."""
    try:
        return _hash(f"content:{hash_value(value)}")
    except Exception:  # whatever fails to hash falls back to its repr, as before
        return None


def _describe(value: Any) -> str:
    """Type and ``repr`` of an object that neither holds data nor can be hashed by content."""
    kind = type(value)
    if isinstance(value, logging.Logger):
        # Loggers are used in steps all the time, and their repr shows the level, which is
        # configuration (a -v flag), not code.
        return f"logging.Logger:{value.name}"
    try:
        text = repr(value)
    except Exception:  # a broken __repr__ must not break the run
        text = "<repr failed>"
    # An address in a repr is identity, not value, and differs in every process.
    return f"{kind.__module__}.{kind.__qualname__}:{_ADDRESS.sub('0x?', text)}"
