"""Build-time compatibility of a producer's return type with a consumer's parameter type.

:func:`is_compatible` answers "may a value declared as ``provided`` be passed where ``expected``
is annotated?" the way a careful user reads annotations: subclasses are accepted, ``int`` passes
for ``float`` (PEP 484 numeric tower), unions and generics are compared member by member, and
generic arguments are compared covariantly even for mutable containers such as ``list``.

The check is lenient wherever the annotations cannot decide (unresolved forward references,
non-runtime protocols, bare generics against parametrized ones, unknown typing constructs): a
false alarm would stop a pipeline that runs fine, while a missed mismatch only surfaces later as
the step's own error. It is never lenient on a clear mismatch such as ``str`` for ``int``.

:func:`type_repr` names a type for error messages (``pandas.DataFrame``, ``list[int]``,
``int | None``).

This module is imported whenever a pipeline is built, so it imports nothing heavy (no pandas,
no numpy): third-party classes are only ever looked up in :data:`sys.modules`.
"""

from __future__ import annotations

import collections.abc
import inspect
import types
import typing
from typing import Any

from stepflow._humanize import type_name

__all__ = ["is_compatible", "is_known_fit", "type_repr"]

# PEP 484: "when an argument is annotated as having type float, an argument of type int is
# acceptable; similar, for an argument annotated as having type complex, arguments of type
# float or int are acceptable". bool is covered through its subclassing of int.
_PROMOTIONS: dict[type, tuple[type, ...]] = {float: (int,), complex: (int, float)}

# typing spells these differently across versions; collect the ones this Python has.
_UNION_ORIGINS: tuple[object, ...] = (typing.Union, types.UnionType)
_BOTTOM_TYPES: tuple[object, ...] = tuple(
    getattr(typing, name) for name in ("NoReturn", "Never") if hasattr(typing, name)
)
_LITERAL_STRING: object = getattr(typing, "LiteralString", None)

# Recursive annotations (through ForwardRefs resolved by hand, or pathological aliases) must not
# blow the stack; past this depth the answer is "cannot decide", hence lenient.
_MAX_DEPTH = 40


def is_compatible(provided: object, expected: object) -> bool:
    """True when a value declared as ``provided`` may be passed where ``expected`` is annotated.

    Both arguments are annotations as :func:`typing.get_type_hints` returns them (with
    ``include_extras=True``); ``typing.Any`` or :attr:`inspect.Parameter.empty` means
    "unannotated". The function never raises: whatever it cannot interpret counts as compatible.

    >>> is_compatible(int, float), is_compatible(float, int)
    (True, False)
    >>> is_compatible(list[bool], typing.Sequence[int]), is_compatible(int | None, int)
    (True, False)
    """
    try:
        return _compatible(provided, expected, 0)
    except Exception:  # an odd annotation must never break a pipeline build
        return True


def is_known_fit(provided: object, expected: object) -> bool:
    """True when both annotations name a definite type and ``provided`` fits ``expected``.

    :func:`is_compatible` says yes whenever it cannot decide, so as not to stop a pipeline
    that runs fine. A suggestion ("step 'houses' produces a pandas.DataFrame; rename the
    parameter to 'houses'") needs the opposite: evidence. So an annotation that says nothing
    definite (missing, ``Any``, ``object``, an unresolved forward reference, an unbounded
    ``TypeVar``, ``NoReturn``) never fits here, on either side. Never raises.

    >>> is_known_fit(bool, int), is_known_fit(typing.Any, int), is_known_fit(int, object)
    (True, False, False)
    """
    try:
        if _is_vague(provided) or _is_vague(expected):
            return False
        return _compatible(provided, expected, 0)
    except Exception:  # an odd annotation is no evidence
        return False


def _is_vague(tp: object) -> bool:
    """An annotation that would accept (or be accepted by) nearly anything."""
    tp = _normalize(tp)
    if tp is Any or tp is object or tp in _BOTTOM_TYPES or _is_undecidable(tp):
        return True
    if isinstance(tp, typing.TypeVar):
        return not tp.__constraints__ and tp.__bound__ is None
    return False


