"""Tests for reading ``--param`` text and checking ``run(params=...)`` values by annotation."""

from __future__ import annotations

import collections.abc
import datetime
import decimal
import enum
import fractions
import inspect
import math
import pathlib
import typing
from typing import Annotated, Any, Literal, NewType, Optional, TypeVar, Union

import pytest

from stepflow._authoring.markers import Param, Secret
from stepflow._authoring.parse import _type_name, check_value, parse_value, split_assignment
from stepflow.errors import ParameterParseError, PipelineDefinitionError


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Version:
    """A class with a ``from_string`` classmethod, as a user might write."""

    def __init__(self, major: int, minor: int) -> None:
        self.major, self.minor = major, minor

    @classmethod
    def from_string(cls, text: str) -> Version:
        major, minor = text.split(".")
        return cls(int(major), int(minor))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Version) and (self.major, self.minor) == (
            other.major,
            other.minor,
        )

    def __hash__(self) -> int:
        return hash((self.major, self.minor))


class Slug:
    """A class built from its text by calling it, and that rejects bad text."""

    def __init__(self, text: str) -> None:
        if not text.isidentifier():
            raise ValueError(f"bad slug {text!r}")
        self.text = text


class Opaque:
    """A class that cannot be built from text at all."""

    def __init__(self) -> None:
        pass


UserId = NewType("UserId", int)
Number = TypeVar("Number", bound=float)


def parse_error(text: str, annotation: object, name: str = "p") -> ParameterParseError:
    with pytest.raises(ParameterParseError) as info:
        parse_value(name, text, annotation)
    return info.value


def check_error(value: object, annotation: object, name: str = "p") -> ParameterParseError:
    with pytest.raises(ParameterParseError) as info:
        check_value(name, value, annotation)
    return info.value


# --- split_assignment --------------------------------------------------------------------------


class TestSplitAssignment:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("n=20", ("n", "20")),
            ("n=", ("n", "")),
            (" n =20", ("n", "20")),
            ("query=a=b", ("query", "a=b")),
            ("s= padded ", ("s", " padded ")),
            ("x=[1, 2]", ("x", "[1, 2]")),
        ],
    )
    def test_splits_at_first_equals(self, text: str, expected: tuple[str, str]) -> None:
        """The first '=' splits; the key is stripped and the value kept verbatim."""
        assert split_assignment(text) == expected

    @pytest.mark.parametrize("text", ["n", "", "a b", "  "])
    def test_no_equals_is_an_error(self, text: str) -> None:
        """Text without '=' is rejected with the NAME=VALUE hint."""
        with pytest.raises(ParameterParseError) as info:
            split_assignment(text)
        assert "--param NAME=VALUE" in str(info.value)
        assert info.value.value == text

    def test_bare_name_suggests_its_own_fix(self) -> None:
        """A lone name is most likely a forgotten value: the hint reuses the name."""
        with pytest.raises(ParameterParseError) as info:
            split_assignment("epochs")
        assert "--param epochs=VALUE" in str(info.value)
        assert info.value.parameter == "epochs"

    @pytest.mark.parametrize("text", ["=5", " =5", "="])
    def test_empty_key_is_an_error(self, text: str) -> None:
        """Nothing before '=' is rejected, naming the problem."""
        with pytest.raises(ParameterParseError) as info:
            split_assignment(text)
        message = str(info.value)
        assert "no name before '='" in message
        assert "--param NAME=VALUE" in message
        assert info.value.parameter is None

    def test_error_is_a_value_error(self) -> None:
        """Callers catching ValueError (the CLI does) catch split errors."""
        with pytest.raises(ValueError):
            split_assignment("oops")


# --- parse_value: scalars ------------------------------------------------------------------------


class TestParseStr:
    @pytest.mark.parametrize("text", ["abc", "", "  spaced  ", "none", "1,2", "[1]", "ünï"])
    def test_text_is_kept_as_is(self, text: str) -> None:
        """A str parameter gets the text unchanged, whatever it looks like."""
        assert parse_value("s", text, str) == text


class TestParseInt:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [("20", 20), ("-3", -3), ("+4", 4), ("0", 0), ("1_000", 1000), (" 7 ", 7)],
    )
    def test_whole_numbers(self, text: str, expected: int) -> None:
        """Decimal whole numbers, signs and underscores are read."""
        value = parse_value("n", text, int)
        assert value == expected
        assert type(value) is int

    @pytest.mark.parametrize("text", ["1.5", "10.0", "1e3", "ten", "", "0x10", "1__0", "true"])
    def test_rejects_anything_else(self, text: str) -> None:
        """Fractions, exponents, words, hex and empty text are errors."""
        error = parse_error(text, int, name="n")
        assert f"got {text!r}" in str(error)

    def test_message_matches_the_house_style(self) -> None:
        """The message names parameter, value, type and the fix."""
        error = parse_error("ten", int, name="n")
        assert str(error) == (
            "parameter 'n' expects int, got 'ten'; pass a whole number such as --param n=20"
        )


class TestParseFloat:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [("0.5", 0.5), ("3", 3.0), ("-2.5", -2.5), ("1e-3", 0.001), ("1_000.5", 1000.5)],
    )
    def test_numbers(self, text: str, expected: float) -> None:
        """Decimal and scientific notation become a float."""
        value = parse_value("x", text, float)
        assert value == expected
        assert type(value) is float

    @pytest.mark.parametrize(
        ("text", "sign"), [("inf", 1), ("-inf", -1), ("Infinity", 1), ("INF", 1)]
    )
    def test_infinities(self, text: str, sign: int) -> None:
        """Infinities are numbers too."""
        value = parse_value("x", text, float)
        assert math.isinf(value) and math.copysign(1, value) == sign

    @pytest.mark.parametrize("text", ["nan", "NaN", "-nan"])
    def test_nan(self, text: str) -> None:
        """'nan' is accepted, in any case."""
        assert math.isnan(parse_value("x", text, float))

    @pytest.mark.parametrize("text", ["abc", "", "1,5", "1.2.3"])
    def test_rejects_non_numbers(self, text: str) -> None:
        """Non-numeric text is an error explaining what a number is."""
        assert "pass a number such as --param p=0.5" in str(parse_error(text, float))


