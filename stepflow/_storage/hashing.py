"""Canonical value hashing for cache keys and output content hashes.

``hash_value(obj)`` is the 32-hex-character xxh3_128 digest of a canonical encoding of ``obj``.
Two rules make cache keys sound (DESIGN.md sections 2 and 7):

- **equal values hash equal**: dict and set order, NaN payload and sign bits, numpy memory
  layout (C or Fortran order, strided views) and byte order do not count;
- **different values differ**: every value starts with a type tag, so ``1``, ``1.0``, ``True``,
  ``"1"`` and ``b"1"`` all differ, a tuple differs from a list of the same items, and an int64
  array differs from a float64 array holding the same numbers. ``-0.0`` and ``0.0`` differ too,
  although they compare equal: a step can tell them apart (``math.copysign``, ``1 / x``), so a
  result made from one is not an answer for the other.

Hashing is stricter than ``==`` across types (``1 == 1.0`` but they hash apart): a step that gets
``1.0`` instead of ``1`` may well behave differently, and a needless rerun is cheap where a wrong
reuse is not.

The encoding streams into one xxh3_128 state: large buffers (arrays, DataFrame columns) are fed
straight from memory, never gathered into one intermediate ``bytes``. Every value is
self-delimiting (a tag, then either fixed-size or length-prefixed parts), so a sequence of values
can never be re-split into a different sequence with the same bytes.

Handlers live in a ``functools.singledispatch`` registry. numpy and pandas handlers are registered
the first time a type is looked up while those libraries are in ``sys.modules``, so importing this
module never imports them. Unknown objects fall back, in order, to: a hasher registered with
:func:`register_hasher`; the fields of a dataclass, attrs class or NamedTuple; and last the
cloudpickle bytes of the object. That last fallback can be sensitive to incidental state (the
order attributes were set in, objects shared or copied inside the value), which can cause a
needless rerun but never a wrong reuse; register a hasher for types where that matters.
"""

from __future__ import annotations

import contextlib
import datetime
import decimal
import enum
import functools
import os
import pathlib
import struct
import sys
from collections import OrderedDict, defaultdict, deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import xxhash

from stepflow.errors import PluginError, StepflowError

if TYPE_CHECKING:
    import fractions
    import uuid

    import numpy as np
    import pyarrow as pa

__all__ = [
    "HASH_ENCODING_VERSION",
    "Hasher",
    "UnhashableValueError",
    "hash_bytes",
    "hash_file",
    "hash_strings",
    "hash_value",
    "install_plugin_hashers",
    "register_hasher",
]

#: Bump when the canonical encoding changes on purpose: every digest changes with it, so it
#: belongs in the environment part of a cache key.
HASH_ENCODING_VERSION = 2

# Float arrays are checked and hashed in pieces of this size: small enough to stay in the L2
# cache while the NaN check reads them again, large enough that Python's per-piece
# overhead is noise (256 KiB to 1 MiB measured best; benchmarks/bench_hashing.py).
_CHUNK_BYTES = 512 << 10

_U64 = struct.Struct("<Q")
_I64 = struct.Struct("<q")
_INT64_LIMIT = 1 << 63
# The most negative int64 marks an integer too large for eight bytes; -2**63 itself takes the
# big form, so a small int never reads as the marker.
_BIGINT = _I64.pack(-_INT64_LIMIT)
_F64 = struct.Struct("<d")
# One NaN bit pattern for every NaN: payload and sign bits are incidental, and NaN is NaN.
_NAN_BYTES = _U64.pack(0x7FF8000000000000)


class UnhashableValueError(StepflowError, TypeError):
    """A value cannot be encoded for a cache key: no hasher fits it and it cannot be pickled.

    :ivar value_type: the type of the value that could not be hashed.
    """

    def __init__(self, message: str, *, value_type: type) -> None:
        super().__init__(message)
        self.value_type = value_type


@functools.lru_cache(maxsize=4096)
def _tag(name: str) -> bytes:
    """A tag is a length-prefixed name, so tags form a prefix-free set."""
    raw = name.encode()
    return _U64.pack(len(raw)) + raw


_T_NONE = _tag("none")
_T_TRUE = _tag("bool") + b"\x01"
_T_FALSE = _tag("bool") + b"\x00"
_T_INT = _tag("int")
_T_FLOAT = _tag("float")
_T_COMPLEX = _tag("complex")
_T_STR = _tag("str")
_T_BYTES = _tag("bytes")
_T_BACKREF = _tag("backref")


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


# --- the hasher -----------------------------------------------------------------------------