def type_repr(tp: object) -> str:
    """A readable name of the annotation ``tp`` for error messages.

    Classes are named by the shortest import path that re-exports them (``pandas.DataFrame``
    rather than ``pandas.core.frame.DataFrame``), builtins by their bare name; generics, unions
    and literals are written in PEP 585/604 style (``dict[str, float]``, ``int | None``,
    ``Literal['a', 'b']``). ``Annotated`` metadata is left out. Never raises.

    >>> type_repr(dict[str, list[int]]), type_repr(typing.Optional[int])
    ('dict[str, list[int]]', 'int | None')
    """
    return type_name(tp)


# --------------------------------------------------------------------------------------------
# Normalisation and classification


def _normalize(tp: object) -> object:
    """Strip what carries no type information: ``Annotated`` extras, "unannotated", ``None``."""
    # Annotated may nest (Annotated[Annotated[int, a], b] is flattened by typing, but aliases
    # built by hand might not be), so strip until nothing is left to strip.
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    if tp is inspect.Parameter.empty:
        return Any
    if tp is None:
        return type(None)
    if _LITERAL_STRING is not None and tp is _LITERAL_STRING:
        # LiteralString is a str whose provenance a runtime check cannot see.
        return str
    return tp


def _is_undecidable(tp: object) -> bool:
    """Unresolved annotations (``"pd.DataFrame"``, ``ForwardRef``) name no type we can test."""
    return isinstance(tp, (str, typing.ForwardRef))


def _is_union(tp: object) -> bool:
    return typing.get_origin(tp) in _UNION_ORIGINS


def _is_literal(tp: object) -> bool:
    return typing.get_origin(tp) is typing.Literal


def _is_newtype(tp: object) -> bool:
    return isinstance(tp, typing.NewType)


def _literal_key(value: object) -> tuple[type, object]:
    """Literal values compared with their type, since ``1 == True`` but ``Literal[1]`` is not
    ``Literal[True]``."""
    return (type(value), value)


def _class_of(tp: object) -> type | None:
    """The runtime class behind ``tp`` (``list`` for ``list[int]``), or None if there is none."""
    # the origin first: on some Pythons isinstance(list[int], type) is true, and issubclass
    # refuses parametrized generics
    origin = typing.get_origin(tp)
    if origin is not None:
        return origin if isinstance(origin, type) else None
    return tp if isinstance(tp, type) else None


def _args_of(tp: object) -> tuple[object, ...]:
    """Type arguments of a parametrized generic, or those implied by a typed NamedTuple."""
    args = typing.get_args(tp)
    if args or not isinstance(tp, type):
        return args
    return _namedtuple_fields(tp) or ()


def _namedtuple_fields(cls: type) -> tuple[object, ...] | None:
    """Field types of a ``typing.NamedTuple`` class, so it can stand for ``tuple[A, B]``."""
    if not (issubclass(cls, tuple) and hasattr(cls, "_fields")):
        return None
    try:
        hints = typing.get_type_hints(cls, include_extras=True)
    except Exception:  # unresolvable string annotations: compare leniently
        return None
    fields: tuple[str, ...] = cls._fields  # type: ignore[attr-defined]
    if not fields or any(name not in hints for name in fields):
        return None  # collections.namedtuple: untyped fields
    return tuple(hints[name] for name in fields)


# --------------------------------------------------------------------------------------------
# Compatibility


