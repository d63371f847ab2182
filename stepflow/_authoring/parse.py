"""Turn ``--param k=v`` text, and Python values given to ``run(params=...)``, into typed values.

A pipeline parameter is typed by its annotation. On the command line every value arrives as
text, so :func:`parse_value` reads the text the way the annotation asks (``int``, ``list[int]``,
``Literal["a", "b"]``, an ``Enum``, a ``Path``...). From Python, :func:`check_value` accepts a
value that already fits, coerces a few harmless cases (``int`` for ``float``, ``str`` for
``Path``, text for anything, exactly as the command line would read it) and rejects the rest.

Every failure is a :class:`~stepflow.errors.ParameterParseError` whose message names the
parameter, the value it got, the type it expects and what to pass instead.
"""

from __future__ import annotations

import collections.abc as abc
import datetime
import decimal
import enum
import inspect
import json
import math
import numbers
import operator
import os
import pathlib
import types
import typing
from typing import Annotated, Any, Literal, NamedTuple, Union, get_args, get_origin

from stepflow._humanize import NOT_FINITE, parse_seconds, type_name
from stepflow.errors import ParameterParseError

__all__ = ["check_value", "parse_value", "split_assignment"]

_NoneType = type(None)

# `--param token=env:VAR`: a secret parameter's value read from an environment variable.
_ENV_PREFIX = "env:"

# Text that means "no value" for an Optional parameter (compared after strip + lower).
_NONE_TEXT = frozenset({"", "none", "null"})
_BOOL_TEXT = {
    "true": True,
    "yes": True,
    "on": True,
    "1": True,
    "false": False,
    "no": False,
    "off": False,
    "0": False,
}

# Collection origins and the type a value for them is built as. Abstract origins cannot be
# instantiated; for them a Python value keeps its own type when it is one of _KEEP's.
_ORDERED: dict[object, type] = {
    list: list,
    tuple: tuple,
    abc.Sequence: list,
    abc.MutableSequence: list,
    abc.Collection: list,
    abc.Iterable: list,
}
_UNORDERED: dict[object, type] = {
    set: set,
    frozenset: frozenset,
    abc.Set: frozenset,
    abc.MutableSet: set,
}
_ANY_COLLECTION = (list, tuple, set, frozenset)
_KEEP: dict[object, tuple[type, ...]] = {
    abc.Sequence: (list, tuple),
    abc.Collection: _ANY_COLLECTION,
    abc.Iterable: _ANY_COLLECTION,
    abc.Set: (set, frozenset),
}
_MAPPINGS = frozenset({dict, abc.Mapping, abc.MutableMapping})

# How much of a value a message shows; long values would bury the message.
_SHOW_LIMIT = 60
_ITEM_SHOW_LIMIT = 30


