"""Selecting steps with ``--from`` (start) and with stubs, before anything runs."""

from __future__ import annotations

import pytest

from stepflow import Pipeline, step
from stepflow.errors import UsageError


@pytest.fixture
def diamond(resource_module):
    return resource_module("diamond").diamond


class TestFrom:
    def test_step_and_what_depends_on_it(self, diamond):
        """--from left: left and joined; joined's other inputs come from earlier results."""
        plan = diamond.plan(start="left")
        assert plan.steps == ("left", "joined")
        assert plan.given == ("source", "lo", "hi")
        assert plan.earlier == ("source", "lo", "hi")
        assert plan.start == ("left",)

    def test_by_output_name(self, diamond):
        assert diamond.plan(start=["hi"]).steps == ("right", "joined")

    def test_with_target(self, diamond):
        """--from and --target together: the steps between them."""
        plan = diamond.plan(start=["source"], targets=["left"])
        assert plan.steps == ("source", "left")
        assert plan.given == ()

    def test_unknown_step(self, diamond):
        with pytest.raises(UsageError) as excinfo:
            diamond.plan(start=["rigth"])
        assert "unknown step 'rigth'; did you mean 'right'?" in str(excinfo.value)

    def test_target_not_below_start(self, diamond):
        with pytest.raises(UsageError, match=r"none of the targets depends on 'left'"):
            diamond.plan(start=["left"], targets=["right"])

    def test_parameters_of_unselected_steps_drop_out(self, diamond):
        """Only the selected steps' parameters are in the plan."""
        assert set(diamond.plan(start="joined").params) == {"label"}


class TestStubs:
    def test_stub_replaces_producer_and_what_only_it_needed(self):
        calls: list[str] = []

        @step
        def path() -> str:
            return "houses.csv"

        @step
        def houses(path: str) -> list[int]:
            calls.append("houses")
            return [1]

        @step
        def total(houses: list[int]) -> int:
            return sum(houses)

        @step
        def report(path: str, total: int) -> str:
            return f"{path}: {total}"

        pipe = Pipeline("p", [path, houses, total, report])
        plan = pipe.plan(stub={"houses": [5]})
        # path stays: report reads it too.
        assert plan.steps == ("path", "total", "report")
        assert plan.given == ("houses",) and plan.earlier == ()
        lone = Pipeline("q", [path, houses, total]).plan(stub={"houses": [5]})
        assert lone.steps == ("total",)

    def test_stub_with_target(self, diamond):
        plan = diamond.plan(stub={"source": [1, 2]}, targets=["left"])
        assert plan.steps == ("left",)
        assert plan.stubs == {"source": [1, 2]}

    def test_unknown_output(self, diamond):
        with pytest.raises(UsageError) as excinfo:
            diamond.plan(stub={"lefft": [1.0]})
        assert "unknown output 'lefft'; did you mean 'left'?" in str(excinfo.value)

    def test_half_stubbed_producer_is_refused(self, diamond):
        """right makes lo and hi; stubbing lo alone while joined needs hi cannot work."""
        with pytest.raises(UsageError) as excinfo:
            diamond.plan(stub={"lo": 0})
        message = str(excinfo.value)
        assert "the stub for 'lo' replaces step 'right'" in message
        assert "'hi' are still needed; stub those too" in message
        assert diamond.plan(stub={"lo": 0, "hi": 9}).steps == ("source", "left", "joined")