class Hasher:
    """A streaming xxh3_128 state and the primitives that encode values into it.

    Handlers given to :func:`register_hasher` receive one and describe their object through
    :meth:`add` (any value, recursively), :meth:`add_bytes`, :meth:`add_str` and
    :meth:`add_int`. Every one of these writes a self-delimiting encoding, so a handler can call
    them in any combination without two different objects running together.
    """

    __slots__ = ("_stack", "_state")

    def __init__(self) -> None:
        self._state = xxhash.xxh3_128()
        #: ids of the containers being encoded, mapped to their depth (cycle detection)
        self._stack: dict[int, int] = {}

    # -- public primitives ----------------------------------------------------------------

    def add(self, obj: object) -> None:
        """Encode any value: tagged by type, canonical, recursive."""
        cls = type(obj)
        # Exact builtin scalars skip the registry: they dominate large containers.
        if cls is str:
            raw = obj.encode("utf-8", "surrogatepass")  # type: ignore[attr-defined]
            self._state.update(_T_STR + _U64.pack(len(raw)) + raw)
            return
        if cls is int:
            self._state.update(_T_INT + _int_bytes(obj))  # type: ignore[arg-type]
            return
        if cls is float:
            self._state.update(_T_FLOAT + _float_bytes(obj))  # type: ignore[arg-type]
            return
        entry = _RESOLVED.get(cls)
        if entry is None:
            entry = _resolve(cls)
        handler, container = entry
        if not container:
            handler(obj, self)
            return
        key = id(obj)
        stack = self._stack
        if key in stack:
            # A value that contains itself: encode how far up the cycle points, which is
            # deterministic and distinguishes differently shaped cycles.
            self._state.update(_T_BACKREF + _int_bytes(len(stack) - stack[key]))
            return
        stack[key] = len(stack)
        try:
            handler(obj, self)
        finally:
            del stack[key]

    def add_tag(self, name: str) -> None:
        """Write a type tag; handlers usually need not, as each is tagged by its class."""
        self._state.update(_tag(name))

    def add_bytes(self, data: Any) -> None:
        """Write any buffer's bytes, length-prefixed, straight from memory (without a tag)."""
        view = memoryview(data)
        if not view.c_contiguous:
            view = memoryview(view.tobytes())
        view = view.cast("B")
        self._state.update(_U64.pack(view.nbytes))
        self._state.update(view)

    def add_str(self, text: str) -> None:
        """Write a length-prefixed UTF-8 string (without a type tag)."""
        raw = text.encode("utf-8", "surrogatepass")
        self._state.update(_U64.pack(len(raw)) + raw)

    def add_int(self, number: int) -> None:
        """Write an integer of any size (without a type tag)."""
        self._state.update(_int_bytes(number))

    def hexdigest(self) -> str:
        """The 32-hex-character digest of everything written so far."""
        return self._state.hexdigest()

    def digest(self) -> bytes:
        """The 16-byte digest of everything written so far."""
        return self._state.digest()

    # -- internals ----------------------------------------------------------------------------

    def _raw(self, data: Any) -> None:
        self._state.update(data)

    def _child(self) -> Hasher:
        """A fresh state sharing the cycle stack, for digests of unordered members."""
        child = Hasher.__new__(Hasher)
        child._state = xxhash.xxh3_128()
        child._stack = self._stack
        return child

    def _member_digest(self, obj: object) -> bytes:
        if type(obj) is str:
            # Same bytes as Hasher.add writes for a str, in one call: str keys are the
            # common case in large dicts.
            raw = obj.encode("utf-8", "surrogatepass")  # type: ignore[attr-defined]
            return xxhash.xxh3_128_digest(_T_STR + _U64.pack(len(raw)) + raw)
        child = self._child()
        child.add(obj)
        return child.digest()