def _compatible(provided: object, expected: object, depth: int) -> bool:
    """Dispatch on the shapes of both annotations; every branch is lenient when undecidable."""
    if depth > _MAX_DEPTH:
        return True
    depth += 1
    provided, expected = _normalize(provided), _normalize(expected)

    if _is_undecidable(provided) or _is_undecidable(expected):
        return True
    if expected is Any or expected is object or provided is Any:
        return True
    if provided in _BOTTOM_TYPES:
        return True  # a step that never returns produces nothing incompatible
    if expected in _BOTTOM_TYPES:
        return provided in _BOTTOM_TYPES
    if provided == expected:
        return True

    # TypeVars before unions: a constrained TypeVar behaves like a union of its constraints.
    if isinstance(expected, typing.TypeVar):
        return _compatible_with_typevar(provided, expected, depth)
    if isinstance(provided, typing.TypeVar):
        return _typevar_compatible(provided, expected, depth)

    # A provided union must fit as a whole, so split it before looking at an expected union:
    # `int | None` against `int | None` holds member by member, but neither `int` nor `None`
    # alone accepts the whole `int | None`.
    if _is_union(provided):
        return all(_compatible(m, expected, depth) for m in typing.get_args(provided))
    if _is_literal(provided) and len(typing.get_args(provided)) > 1:
        # Literal['a', 'b'] is a union of single-value literals, which matters when the
        # expected side is a union of literals.
        return all(
            _compatible(typing.Literal[v], expected, depth) for v in typing.get_args(provided)
        )
    if _is_union(expected):
        return any(_compatible(provided, m, depth) for m in typing.get_args(expected))

    if _is_newtype(provided) or _is_newtype(expected):
        return _compatible_newtypes(provided, expected, depth)
    if _is_literal(provided) or _is_literal(expected):
        return _compatible_literals(provided, expected, depth)
    return _compatible_classes(provided, expected, depth)


def _compatible_with_typevar(provided: object, expected: typing.TypeVar, depth: int) -> bool:
    """An expected TypeVar accepts anything within its bound or one of its constraints."""
    if expected.__constraints__:
        return any(_compatible(provided, c, depth) for c in expected.__constraints__)
    if expected.__bound__ is not None:
        return _compatible(provided, expected.__bound__, depth)
    return True


def _typevar_compatible(provided: typing.TypeVar, expected: object, depth: int) -> bool:
    """A provided TypeVar stands for its bound; an unbound one for Any.

    A constrained TypeVar could be any of its constraints, and which one is decided where the
    producer is called, which a build-time check cannot see: accept if any constraint fits
    (lenient), reject only when none can.
    """
    if provided.__constraints__:
        return any(_compatible(c, expected, depth) for c in provided.__constraints__)
    if provided.__bound__ is not None:
        return _compatible(provided.__bound__, expected, depth)
    return True


def _compatible_newtypes(provided: object, expected: object, depth: int) -> bool:
    """NewTypes are their supertype at runtime.

    A provided NewType is unwrapped to its supertype (``UserId`` passes for ``int``). For an
    expected NewType the strict answer would reject the plain supertype (``int`` for
    ``UserId``), but a pipeline step returning ``int`` for a consumer of ``UserId`` is the
    common, harmless case, so the supertype is accepted leniently; unrelated types are not.
    """
    # Unwrap the provided side one level at a time so that a NewType of a NewType still
    # matches its intermediate NewType by identity before falling back to the supertype.
    if _is_newtype(provided):
        return _compatible(provided.__supertype__, expected, depth)  # type: ignore[attr-defined]
    return _compatible(provided, expected.__supertype__, depth)  # type: ignore[attr-defined]


def _compatible_literals(provided: object, expected: object, depth: int) -> bool:
    """Literals against literals compare values; against classes compare the values' types."""
    if _is_literal(provided) and _is_literal(expected):
        allowed = {_literal_key(v) for v in typing.get_args(expected)}
        return all(_literal_key(v) in allowed for v in typing.get_args(provided))
    if _is_literal(provided):
        # Every value must be an instance of the expected type: Literal['a'] passes for str.
        return all(_compatible(type(v), expected, depth) for v in typing.get_args(provided))
    # A plain class for an expected Literal: the producer may return a value outside the
    # literal set, which only the running step can tell, so accept when the class could hold
    # one of the values (str for Literal['a']) and reject when it cannot (int for Literal['a']).
    return any(_compatible(provided, type(v), depth) for v in typing.get_args(expected))


