"""The pytest helpers of ``stepflow.testing``: ``assert_outcomes`` and stubbed outputs."""

from __future__ import annotations

import pytest

from stepflow import Pipeline, StepState, step
from stepflow.errors import UsageError

pytest_plugins = ["pytester"]


def _pipeline(calls: list[str]) -> Pipeline:
    @step
    def csv_path() -> str:
        calls.append("csv_path")
        return "data/houses.csv"

    @step
    def houses(csv_path: str) -> list[float]:
        calls.append("houses")
        raise FileNotFoundError(csv_path)  # no data in a unit test

    @step
    def mean_price(houses: list[float]) -> float:
        calls.append("mean_price")
        return sum(houses) / len(houses)

    @step
    def report(mean_price: float) -> str:
        calls.append("report")
        return f"mean {mean_price:.1f}"

    return Pipeline("houses", [csv_path, houses, mean_price, report])


class TestStub:
    def test_stub_replaces_upstream_output(self, stepflow_runner):
        """The stubbed producer (and what only it needed) does not run; its consumers get
        the value."""
        calls: list[str] = []
        result = stepflow_runner.run(_pipeline(calls), stub={"houses": [100.0, 300.0]})
        assert calls == ["mean_price", "report"]
        assert result["report"] == "mean 200.0"
        assert result["houses"] == [100.0, 300.0]
        assert set(result.steps) == {"mean_price", "report"}
        result.assert_outcomes(ran=2)

    def test_runs_in_the_tests_home(self, stepflow_runner):
        """Stubbed values count by content: the same stub reuses, another reruns."""

        @step
        def houses() -> list[float]:
            raise FileNotFoundError("houses.csv")

        @step
        def mean_price(houses: list[float]) -> float:
            return sum(houses) / len(houses)

        pipe = Pipeline("p", [houses, mean_price])
        stepflow_runner.run(pipe, stub={"houses": [1.0]}).assert_outcomes(ran=1)
        assert (stepflow_runner.home / "index").is_dir()
        stepflow_runner.run(pipe, stub={"houses": [1.0]}).assert_outcomes(reused=1)
        changed = stepflow_runner.run(pipe, stub={"houses": [3.0, 5.0]})
        changed.assert_outcomes(ran=1)
        assert changed["mean_price"] == 4.0

    def test_unknown_output(self, stepflow_runner):
        with pytest.raises(UsageError, match=r"unknown output 'house'; did you mean 'houses'"):
            stepflow_runner.run(_pipeline([]), stub={"house": []})

    def test_params_and_targets(self, stepflow_runner):
        @step
        def base(n: int = 1) -> int:
            return n

        @step
        def twice(base: int) -> int:
            return 2 * base

        @step
        def unused(base: int) -> int:
            return base

        pipe = Pipeline("p", [base, twice, unused])
        result = stepflow_runner.run(pipe, params={"n": 4}, targets=["twice"])
        assert result["twice"] == 8
        result.assert_outcomes(ran=2)
        with pytest.raises(TypeError, match=r"takes keywords after the pipeline"):
            stepflow_runner.run(pipe, "twice")


class TestAssertOutcomes:
    def test_run_result(self, stepflow_runner):
        calls: list[str] = []
        result = stepflow_runner.run(_pipeline(calls))
        assert result.steps["houses"].state is StepState.FAILED
        result.assert_outcomes(ran=1, failed=1, skipped=2)
        with pytest.raises(AssertionError) as excinfo:
            result.assert_outcomes(ran=1, failed=1)
        assert "skipped: expected 0, got 2 (mean_price, report)" in str(excinfo.value)

    def test_cli_outcome(self, stepflow_runner):
        stepflow_runner.makepyfile(
            flow="""
            from stepflow import Pipeline, step

            @step
            def a() -> int:
                return 1

            @step
            def b(a: int) -> int:
                return a + 1

            pipe = Pipeline("flow", [a, b])
            """
        )
        outcome = stepflow_runner.run("run", "flow.py:pipe", "--color", "yes")
        assert outcome.parseoutcomes() == {"ran": 2}
        outcome.assert_outcomes(ran=2)
        with pytest.raises(AssertionError, match=r"ran: expected 1, got 2"):
            outcome.assert_outcomes(ran=1)
        stepflow_runner.run("run", "flow.py:pipe").assert_outcomes(reused=2)

    def test_no_summary_line(self, stepflow_runner):
        outcome = stepflow_runner.run("run", "missing.py:pipe")
        assert outcome.ret == 2
        with pytest.raises(ValueError, match=r"no summary line"):
            outcome.parseoutcomes()

    def test_in_a_users_test_file(self, pytester):
        """A user's test file gets the fixture from the installed plugin and both helpers."""
        pytester.makepyfile(
            """
            from stepflow import Pipeline, step

            @step
            def houses() -> list:
                raise RuntimeError("reads a big file")

            @step
            def count(houses: list) -> int:
                return len(houses)

            def test_count(stepflow_runner):
                pipe = Pipeline("p", [houses, count])
                result = stepflow_runner.run(pipe, stub={"houses": [1, 2, 3]})
                result.assert_outcomes(ran=1)
                assert result["count"] == 3
            """
        )
        pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)
