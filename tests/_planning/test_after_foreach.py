"""``@step(after=[...])`` (ordering without data) and ``@step(foreach=...)`` (fan-out):
declaration checks, graph edges, cycles and type checks, all when the pipeline is built."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest

from stepflow import Param, Pipeline, step
from stepflow.errors import (
    CycleError,
    PipelineDefinitionError,
    StepDeclarationError,
    TypeMismatchError,
)


@step
def prepare() -> None:
    """A sink: makes a folder, say; nothing is passed on."""


@step
def numbers() -> list[int]:
    return [1, 2, 3]


class TestAfterDeclaration:
    def test_by_function_and_by_name(self):
        """Steps are named by function or by string; duplicates collapse."""

        @step(after=[prepare, "numbers", prepare])
        def late() -> int:
            return 1

        assert late.spec.options.after == ("prepare", "numbers")

    def test_single_step_without_list(self):
        """``after=prepare`` is read as ``after=[prepare]``."""

        @step(after=prepare)
        def late() -> int:
            return 1

        assert late.spec.options.after == ("prepare",)

    def test_undecorated_function_is_refused(self):
        """A plain function in after=[...] is named, with the fix."""

        def helper() -> None: ...

        with pytest.raises(StepDeclarationError, match=r"helper is not a step; decorate it"):

            @step(after=[helper])
            def late() -> int:
                return 1

    def test_bad_item_is_refused(self):
        with pytest.raises(StepDeclarationError, match=r"3 is neither a step nor a step name"):

            @step(after=[3])
            def late() -> int:
                return 1

    def test_itself_is_refused(self):
        with pytest.raises(StepDeclarationError, match=r"'late' lists itself in after"):

            @step(after=["late"])
            def late() -> int:
                return 1


class TestAfterGraph:
    def test_ordering_edge_without_data(self):
        """An after edge orders and selects like a data edge, but passes no data."""

        @step(after=[prepare])
        def load() -> int:
            return 1

        pipe = Pipeline("p", [load, prepare])
        assert list(pipe.steps) == ["prepare", "load"]
        assert pipe.dag.after == (("prepare", "load"),)
        assert pipe.dag.upstream["load"] == ("prepare",)
        assert pipe.dag.downstream["prepare"] == ("load",)
        assert pipe.dag.edges == ()
        assert pipe.plan(targets=["load"]).steps == ("prepare", "load")

    def test_unknown_step_is_an_error_with_suggestion(self):
        @step(after=["prepar"])
        def load() -> int:
            return 1

        with pytest.raises(PipelineDefinitionError) as excinfo:
            Pipeline("p", [load, prepare])
        message = str(excinfo.value)
        assert "step 'load' has after=['prepar']" in message
        assert "did you mean 'prepare'?" in message
        assert excinfo.value.step == "load"

    def test_cycle_through_after_names_the_path(self):
        """A cycle made of an after edge and a data edge prints its path and the after edge."""

        @step(after=["consume"])
        def make() -> int:
            return 1

        @step
        def consume(make: int) -> int:
            return make

        with pytest.raises(CycleError) as excinfo:
            Pipeline("p", [make, consume])
        assert excinfo.value.path == ["make", "consume", "make"]
        message = str(excinfo.value)
        assert "make -> consume -> make" in message
        assert "dropping an after=[...] ordering ('consume' -> 'make')" in message

    def test_run_honours_order(self, stepflow_home):
        """A step listed after a sink runs after it, and is skipped when it fails."""
        calls: list[str] = []

        @step
        def setup() -> None:
            calls.append("setup")

        @step(after=[setup])
        def work() -> int:
            calls.append("work")
            return 1

        result = Pipeline("p", [work, setup]).run()
        assert calls == ["setup", "work"]
        assert result["work"] == 1

        @step
        def broken() -> None:
            raise RuntimeError("no folder")

        @step(after=[broken])
        def later() -> int:
            return 1

        result = Pipeline("q", [later, broken]).run()
        assert result.steps["later"].state == "skipped"
        assert "upstream step 'broken' failed" in result.steps["later"].reason

    def test_parallel_run_honours_order(self, stepflow_home, tmp_path):
        """With worker processes too: the later step sees what the earlier one did."""
        marker = tmp_path / "ready"

        @step(cache=False)
        def make_ready(path: str = str(marker)) -> None:
            import time

            time.sleep(0.3)
            with open(path, "w") as fh:
                fh.write("ready")

        @step(after=[make_ready], cache=False)
        def check_ready(path: str = str(marker)) -> str:
            with open(path) as fh:
                return fh.read()

        @step(cache=False)
        def unrelated() -> int:
            return 1

        result = Pipeline("p", [check_ready, unrelated, make_ready]).run(workers=2)
        assert result.ok, result.summary()
        assert result["check_ready"] == "ready"


class TestForeachDeclaration:
    def test_output_is_a_list_of_the_item_results(self):
        @step(foreach="numbers")
        def square(numbers: int) -> float:
            return numbers**2

        assert square.spec.options.foreach == "numbers"
        assert square.spec.outputs[0].annotation == list[float]
        # Still a plain function: one item in, one result out.
        assert square(3) == 9

    def test_unknown_parameter(self):
        with pytest.raises(StepDeclarationError) as excinfo:

            @step(foreach="chunk")
            def score(chunks: list[int]) -> int:
                return 1

        assert "foreach='chunk' names no parameter of the function" in str(excinfo.value)
        assert "its parameters: chunks" in str(excinfo.value)

    def test_param_is_refused(self):
        with pytest.raises(StepDeclarationError, match=r"foreach='n' names a Param"):

            @step(foreach="n")
            def score(n: Param[int] = 3) -> int:
                return n

    def test_not_a_name(self):
        with pytest.raises(StepDeclarationError, match=r"give the name of the input"):

            @step(foreach=["numbers"])  # type: ignore[arg-type]
            def score(numbers: int) -> int:
                return numbers


class TestForeachGraph:
    def test_item_type_checked_against_sequence(self):
        """The producer's list[int] feeds items of int; consumers see list[result]."""

        @step(foreach="numbers")
        def half(numbers: int) -> float:
            return numbers / 2

        @step
        def total(half: list[float]) -> float:
            return sum(half)

        Pipeline("p", [numbers, half, total])

        @step
        def wrong(half: list[str]) -> str:
            return ""

        with pytest.raises(TypeMismatchError, match=r"'half' as list\[float\]"):
            Pipeline("p", [numbers, half, wrong])

    def test_item_type_mismatch(self):
        @step(foreach="numbers")
        def shout(numbers: str) -> str:
            return numbers.upper()

        with pytest.raises(TypeMismatchError) as excinfo:
            Pipeline("p", [numbers, shout])
        assert "needs a sequence of str" in str(excinfo.value)
        assert "step 'numbers' produces 'numbers' as list[int]" in str(excinfo.value)

    def test_not_a_sequence(self):
        @step
        def frame() -> pd.DataFrame:
            return pd.DataFrame()

        @step(foreach="frame")
        def rows(frame: Any) -> int:
            return 1

        with pytest.raises(TypeMismatchError, match=r"make 'frame' return a list"):
            Pipeline("p", [frame, rows])

    def test_unproduced_input(self):
        @step(foreach="numbrs")
        def half(numbrs: int = 2) -> float:
            return numbrs / 2

        with pytest.raises(PipelineDefinitionError) as excinfo:
            Pipeline("p", [numbers, half])
        message = str(excinfo.value)
        assert "step 'half' has foreach='numbrs', but no step of the pipeline produces" in message
        assert "did you mean 'numbers'?" in message