class TestParseBool:
    @pytest.mark.parametrize(
        "text", ["true", "True", "TRUE", "yes", "Yes", "on", "ON", "1", " on "]
    )
    def test_true_words(self, text: str) -> None:
        """true/yes/on/1, in any case, are True."""
        assert parse_value("flag", text, bool) is True

    @pytest.mark.parametrize("text", ["false", "False", "no", "NO", "off", "Off", "0", " false "])
    def test_false_words(self, text: str) -> None:
        """false/no/off/0, in any case, are False."""
        assert parse_value("flag", text, bool) is False

    @pytest.mark.parametrize("text", ["", "y", "n", "2", "truthy", "none", "-1"])
    def test_anything_else_is_an_error(self, text: str) -> None:
        """Other text is not silently truthy: it is an error listing the accepted words."""
        message = str(parse_error(text, bool, name="flag"))
        assert "expects bool" in message
        assert "true or false (or yes/no, on/off, 1/0)" in message
        assert "--param flag=true" in message


class TestParsePath:
    @pytest.mark.parametrize("cls", [pathlib.Path, pathlib.PurePath, pathlib.PurePosixPath])
    def test_paths(self, cls: type[pathlib.PurePath]) -> None:
        """Path and PurePath classes are built from the text."""
        value = parse_value("out", "data/a b.csv", cls)
        assert value == cls("data/a b.csv")
        assert isinstance(value, cls)

    def test_tilde_is_not_expanded(self) -> None:
        """The path is taken literally; expanding '~' is the step's business."""
        assert parse_value("out", "~/x", pathlib.Path) == pathlib.Path("~/x")

    @pytest.mark.parametrize("text", ["", "   "])
    def test_empty_path_is_an_error(self, text: str) -> None:
        """Empty text would silently mean '.', so it is rejected."""
        message = str(parse_error(text, pathlib.Path))
        assert "an empty path" in message
        assert "--param p=data/a.csv" in message


class TestParseDecimal:
    @pytest.mark.parametrize("text", ["1.10", "-0.5", "1e3", "12345678901234567890.123"])
    def test_decimals_keep_their_digits(self, text: str) -> None:
        """Decimal text becomes an exact Decimal."""
        assert parse_value("d", text, decimal.Decimal) == decimal.Decimal(text)

    def test_keeps_trailing_zeros(self) -> None:
        """The text's precision is kept (no float round trip)."""
        assert str(parse_value("d", "1.10", decimal.Decimal)) == "1.10"

    @pytest.mark.parametrize("text", ["abc", "", "1,5"])
    def test_rejects_non_numbers(self, text: str) -> None:
        """Non-numeric text is an error."""
        assert "a decimal number" in str(parse_error(text, decimal.Decimal))


class TestParseDatetime:
    @pytest.mark.parametrize(
        ("text", "annotation", "expected"),
        [
            ("2024-01-31", datetime.date, datetime.date(2024, 1, 31)),
            ("2024-01-31T12:30", datetime.datetime, datetime.datetime(2024, 1, 31, 12, 30)),
            ("2024-01-31 12:30:05", datetime.datetime, datetime.datetime(2024, 1, 31, 12, 30, 5)),
            ("2024-01-31", datetime.datetime, datetime.datetime(2024, 1, 31)),
            ("12:30", datetime.time, datetime.time(12, 30)),
            ("12:30:15.5", datetime.time, datetime.time(12, 30, 15, 500000)),
        ],
    )
    def test_iso_formats(self, text: str, annotation: type, expected: object) -> None:
        """ISO 8601 text is read with fromisoformat."""
        value = parse_value("when", text, annotation)
        assert value == expected
        assert type(value) is annotation

    def test_time_zone(self) -> None:
        """An offset in the text gives an aware datetime."""
        value = parse_value("when", "2024-01-31T12:00:00+02:00", datetime.datetime)
        assert value.utcoffset() == datetime.timedelta(hours=2)

    @pytest.mark.parametrize(
        ("text", "annotation", "example"),
        [
            ("yesterday", datetime.date, "2024-01-31"),
            ("2024-13-01", datetime.date, "2024-01-31"),
            ("noon", datetime.time, "12:30:00"),
            ("31/01/2024", datetime.datetime, "2024-01-31T12:00:00"),
        ],
    )
    def test_bad_dates(self, text: str, annotation: type, example: str) -> None:
        """Text that is not ISO 8601 is an error showing an ISO example."""
        message = str(parse_error(text, annotation))
        assert "ISO 8601" in message
        assert f"--param p={example}" in message


class TestParseTimedelta:
    @pytest.mark.parametrize(
        ("text", "seconds"),
        [
            ("90s", 90),
            ("5m", 300),
            ("2h", 7200),
            ("1d", 86400),
            ("1w", 604800),
            ("1h30m", 5400),
            ("1h 30m", 5400),
            ("1d2h3m4s", 93784),
            ("250ms", 0.25),
            ("1.5h", 5400),
            ("90", 90),
            ("0.5", 0.5),
            ("2H", 7200),
            ("-5m", -300),
            ("0", 0),
        ],
    )
    def test_durations(self, text: str, seconds: float) -> None:
        """Units s/m/h/d/w/ms, combinations and plain seconds are read."""
        assert parse_value("every", text, datetime.timedelta) == datetime.timedelta(seconds=seconds)

    @pytest.mark.parametrize(
        "text", ["", "soon", "5 minutes", "5x", "m5", "1h30", "--5", "nan", "inf", "1e400"]
    )
    def test_bad_durations(self, text: str) -> None:
        """Unknown units, missing numbers and non-finite values are errors."""
        message = str(parse_error(text, datetime.timedelta, name="every"))
        assert "a duration in seconds or with units (90s, 5m, 2h, 1d, 1h30m)" in message
        assert "--param every=5m" in message

    def test_overflow_is_an_error(self) -> None:
        """A duration too large for timedelta is reported, not raised as OverflowError."""
        error = parse_error("99999999999d", datetime.timedelta)
        assert "too large" in str(error)


# --- parse_value: collections ----------------------------------------------------------------


