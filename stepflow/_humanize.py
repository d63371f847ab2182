"""Sizes, times and durations as people read and write them, for listings and messages.

One of each: every layer that shows a size, a timestamp or a duration, or reads a duration a
user wrote (``@step(timeout=...)``, ``--param every=1h30m``, ``--older-than 7d``), goes through
this module, so that they agree everywhere; so does every message that suggests the name a
misspelt one meant (``did you mean 'train'?``).
"""

from __future__ import annotations

import datetime
import enum
import functools
import math
import re
import sys
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "DURATION_UNITS",
    "NOT_FINITE",
    "close_names",
    "did_you_mean",
    "human_age",
    "human_duration",
    "human_size",
    "human_time",
    "iso_time",
    "iso_times",
    "parse_seconds",
    "parse_size",
    "type_name",
]

_UNION_ORIGINS: tuple[object, ...] = (typing.Union, types.UnionType)
_LITERAL_STRING: object = getattr(typing, "LiteralString", None)
# "typing.Never" reads as "Never", like "Any"; the lookbehind keeps "mytyping.X" intact.
_TYPING_PREFIX = re.compile(r"(?<![\w.])typing\.")
#: generics nested deeper than this are named "..." (a name must never raise RecursionError)
_MAX_TYPE_DEPTH = 40

#: the units a written duration may use, in seconds
DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|[smhdw])")
_DURATION_FULL = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|[smhdw]))+")
#: the reason :func:`parse_seconds` gives for ``inf``, ``nan`` and ``1e400``
NOT_FINITE = "a duration must be finite"


def human_size(n: float) -> str:
    """``512 B``, ``1.5 KiB``, ... up to GiB.

    >>> human_size(512), human_size(1536), human_size(3 << 30)
    ('512 B', '1.5 KiB', '3.0 GiB')
    """
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