def _int_bytes(number: int) -> bytes:
    # One encoding per int: eight bytes when it fits (almost always, and one call), else a
    # marker and its length-prefixed two's complement, which holds any size.
    if -_INT64_LIMIT < number < _INT64_LIMIT:
        return _I64.pack(number)
    raw = number.to_bytes((number.bit_length() + 8) // 8, "little", signed=True)
    return _BIGINT + _U64.pack(len(raw)) + raw


def _float_bytes(number: float) -> bytes:
    if number != number:
        return _NAN_BYTES  # every NaN alike, whatever its payload or sign
    # -0.0 keeps its sign bit: it equals 0.0 but copysign and 1/x tell them apart.
    return _F64.pack(number)


# --- public functions -------------------------------------------------------------------------


def hash_value(obj: object) -> str:
    """32-hex-char xxh3_128 digest of obj's canonical encoding.

    Equal values hash equal and different values (of different types, too) hash apart; see the
    module docstring for the rules.

    :raises UnhashableValueError: no hasher fits ``obj`` (or a value inside it) and it cannot be
        pickled either.
    """
    hasher = Hasher()
    hasher.add(obj)
    return hasher.hexdigest()


def hash_strings(obj: str | tuple[Any, ...]) -> str:
    """``hash_value(obj)`` for a str or a tuple nesting only tuples and strs, in one call.

    Cache keys are such tuples, and one is made per step on every run: writing the same bytes
    ``Hasher.add`` would, without a dispatch per item, takes a fifth of the time.

    :raises TypeError: something in ``obj`` is neither a str nor a tuple.
    """
    out: list[bytes] = []
    _encode_strings(obj, out)
    return xxhash.xxh3_128_hexdigest(b"".join(out))


def _encode_strings(obj: object, out: list[bytes]) -> None:
    cls = type(obj)
    if cls is str:
        raw = obj.encode("utf-8", "surrogatepass")  # type: ignore[attr-defined]
        out.append(_T_STR + _U64.pack(len(raw)) + raw)
    elif cls is tuple:
        out.append(_T_TUPLE + _I64.pack(len(obj)))  # type: ignore[arg-type]
        for item in obj:  # type: ignore[attr-defined]
            _encode_strings(item, out)
    else:
        raise TypeError(f"hash_strings() takes strs and tuples of them, not {cls.__qualname__}")


def hash_bytes(data: bytes | bytearray | memoryview) -> str:
    """32-hex-char xxh3_128 digest of raw bytes (no type tag: equals :func:`hash_file`)."""
    view = memoryview(data)
    if not view.c_contiguous:
        view = memoryview(view.tobytes())
    return xxhash.xxh3_128_hexdigest(view.cast("B"))


def hash_file(path: str | os.PathLike[str], chunk: int = 8 << 20, *, mapped: bool = False) -> str:
    """32-hex-char xxh3_128 digest of a file's bytes, read ``chunk`` bytes at a time.

    Equal to ``hash_bytes(Path(path).read_bytes())`` without holding the file in memory.

    :param mapped: hash a large file through a memory mapping (twice as fast from the page
        cache). Only for files nobody truncates meanwhile, such as published store objects:
        touching a mapped page past a new end of file kills the process (SIGBUS).
    """
    with open(path, "rb", buffering=0) as fh:
        size = os.fstat(fh.fileno()).st_size
        if size < chunk:
            # Most outputs are small: a buffer of the full chunk size would cost more to
            # allocate and zero than reading the file.
            return xxhash.xxh3_128_hexdigest(fh.read())
        if mapped:
            import mmap

            with contextlib.suppress(OSError, ValueError):
                # The cached pages are hashed in place instead of copied out (a large
                # output is hashed right after it is written, and again before loading).
                with mmap.mmap(fh.fileno(), 0, prot=mmap.PROT_READ) as mapped:
                    return xxhash.xxh3_128_hexdigest(mapped)
        state = xxhash.xxh3_128()
        buffer = bytearray(chunk)
        view = memoryview(buffer)
        # readinto a reused buffer: no allocation per chunk, and the bytes are still in cache
        # when the hash reads them.
        while count := fh.readinto(buffer):
            state.update(view[:count])
    return state.hexdigest()


def register_hasher(cls: type, fn: Callable[[Any, Hasher], None]) -> None:
    """Teach :func:`hash_value` to encode instances of ``cls`` (and its subclasses).

    ``fn(obj, hasher)`` describes ``obj`` through the :class:`Hasher` primitives, typically
    ``hasher.add(...)`` of the fields that make two instances equal. The class's qualified name
    is written first, so two registered classes never collide. ``cls`` may be an abstract base
    class. A later registration for the same class replaces the earlier one.

    >>> class Point:
    ...     def __init__(self, x, y):
    ...         self.x, self.y = x, y
    >>> register_hasher(Point, lambda p, h: h.add((p.x, p.y)))
    >>> hash_value(Point(1, 2)) == hash_value(Point(1, 2))
    True
    """
    if not isinstance(cls, type):
        raise TypeError(f"register_hasher() needs a class, got {cls!r}")
    if not callable(fn):
        raise TypeError(f"register_hasher() needs a callable fn(obj, hasher), got {fn!r}")
    _load_lazy_handlers()  # so that a fixed encoding not registered yet is refused too
    if cls in _FIXED_ENCODINGS:
        # Their encoding is part of every digest ever stored; replacing it in one process
        # would make its keys disagree with everyone else's.
        raise TypeError(
            f"register_hasher() cannot replace the built-in encoding of {cls.__qualname__}; "
            f"register a hasher for a subclass instead"
        )

    def encode(obj: Any, hasher: Hasher) -> None:
        # The concrete class, not the registered one: two subclasses handled by one hasher
        # still hash apart.
        hasher.add_tag("registered:" + _qualname(type(obj)))
        fn(obj, hasher)

    _register(cls, encode, container=True)


# --- the registry -----------------------------------------------------------------------------

_Handler = Callable[[Any, Hasher], None]


@functools.singledispatch
def _dispatch(obj: object, hasher: Hasher) -> None:
    _hash_by_pickle(obj, hasher)


#: type -> (handler, is_container); filled on first sight of each type
_RESOLVED: dict[type, tuple[_Handler, bool]] = {}
#: handlers that encode containers (they take part in cycle detection)
_CONTAINERS: set[_Handler] = {_dispatch.registry[object]}
#: handlers registered for builtin classes: a subclass of one of these with no handler of its
#: own is encoded as the builtin plus its class name
_BUILTIN_IMPLS: set[_Handler] = set()
_lazy_loaded: set[str] = set()


def _register(cls: type, fn: _Handler, *, container: bool = False, builtin: bool = False) -> None:
    _dispatch.register(cls)(fn)
    if container:
        _CONTAINERS.add(fn)
    if builtin:
        _BUILTIN_IMPLS.add(fn)
    # A new handler can change how already-seen subclasses resolve.
    _RESOLVED.clear()


def _resolve(cls: type) -> tuple[_Handler, bool]:
    _load_lazy_handlers()
    handler: _Handler
    if cls in _dispatch.registry:
        handler = _dispatch.registry[cls]
    else:
        handler = _dispatch.dispatch(cls)
        if handler is _dispatch.registry[object] or handler in _BUILTIN_IMPLS:
            handler = _structural_handler(cls, handler)
    entry = (handler, handler in _CONTAINERS)
    _RESOLVED[cls] = entry
    return entry


def _structural_handler(cls: type, found: _Handler) -> _Handler:
    """Kinds recognised by shape, which beat a builtin base class or the pickle fallback."""
    if issubclass(cls, enum.Enum):
        # IntEnum and StrEnum members are ints and strs too; their identity is the member.
        return _hash_enum
    numpy = sys.modules.get("numpy")
    if numpy is not None and issubclass(cls, numpy.generic):
        # np.str_ and np.float64 subclass str and float; their dtype must still count.
        return _hash_numpy_scalar
    if issubclass(cls, tuple) and hasattr(cls, "_fields"):
        return _hash_namedtuple
    # Without dataclasses imported, no class can be a dataclass (and the import costs a
    # fresh process a millisecond).
    dataclasses = sys.modules.get("dataclasses")
    if dataclasses is not None and dataclasses.is_dataclass(cls):
        return _hash_dataclass
    if getattr(cls, "__attrs_attrs__", None) is not None:
        return _hash_attrs
    if found in _BUILTIN_IMPLS:
        return _builtin_subclass_handler(found)
    return found


@functools.cache
def _builtin_subclass_handler(base_handler: _Handler) -> _Handler:
    def encode(obj: Any, hasher: Hasher) -> None:
        # A subclass of a builtin may behave differently (Counter, user str types): tag the
        # class, encode the builtin part, then any instance attributes.
        hasher.add_tag("subclass:" + _qualname(type(obj)))
        base_handler(obj, hasher)
        hasher.add(getattr(obj, "__dict__", None) or {})

    _CONTAINERS.add(encode)
    return encode


#: how many of the plugin manager's hashers (``plugin_hashers()``) are registered
_plugin_hashers_seen = 0


def install_plugin_hashers() -> None:
    """Register the hashers plugins gave through the ``stepflow_hashers`` hook.

    The plugin manager keeps them (it sits below storage and does not import it); they are
    registered when a plugin manager is made after this module, or on this module's first
    use otherwise.

    :raises PluginError: a plugin's hasher is refused by :func:`register_hasher`.
    """
    global _plugin_hashers_seen
    manager = sys.modules.get("stepflow._pluginmanager")
    if manager is None:
        return
    given = manager.plugin_hashers()
    while _plugin_hashers_seen < len(given):
        cls, plugin, fn = given[_plugin_hashers_seen]
        _plugin_hashers_seen += 1
        try:
            register_hasher(cls, fn)
        except TypeError as exc:
            raise PluginError(
                f"plugin {plugin!r}: stepflow_hashers(): {exc}", plugin=plugin
            ) from None


def _load_lazy_handlers() -> None:
    """Register handlers for the classes of a library once someone has imported it: numpy,
    pandas, and the standard library's fractions and uuid (a few milliseconds of a fresh
    process's start-up, when no value needs them); and the hashers plugins gave."""
    install_plugin_hashers()
    for module, name, handler in _LAZY_FIXED:
        if module not in _lazy_loaded and module in sys.modules:
            _lazy_loaded.add(module)
            cls = getattr(sys.modules[module], name)
            _register(cls, handler)
            _FIXED_ENCODINGS.add(cls)
    if "numpy" not in _lazy_loaded and "numpy" in sys.modules:
        _lazy_loaded.add("numpy")
        _register_numpy()
    pandas = sys.modules.get("pandas")
    # A half-imported pandas (we are called during its import) has no DataFrame yet.
    if "pandas" not in _lazy_loaded and pandas is not None and hasattr(pandas, "DataFrame"):
        _lazy_loaded.add("pandas")
        _register_pandas()


# --- scalars ------------------------------------------------------------------------------------


def _hash_none(obj: None, hasher: Hasher) -> None:
    hasher._raw(_T_NONE)


def _hash_bool(obj: bool, hasher: Hasher) -> None:
    hasher._raw(_T_TRUE if obj else _T_FALSE)


def _hash_int(obj: int, hasher: Hasher) -> None:
    # int.__int__: the plain value, even from a subclass that overrides __int__.
    hasher._raw(_T_INT + _int_bytes(int.__int__(obj)))


def _hash_float(obj: float, hasher: Hasher) -> None:
    hasher._raw(_T_FLOAT + _float_bytes(float.__float__(obj)))


def _hash_complex(obj: complex, hasher: Hasher) -> None:
    # Each part canonicalised like a float: NaN payloads do not count in either, signs of zero do.
    hasher._raw(_T_COMPLEX + _float_bytes(obj.real) + _float_bytes(obj.imag))


def _hash_str(obj: str, hasher: Hasher) -> None:
    # surrogatepass: lone surrogates are legal in a str and must not make it unhashable.
    raw = str.encode(obj, "utf-8", "surrogatepass")
    hasher._raw(_T_STR + _U64.pack(len(raw)) + raw)


def _hash_bytes(obj: bytes, hasher: Hasher) -> None:
    hasher._raw(_T_BYTES)
    hasher.add_bytes(obj)


def _hash_bytearray(obj: bytearray, hasher: Hasher) -> None:
    # Tagged apart from bytes: mutable and immutable bytes are different types to a step.
    hasher.add_tag("bytearray")
    hasher.add_bytes(obj)


def _hash_memoryview(obj: memoryview, hasher: Hasher) -> None:
    # Format and shape count: the same bytes read as int32 or as float32 are different values.
    hasher.add_tag("memoryview")
    hasher.add_str(obj.format)
    hasher.add(obj.shape)
    hasher.add_bytes(obj)


def _hash_decimal(obj: decimal.Decimal, hasher: Hasher) -> None:
    hasher.add_tag("decimal")
    sign, digits, exponent = obj.as_tuple()
    if obj.is_nan():
        text = "NaN"  # every NaN alike, as for floats (sNaN and payloads included)
    elif obj.is_infinite():
        text = "-Inf" if sign else "Inf"
    elif not any(digits):
        # Decimal("0.00") == Decimal("0"): the exponent of zero is noise. Its sign is not, as
        # for floats: float(Decimal("-0")) is -0.0.
        text = "-0" if sign else "0"
    else:
        # Strip trailing zeros by hand: Decimal("1.0") == Decimal("1.00"), and normalize()
        # would also round to the context's precision, making different values alike.
        coefficient = "".join(map(str, digits))
        stripped = coefficient.rstrip("0")
        assert isinstance(exponent, int)
        exponent += len(coefficient) - len(stripped)
        text = f"{'-' if sign else ''}{stripped}E{exponent}"
    hasher.add_str(text)


def _hash_fraction(obj: fractions.Fraction, hasher: Hasher) -> None:
    # Fractions are always stored in lowest terms, so numerator/denominator is canonical.
    hasher.add_tag("fraction")
    hasher.add_int(obj.numerator)
    hasher.add_int(obj.denominator)


_EPOCH_UTC = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


def _hash_datetime(obj: datetime.datetime, hasher: Hasher) -> None:
    if obj.utcoffset() is None:
        # Naive: the wall-clock fields; fold only matters once a zone is attached.
        hasher.add_tag("datetime")
        hasher.add_int(obj.toordinal())
        hasher.add_int(
            ((obj.hour * 60 + obj.minute) * 60 + obj.second) * 1_000_000 + obj.microsecond
        )
    else:
        # Aware datetimes compare by instant, whatever their zone: hash the UTC instant (as a
        # distance from the epoch, which cannot overflow the way astimezone() can near year 1).
        hasher.add_tag("datetime-aware")
        hasher.add(obj - _EPOCH_UTC)


def _hash_date(obj: datetime.date, hasher: Hasher) -> None:
    hasher.add_tag("date")
    hasher.add_int(obj.toordinal())


def _hash_time(obj: datetime.time, hasher: Hasher) -> None:
    micros = ((obj.hour * 60 + obj.minute) * 60 + obj.second) * 1_000_000 + obj.microsecond
    offset = obj.utcoffset()
    if offset is None:
        hasher.add_tag("time")
        hasher.add_int(micros)
    else:
        # Aware times compare by their UTC equivalent, like aware datetimes.
        hasher.add_tag("time-aware")
        hasher.add_int(micros - offset // datetime.timedelta(microseconds=1))


def _hash_timedelta(obj: datetime.timedelta, hasher: Hasher) -> None:
    hasher.add_tag("timedelta")
    hasher.add_int(obj // datetime.timedelta(microseconds=1))


def _hash_uuid(obj: uuid.UUID, hasher: Hasher) -> None:
    hasher.add_tag("uuid")
    hasher._raw(obj.bytes)


def _hash_path(obj: pathlib.PurePath, hasher: Hasher) -> None:
    if isinstance(obj, pathlib.PureWindowsPath):
        # Windows paths compare case-insensitively and with either slash, so hash them that way.
        hasher.add_tag("path-windows")
        hasher.add_str(str(obj).lower())
    else:
        # Path and PurePosixPath of the same text are equal: the string is the value.
        hasher.add_tag("path-posix")
        hasher.add_str(str(obj))


def _hash_enum(obj: enum.Enum, hasher: Hasher) -> None:
    # A member is its class and its name; the value can be shared by aliases and is not what
    # a step compares against.
    hasher.add_tag("enum:" + _qualname(type(obj)))
    if obj.name is None:
        hasher.add(obj.value)  # a composite Flag without a name: its value identifies it
    else:
        hasher.add_str(obj.name)


def _hash_range(obj: range, hasher: Hasher) -> None:
    # Ranges compare as sequences: range(0, 5, 2) == range(0, 6, 2) and all empty ranges are
    # equal, so hash the length, then the start and step only where they matter.
    hasher.add_tag("range")
    length = len(obj)
    hasher.add_int(length)
    if length:
        hasher.add_int(obj.start)
    if length > 1:
        hasher.add_int(obj.step)


def _hash_slice(obj: slice, hasher: Hasher) -> None:
    hasher.add_tag("slice")
    hasher.add(obj.start)
    hasher.add(obj.stop)
    hasher.add(obj.step)


def _hash_type(obj: type, hasher: Hasher) -> None:
    # A class as a value is a reference to it; its code is the fingerprinting module's concern.
    hasher.add_tag("type")
    hasher.add_str(_qualname(obj))


# --- containers ---------------------------------------------------------------------------------


def _hash_items(tag: bytes, items: Any, hasher: Hasher) -> None:
    hasher._raw(tag + _I64.pack(len(items)))
    add = hasher.add
    for item in items:
        add(item)


_T_LIST = _tag("list")
_T_TUPLE = _tag("tuple")


def _hash_list(obj: list[Any], hasher: Hasher) -> None:
    _hash_items(_T_LIST, obj, hasher)


def _hash_tuple(obj: tuple[Any, ...], hasher: Hasher) -> None:
    _hash_items(_T_TUPLE, obj, hasher)


def _hash_deque(obj: deque[Any], hasher: Hasher) -> None:
    hasher.add_tag("deque")
    hasher.add(obj.maxlen)  # a bounded deque behaves differently on append
    _hash_items(b"", obj, hasher)


def _first(pair: tuple[bytes, Any]) -> bytes:
    # Never compare the values themselves: they need not be orderable.
    return pair[0]


def _hash_mapping_unordered(obj: dict[Any, Any], hasher: Hasher) -> None:
    # Dict order is insertion history, not value: {"a": 1, "b": 2} == {"b": 2, "a": 1}. Sort
    # by the digests of the keys (unique, as the keys are), then stream each value in that
    # order so large values are never buffered.
    member = hasher._member_digest
    keyed = sorted(((member(key), value) for key, value in obj.items()), key=_first)
    hasher.add_int(len(keyed))
    for key_digest, value in keyed:
        hasher._raw(key_digest)
        hasher.add(value)


def _hash_dict(obj: dict[Any, Any], hasher: Hasher) -> None:
    hasher.add_tag("dict")
    _hash_mapping_unordered(obj, hasher)


def _hash_ordereddict(obj: OrderedDict[Any, Any], hasher: Hasher) -> None:
    # OrderedDicts compare order-sensitively with each other, so order is part of the value.
    hasher.add_tag("ordereddict")
    hasher.add_int(len(obj))
    for key, value in obj.items():
        hasher.add(key)
        hasher.add(value)


def _hash_defaultdict(obj: defaultdict[Any, Any], hasher: Hasher) -> None:
    # The factory decides what a missing key returns, so it is part of what a step sees.
    hasher.add_tag("defaultdict")
    hasher.add(obj.default_factory)
    _hash_mapping_unordered(obj, hasher)


def _hash_unordered(obj: set[Any] | frozenset[Any], hasher: Hasher) -> None:
    # Set iteration order depends on hashing and history; sorted member digests do not.
    digests = sorted(map(hasher._member_digest, obj))
    hasher.add_int(len(digests))
    hasher._raw(b"".join(digests))


def _hash_set(obj: set[Any], hasher: Hasher) -> None:
    hasher.add_tag("set")
    _hash_unordered(obj, hasher)


def _hash_frozenset(obj: frozenset[Any], hasher: Hasher) -> None:
    hasher.add_tag("frozenset")
    _hash_unordered(obj, hasher)


def _hash_fields(cls: type, names: Any, obj: Any, hasher: Hasher, kind: str) -> None:
    # The class and the field names count: two record types with equal field values differ.
    hasher.add_tag(kind + ":" + _qualname(cls))
    hasher.add_int(len(names))
    for name in names:
        hasher.add_str(name)
        hasher.add(getattr(obj, name))


def _hash_namedtuple(obj: Any, hasher: Hasher) -> None:
    _hash_fields(type(obj), obj._fields, obj, hasher, "namedtuple")


def _hash_dataclass(obj: Any, hasher: Hasher) -> None:
    import dataclasses

    # Every field, compare=False ones too: they can still change what a step computes.
    names = [field.name for field in dataclasses.fields(obj)]
    _hash_fields(type(obj), names, obj, hasher, "dataclass")


def _hash_attrs(obj: Any, hasher: Hasher) -> None:
    names = [attribute.name for attribute in type(obj).__attrs_attrs__]
    _hash_fields(type(obj), names, obj, hasher, "attrs")


def _hash_by_pickle(obj: object, hasher: Hasher) -> None:
    """The last resort: the object's cloudpickle bytes (protocol 5, large buffers out of band)."""
    import pickle

    import cloudpickle

    buffers: list[pickle.PickleBuffer] = []
    try:
        # Out-of-band buffers (numpy arrays inside the object) are hashed from memory instead
        # of being copied into the pickle stream.
        data = cloudpickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    except Exception as exc:
        name = _qualname(type(obj))
        raise UnhashableValueError(
            f"cannot hash a value of type {name} for a cache key: no hasher is registered for "
            f"it, it is not a dataclass or attrs class, and pickling it failed "
            f"({type(exc).__name__}: {exc}). Register a hasher with "
            f"stepflow.register_hasher({type(obj).__name__}, fn) (see 'register_hasher' "
            f"in the API reference), or make the type picklable.",
            value_type=type(obj),
        ) from exc
    hasher.add_tag("pickle")
    hasher.add_bytes(data)
    hasher.add_int(len(buffers))
    for buffer in buffers:
        try:
            hasher.add_bytes(buffer.raw())
        except BufferError:  # not contiguous: raw() cannot expose it without a copy
            hasher.add_bytes(memoryview(buffer).tobytes())


for _cls, _fn, _container, _builtin in [
    (type(None), _hash_none, False, False),
    (bool, _hash_bool, False, False),
    (int, _hash_int, False, True),
    (float, _hash_float, False, True),
    (complex, _hash_complex, False, True),
    (str, _hash_str, False, True),
    (bytes, _hash_bytes, False, True),
    (bytearray, _hash_bytearray, False, True),
    (memoryview, _hash_memoryview, False, False),
    (decimal.Decimal, _hash_decimal, False, False),
    (datetime.datetime, _hash_datetime, False, False),
    (datetime.date, _hash_date, False, False),
    (datetime.time, _hash_time, False, False),
    (datetime.timedelta, _hash_timedelta, False, False),
    (pathlib.PurePath, _hash_path, False, False),
    (enum.Enum, _hash_enum, False, False),
    (range, _hash_range, False, False),
    (slice, _hash_slice, True, False),
    (type, _hash_type, False, False),
    (list, _hash_list, True, True),
    (tuple, _hash_tuple, True, True),
    (dict, _hash_dict, True, True),
    (set, _hash_set, True, True),
    (frozenset, _hash_frozenset, True, True),
    (OrderedDict, _hash_ordereddict, True, False),
    (defaultdict, _hash_defaultdict, True, False),
    (deque, _hash_deque, True, False),
]:
    _register(_cls, _fn, container=_container, builtin=_builtin)
_CONTAINERS.update({_hash_namedtuple, _hash_dataclass, _hash_attrs})
#: classes whose encoding is fixed here (and frozen by the stability tests); those of
#: _LAZY_FIXED join when their module is first seen imported
_FIXED_ENCODINGS = set(_dispatch.registry)
#: (module, class name, handler) registered by _load_lazy_handlers
_LAZY_FIXED = (("fractions", "Fraction", _hash_fraction), ("uuid", "UUID", _hash_uuid))
del _cls, _fn, _container, _builtin


# --- numpy ---------------------------------------------------------------------------------------


def _register_numpy() -> None:
    import numpy as np

    _register(np.ndarray, _hash_ndarray, container=True)
    _register(np.ma.MaskedArray, _hash_masked_array, container=True)
    _register(np.generic, _hash_numpy_scalar)
    _register(np.dtype, _hash_numpy_dtype)


def _canonical_dtype(dtype: np.dtype[Any]) -> np.dtype[Any]:
    # Little-endian everywhere: the same numbers stored big-endian are the same value, and a
    # digest must not depend on the machine that computed it.
    return dtype.newbyteorder("<")


def _dtype_token(dtype: np.dtype[Any], hasher: Hasher) -> None:
    dtype = _canonical_dtype(dtype)
    if dtype.fields is None and dtype.subdtype is None:
        hasher.add_str(dtype.str)
    else:
        # dtype.str of a structured dtype is just "|V16"; the field names and types count.
        hasher.add_str("descr")
        hasher.add(dtype.descr)


def _hash_numpy_dtype(obj: np.dtype[Any], hasher: Hasher) -> None:
    hasher.add_tag("numpy.dtype")
    _dtype_token(obj, hasher)


def _hash_numpy_scalar(obj: Any, hasher: Hasher) -> None:
    import numpy as np

    # Like the Python scalar, but tagged with the dtype: float32(1) is not float64(1) or 1.0.
    # The 0-d array path applies the same NaN / -0.0 rules as for arrays.
    hasher.add_tag("numpy.scalar")
    array = np.asarray(obj)
    _dtype_token(array.dtype, hasher)
    _hash_array_data(array, hasher)


def _hash_ndarray(obj: np.ndarray[Any, Any], hasher: Hasher) -> None:
    import numpy as np

    if type(obj) is not np.ndarray:
        # A subclass (np.matrix, units-carrying arrays) may add meaning: tag its class and
        # keep any attributes it stores.
        hasher.add_tag("ndarray-subclass:" + _qualname(type(obj)))
        hasher.add(getattr(obj, "__dict__", None) or {})
    hasher.add_tag("ndarray")
    _dtype_token(obj.dtype, hasher)
    hasher.add(obj.shape)
    _hash_array_data(obj, hasher)


def _hash_masked_array(obj: Any, hasher: Hasher) -> None:
    import numpy as np

    # Data under the mask is garbage by definition: equal masked arrays may differ there, so
    # hash the mask and the data with masked slots zeroed.
    hasher.add_tag("numpy.ma")
    _dtype_token(obj.dtype, hasher)
    hasher.add(obj.shape)
    mask = np.ma.getmaskarray(obj)
    data = np.ma.getdata(obj)
    hasher.add_tag("mask")
    _hash_array_data(mask, hasher)
    if mask.any():
        data = np.where(mask, np.zeros((), dtype=data.dtype), data)
    _hash_array_data(data, hasher)
    hasher.add(obj.fill_value)  # filled() returns it, so a step can see it


def _c_order_chunks(array: np.ndarray[Any, Any], target: int) -> Iterator[np.ndarray[Any, Any]]:
    """1-D C-contiguous pieces whose concatenation is ``array``'s data in C order.

    Contiguous arrays are sliced (no copy). Other layouts (Fortran order, strided views) are
    copied one small block at a time, never as a whole.
    """
    import numpy as np

    if array.flags.c_contiguous:
        flat = array.reshape(-1)
        step = max(1, target // max(array.itemsize, 1))
        for start in range(0, flat.size, step):
            yield flat[start : start + step]
        return
    row_bytes = array.itemsize * (array[0].size if array.ndim > 1 else 1)
    if array.ndim > 1 and row_bytes >= target:
        for row in array:
            yield from _c_order_chunks(row, target)
        return
    rows = max(1, target // max(row_bytes, 1))
    for start in range(0, array.shape[0], rows):
        yield np.ascontiguousarray(array[start : start + rows]).reshape(-1)


def _hash_array_data(array: np.ndarray[Any, Any], hasher: Hasher) -> None:
    """Hash the values in C order; the dtype and shape are the caller's to write."""
    import numpy as np

    if array.size == 0:
        return  # the shape written by the caller already says there is nothing
    if type(array) is not np.ndarray:
        # A plain view: subclasses such as np.matrix change what slicing and reshape return.
        array = np.asarray(array)
    dtype = array.dtype
    if dtype.hasobject and dtype.fields is None:
        # Object arrays hold references: hash the referenced values, one by one.
        add = hasher.add
        for item in array.ravel().tolist():  # ravel: C order; tolist: the objects themselves
            add(item)
        return
    if dtype.fields is not None:
        # Field by field: padding between fields holds garbage, and fields may hold floats or
        # objects that need their own rules.
        for name in dtype.names or ():
            hasher.add_str(name)
            _hash_array_data(array[name], hasher)
        return
    if dtype.byteorder == ">" or (dtype.byteorder == "=" and sys.byteorder == "big"):
        array = array.astype(_canonical_dtype(dtype))  # rare: one copy to little-endian
    if dtype.kind in "fc":
        _hash_float_data(array, hasher)
        return
    state = hasher._state
    if array.flags.c_contiguous:
        # The fast path: the whole buffer at once, straight from memory.
        state.update(array.reshape(-1).view(np.uint8))
        return
    for piece in _c_order_chunks(array, _CHUNK_BYTES):
        state.update(piece.view(np.uint8))


def _hash_float_data(array: np.ndarray[Any, Any], hasher: Hasher) -> None:
    """Float and complex data with every NaN alike, from memory where possible.

    Each piece is checked while it sits in cache: its minimum is NaN exactly when it holds a
    NaN (NaN propagates through min). Only pieces that hold one are copied and canonicalised,
    so ordinary data is hashed from memory; the check costs less than the hash itself. -0.0
    keeps its sign bit, as for Python floats.
    """
    import numpy as np

    real = np.empty(0, dtype=array.dtype).real.dtype
    # x86's 80-bit long double sits in 12 or 16 bytes whose padding is garbage.
    significant = 10 if real.itemsize > 8 and np.finfo(real).nmant == 63 else real.itemsize
    long_double = real.itemsize > 8
    state = hasher._state
    # Signalling NaNs raise "invalid value" in arithmetic; they are data here, not an error.
    with np.errstate(invalid="ignore"):
        for piece in _c_order_chunks(array, _CHUNK_BYTES):
            values = piece.view(real)
            smallest = np.minimum.reduce(values)
            # A long double is always copied (rare; its bytes need trimming anyway).
            if long_double or smallest != smallest:
                values = values.copy()
                values[np.isnan(values)] = np.nan  # one NaN bit pattern for every NaN
            if significant != real.itemsize:
                values = values.view(np.uint8).reshape(-1, real.itemsize)[:, :significant]
                values = np.ascontiguousarray(values)
            state.update(values.view(np.uint8))


# --- pandas --------------------------------------------------------------------------------------


def _register_pandas() -> None:
    import pandas as pd

    _register(pd.DataFrame, _hash_dataframe, container=True)
    _register(pd.Series, _hash_series, container=True)
    _register(pd.Index, _hash_index, container=True)
    _register(pd.api.extensions.ExtensionArray, _hash_extension_array, container=True)
    _register(pd.Timestamp, _hash_timestamp)
    _register(pd.Timedelta, _hash_pd_timedelta)
    _register(type(pd.NaT), _hash_nat)
    _register(type(pd.NA), _hash_na)


# Nanoseconds per unit: Timestamps of different resolutions compare equal by instant.
_NS_PER_UNIT = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}


def _hash_timestamp(obj: Any, hasher: Hasher) -> None:
    # .value would overflow outside ns range (pandas 3 keeps other units); asm8 does not.
    # Aware timestamps compare by instant, and asm8 is the UTC instant.
    hasher.add_tag("pandas.Timestamp" if obj.tzinfo is None else "pandas.Timestamp-aware")
    hasher.add_int(int(obj.asm8.view("i8")) * _NS_PER_UNIT[obj.unit])


def _hash_pd_timedelta(obj: Any, hasher: Hasher) -> None:
    hasher.add_tag("pandas.Timedelta")
    hasher.add_int(int(obj.asm8.view("i8")) * _NS_PER_UNIT[obj.unit])


def _hash_nat(obj: Any, hasher: Hasher) -> None:
    hasher.add_tag("pandas.NaT")


def _hash_na(obj: Any, hasher: Hasher) -> None:
    hasher.add_tag("pandas.NA")


def _hash_attrs_dict(obj: Any, hasher: Hasher) -> None:
    # .attrs travels with the object through most operations, so it is part of the value.
    hasher.add(dict(obj.attrs))


def _hash_dataframe(obj: Any, hasher: Hasher) -> None:
    # Column order counts: df[["a", "b"]] and df[["b", "a"]] are different tables to a user.
    # The class counts too: a subclass (GeoDataFrame) can carry meaning of its own.
    hasher.add_tag("pandas.DataFrame:" + _qualname(type(obj)))
    hasher.add(obj.shape)
    _hash_index(obj.columns, hasher)
    _hash_index(obj.index, hasher)
    for _, column in obj.items():
        _hash_pandas_values(column.array, hasher)
    _hash_attrs_dict(obj, hasher)


def _hash_series(obj: Any, hasher: Hasher) -> None:
    hasher.add_tag("pandas.Series:" + _qualname(type(obj)))
    hasher.add(obj.name)
    _hash_index(obj.index, hasher)
    _hash_pandas_values(obj.array, hasher)
    _hash_attrs_dict(obj, hasher)


def _hash_index(obj: Any, hasher: Hasher) -> None:
    import pandas as pd

    # The index class counts (a RangeIndex is not an Int64 Index with the same numbers).
    hasher.add_tag("pandas.Index:" + _qualname(type(obj)))
    hasher.add(list(obj.names))
    if isinstance(obj, pd.RangeIndex):
        # Cheap: a RangeIndex is its range, whatever its length.
        hasher.add(range(obj.start, obj.stop, obj.step))
    elif isinstance(obj, pd.MultiIndex):
        # The values of each level, not levels + codes: unused levels and level order differ
        # between equal MultiIndexes built different ways.
        hasher.add_int(obj.nlevels)
        for level in range(obj.nlevels):
            _hash_pandas_values(obj.get_level_values(level).array, hasher)
    else:
        _hash_pandas_values(obj.array, hasher)


def _hash_extension_array(obj: Any, hasher: Hasher) -> None:
    hasher.add_tag("pandas.array:" + _qualname(type(obj)))
    _hash_pandas_values(obj, hasher)


def _hash_pandas_values(values: Any, hasher: Hasher) -> None:
    """A column's dtype and values, read from its buffers where pandas keeps them."""
    import numpy as np
    import pandas as pd

    dtype = values.dtype
    # str(dtype) carries the time zone, the period frequency, the NA flavour of strings and
    # the arrow type; categories are hashed with the values below.
    hasher.add_str(str(dtype))
    hasher.add_int(len(values))
    if isinstance(values, np.ndarray):
        _hash_array_data(values, hasher)
    elif isinstance(
        values, pd.arrays.ArrowExtensionArray | pd.arrays.ArrowStringArray | pd.arrays.StringArray
    ):
        import pyarrow as pa

        # Python-backed strings (a NumpyExtensionArray subclass, hence first) go through arrow
        # too, so both storages of "str" hash alike.
        _hash_arrow(pa.chunked_array(values.__arrow_array__()), hasher)
    elif isinstance(values, pd.arrays.NumpyExtensionArray):
        _hash_array_data(values.to_numpy(), hasher)  # a view of the block, no copy
    elif isinstance(values, pd.arrays.DatetimeArray):
        # The UTC instants as datetime64, viewed without a copy (tz-aware included).
        _hash_array_data(np.asarray(values, dtype=dtype.base), hasher)
    elif isinstance(values, pd.arrays.TimedeltaArray):
        _hash_array_data(np.asarray(values), hasher)
    elif isinstance(values, pd.arrays.PeriodArray):
        _hash_array_data(np.asarray(values.asi8), hasher)
    elif isinstance(values, pd.Categorical):
        # Categories and codes; the ordered flag changes comparisons, so it counts.
        hasher.add(bool(dtype.ordered))
        _hash_index(values.categories, hasher)
        _hash_array_data(values.codes, hasher)
    elif isinstance(
        values, pd.arrays.BooleanArray | pd.arrays.IntegerArray | pd.arrays.FloatingArray
    ):
        _hash_masked(values._data, values._mask, hasher)
    else:
        # Sparse, interval and third-party arrays: their Python values, one by one.
        _hash_array_data(np.asarray(values, dtype=object), hasher)


def _hash_masked(data: np.ndarray[Any, Any], mask: np.ndarray[Any, Any], hasher: Hasher) -> None:
    import numpy as np

    # Nullable arrays keep arbitrary data under NA; only the unmasked values are the value.
    has_na = bool(mask.any())
    hasher.add(has_na)
    if has_na:
        _hash_array_data(mask, hasher)
        data = np.where(mask, np.zeros((), dtype=data.dtype), data)
    _hash_array_data(data, hasher)


def _hash_arrow(chunked: pa.ChunkedArray, hasher: Hasher) -> None:
    """Arrow data, independent of chunking, slicing offsets and bytes under nulls."""
    import numpy as np
    import pyarrow as pa

    types = pa.types
    if chunked.num_chunks == 1:
        array = chunked.chunk(0)
    elif chunked.num_chunks == 0:
        array = pa.array([], type=chunked.type)
    else:
        array = chunked.combine_chunks()  # chunk boundaries are not part of the value
    hasher.add_int(array.null_count)
    if array.null_count:
        # Which slots are null, then the valid values alone: bytes under a null are undefined.
        _hash_array_data(array.is_null().to_numpy(zero_copy_only=False), hasher)
        array = array.drop_null()
    kind = array.type
    if types.is_string(kind) or types.is_large_string(kind):
        hasher.add_tag("arrow-text")
        _hash_arrow_binary(array, hasher)
    elif types.is_binary(kind) or types.is_large_binary(kind):
        hasher.add_tag("arrow-bytes")
        _hash_arrow_binary(array, hasher)
    elif types.is_integer(kind) or types.is_floating(kind) or types.is_temporal(kind):
        hasher.add_tag("arrow-fixed")
        # Zero-copy for fixed-width types without nulls; the numpy path adds the float rules.
        values = array.to_numpy(zero_copy_only=False)
        _dtype_token(values.dtype, hasher)
        _hash_array_data(np.asarray(values), hasher)
    else:
        # Booleans are bit-packed, nested and dictionary types have layouts of their own:
        # their Python values are canonical.
        hasher.add_tag("arrow-values")
        hasher.add(array.to_pylist())


def _hash_arrow_binary(array: pa.Array, hasher: Hasher) -> None:
    import numpy as np
    import pyarrow as pa

    # The lengths then the bytes: string vs large_string offsets and a slice's starting
    # offset are storage details, so neither is hashed as stored.
    hasher.add_tag("lengths")
    if len(array) == 0:
        hasher.add_int(0)  # what the general path writes for no strings; there may be no buffers
        return
    _, offsets_buffer, data_buffer = array.buffers()[:3]
    large = pa.types.is_large_string(array.type) or pa.types.is_large_binary(array.type)
    width = 8 if large else 4
    offsets = np.frombuffer(offsets_buffer, dtype=f"<i{width}")
    offsets = offsets[array.offset : array.offset + len(array) + 1]
    _hash_array_data(np.diff(offsets).astype("<i8"), hasher)
    start, stop = int(offsets[0]), int(offsets[-1])
    hasher.add_int(stop - start)
    if stop > start:
        hasher._raw(memoryview(data_buffer)[start:stop])