class TestParseSequences:
    @pytest.mark.parametrize(
        ("text", "annotation", "expected"),
        [
            ("1,2,3", list[int], [1, 2, 3]),
            ("1, 2, 3", list[int], [1, 2, 3]),
            ("[1, 2, 3]", list[int], [1, 2, 3]),
            (" [1, 2] ", list[int], [1, 2]),
            ("7", list[int], [7]),
            ("", list[int], []),
            ("[]", list[int], []),
            ("a,b", list[str], ["a", "b"]),
            ('["a,b", "c"]', list[str], ["a,b", "c"]),
            ("0.5,1", list[float], [0.5, 1.0]),
            ("yes,off", list[bool], [True, False]),
            ("1,2", tuple[int, ...], (1, 2)),
            ("[1, 2]", tuple[int, ...], (1, 2)),
            ("1,2,2", set[int], {1, 2}),
            ("[1, 2, 2]", frozenset[int], frozenset({1, 2})),
            ("a,b", collections.abc.Sequence[str], ["a", "b"]),
            ("a,b", collections.abc.MutableSequence[str], ["a", "b"]),
            ("a,b", collections.abc.Set[str], frozenset({"a", "b"})),
            ("1,2", typing.List[int], [1, 2]),  # noqa: UP006
            ("1,2", list, [1, 2]),  # untyped items read as JSON, like Any
            ('[1, "x"]', list, [1, "x"]),
            ("red,GREEN", list[Color], [Color.RED, Color.GREEN]),
            ("a.csv,b.csv", list[pathlib.Path], [pathlib.Path("a.csv"), pathlib.Path("b.csv")]),
            ("[[1, 2], [3]]", list[list[int]], [[1, 2], [3]]),
            ("1,none", list[Optional[int]], [1, None]),  # noqa: UP045
        ],
    )
    def test_json_or_comma_separated(self, text: str, annotation: object, expected: object) -> None:
        """Sequences read a JSON array or comma-separated items, each parsed by item type."""
        value = parse_value("xs", text, annotation)
        assert value == expected
        assert type(value) is type(expected)

    def test_json_items_given_as_text_are_parsed(self) -> None:
        """A JSON string item for a non-str item type is read like command-line text."""
        assert parse_value("xs", '["1", 2]', list[int]) == [1, 2]

    def test_bad_json_reports_the_json_error(self) -> None:
        """Malformed JSON is reported with json's own message and position."""
        error = parse_error("[1, 2", list[int], name="xs")
        message = str(error)
        assert message.startswith("parameter 'xs' expects list[int], got '[1, 2'")
        assert "invalid JSON: Expecting ',' delimiter: line 1 column 6 (char 5)" in message
        assert "--param xs=20,30" in message

    @pytest.mark.parametrize(
        ("text", "annotation", "fragment"),
        [
            ("1,x,3", list[int], "item 2 of 3, 'x', is not a whole number"),
            ("[1, true]", list[int], "item 2 of 2, True, is not a whole number"),
            ("1,,3", list[int], "item 2 of 3, '', is not a whole number"),
            ("maybe", set[bool], "item 1 of 1, 'maybe', is not true or false"),
            ("blue", list[Color], "item 1 of 1, 'blue', is not one of RED, GREEN"),
        ],
    )
    def test_bad_item_is_located(self, text: str, annotation: object, fragment: str) -> None:
        """A bad item is named by its position and text."""
        assert fragment in str(parse_error(text, annotation))

    def test_unhashable_items_for_a_set(self) -> None:
        """JSON arrays cannot be set members; that is an error, not a TypeError."""
        error = parse_error("[[1], [2]]", set[Any])
        assert "items cannot go in a set" in str(error)

    def test_nested_collection_hint_uses_json(self) -> None:
        """A list of lists can only be written as JSON, so the example is JSON."""
        message = str(parse_error("x", list[list[int]], name="grid"))
        assert "a JSON array of list[int] values" in message
        assert "--param grid='[[20, 30]]'" in message


class TestParseFixedTuple:
    @pytest.mark.parametrize(
        ("text", "annotation", "expected"),
        [
            ("1,a", tuple[int, str], (1, "a")),
            ('[1, "a"]', tuple[int, str], (1, "a")),
            ("0.5,2024-01-31", tuple[float, datetime.date], (0.5, datetime.date(2024, 1, 31))),
            ("", tuple[()], ()),
            ("1,2", typing.Tuple[int, int], (1, 2)),  # noqa: UP006
            ("1,a,true", tuple, (1, "a", True)),
        ],
    )
    def test_positional_types(self, text: str, annotation: object, expected: tuple) -> None:
        """Each position is parsed with its own type."""
        assert parse_value("pair", text, annotation) == expected

    @pytest.mark.parametrize(("text", "count"), [("1", 1), ("1,a,b", 3), ("", 0)])
    def test_wrong_length(self, text: str, count: int) -> None:
        """The number of items must match the tuple's arity."""
        message = str(parse_error(text, tuple[int, str], name="pair"))
        assert f"expected 2 items, got {count}" in message
        assert "2 comma-separated items (a whole number, text)" in message
        assert "--param pair=20,abc" in message

    def test_bad_position(self) -> None:
        """A bad item in a fixed tuple names its position."""
        assert "item 1 of 2, 'a', is not a whole number" in str(parse_error("a,1", tuple[int, str]))