_SIZE_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str | int | float) -> int:
    """Bytes in ``"500M"``, ``"10G"``, ``"1.5GB"``, ``"8 GiB"`` or a number of bytes.

    >>> parse_size("500M"), parse_size("1.5 GiB"), parse_size(2048)
    (524288000, 1610612736, 2048)

    :raises ValueError: ``text`` is no size (the caller says where it came from).
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        raw = str(text).strip().upper().removesuffix("IB").removesuffix("B").strip()
        number, unit = raw, ""
        if raw and raw[-1] in _SIZE_UNITS:
            number, unit = raw[:-1].strip(), raw[-1]
        try:
            value = float(number) * _SIZE_UNITS[unit]
        except ValueError:
            raise ValueError(f"{text!r} is not a size; write one such as 500M or 10G") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{text!r} is not a size; write one such as 500M or 10G")
    return int(value)


def human_time(ts: float | None) -> str:
    """A timestamp in local time to the second, or ``-`` for none."""
    if ts is None:
        return "-"
    return datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def iso_time(ts: float | None) -> str | None:
    """A timestamp as ISO 8601 in UTC with its offset, as every ``--json`` listing writes it.

    >>> iso_time(0.5), iso_time(None)
    ('1970-01-01T00:00:00.500000+00:00', None)
    """
    if ts is None:
        return None
    moment = datetime.datetime.fromtimestamp(ts, tz=datetime.UTC)
    return moment.isoformat(timespec="microseconds")


def iso_times(data: Mapping[str, Any], *keys: str) -> dict[str, Any]:
    """A copy of ``data`` with the timestamps under ``keys`` written by :func:`iso_time`.

    Only the named top-level keys change: nested mappings hold the user's own names (parameters,
    tags, metrics), where a key called ``created`` is not a time of ours.
    """
    return {k: iso_time(v) if k in keys and v is not None else v for k, v in data.items()}


def human_duration(seconds: float | None, *, digits: int = 2) -> str:
    """How long something took: ``1.25s``, ``2m05s``, ``1h02m``; ``-`` for none.

    ``digits``: decimals under a minute (a live clock shows one).

    >>> human_duration(1.25), human_duration(125), human_duration(3720), human_duration(None)
    ('1.25s', '2m05s', '1h02m', '-')
    >>> human_duration(3.21, digits=1)
    '3.2s'
    """
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.{digits}f}s"
    minutes, rest = divmod(seconds, 60)
    if minutes < 60:
        return f"{int(minutes)}m{rest:02.0f}s"
    hours, minutes = divmod(minutes, 60)
    return f"{int(hours)}h{int(minutes):02d}m"


def human_age(seconds: float) -> str:
    """How long ago, to one rounded unit: ``45s``, ``5m``, ``3h``, ``2d``.

    >>> human_age(45), human_age(300), human_age(3 * 3600), human_age(2 * 86400)
    ('45s', '5m', '3h', '2d')
    """
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def parse_seconds(text: str) -> float:
    """Seconds in a duration a user wrote: plain seconds (``90``, ``1.5``) or numbers with
    units ``ms``, ``s``, ``m``, ``h``, ``d``, ``w``, alone or combined (``90s``, ``1h30m``,
    ``1w``), with an optional sign; case and spaces are ignored.

    The one grammar of durations: ``@step(timeout=...)``, ``--param`` values of type
    ``timedelta`` and the CLI's ``--older-than``/``--since`` all read it. Callers decide
    whether a negative duration makes sense.

    >>> parse_seconds("1h30m"), parse_seconds("1w"), parse_seconds("250ms"), parse_seconds("-90")
    (5400.0, 604800.0, 0.25, -90.0)

    :raises ValueError: ``text`` is not a duration, or not a finite one (the message says which).
    """
    body = text.strip().lower().replace(" ", "")
    sign = 1.0
    if body[:1] in ("+", "-"):
        sign, body = (-1.0 if body[0] == "-" else 1.0), body[1:]
    if body[:1] in ("+", "-"):
        raise ValueError(f"{text!r} is not a duration")  # '--5': float() would take the sign
    try:
        seconds = float(body)
    except ValueError:
        if not _DURATION_FULL.fullmatch(body):
            raise ValueError(f"{text!r} is not a duration") from None
        seconds = sum(
            float(m.group(1)) * DURATION_UNITS[m.group(2)] for m in _DURATION_PART.finditer(body)
        )
    if not math.isfinite(seconds):
        raise ValueError(NOT_FINITE)
    return sign * seconds


def close_names(name: str, choices: Iterable[str]) -> list[str]:
    """Up to three of ``choices`` that ``name`` may be a misspelling of, closest first.

    >>> close_names("trian", ["train", "test", "rain"])
    ['train', 'rain']
    """
    import difflib  # error paths only: not on every run's imports

    return difflib.get_close_matches(name, list(choices), n=3, cutoff=0.6)


def did_you_mean(names: Sequence[str]) -> str:
    """``"did you mean 'a' or 'b'?"`` for ``names`` (from :func:`close_names`); ``""`` for
    none."""
    return f"did you mean {' or '.join(repr(n) for n in names)}?" if names else ""


def type_name(annotation: object, *, qualified: bool = True) -> str:
    """An annotation named the way a user writes it, for messages and listings.

    Generics, unions and literals are written in PEP 585/604 style (``dict[str, float]``,
    ``int | None``, ``Literal['a', 'b']``); ``Annotated`` metadata is left out; a missing
    annotation reads ``Any``. ``qualified`` names classes by the shortest already-imported
    module that re-exports them (``pandas.DataFrame``, ``pathlib.Path``), as the pipeline
    checks do; without it a class is named by its bare name (``Path``), as ``--param`` messages
    do. Builtins are bare either way. Never raises.

    >>> type_name(dict[str, list[int]]), type_name(typing.Optional[int])
    ('dict[str, list[int]]', 'int | None')
    >>> type_name(typing.Callable[[int], str]), type_name(typing.Callable, qualified=False)
    ('collections.abc.Callable[[int], str]', 'Callable')
    """
    try:
        return _type_name(annotation, 0, qualified)
    except Exception:  # a message helper must not hide the error it reports
        try:
            return repr(annotation)
        except Exception:  # objects whose __repr__ itself fails
            return object.__repr__(annotation)


def _type_name(tp: object, depth: int, qualified: bool) -> str:
    if depth > _MAX_TYPE_DEPTH:
        return "..."
    depth += 1
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    import inspect  # here: this module is imported for `stepflow --help`, inspect is not cheap

    if tp is inspect.Parameter.empty or tp is Any:
        return "Any"
    if tp is None or tp is type(None):
        return "None"
    if _LITERAL_STRING is not None and tp is _LITERAL_STRING:
        return "str"  # a str whose provenance no runtime check sees
    if tp is Ellipsis:
        return "..."
    if isinstance(tp, str):
        return tp
    if isinstance(tp, typing.ForwardRef):
        return tp.__forward_arg__
    if isinstance(tp, list):  # the parameter list of Callable[[int, str], R]
        return "[" + ", ".join(_type_name(a, depth, qualified) for a in tp) + "]"
    if isinstance(tp, (typing.TypeVar, typing.ParamSpec)):
        return tp.__name__
    if isinstance(tp, typing.NewType):
        return _class_name(tp, qualified)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in _UNION_ORIGINS:
        return " | ".join(_type_name(a, depth, qualified) for a in args)
    if origin is typing.Literal:
        return "Literal[" + ", ".join(_literal_name(v, qualified) for v in args) + "]"
    if isinstance(origin, type):
        # typing.List[int] and list[int] both read 'list[int]'; bare typing.List reads 'list'
        name = _class_name(origin, qualified)
        if origin is tuple and getattr(tp, "__args__", None) == ():
            return "tuple[()]"
        return (
            name + "[" + ", ".join(_type_name(a, depth, qualified) for a in args) + "]"
            if args
            else name
        )
    if isinstance(tp, type):
        return _class_name(tp, qualified)
    return _TYPING_PREFIX.sub("", repr(tp))


def _literal_name(value: object, qualified: bool) -> str:
    """``Color.RED`` for enum members (their repr is ``<Color.RED: 1>``), repr otherwise."""
    if isinstance(value, enum.Enum):
        return f"{_class_name(type(value), qualified)}.{value.name}"
    return repr(value)


def _class_name(obj: object, qualified: bool) -> str:
    """``module.QualName`` by the shortest already-imported module path that re-exports it.

    ``pandas.core.frame.DataFrame`` is reachable as ``pandas.DataFrame``, which is how users
    write it. Only :data:`sys.modules` is consulted: naming a type must not import anything.
    """
    qualname: str = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", repr(obj))
    module = getattr(obj, "__module__", None)
    if not qualified or not isinstance(module, str) or module in ("builtins", "__main__"):
        return qualname
    parts = module.split(".")
    for end in range(1, len(parts)):
        prefix = ".".join(parts[:end])
        if _resolve(sys.modules.get(prefix), qualname) is obj:
            return f"{prefix}.{qualname}"
    return f"{module}.{qualname}"


def _resolve(module: object, qualname: str) -> object:
    """Follow a dotted qualname from ``module``; None when any step is missing."""
    if module is None or "<locals>" in qualname:
        return None
    first, *rest = qualname.split(".")
    # The module's own namespace, not getattr: a module-level __getattr__ may import lazily or
    # warn about deprecated names (pandas does), and naming a type must do neither.
    namespace = getattr(module, "__dict__", {})
    return functools.reduce(lambda obj, name: getattr(obj, name, None), rest, namespace.get(first))
