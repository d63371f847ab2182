"""The one parser of durations and the one renderer of sizes, times, durations and types."""

from __future__ import annotations

import collections.abc
import datetime
import enum
import pathlib
import typing

import pytest

from stepflow._authoring.parse import _type_name, parse_value
from stepflow._authoring.step import parse_duration
from stepflow._humanize import (
    NOT_FINITE,
    human_age,
    human_duration,
    human_size,
    parse_seconds,
    type_name,
)
from stepflow._planning.typecheck import type_repr


class Shade(enum.Enum):
    LIGHT = 1


class TestParseSeconds:
    @pytest.mark.parametrize(
        ("text", "seconds"),
        [
            ("90", 90.0),
            ("1.5", 1.5),
            ("90s", 90.0),
            ("250ms", 0.25),
            ("5m", 300.0),
            ("2h", 7200.0),
            ("1d", 86400.0),
            ("1w", 604800.0),
            ("1h30m", 5400.0),
            ("1h 30m", 5400.0),
            ("2H", 7200.0),
            ("-5m", -300.0),
        ],
    )
    def test_grammar(self, text: str, seconds: float) -> None:
        """Plain seconds, each unit and combinations are read."""
        assert parse_seconds(text) == pytest.approx(seconds)

    @pytest.mark.parametrize("text", ["", "soon", "5x", "m5", "1h30", "--5"])
    def test_not_a_duration(self, text: str) -> None:
        """Text of another shape is refused, naming the text."""
        with pytest.raises(ValueError, match="is not a duration"):
            parse_seconds(text)

    @pytest.mark.parametrize("text", ["inf", "nan", "1e400"])
    def test_not_finite(self, text: str) -> None:
        """Non-finite numbers are refused with their own reason."""
        with pytest.raises(ValueError, match=NOT_FINITE):
            parse_seconds(text)

    @pytest.mark.parametrize("text", ["90s", "1h30m", "1w", "1d2h3m4s", "250ms", "1.5"])
    def test_both_entry_points_agree(self, text: str) -> None:
        """``@step(timeout=...)`` and ``--param`` read the same grammar, weeks included."""
        as_param = parse_value("every", text, datetime.timedelta)
        assert isinstance(as_param, datetime.timedelta)
        assert parse_duration(text, "timeout") == pytest.approx(as_param.total_seconds())

    def test_step_timeout_not_finite(self) -> None:
        """A non-finite timeout string says why it is refused."""
        from stepflow.errors import StepDeclarationError

        with pytest.raises(StepDeclarationError, match="timeout='inf' is not a duration; a dur"):
            parse_duration("inf", "timeout")


class TestFormatters:
    @pytest.mark.parametrize(
        ("seconds", "text"),
        [(None, "-"), (0.5, "0.50s"), (59.994, "59.99s"), (125, "2m05s"), (3720, "1h02m")],
    )
    def test_human_duration(self, seconds: float | None, text: str) -> None:
        """Durations read as seconds, then minutes and seconds, then hours and minutes."""
        assert human_duration(seconds) == text

    @pytest.mark.parametrize(
        ("seconds", "text"), [(0, "0s"), (59, "59s"), (90, "2m"), (7200, "2h"), (3 * 86400, "3d")]
    )
    def test_human_age(self, seconds: float, text: str) -> None:
        """Ages are rounded to their largest unit."""
        assert human_age(seconds) == text

    def test_human_size(self) -> None:
        """Sizes use binary units up to GiB."""
        assert [human_size(n) for n in (0, 1536, 5 << 20, 4096 << 30)] == [
            "0 B",
            "1.5 KiB",
            "5.0 MiB",
            "4096.0 GiB",
        ]


class TestTypeName:
    @pytest.mark.parametrize(
        ("annotation", "qualified", "bare"),
        [
            (pathlib.Path, "pathlib.Path", "Path"),
            (
                typing.Literal[Shade.LIGHT],
                f"Literal[{__name__}.Shade.LIGHT]",
                "Literal[Shade.LIGHT]",
            ),
            (
                collections.abc.Sequence[pathlib.Path],
                "collections.abc.Sequence[pathlib.Path]",
                "Sequence[Path]",
            ),
            (dict[str, int] | None, "dict[str, int] | None", "dict[str, int] | None"),
            (tuple[()], "tuple[()]", "tuple[()]"),
        ],
    )
    def test_one_renderer_two_styles(self, annotation: object, qualified: str, bare: str) -> None:
        """The pipeline checks qualify classes, ``--param`` messages do not; the rest agrees."""
        assert type_name(annotation) == type_repr(annotation) == qualified
        assert type_name(annotation, qualified=False) == _type_name(annotation) == bare

    def test_deep_nesting_does_not_raise(self) -> None:
        """Very deep generics are named without RecursionError, in either style."""
        deep: typing.Any = int
        for _ in range(200):
            deep = list[deep]
        assert "..." in type_name(deep) and "..." in type_name(deep, qualified=False)