def _compatible_classes(provided: object, expected: object, depth: int) -> bool:
    """Classes and parametrized generics: origins by issubclass, then arguments covariantly."""
    expected_cls = _class_of(expected)
    provided_cls = _class_of(provided)
    if expected_cls is None or provided_cls is None:
        return True  # typing constructs we do not model (Callable pieces, ParamSpec, ...)

    if not _is_subclass(provided_cls, expected_cls):
        return False
    if expected_cls is collections.abc.Callable or provided_cls is collections.abc.Callable:
        return True  # parameter lists of callables are not compared, by design
    return _compatible_args(provided, provided_cls, expected, expected_cls, depth)


def _is_subclass(provided: type, expected: type) -> bool:
    """issubclass with the numeric tower and leniency for protocols that cannot be tested."""
    if getattr(expected, "_is_protocol", False) and not getattr(
        expected, "_is_runtime_protocol", False
    ):
        return True  # structural, and not runtime_checkable: cannot decide
    promoted = _PROMOTIONS.get(expected, ())
    if promoted and issubclass(provided, promoted):
        return True
    try:
        return issubclass(provided, expected)
    except TypeError:
        # e.g. runtime_checkable protocols with data members refuse issubclass
        return True


def _compatible_args(
    provided: object, provided_cls: type, expected: object, expected_cls: type, depth: int
) -> bool:
    """Compare type arguments once the origins are known to fit."""
    expected_args = typing.get_args(expected)
    provided_args = _args_of(provided)
    if not expected_args or not provided_args:
        # a bare generic on either side (`list` vs `list[int]`) says nothing about elements
        return True

    if issubclass(provided_cls, tuple):
        if issubclass(expected_cls, tuple):
            return _compatible_tuples(provided_args, expected_args, depth)
        if len(expected_args) == 1:
            # tuple[int, str] as a Sequence[...] / Iterable[...]: every element must fit
            elements = _tuple_elements(provided_args)
            return all(_compatible(e, expected_args[0], depth) for e in elements)
        return True

    if len(provided_args) == len(expected_args):
        return all(
            _compatible(p, e, depth) for p, e in zip(provided_args, expected_args, strict=True)
        )
    if (
        len(provided_args) == 2
        and len(expected_args) == 1
        and issubclass(provided_cls, collections.abc.Mapping)
    ):
        # dict[str, int] used as Iterable[str] / Collection[str]: mappings iterate their keys
        return _compatible(provided_args[0], expected_args[0], depth)
    # argument lists that do not line up (user generics with reordered parameters...)
    return True


def _tuple_elements(args: tuple[object, ...]) -> tuple[object, ...]:
    """Element types of ``tuple[A, B]`` (A, B) or ``tuple[A, ...]`` (A)."""
    if len(args) == 2 and args[1] is Ellipsis:
        return (args[0],)
    return args


def _compatible_tuples(
    provided_args: tuple[object, ...], expected_args: tuple[object, ...], depth: int
) -> bool:
    """Fixed and variadic tuples: element by element, lengths must agree when both are fixed."""
    provided_variadic = len(provided_args) == 2 and provided_args[1] is Ellipsis
    expected_variadic = len(expected_args) == 2 and expected_args[1] is Ellipsis
    if expected_variadic:
        item = expected_args[0]
        return all(_compatible(p, item, depth) for p in _tuple_elements(provided_args))
    if provided_variadic:
        # tuple[int, ...] for tuple[int, int]: the length is unknown until run time, so only
        # the element type is checked (mypy makes the same concession).
        item = provided_args[0]
        return all(_compatible(item, e, depth) for e in expected_args)
    if len(provided_args) != len(expected_args):
        return False
    return all(_compatible(p, e, depth) for p, e in zip(provided_args, expected_args, strict=True))