class TestParseDict:
    @pytest.mark.parametrize(
        ("text", "annotation", "expected"),
        [
            ('{"a": 1, "b": 2}', dict[str, int], {"a": 1, "b": 2}),
            ('{"1": 0.5}', dict[int, float], {1: 0.5}),
            ('{"lr": 0.1, "name": "x"}', dict[str, Any], {"lr": 0.1, "name": "x"}),
            ('{"a": [1, 2]}', dict[str, list[int]], {"a": [1, 2]}),
            ('{"a": "1,2"}', dict[str, list[int]], {"a": [1, 2]}),
            (
                '{"red": "2024-01-31"}',
                dict[Color, datetime.date],
                {Color.RED: datetime.date(2024, 1, 31)},
            ),
            ("{}", dict[str, int], {}),
            ("", dict[str, int], {}),
            ('{"a": 1}', dict, {"a": 1}),
            ('{"a": 1}', collections.abc.Mapping[str, int], {"a": 1}),
        ],
    )
    def test_json_objects(self, text: str, annotation: object, expected: dict) -> None:
        """A JSON object's keys are parsed and its values checked by K and V."""
        assert parse_value("m", text, annotation) == expected

    def test_int_values_become_float(self) -> None:
        """Values are checked with V, so 1 becomes 1.0 for dict[str, float]."""
        value = parse_value("m", '{"a": 1}', dict[str, float])
        assert type(value["a"]) is float

    @pytest.mark.parametrize(
        ("text", "fragment"),
        [
            ('{"a": 1', "invalid JSON: Expecting ',' delimiter"),
            ("a=1", "invalid JSON: Expecting value: line 1 column 1 (char 0)"),
            ("[1, 2]", "expected a JSON object, got a JSON array"),
            ('"a"', "expected a JSON object, got a JSON string"),
            ("3", "expected a JSON object, got a JSON number"),
            ("null", "expected a JSON object, got a JSON null"),
            ('{"a": "x"}', "the value for key 'a', 'x', is not a whole number"),
            ('{"a": true}', "the value for key 'a', True, is not a whole number"),
        ],
    )
    def test_errors(self, text: str, fragment: str) -> None:
        """Bad JSON, non-objects and bad values are explained."""
        message = str(parse_error(text, dict[str, int], name="m"))
        assert fragment in message
        assert "pass a JSON object of text to a whole number such as --param m='{\"abc\": 20}'" in (
            message
        )

    def test_bad_key(self) -> None:
        """A key that does not parse with K is named."""
        assert "key 'x' is not a whole number" in str(parse_error('{"x": 1}', dict[int, int]))


# --- parse_value: choices ------------------------------------------------------------------------


class TestParseEnum:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("RED", Color.RED),
            ("red", Color.RED),
            ("Green", Color.GREEN),
            (" GREEN ", Color.GREEN),
            ("green", Color.GREEN),
        ],
    )
    def test_by_name_or_value(self, text: str, expected: Color) -> None:
        """Members are found by name in any case, or by value."""
        assert parse_value("color", text, Color) is expected

    @pytest.mark.parametrize(("text", "expected"), [("LOW", Level.LOW), ("2", Level.HIGH)])
    def test_int_enum(self, text: str, expected: Level) -> None:
        """An IntEnum is an Enum first: name or the text of its value."""
        assert parse_value("level", text, Level) is expected

    def test_name_beats_value(self) -> None:
        """When a name and another member's value collide, the name wins."""

        class Tricky(enum.Enum):
            A = "B"
            B = "A"

        assert parse_value("t", "A", Tricky) is Tricky.A

    def test_names_differing_only_by_case(self) -> None:
        """Exact names still work; a case-folded match with several candidates is an error."""

        class Cased(enum.Enum):
            ab = 1
            AB = 2

        assert parse_value("c", "AB", Cased) is Cased.AB
        assert parse_value("c", "ab", Cased) is Cased.ab
        message = str(parse_error("Ab", Cased))
        assert "'Ab' matches several names (ab, AB); write the name exactly" in message

    @pytest.mark.parametrize("text", ["blue", "", "Color.RED", "0"])
    def test_unknown_member(self, text: str) -> None:
        """An unknown member lists the choices."""
        message = str(parse_error(text, Color, name="color"))
        assert "expects Color" in message
        assert "pass one of RED, GREEN such as --param color=RED" in message

    def test_long_member_lists_are_cut(self) -> None:
        """Enums with many members list ten of them."""
        Big = enum.Enum("Big", [f"M{i}" for i in range(15)])
        message = str(parse_error("nope", Big))
        assert "M9, ..." in message
        assert "M10" not in message


class TestParseLiteral:
    @pytest.mark.parametrize(
        ("text", "annotation", "expected"),
        [
            ("fast", Literal["fast", "slow"], "fast"),
            ("slow", Literal["fast", "slow"], "slow"),
            ("1", Literal[1, 2], 1),
            ("01", Literal[1, 2], 1),
            ("0.5", Literal[0.5, 1.0], 0.5),
            ("true", Literal[True, "auto"], True),
            ("auto", Literal[True, "auto"], "auto"),
            ("none", Literal["x", None], None),
            ("red", Literal[Color.RED], Color.RED),
            (" fast ", Literal["fast", "slow"], "fast"),
        ],
    )
    def test_choices(self, text: str, annotation: object, expected: object) -> None:
        """The text matches a literal's str, or parses to the literal's own type and value."""
        value = parse_value("mode", text, annotation)
        assert value == expected
        assert type(value) is type(expected)

    @pytest.mark.parametrize(
        ("text", "annotation", "choices"),
        [
            ("FAST", Literal["fast", "slow"], "one of 'fast', 'slow'"),
            ("3", Literal[1, 2], "one of 1, 2"),
            ("blue", Literal[Color.RED], "one of RED"),
        ],
    )
    def test_other_text_is_an_error(self, text: str, annotation: object, choices: str) -> None:
        """Text matching no choice lists the choices (literals are case-sensitive)."""
        message = str(parse_error(text, annotation, name="mode"))
        assert f"expects {_type_name(annotation)}" in message
        assert choices in message


# --- parse_value: wrappers and unions ---------------------------------------------------------


class TestParseOptional:
    @pytest.mark.parametrize("text", ["none", "None", "NULL", "null", "", "  "])
    @pytest.mark.parametrize("annotation", [Optional[int], int | None, Union[None, int]])  # noqa: UP007, UP045
    def test_none_words(self, text: str, annotation: object) -> None:
        """'none', 'null' (any case) and empty text mean None."""
        assert parse_value("limit", text, annotation) is None

    @pytest.mark.parametrize("annotation", [Optional[int], int | None])  # noqa: UP045
    def test_other_text_parses_the_inner_type(self, annotation: object) -> None:
        """Anything else is read as the inner type."""
        assert parse_value("limit", "5", annotation) == 5

    def test_none_wins_over_str(self) -> None:
        """For str | None, 'none' means None rather than the text 'none'."""
        assert parse_value("s", "none", str | None) is None
        assert parse_value("s", "nobody", str | None) == "nobody"

    def test_error_mentions_none(self) -> None:
        """A bad value says that none is also accepted."""
        message = str(parse_error("x", int | None, name="limit"))
        assert "expects int | None" in message
        assert "pass a whole number or none such as --param limit=20" in message