class _Invalid(Exception):
    """Internal: a value does not fit its type; ``reason`` says why when the type alone does not.

    The public functions turn it into a ParameterParseError carrying the parameter's name; the
    helpers below do not know the name, and nested items add their position to the reason.
    """

    def __init__(self, reason: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason


class _Desc(NamedTuple):
    """What a type accepts, in words, and example values of it (for the "how to fix" hint)."""

    text: str
    examples: tuple[object, ...] = ()


# --- public API ------------------------------------------------------------------------------


def split_assignment(text: str) -> tuple[str, str]:
    """Split one ``--param`` argument into its name and its value text.

    The first ``=`` splits, so values may contain ``=``; the name is stripped, the value is
    kept exactly as typed (its annotation decides what whitespace means).

    >>> split_assignment("n=20")
    ('n', '20')
    >>> split_assignment(" query = a=b")
    ('query', ' a=b')

    :raises ParameterParseError: the text has no ``=`` or nothing before it.
    """
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep:
        if key.isidentifier():
            # Most likely the value was forgotten: show the name the user meant.
            message = (
                f"--param {_show(text)} has no value; "
                f"write it as --param NAME=VALUE, e.g. --param {key}=VALUE"
            )
            raise ParameterParseError(message, parameter=key, value=text)
        message = (
            f"--param {_show(text)} is not NAME=VALUE; "
            "write it as --param NAME=VALUE, e.g. --param n=20"
        )
        raise ParameterParseError(message, value=text)
    if not key:
        raise ParameterParseError(
            f"--param {_show(text)} has no name before '='; "
            "write it as --param NAME=VALUE, e.g. --param n=20",
            value=text,
        )
    return key, value


def parse_value(name: str, text: str, annotation: object, *, secret: bool = False) -> object:
    """Parse command-line text into a value of ``annotation``.

    ``name`` is the parameter's name, used in error messages only. Unannotated parameters
    (``inspect.Parameter.empty``) and ``Any`` read the text as JSON when they can and keep the
    text otherwise. With ``secret=True`` errors never show the text (``Secret[T]`` parameters),
    and text ``env:VAR`` reads the value from the environment variable ``VAR``, so a secret
    need not be typed on a command line where ``ps`` and the shell's history show it. For a
    parameter that is not secret, ``env:...`` is plain text like any other.

    >>> parse_value("n", "1_000", int)
    1000
    >>> parse_value("ns", "1,2,3", list[int])
    [1, 2, 3]
    >>> parse_value("limit", "none", int | None) is None
    True
    >>> parse_value("every", "1h30m", datetime.timedelta)
    datetime.timedelta(seconds=5400)
    >>> parse_value("n", "ten", int)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    stepflow.errors.ParameterParseError: parameter 'n' expects int, got 'ten'; pass a whole ...

    :raises ParameterParseError: the text is not a valid value of ``annotation``, or names an
        environment variable that is not set.
    """
    if secret and text.startswith(_ENV_PREFIX):
        text = _from_environment(name, text[len(_ENV_PREFIX) :])
    try:
        return _parse(text, annotation)
    except _Invalid as exc:
        got = "a secret value" if secret else _show(text)
        fix = _cli_fix(name, annotation)
        raise _error(name, got, exc.reason, fix, text, annotation, secret) from None


def _from_environment(name: str, variable: str) -> str:
    """The text of secret parameter ``name`` from environment variable ``variable``."""
    example = f"--param {name}=env:API_TOKEN"
    if not variable:
        raise ParameterParseError(
            f"parameter {name!r}: env: needs the name of an environment variable, e.g. {example}",
            parameter=name,
        )
    value = os.environ.get(variable)
    if value is None:
        raise ParameterParseError(
            f"parameter {name!r} is read from the environment variable {variable} "
            f"(--param {name}=env:{variable}), which is not set; set it (export {variable}=...) "
            f"in the shell that runs stepflow",
            parameter=name,
        )
    return value


def check_value(name: str, value: object, annotation: object, *, secret: bool = False) -> object:
    """Check a Python value against ``annotation`` and return the value to use.

    A value that fits is returned as is. A few harmless conversions are made so the parameter
    has the declared type: ``int`` -> ``float``/``Decimal``, ``str``/``os.PathLike`` -> ``Path``,
    a list for a ``tuple``/``set``, numbers of seconds for a ``timedelta``, an Enum's value for
    its member. Text given for a non-``str`` annotation is read exactly as :func:`parse_value`
    reads it, so ``run(params={"n": "20"})`` works like ``--param n=20``. ``bool`` is never
    accepted as a number, and ``None`` only where the annotation allows it. With
    ``secret=True`` errors never show the value (``Secret[T]`` parameters).

    >>> check_value("rate", 1, float)
    1.0
    >>> check_value("n", "20", int)
    20
    >>> check_value("ns", (1, 2), list[int])
    [1, 2]
    >>> check_value("n", True, int)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    stepflow.errors.ParameterParseError: parameter 'n' expects int, got bool True; a bool is ...

    :raises ParameterParseError: the value does not fit ``annotation``.
    """
    try:
        return _check(value, annotation, strict=False)
    except _Invalid as exc:
        kind = type(value).__name__
        if secret:
            got = f"a secret value of type {kind}"
        else:
            got = "None" if value is None else f"{kind} {_show(value)}"
        fix = _python_fix(annotation)
        raise _error(name, got, exc.reason, fix, value, annotation, secret) from None


def _error(
    name: str,
    got: str,
    reason: str | None,
    fix: str,
    value: object,
    annotation: object,
    secret: bool,
) -> ParameterParseError:
    # Reasons may quote items or the text of an exception, so a secret's error drops them.
    parts = [f"parameter {name!r} expects {_type_name(annotation)}, got {got}"]
    if reason and not secret:
        parts.append(reason)
    parts.append(fix)
    return ParameterParseError(
        "; ".join(parts),
        parameter=name,
        value=None if secret else value,
        annotation=annotation,
    )


# --- type names and descriptions ---------------------------------------------------------------


def _type_name(annotation: object) -> str:
    """A readable name for an annotation, as a user would write it: ``list[int]``, ``int | None``.

    Classes go by their bare name (``Path``): a ``--param`` message speaks of the value, not of
    where its class lives.

    >>> _type_name(typing.Optional[typing.List[int]])
    'list[int] | None'
    """
    return type_name(annotation, qualified=False)


def _describe(annotation: object) -> _Desc:
    """What ``annotation`` accepts, in words, with up to two example values."""
    tp = _unwrap(annotation)
    if tp is Any:
        return _Desc("any value", ("abc",))
    if tp is _NoneType:
        return _Desc("none", (None,))
    origin = get_origin(tp)
    if origin is Union or origin is types.UnionType:
        members = [a for a in get_args(tp) if _unwrap(a) is not _NoneType]
        descs = [_describe(a) for a in members]
        text = " or ".join(d.text for d in descs)
        if len(members) < len(get_args(tp)):
            text = f"{text} or none" if text else "none"
        return _Desc(text, descs[0].examples if descs else (None,))
    if origin is Literal:
        values = get_args(tp)
        return _Desc("one of " + ", ".join(_literal_choice(v) for v in values), values[:2])
    container = origin if origin is not None else tp
    args = get_args(tp)
    fixed = _fixed_tuple_args(tp)
    if fixed == ():
        return _Desc("nothing (an empty tuple)", ((),))
    if fixed is not None:
        descs = [_describe(a) for a in fixed]
        example = tuple(d.examples[0] if d.examples else "..." for d in descs)
        items = ", ".join(d.text for d in descs)
        return _Desc(f"{len(fixed)} comma-separated items ({items})", (example,))
    kind = _container_kind(container)
    if kind == "items":
        item_tp = _unwrap(args[0] if args else Any)
        item = _describe(item_tp)
        build = _ORDERED.get(container) or _UNORDERED[container]
        try:
            example = build(item.examples[:2]) if item.examples else ()
        except TypeError:  # a set of lists cannot exist, so there is no example of it
            example = ()
        if _container_kind(get_origin(item_tp) or item_tp) is not None:
            # Items that are collections themselves can only be written as JSON.
            text = f"a JSON array of {_type_name(item_tp)} values"
        else:
            text = f"a JSON array or comma-separated items, each {item.text}"
        return _Desc(text, (example,) if example else ())
    if kind == "mapping":
        key_tp, val_tp = args if len(args) == 2 else (str, Any)
        key, val = _describe(key_tp), _describe(val_tp)
        text = f"a JSON object of {key.text} to {val.text}"
        try:
            return _Desc(text, ({key.examples[0]: val.examples[0]},))
        except (IndexError, TypeError):  # no example of the key or value, or an unhashable key
            return _Desc(text)
    if not isinstance(tp, type):
        return _Desc(f"a value of type {_type_name(tp)}")
    return _describe_class(tp)


def _describe_class(cls: type) -> _Desc:
    if cls is str:
        return _Desc("text", ("abc", "def"))
    if cls is bool:
        return _Desc("true or false (or yes/no, on/off, 1/0)", (True, False))
    if cls is int:
        return _Desc("a whole number", (20, 30))
    if cls is float:
        return _Desc("a number", (0.5, 1.5))
    if cls is bytes:
        return _Desc("text", (b"abc", b"def"))
    if cls is decimal.Decimal:
        return _Desc("a decimal number", (decimal.Decimal("1.25"), decimal.Decimal("2.5")))
    if cls is datetime.datetime:
        return _Desc("an ISO 8601 date and time", (datetime.datetime(2024, 1, 31, 12, 0),))
    if cls is datetime.date:
        return _Desc("an ISO 8601 date", (datetime.date(2024, 1, 31),))
    if cls is datetime.time:
        return _Desc("an ISO 8601 time", (datetime.time(12, 30),))
    if cls is datetime.timedelta:
        return _Desc(
            "a duration in seconds or with units (90s, 5m, 2h, 1d, 1h30m)",
            (datetime.timedelta(minutes=5), datetime.timedelta(hours=1, minutes=30)),
        )
    if issubclass(cls, enum.Enum):
        members = list(cls)
        names = ", ".join(m.name for m in members[:10]) + (", ..." if len(members) > 10 else "")
        return _Desc(f"one of {names}", tuple(members[:2]))
    if issubclass(cls, pathlib.PurePath):
        return _Desc("a path", (cls("data/a.csv"), cls("data/b.csv")))
    for attr in ("from_string", "fromisoformat"):
        if _class_factory(cls, attr) is not None:
            return _Desc(f"text that {cls.__qualname__}.{attr}() accepts")
    return _Desc(f"text that {cls.__qualname__}() accepts")


def _literal_choice(value: object) -> str:
    if isinstance(value, enum.Enum):
        return value.name
    return repr(value)


def _cli_fix(name: str, annotation: object) -> str:
    desc = _describe(annotation)
    if not desc.examples:
        return f"pass {desc.text}, as in --param {name}=VALUE"
    import shlex  # an error message's only: not on every run's imports

    return f"pass {desc.text} such as --param {name}={shlex.quote(_cli_text(desc.examples[0]))}"


def _python_fix(annotation: object) -> str:
    desc = _describe(annotation)
    if not desc.examples:
        return f"pass a {_type_name(annotation)} or {desc.text}"
    return f"pass {desc.text} such as {_python_text(desc.examples[0])}"


def _cli_text(value: object) -> str:
    """How ``value`` is written after ``--param NAME=``; the inverse of parse_value."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, datetime.timedelta):
        return _duration_text(value)
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, (list, tuple, set, frozenset)):
        items = list(value)
        # Comma-separated only works when no item is itself a collection or contains a comma.
        texts = [_cli_text(i) for i in items]
        if all(not isinstance(i, (list, tuple, set, frozenset, dict)) for i in items) and all(
            "," not in t for t in texts
        ):
            return ",".join(texts)
        return json.dumps(_jsonable(value))
    if isinstance(value, dict):
        return json.dumps(_jsonable(value))
    return str(value)


def _jsonable(value: object) -> object:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(i) for i in value]
    if isinstance(value, dict):
        return {_cli_text(k): _jsonable(v) for k, v in value.items()}
    return _cli_text(value)


def _python_text(value: object) -> str:
    # A path is accepted as a str, and "'data/a.csv'" reads better than "PosixPath(...)".
    if isinstance(value, pathlib.PurePath):
        return repr(str(value))
    if isinstance(value, enum.Enum):
        return f"{type(value).__qualname__}.{value.name}"
    return repr(value)


def _duration_text(value: datetime.timedelta) -> str:
    seconds = value.total_seconds()
    if seconds < 0 or seconds != int(seconds):
        return repr(seconds)
    rest, parts = int(seconds), []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, rest = divmod(rest, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


def _show(value: object, limit: int = _SHOW_LIMIT) -> str:
    """``repr(value)``, cut to at most ``limit`` characters."""
    return _cut(repr(value), limit)


def _exc_text(exc: BaseException) -> str:
    message = str(exc)
    name = type(exc).__name__
    return f"{name}: {_cut(message, 100)}" if message else name


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- annotations -------------------------------------------------------------------------------


def _unwrap(annotation: object) -> object:
    """Strip what does not change how a value is read: ``Annotated``, ``NewType``, ``TypeVar``.

    Unannotated parameters, ``object`` and annotations we cannot resolve (strings, forward
    references) become ``Any``: they constrain nothing we can check.
    """
    tp = annotation
    while True:
        if tp is inspect.Parameter.empty or tp is object or tp is Any:
            return Any
        if tp is None:
            return _NoneType
        if isinstance(tp, (str, typing.ForwardRef)):
            return Any
        if get_origin(tp) is Annotated:
            tp = get_args(tp)[0]
        elif isinstance(tp, typing.NewType):
            tp = tp.__supertype__
        elif isinstance(tp, typing.TypeVar):
            if tp.__bound__ is not None:
                tp = tp.__bound__
            elif tp.__constraints__:
                tp = Union[tp.__constraints__]  # noqa: UP007 - a tuple of types needs Union[]
            else:
                return Any
        else:
            return tp


def _container_kind(container: object) -> str | None:
    """``"items"`` for list-, tuple- and set-like origins, ``"mapping"`` for dict-like ones."""
    # Only classes can be collection origins; an odd annotation may not even be hashable.
    if not isinstance(container, type):
        return None
    if container in _ORDERED or container in _UNORDERED:
        return "items"
    if container in _MAPPINGS:
        return "mapping"
    return None


def _fixed_tuple_args(tp: object) -> tuple[object, ...] | None:
    """The item types of ``tuple[A, B]`` (``()`` for ``tuple[()]``); None for other types."""
    if get_origin(tp) is not tuple:
        return None
    # Bare ``typing.Tuple`` has no __args__ at all, while ``tuple[()]`` has empty ones.
    args = getattr(tp, "__args__", None)
    if args is None or (args and args[-1] is Ellipsis):
        return None
    return tuple(args)


def _is_union(tp: object) -> bool:
    origin = get_origin(tp)
    return origin is Union or origin is types.UnionType


def _class_factory(cls: type, attr: str) -> abc.Callable[[str], object] | None:
    """``cls.attr`` when it is a classmethod or staticmethod (a factory), else None."""
    if isinstance(inspect.getattr_static(cls, attr, None), staticmethod):
        return typing.cast("abc.Callable[[str], object]", getattr(cls, attr))
    bound = getattr(cls, attr, None)
    # Python classmethods bind to the class (a method); C ones are builtins bound to it.
    if (inspect.ismethod(bound) or isinstance(bound, types.BuiltinMethodType)) and isinstance(
        getattr(bound, "__self__", None), type
    ):
        return typing.cast("abc.Callable[[str], object]", bound)
    return None


# --- parsing text ------------------------------------------------------------------------------


def _parse(text: str, annotation: object) -> object:
    tp = _unwrap(annotation)
    if tp is Any:
        return _parse_any(text)
    if tp is _NoneType:
        if text.strip().lower() in _NONE_TEXT:
            return None
        raise _Invalid()
    origin = get_origin(tp)
    if _is_union(tp):
        return _parse_union(text, get_args(tp))
    if origin is Literal:
        return _parse_literal(text, get_args(tp))
    container = origin if origin is not None else tp
    kind = _container_kind(container)
    if kind == "items":
        return _parse_collection(text, tp, container)
    if kind == "mapping":
        return _parse_mapping(text, get_args(tp))
    if isinstance(container, type):
        return _parse_class(text, container)
    # Something we do not know how to read (Callable[...] and the like): keep the text's value.
    return _parse_any(text)


def _parse_any(text: str) -> object:
    # Unannotated: '3' -> 3, '[1]' -> [1], 'true' -> True; anything else stays text.
    try:
        return json.loads(text)
    except ValueError:
        return text


def _parse_union(text: str, members: tuple[object, ...]) -> object:
    # None is tried first: for ``str | None`` the text 'none' must mean None, not 'none'.
    if any(_unwrap(m) is _NoneType for m in members) and text.strip().lower() in _NONE_TEXT:
        return None
    for member in members:
        if _unwrap(member) is _NoneType:
            continue
        try:
            return _parse(text, member)
        except _Invalid:
            continue
    raise _Invalid()


def _parse_literal(text: str, values: tuple[object, ...]) -> object:
    for value in values:
        if text == str(value) or text.strip() == str(value):
            return value
    # Then read the text as each value's type, so Literal[True] takes 'true', Literal[1] '01'
    # and Literal[Color.RED] 'red'.
    for value in values:
        try:
            parsed = _parse(text, type(value))
        except _Invalid:
            continue
        if parsed is value or (type(parsed) is type(value) and parsed == value):
            return value
    raise _Invalid()


def _parse_collection(text: str, tp: object, container: object) -> object:
    stripped = text.strip()
    if stripped.startswith("["):
        try:
            raw: list[object] = json.loads(stripped)  # text starting with '[' is an array
        except json.JSONDecodeError as exc:
            raise _Invalid(f"invalid JSON: {exc}") from None
        return _collect(raw, tp, container, from_text=False)
    parts: list[object] = [] if not stripped else [p.strip() for p in stripped.split(",")]
    return _collect(parts, tp, container, from_text=True)


def _collect(
    items: list[object],
    tp: object,
    container: object,
    *,
    from_text: bool,
    keep: type | None = None,
    strict: bool = False,
) -> object:
    """Convert each item for ``tp``'s item types and build the container ``tp`` names.

    Text items (from a comma-separated list) are parsed; Python values (from JSON, or given
    from Python) are checked. ``keep`` is the given value's type, kept for abstract origins.
    """
    fixed = _fixed_tuple_args(tp)
    if fixed is not None:
        if len(items) != len(fixed):
            raise _Invalid(f"expected {len(fixed)} items, got {len(items)}")
        item_types = list(fixed)
    else:
        args = get_args(tp)
        item_types = [args[0] if args else Any] * len(items)
    converted: list[object] = []
    for index, (item, item_tp) in enumerate(zip(items, item_types, strict=True)):
        try:
            if from_text:
                converted.append(_parse(typing.cast(str, item), item_tp))
            else:
                converted.append(_check(item, item_tp, strict=strict))
        except _Invalid as exc:
            where = f"item {index + 1} of {len(items)}, {_show(item, _ITEM_SHOW_LIMIT)},"
            raise _Invalid(_nested(where, item_tp, exc)) from None
    result_type = keep or _ORDERED.get(container) or _UNORDERED[container]
    try:
        return result_type(converted)
    except TypeError as exc:  # a set of lists: unhashable items
        raise _Invalid(f"items cannot go in a {result_type.__name__} ({_exc_text(exc)})") from None


def _nested(where: str, item_tp: object, exc: _Invalid) -> str:
    text = f"{where} is not {_describe(item_tp).text}"
    return f"{text} ({exc.reason})" if exc.reason else text


def _parse_mapping(text: str, args: tuple[object, ...]) -> object:
    stripped = text.strip()
    if not stripped:
        return {}
    try:
        raw = json.loads(stripped)
    except json.JSONDecodeError as exc:
        raise _Invalid(f"invalid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise _Invalid(f"expected a JSON object, got a JSON {_json_kind(raw)}")
    return _convert_mapping(raw, args, keys_are_text=True, strict=False)


def _convert_mapping(
    raw: abc.Mapping[Any, Any], args: tuple[object, ...], *, keys_are_text: bool, strict: bool
) -> dict[object, object]:
    key_tp, val_tp = args if len(args) == 2 else (Any, Any)
    result: dict[object, object] = {}
    for key, val in raw.items():
        try:
            # JSON keys are always strings, so they are read as text (dict[int, ...] works).
            new_key = _parse(key, key_tp) if keys_are_text else _check(key, key_tp, strict=strict)
        except _Invalid as exc:
            raise _Invalid(_nested(f"key {_show(key, _ITEM_SHOW_LIMIT)}", key_tp, exc)) from None
        try:
            new_val = _check(val, val_tp, strict=strict)
        except _Invalid as exc:
            shown_key, shown_val = _show(key, _ITEM_SHOW_LIMIT), _show(val, _ITEM_SHOW_LIMIT)
            where = f"the value for key {shown_key}, {shown_val},"
            raise _Invalid(_nested(where, val_tp, exc)) from None
        result[new_key] = new_val
    return result


def _json_kind(value: object) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    return "number"


def _parse_class(text: str, cls: type) -> object:
    if cls is str:
        return text
    if cls is bool:
        try:
            return _BOOL_TEXT[text.strip().lower()]
        except KeyError:
            raise _Invalid() from None
    if cls is bytes:
        return text.encode("utf-8")
    if cls is datetime.timedelta:
        return _parse_duration(text)
    if issubclass(cls, enum.Enum):
        return _parse_enum(text, cls)
    if issubclass(cls, pathlib.PurePath):
        if not text.strip():
            # Path('') is Path('.'): an empty --param is far more likely a mistake.
            raise _Invalid("an empty path")
        return cls(text)
    simple = _SIMPLE_PARSERS.get(cls)
    if simple is not None:
        try:
            return simple(text.strip())
        except (ValueError, ArithmeticError):
            raise _Invalid() from None
    return _parse_other(text, cls)


def _parse_int(text: str) -> int:
    # Base 10 only: int() takes '1_000' and '-3' but rejects '1.5', '1e3' and '0x10'.
    return int(text)


_SIMPLE_PARSERS: dict[type, abc.Callable[[str], object]] = {
    int: _parse_int,
    float: float,
    decimal.Decimal: decimal.Decimal,
    datetime.datetime: datetime.datetime.fromisoformat,
    datetime.date: datetime.date.fromisoformat,
    datetime.time: datetime.time.fromisoformat,
}


def _parse_duration(text: str) -> datetime.timedelta:
    try:
        seconds = parse_seconds(text)
    except ValueError as exc:
        # The type's description already says what a duration looks like; only a reason the
        # shape does not show (not finite) is added.
        raise _Invalid(NOT_FINITE if str(exc) == NOT_FINITE else None) from None
    try:
        return datetime.timedelta(seconds=seconds)
    except OverflowError:
        raise _Invalid("the duration is too large") from None


def _parse_enum(text: str, cls: type[enum.Enum]) -> enum.Enum:
    key = text.strip()
    members = cls.__members__
    if key in members:
        return members[key]
    # Case-insensitive names, unless two names differ only by case.
    folded = {id(m): m for n, m in members.items() if n.casefold() == key.casefold()}
    if len(folded) == 1:
        return next(iter(folded.values()))
    if len(folded) > 1:
        names = ", ".join(n for n in members if n.casefold() == key.casefold())
        raise _Invalid(f"{key!r} matches several names ({names}); write the name exactly")
    for member in cls:
        if str(member.value) == key:
            return member
    raise _Invalid()


def _parse_other(text: str, cls: type) -> object:
    for attr in ("from_string", "fromisoformat"):
        factory = _class_factory(cls, attr)
        if factory is not None:
            try:
                return factory(text)
            except Exception as exc:  # any failure of user code is a bad value
                raise _Invalid(f"{cls.__qualname__}.{attr}() raised {_exc_text(exc)}") from None
    try:
        return cls(text)
    except Exception as exc:  # any failure of user code is a bad value
        raise _Invalid(f"{cls.__qualname__}() raised {_exc_text(exc)}") from None


# --- checking Python values ----------------------------------------------------------------


def _check(value: object, annotation: object, *, strict: bool) -> object:
    """Return ``value`` (possibly converted) if it fits ``annotation``, else raise _Invalid.

    ``strict`` allows no conversion at all; unions use a strict pass first so that an exact
    match in a later member beats a conversion into an earlier one (``float | int`` keeps 3).
    """
    tp = _unwrap(annotation)
    if tp is Any:
        return value
    try:
        return _check_unwrapped(value, tp, strict=strict)
    except _Invalid:
        if strict or not isinstance(value, str):
            raise
    # Text for a non-text annotation: read it exactly as the command line would.
    return _parse(value, tp)


def _check_unwrapped(value: object, tp: object, *, strict: bool) -> object:
    if tp is _NoneType:
        if value is None:
            return None
        raise _Invalid()
    origin = get_origin(tp)
    if _is_union(tp):
        return _check_union(value, get_args(tp), strict=strict)
    if origin is Literal:
        for choice in get_args(tp):
            if value is choice or (type(value) is type(choice) and value == choice):
                return choice
        raise _Invalid()
    container = origin if origin is not None else tp
    kind = _container_kind(container)
    if kind == "items":
        return _check_collection(value, tp, container, strict=strict)
    if kind == "mapping":
        if not isinstance(value, abc.Mapping) or isinstance(value, str):
            raise _Invalid()
        if strict and not isinstance(value, typing.cast(type, container)):
            raise _Invalid()
        converted = _convert_mapping(value, get_args(tp), keys_are_text=False, strict=strict)
        if (
            isinstance(value, dict)
            and _same_items(value, converted)
            and _same_items(value.values(), converted.values())
        ):
            return value  # nothing changed: hand back the caller's own object
        return converted
    if not isinstance(container, type):
        return value  # an annotation we cannot check at run time (Callable[..] and the like)
    if value is None:
        raise _Invalid()
    return _check_class(value, container, strict=strict)


def _check_union(value: object, members: tuple[object, ...], *, strict: bool) -> object:
    for member in members:
        try:
            return _check(value, member, strict=True)
        except _Invalid:
            continue
    if strict or isinstance(value, str):
        # Text is read against the whole union by _check, in the union's own order.
        raise _Invalid()
    for member in members:
        try:
            return _check(value, member, strict=False)
        except _Invalid:
            continue
    raise _Invalid()


def _check_collection(value: object, tp: object, container: object, *, strict: bool) -> object:
    # Text and mappings are iterable too, but never a collection of items here.
    if isinstance(value, (str, bytes, abc.Mapping)) or not isinstance(value, abc.Iterable):
        raise _Invalid()
    exact = isinstance(value, typing.cast(type, container))
    if container in (abc.Collection, abc.Iterable):
        # Not any iterable: a generator would be used up, a dict would give only its keys.
        accepted = isinstance(value, _ANY_COLLECTION)
    elif strict:
        accepted = exact
    elif container in _ORDERED:
        # Not a set: its order depends on hashing, so the list would differ from run to run.
        accepted = exact or isinstance(value, (list, tuple))
    else:
        accepted = exact or isinstance(value, _ANY_COLLECTION)
    if not accepted:
        raise _Invalid()
    items = list(typing.cast(abc.Iterable[object], value))
    keep = type(value) if type(value) in _KEEP.get(container, ()) else None
    result = _collect(items, tp, container, from_text=False, keep=keep, strict=strict)
    if type(result) is type(value) and _same_items(items, typing.cast(abc.Iterable, result)):
        return value  # nothing changed: hand back the caller's own object
    return result


def _same_items(before: abc.Iterable[object], after: abc.Iterable[object]) -> bool:
    # Identity, not equality: 1 == 1.0, but a float parameter must get the float.
    first, second = list(before), list(after)
    return len(first) == len(second) and all(a is b for a, b in zip(first, second, strict=True))


def _check_class(value: object, cls: type, *, strict: bool) -> object:
    if cls is bool:
        if isinstance(value, bool):
            return value
        raise _Invalid()
    if cls in (int, float, decimal.Decimal) and isinstance(value, bool):
        raise _Invalid("a bool is not accepted as a number")
    if cls is float and not isinstance(value, float):
        # int (and numpy numbers, without importing numpy) become float, as declared.
        if not strict and isinstance(value, numbers.Real):
            return float(value)
        raise _Invalid()
    if cls is int and not isinstance(value, int):
        if not strict and hasattr(type(value), "__index__"):  # numpy integers
            return operator.index(value)
        raise _Invalid()
    if cls is decimal.Decimal and not strict and isinstance(value, (int, float)):
        # str(), not Decimal(0.1) = 0.1000000000000000055511151231257827021181583404541015625
        return decimal.Decimal(value) if isinstance(value, int) else decimal.Decimal(str(value))
    if cls is datetime.timedelta and not strict and isinstance(value, (int, float)):
        return _check_seconds(value)
    if issubclass(cls, enum.Enum) and not isinstance(value, cls) and not strict:
        try:
            return cls(value)  # by value; text by name is tried next, by _check
        except (ValueError, TypeError):
            raise _Invalid() from None
    if not isinstance(value, cls) and not strict and isinstance(value, os.PathLike):
        if issubclass(cls, pathlib.PurePath):
            return cls(value)
        if cls is str and isinstance(path := os.fspath(value), str):
            return path
    if isinstance(value, cls):
        return value
    raise _Invalid()


def _check_seconds(value: int | float) -> datetime.timedelta:
    if isinstance(value, float) and not math.isfinite(value):
        raise _Invalid(NOT_FINITE)
    try:
        return datetime.timedelta(seconds=value)
    except OverflowError:
        raise _Invalid("the duration is too large") from None