class TestParseUnion:
    @pytest.mark.parametrize(
        ("text", "annotation", "expected"),
        [
            ("5", int | str, 5),
            ("x", int | str, "x"),
            ("5", str | int, "5"),
            ("1.5", int | float, 1.5),
            ("true", bool | int, True),
            ("7", bool | int, 7),
            ("1,2", int | list[int], [1, 2]),
            ("red", Color | int, Color.RED),
        ],
    )
    def test_first_member_that_parses_wins(
        self, text: str, annotation: object, expected: object
    ) -> None:
        """Members are tried in declaration order."""
        value = parse_value("u", text, annotation)
        assert value == expected
        assert type(value) is type(expected)

    def test_nothing_parses(self) -> None:
        """When no member accepts the text, all are described."""
        message = str(parse_error("x", int | float, name="u"))
        assert "expects int | float" in message
        assert "pass a whole number or a number such as --param u=20" in message


class TestParseAnnotatedAndAliases:
    @pytest.mark.parametrize(
        ("annotation", "text", "expected"),
        [
            (Annotated[int, "doc"], "3", 3),
            (Annotated[list[int], "doc", 42], "1,2", [1, 2]),
            (Param[int], "3", 3),
            (Secret[str], "hunter2", "hunter2"),
            (Optional[Annotated[int, "x"]], "none", None),  # noqa: UP045
            (UserId, "12", 12),
            (Number, "0.5", 0.5),
            (TypeVar("Either", int, str), "5", 5),
        ],
    )
    def test_wrappers_are_transparent(
        self, annotation: object, text: str, expected: object
    ) -> None:
        """Annotated metadata, Param/Secret markers, NewType and TypeVar bounds are seen through."""
        assert parse_value("p", text, annotation) == expected

    def test_annotated_error_names_the_inner_type(self) -> None:
        """The type in the message is the real type, not the Annotated wrapper."""
        assert "expects int," in str(parse_error("x", Param[int]))


class TestParseAny:
    @pytest.mark.parametrize("annotation", [Any, inspect.Parameter.empty, object, "SomeForwardRef"])
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("3", 3),
            ("2.5", 2.5),
            ("[1]", [1]),
            ('{"a": 1}', {"a": 1}),
            ("true", True),
            ("null", None),
            ('"quoted"', "quoted"),
            ("hello", "hello"),
            ("", ""),
            ("[1, 2", "[1, 2"),
        ],
    )
    def test_json_then_text(self, annotation: object, text: str, expected: object) -> None:
        """Unannotated and Any parameters read JSON when they can, else keep the text."""
        assert parse_value("x", text, annotation) == expected


class TestParseOtherClasses:
    def test_from_string_classmethod(self) -> None:
        """A class with a from_string classmethod is built with it."""
        assert parse_value("v", "1.2", Version) == Version(1, 2)

    def test_fromisoformat_on_a_subclass(self) -> None:
        """fromisoformat is found on subclasses of the datetime classes too."""

        class Day(datetime.date):
            pass

        value = parse_value("d", "2024-01-31", Day)
        assert type(value) is Day

    def test_constructor(self) -> None:
        """Any other class is called with the text."""
        assert parse_value("f", "1/3", fractions.Fraction) == fractions.Fraction(1, 3)
        assert parse_value("s", "ok", Slug).text == "ok"

    def test_static_from_string(self) -> None:
        """A staticmethod from_string is a factory too."""

        class Box:
            def __init__(self, inner: str) -> None:
                self.inner = inner

            @staticmethod
            def from_string(text: str) -> Box:
                return Box(text.upper())

        assert parse_value("b", "x", Box).inner == "X"

    def test_instance_method_from_string_is_not_a_factory(self) -> None:
        """An instance method named from_string is ignored; the constructor is used."""

        class Box:
            def __init__(self, inner: str) -> None:
                self.inner = inner

            def from_string(self, text: str) -> str:
                return text

        assert parse_value("b", "x", Box).inner == "x"

    def test_bytes(self) -> None:
        """bytes parameters get the text's UTF-8 bytes."""
        assert parse_value("b", "é", bytes) == "é".encode()

    @pytest.mark.parametrize(
        ("text", "annotation", "fragment"),
        [
            ("1", Version, "Version.from_string() raised ValueError"),
            ("bad slug", Slug, "Slug() raised ValueError: bad slug 'bad slug'"),
            ("x", Opaque, "Opaque() raised TypeError"),
        ],
    )
    def test_failures_quote_the_exception(self, text: str, annotation: type, fragment: str) -> None:
        """When the factory raises, the message says which and what it raised."""
        error = parse_error(text, annotation, name="obj")
        message = str(error)
        assert fragment in message
        assert "--param obj=VALUE" in message
        assert error.__cause__ is None


# --- parse_value: errors ---------------------------------------------------------------------


class TestParseErrors:
    @pytest.mark.parametrize(
        ("text", "annotation"),
        [
            ("ten", int),
            ("x", float),
            ("maybe", bool),
            ("1,x", list[int]),
            ("blue", Color),
            ("c", Literal["a", "b"]),
            ("x", datetime.timedelta),
            ("{", dict[str, int]),
        ],
    )
    def test_attributes_and_hierarchy(self, text: str, annotation: object) -> None:
        """Errors carry parameter, value and annotation and are also ValueErrors."""
        error = parse_error(text, annotation, name="p")
        assert error.parameter == "p"
        assert error.value == text
        assert error.annotation is annotation
        assert error.step is None
        assert isinstance(error, ValueError)
        assert isinstance(error, PipelineDefinitionError)
        message = str(error)
        assert message.startswith(f"parameter 'p' expects {_type_name(annotation)}, got ")
        assert "pass " in message

    def test_long_values_are_cut(self) -> None:
        """A huge value is shown cut to about 60 characters."""
        text = "x" * 500
        message = str(parse_error(text, int))
        assert "x" * 100 not in message
        assert "..." in message
        assert len(message) < 200

    def test_example_is_shell_quoted(self) -> None:
        """An example with spaces or quotes is quoted so it can be pasted."""
        message = str(parse_error("x", dict[str, int], name="m"))
        assert "--param m='{\"abc\": 20}'" in message


class TestSecret:
    def test_parse_error_hides_the_text(self) -> None:
        """With secret=True neither the message nor .value holds the text."""
        with pytest.raises(ParameterParseError) as info:
            parse_value("token", "s3cr3t,x", list[int], secret=True)
        message = str(info.value)
        assert "s3cr3t" not in message
        assert "got a secret value" in message
        assert info.value.value is None
        assert info.value.parameter == "token"

    def test_check_error_hides_the_value(self) -> None:
        """With secret=True a bad Python value is described by type only."""
        with pytest.raises(ParameterParseError) as info:
            check_value("token", "s3cr3t", int, secret=True)
        message = str(info.value)
        assert "s3cr3t" not in message
        assert "got a secret value of type str" in message
        assert info.value.value is None

    def test_secret_values_still_parse(self) -> None:
        """secret only changes errors, not results."""
        assert parse_value("token", "abc", str, secret=True) == "abc"
        assert check_value("token", "abc", str, secret=True) == "abc"

    def test_a_secret_is_read_from_an_environment_variable(self, monkeypatch) -> None:
        """`--param token=env:API_TOKEN` reads the secret from the environment."""
        monkeypatch.setenv("API_TOKEN", "s3cr3t")
        assert parse_value("token", "env:API_TOKEN", str, secret=True) == "s3cr3t"
        monkeypatch.setenv("API_PORT", "8443")
        assert parse_value("port", "env:API_PORT", int, secret=True) == 8443

    def test_a_missing_environment_variable_names_it_and_the_parameter(self, monkeypatch) -> None:
        monkeypatch.delenv("API_TOKEN", raising=False)
        with pytest.raises(ParameterParseError) as info:
            parse_value("token", "env:API_TOKEN", str, secret=True)
        message = str(info.value)
        assert "parameter 'token'" in message
        assert "environment variable API_TOKEN" in message
        assert "not set" in message
        assert info.value.parameter == "token"
        with pytest.raises(ParameterParseError, match="needs the name of an environment"):
            parse_value("token", "env:", str, secret=True)

    def test_a_bad_value_from_the_environment_stays_hidden(self, monkeypatch) -> None:
        monkeypatch.setenv("API_PORT", "s3cr3t")
        with pytest.raises(ParameterParseError) as info:
            parse_value("port", "env:API_PORT", int, secret=True)
        assert "s3cr3t" not in str(info.value)
        assert info.value.value is None

    def test_env_text_of_a_plain_parameter_stays_literal(self, monkeypatch) -> None:
        """Only a Secret reads the environment: "env:..." is ordinary text elsewhere."""
        monkeypatch.setenv("API_TOKEN", "s3cr3t")
        assert parse_value("label", "env:API_TOKEN", str) == "env:API_TOKEN"


# --- check_value -------------------------------------------------------------------------------


class TestCheckMatching:
    @pytest.mark.parametrize(
        ("value", "annotation"),
        [
            (3, int),
            (0.5, float),
            ("x", str),
            (True, bool),
            (pathlib.Path("a"), pathlib.Path),
            (Color.RED, Color),
            (decimal.Decimal("1.5"), decimal.Decimal),
            (datetime.date(2024, 1, 1), datetime.date),
            (datetime.timedelta(seconds=5), datetime.timedelta),
            ([1, 2], list[int]),
            ((1, 2), tuple[int, ...]),
            ((1, "a"), tuple[int, str]),
            ({1, 2}, set[int]),
            (frozenset({1}), frozenset[int]),
            ({"a": 1}, dict[str, int]),
            ({"a": [1.5]}, dict[str, list[float]]),
            ((1, 2), collections.abc.Sequence[int]),
            (None, Optional[int]),  # noqa: UP045
            (None, int | None),
            ("x", Literal["x", "y"]),
            (object(), Any),
            (object(), inspect.Parameter.empty),
            (Version(1, 0), Version),
            ([1, "a"], list),
        ],
    )
    def test_returns_the_same_object(self, value: object, annotation: object) -> None:
        """A value that already fits is returned itself, not a copy."""
        assert check_value("p", value, annotation) is value


class TestCheckNumbers:
    @pytest.mark.parametrize("annotation", [float, Optional[float], Annotated[float, "x"]])  # noqa: UP045
    def test_int_becomes_float(self, annotation: object) -> None:
        """An int for a float parameter is returned as a float, as declared."""
        value = check_value("rate", 1, annotation)
        assert value == 1.0
        assert type(value) is float

    def test_fraction_becomes_float(self) -> None:
        """Other real numbers (numpy floats, Fraction) become float."""
        assert check_value("rate", fractions.Fraction(1, 4), float) == 0.25

    def test_int_subclass_with_index(self) -> None:
        """Objects implementing __index__ (numpy integers) become int."""

        class FakeNumpyInt:
            def __index__(self) -> int:
                return 7

        assert check_value("n", FakeNumpyInt(), int) == 7

    @pytest.mark.parametrize("annotation", [int, float, decimal.Decimal, Optional[int]])  # noqa: UP045
    @pytest.mark.parametrize("value", [True, False])
    def test_bool_is_not_a_number(self, value: bool, annotation: object) -> None:
        """True/False are rejected for numeric parameters."""
        error = check_error(value, annotation, name="n")
        assert f"got bool {value!r}" in str(error)

    def test_bool_message(self) -> None:
        """The bool rejection says why."""
        assert str(check_error(True, int, name="n")) == (
            "parameter 'n' expects int, got bool True; a bool is not accepted as a number; "
            "pass a whole number such as 20"
        )

    @pytest.mark.parametrize("value", [1.5, 2.0, decimal.Decimal("2")])
    def test_float_is_not_an_int(self, value: object) -> None:
        """No silent truncation: a float for an int is an error."""
        assert "expects int" in str(check_error(value, int))

    @pytest.mark.parametrize("value", [1, 0])
    def test_int_is_not_a_bool(self, value: int) -> None:
        """1 and 0 are not accepted for a bool parameter (only True/False or text)."""
        assert "expects bool" in str(check_error(value, bool))

    @pytest.mark.parametrize(
        ("value", "expected"),
        [(2, decimal.Decimal(2)), (0.1, decimal.Decimal("0.1"))],
    )
    def test_decimal_from_numbers(self, value: object, expected: decimal.Decimal) -> None:
        """ints and floats become Decimals, floats through their shortest text."""
        assert check_value("d", value, decimal.Decimal) == expected

    @pytest.mark.parametrize(("value", "seconds"), [(90, 90), (0.5, 0.5)])
    def test_timedelta_from_seconds(self, value: float, seconds: float) -> None:
        """Numbers of seconds are accepted for a timedelta."""
        assert check_value("t", value, datetime.timedelta) == datetime.timedelta(seconds=seconds)

    def test_timedelta_rejects_infinity(self) -> None:
        """A non-finite number of seconds is an error, not an OverflowError."""
        assert "finite" in str(check_error(math.inf, datetime.timedelta))


class TestCheckText:
    @pytest.mark.parametrize(
        ("value", "annotation", "expected"),
        [
            ("20", int, 20),
            ("0.5", float, 0.5),
            ("yes", bool, True),
            ("1,2", list[int], [1, 2]),
            ("[1, 2]", tuple[int, ...], (1, 2)),
            ('{"a": 1}', dict[str, int], {"a": 1}),
            ("none", Optional[int], None),  # noqa: UP045
            ("5", int | None, 5),
            ("RED", Color, Color.RED),
            ("1h", datetime.timedelta, datetime.timedelta(hours=1)),
            ("2024-01-31", datetime.date, datetime.date(2024, 1, 31)),
            ("1", Literal[1, 2], 1),
            ("1.2", Version, Version(1, 2)),
        ],
    )
    def test_text_is_parsed_like_the_cli(
        self, value: str, annotation: object, expected: object
    ) -> None:
        """params={"n": "20"} behaves exactly like --param n=20."""
        assert check_value("p", value, annotation) == expected

    @pytest.mark.parametrize("annotation", [str, str | None, str | int, Any, Literal["none", "x"]])
    def test_text_stays_text_when_text_is_allowed(self, annotation: object) -> None:
        """Text is not parsed where the annotation takes text as it is."""
        assert check_value("p", "none", annotation) == "none"

    def test_bad_text_error_is_python_style(self) -> None:
        """Errors for text from Python show its type and a Python example, not --param."""
        message = str(check_error("ten", int, name="n"))
        assert message == "parameter 'n' expects int, got str 'ten'; pass a whole number such as 20"

    def test_bad_json_text_reports_the_json_error(self) -> None:
        """JSON errors surface for text given from Python too."""
        assert "invalid JSON" in str(check_error("[1,", list[int]))


class TestCheckPathsAndEnums:
    @pytest.mark.parametrize("value", ["data/a.csv", pathlib.PurePosixPath("data/a.csv")])
    def test_path_from_str_or_pathlike(self, value: object) -> None:
        """str and os.PathLike values become the declared Path class."""
        result = check_value("out", value, pathlib.Path)
        assert result == pathlib.Path("data/a.csv")
        assert isinstance(result, pathlib.Path)

    def test_pathlike_for_str(self) -> None:
        """A Path given for a str parameter becomes its text."""
        assert check_value("out", pathlib.Path("a/b"), str) == "a/b"

    @pytest.mark.parametrize("value", [3, b"data", None])
    def test_path_rejects_other_values(self, value: object) -> None:
        """Numbers, bytes and None are not paths."""
        assert "expects Path" in str(check_error(value, pathlib.Path))

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            (Color.RED, Color.RED),
            ("red", Color.RED),
            ("GREEN", Color.GREEN),
            ("green", Color.GREEN),
        ],
    )
    def test_enum_by_member_value_or_name(self, value: object, expected: Color) -> None:
        """An Enum takes a member, a member's value, or its name."""
        assert check_value("c", value, Color) is expected

    def test_int_enum_by_value(self) -> None:
        """An IntEnum takes the int value of a member."""
        assert check_value("l", 2, Level) is Level.HIGH

    @pytest.mark.parametrize("value", [3, "blue", Level.LOW])
    def test_enum_rejects_others(self, value: object) -> None:
        """Unknown values and members of other enums are rejected, listing the choices."""
        message = str(check_error(value, Color, name="c"))
        assert "expects Color" in message
        assert "pass one of RED, GREEN such as Color.RED" in message


class TestCheckCollections:
    @pytest.mark.parametrize(
        ("value", "annotation", "expected"),
        [
            ((1, 2), list[int], [1, 2]),
            ([1, 2], tuple[int, ...], (1, 2)),
            ([1, "a"], tuple[int, str], (1, "a")),
            ([1, 2, 2], set[int], {1, 2}),
            ([1], frozenset[int], frozenset({1})),
            ({1, 2}, frozenset[int], frozenset({1, 2})),
            ([1, 2], list[float], [1.0, 2.0]),
            (["1", "2"], list[int], [1, 2]),
            ({"a": 1}, dict[str, float], {"a": 1.0}),
            ({"1": "x"}, dict[int, str], {1: "x"}),
            (range(3), collections.abc.Sequence[int], [0, 1, 2]),
            ({1, 2}, collections.abc.Collection[int], {1, 2}),
            ([1, 2], collections.abc.Set[int], frozenset({1, 2})),
        ],
    )
    def test_light_coercion(self, value: object, annotation: object, expected: object) -> None:
        """Containers are converted to the declared kind and items checked."""
        result = check_value("xs", value, annotation)
        assert result == expected
        assert type(result) is type(expected)
        if isinstance(expected, list):
            assert [type(i) for i in result] == [type(i) for i in expected]

    def test_float_items_are_really_floats(self) -> None:
        """An int item in list[float] is converted, so the list is a new list."""
        given = [1, 2.5]
        result = check_value("xs", given, list[float])
        assert result == [1.0, 2.5]
        assert result is not given
        assert type(result[0]) is float

    @pytest.mark.parametrize(
        ("value", "annotation", "fragment"),
        [
            ({1, 2}, list[int], "got set {1, 2}"),
            ("", list[int], None),
            ([1, "x"], list[int], "item 2 of 2, 'x', is not a whole number"),
            ([1, True], list[int], "item 2 of 2, True, is not a whole number"),
            ([1, 2, 3], tuple[int, int], "expected 2 items, got 3"),
            ({"a": 1}, list[int], "got dict"),
            ((i for i in range(2)), list[int], "got generator"),
            ({"a": "x"}, dict[str, int], "the value for key 'a', 'x', is not a whole number"),
            ([("a", 1)], dict[str, int], "got list"),
            ({"x": 1}, dict[int, int], "key 'x' is not a whole number"),
            ({"a": 1}, collections.abc.Iterable[str], "got dict"),
            (3, list[int], "got int 3"),
        ],
    )
    def test_errors(self, value: object, annotation: object, fragment: str | None) -> None:
        """Wrong containers and bad items are explained; empty text is an empty list."""
        if fragment is None:
            assert check_value("xs", value, annotation) == []
            return
        assert fragment in str(check_error(value, annotation, name="xs"))


class TestCheckNoneAndUnions:
    @pytest.mark.parametrize("annotation", [int, str, list[int], pathlib.Path, Color])
    def test_none_needs_optional(self, annotation: object) -> None:
        """None is accepted only where the annotation allows it."""
        message = str(check_error(None, annotation))
        assert "got None" in message

    @pytest.mark.parametrize(
        ("value", "annotation", "expected"),
        [
            (3, float | int, 3),
            (3, int | float, 3),
            (3, float | str, 3.0),
            (3, Optional[float], 3.0),  # noqa: UP045
            ("3", int | str, "3"),
            ("3", float | int, 3.0),
            ([1], int | list[int], [1]),
            (None, int | None, None),
        ],
    )
    def test_exact_match_before_coercion(
        self, value: object, annotation: object, expected: object
    ) -> None:
        """A member that fits exactly wins over converting into an earlier member."""
        result = check_value("u", value, annotation)
        assert result == expected
        assert type(result) is type(expected)

    def test_union_error(self) -> None:
        """No member fits: the message names the whole union."""
        message = str(check_error([1], int | str, name="u"))
        assert message.startswith("parameter 'u' expects int | str, got list [1];")
        assert "a whole number or text" in message


class TestCheckLiterals:
    @pytest.mark.parametrize(
        ("value", "annotation"),
        [("a", Literal["a", "b"]), (1, Literal[1, 2]), (Color.RED, Literal[Color.RED])],
    )
    def test_members(self, value: object, annotation: object) -> None:
        """A literal's own value is accepted."""
        assert check_value("m", value, annotation) == value

    @pytest.mark.parametrize(
        ("value", "annotation"),
        [(True, Literal[1, 2]), (1.0, Literal[1, 2]), ("c", Literal["a", "b"]), (3, Literal[1, 2])],
    )
    def test_non_members(self, value: object, annotation: object) -> None:
        """Equal-but-different-type values (True == 1) are not members."""
        assert f"expects {_type_name(annotation)}" in str(check_error(value, annotation))


class TestCheckErrors:
    @pytest.mark.parametrize(
        ("value", "annotation"),
        [
            (True, int),
            ("ten", int),
            (None, str),
            ([1, "x"], list[int]),
            (object(), Version),
            (5, str),
        ],
    )
    def test_attributes_and_hierarchy(self, value: object, annotation: object) -> None:
        """Errors carry parameter, the given value and annotation and are ValueErrors."""
        error = check_error(value, annotation, name="p")
        assert error.parameter == "p"
        assert error.value is value
        assert error.annotation is annotation
        assert isinstance(error, ValueError)
        assert isinstance(error, PipelineDefinitionError)
        assert str(error).startswith(f"parameter 'p' expects {_type_name(annotation)}, got ")

    def test_repr_is_cut(self) -> None:
        """A huge value's repr is cut to about 60 characters."""
        message = str(check_error(list(range(1000)), str))
        assert "got list [0, 1, 2," in message
        assert "999" not in message
        assert len(message) < 200

    def test_no_example_class(self) -> None:
        """A class without examples says how it can be given."""
        message = str(check_error(3, Version, name="v"))
        assert "pass a Version or text that Version.from_string() accepts" in message

    def test_python_examples_are_python(self) -> None:
        """Hints for Python values show Python literals (paths as str)."""
        assert "pass a path such as 'data/a.csv'" in str(check_error(3, pathlib.Path))
        assert "such as [20, 30]" in str(check_error(3, list[int]))


# --- type names ------------------------------------------------------------------------------


class TestTypeName:
    @pytest.mark.parametrize(
        ("annotation", "expected"),
        [
            (int, "int"),
            (str, "str"),
            (None, "None"),
            (type(None), "None"),
            (Any, "Any"),
            (inspect.Parameter.empty, "Any"),
            (pathlib.Path, "Path"),
            (datetime.timedelta, "timedelta"),
            (Color, "Color"),
            (list[int], "list[int]"),
            (typing.List[int], "list[int]"),  # noqa: UP006
            (typing.List, "list"),  # noqa: UP006
            (list, "list"),
            (dict[str, list[int]], "dict[str, list[int]]"),
            (tuple[int, ...], "tuple[int, ...]"),
            (tuple[()], "tuple[()]"),
            (collections.abc.Sequence[str], "Sequence[str]"),
            (Optional[int], "int | None"),  # noqa: UP045
            (int | None, "int | None"),
            (Union[int, str, None], "int | str | None"),  # noqa: UP007
            (Literal["a", 1], "Literal['a', 1]"),
            (Literal[Color.RED], "Literal[Color.RED]"),
            (Annotated[int, "meta"], "int"),
            (Param[float], "float"),
            (UserId, "UserId"),
            (Number, "Number"),
            ("Forward", "Forward"),
            (typing.Callable[[int], str], "Callable[[int], str]"),
        ],
    )
    def test_readable_names(self, annotation: object, expected: str) -> None:
        """Annotations are named the way a user writes them."""
        assert _type_name(annotation) == expected
