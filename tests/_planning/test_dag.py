"""Graph inference and the definition errors, all raised when a pipeline is built."""

from __future__ import annotations

from typing import Annotated, Any

import pandas as pd
import pytest

from stepflow import Dataset, Param, Pipeline, step
from stepflow.errors import (
    CycleError,
    DuplicateOutputError,
    MissingInputError,
    NotAStepError,
    PipelineDefinitionError,
    TypeMismatchError,
)


class TestInference:
    def test_edges_from_names(self, resource_module):
        """Parameters named after outputs become edges; defaults become parameters."""
        mod = resource_module("diamond")
        dag = mod.diamond.dag
        assert {(e.producer, e.output, e.consumer) for e in dag.edges} == {
            ("source", "source", "left"),
            ("source", "source", "right"),
            ("left", "left", "joined"),
            ("right", "lo", "joined"),
            ("right", "hi", "joined"),
        }
        assert set(dag.params) == {"n", "scale", "label"}
        assert dag.upstream["joined"] == ("left", "right")

    def test_topological_order_keeps_user_order(self):
        """Independent steps keep the order they were listed in."""

        @step
        def b() -> int:
            return 1

        @step
        def a() -> int:
            return 2

        @step
        def c(a: int, b: int) -> int:
            return a + b

        assert list(Pipeline("p", [c, b, a]).steps) == ["b", "a", "c"]

    def test_edge_wins_over_default(self):
        """A parameter with a default that matches an output is an edge."""

        @step
        def n() -> int:
            return 5

        @step
        def use(n: int = 1) -> int:
            return n

        pipe = Pipeline("p", [n, use])
        assert "n" not in pipe.params
        assert pipe.run()["use"] == 5

    def test_shared_parameter(self):
        """Two steps reading one parameter name share one pipeline parameter."""

        @step
        def a(seed: int = 0) -> int:
            return seed

        @step
        def b(seed: int = 1) -> int:
            return seed

        pipe = Pipeline("p", [a, b])
        assert pipe.params["seed"].defaults == {"a": 0, "b": 1}
        result = pipe.run(params={"seed": 7})
        assert (result["a"], result["b"]) == (7, 7)

    def test_shared_parameter_type_conflict(self):
        """One parameter name with two types is an error naming both steps."""

        @step
        def a(seed: int = 0) -> int:
            return seed

        @step
        def b(seed: str = "x") -> str:
            return seed

        with pytest.raises(PipelineDefinitionError, match="'a' and as str by step 'b'"):
            Pipeline("p", [a, b])

    def test_reference_input(self):
        """A reference marker resolves the input (the registry loads it later)."""

        @step
        def use(data: Annotated[pd.DataFrame, Dataset("houses")]) -> int:
            return len(data)

        pipe = Pipeline("p", [use])
        assert pipe.dag.edges == () and not pipe.params

    def test_same_step_twice_is_harmless(self):
        """Listing one step twice does not duplicate it."""

        @step
        def a() -> int:
            return 1

        assert list(Pipeline("p", [a, a]).steps) == ["a"]

    def test_ancestors_and_descendants(self, resource_module):
        """Graph walks used by targets and skipping."""
        dag = resource_module("diamond").diamond.dag
        assert dag.ancestors(["left"]) == {"left", "source"}
        assert dag.descendants(["right"]) == {"right", "joined"}


class TestDefinitionErrors:
    def test_cycle_prints_path(self, resource_module):
        """A cycle is reported with its path, in data-flow order."""
        mod = resource_module("cyclic_steps")
        with pytest.raises(CycleError) as info:
            Pipeline("p", [mod.a, mod.b, mod.c])
        path = info.value.path
        assert path[0] == path[-1] and set(path) == {"a", "b", "c"} and len(path) == 4
        assert " -> ".join(path) in str(info.value)

    def test_self_cycle(self):
        """A step that consumes its own output is a cycle."""

        @step
        def loop(loop: int) -> int:
            return loop

        with pytest.raises(CycleError, match="loop -> loop"):
            Pipeline("p", [loop])

    def test_duplicate_output(self, resource_module):
        """Two producers of one name are named in the error."""
        mod = resource_module("duplicate_output")
        with pytest.raises(DuplicateOutputError) as info:
            Pipeline("p", [mod.data, mod.other])
        assert info.value.producers == ["data", "other"] and info.value.output == "data"
        assert "rename one output" in str(info.value)

    def test_missing_input_did_you_mean(self, resource_module):
        """A typo gets a did-you-mean suggestion and the ways to fix it."""
        mod = resource_module("missing_input")
        with pytest.raises(MissingInputError) as info:
            Pipeline("p", [mod.houses, mod.count])
        err = info.value
        assert (err.step, err.parameter, err.suggestions) == ("count", "housse", ["houses"])
        assert "did you mean 'houses'?" in str(err)
        assert "Param[list[int]]" in str(err)

    def test_missing_input_type_suggestion(self):
        """When a name matches nothing but one producer has the exact type, it is suggested."""

        @step
        def prices() -> pd.DataFrame:
            return pd.DataFrame()

        @step
        def count(table: pd.DataFrame) -> int:
            return len(table)

        with pytest.raises(MissingInputError, match="rename the parameter to 'prices'"):
            Pipeline("p", [prices, count])

    def test_missing_input_names_every_fitting_producer(self):
        """Two producers of the consumer's type are both named, with their outputs."""

        @step
        def houses() -> pd.DataFrame:
            return pd.DataFrame()

        @step
        def cleaned(houses: pd.DataFrame) -> pd.DataFrame:
            return houses

        @step
        def report(table: pd.DataFrame) -> int:
            return len(table)

        with pytest.raises(MissingInputError) as info:
            Pipeline("p", [houses, cleaned, report])
        err = info.value
        assert err.fitting_outputs == ["houses", "cleaned"]
        assert (
            "steps producing pandas.DataFrame: 'houses' (output 'houses'), 'cleaned' "
            "(output 'cleaned'); rename the parameter to one of those outputs"
        ) in str(err)

    def test_missing_input_fitting_producers_keep_did_you_mean(self):
        """The close-name hint and the list of fitting producers appear together."""

        @step
        def houses() -> list[int]:
            return [1]

        @step
        def flats() -> list[int]:
            return [2]

        @step
        def count(housse: list[int]) -> int:
            return len(housse)

        with pytest.raises(MissingInputError) as info:
            Pipeline("p", [houses, flats, count])
        message = str(info.value)
        assert "did you mean 'houses'?" in message
        assert "'houses' (output 'houses'), 'flats' (output 'flats')" in message

    def test_missing_input_narrower_producer_type_is_named(self):
        """A producer whose type is a subclass of the wanted one fits, and its type is shown."""

        @step
        def flag() -> bool:
            return True

        @step
        def n() -> int:
            return 1

        @step
        def double(count: int) -> int:
            return 2 * count

        with pytest.raises(MissingInputError) as info:
            Pipeline("p", [flag, n, double])
        assert info.value.fitting_outputs == ["flag", "n"]
        assert (
            "steps producing a type that fits int: 'flag' (output 'flag', bool), 'n' (output 'n')"
        ) in str(info.value)

    def test_missing_input_vague_types_suggest_nothing(self):
        """Unannotated outputs or an ``object`` parameter are no evidence of a fit."""

        @step
        def anything():
            return 1

        @step
        def loose(value: object) -> int:
            return 1

        @step
        def strict(number: int) -> int:
            return number

        with pytest.raises(MissingInputError) as info:
            Pipeline("p", [anything, loose])
        assert info.value.fitting_outputs == [] and "producing" not in str(info.value)
        with pytest.raises(MissingInputError) as info:
            Pipeline("p", [anything, strict])
        assert info.value.fitting_outputs == [] and "produces" not in str(info.value)

    def test_type_mismatch(self, resource_module):
        """A consumer that rejects the producer's type names both steps and both types."""
        mod = resource_module("incompatible_types")
        with pytest.raises(TypeMismatchError) as info:
            Pipeline("p", [mod.frame, mod.total])
        err = info.value
        assert (err.step, err.parameter, err.producer) == ("total", "frame", "frame")
        assert "expects int" in str(err) and "pandas.DataFrame" in str(err)

    @pytest.mark.parametrize(
        ("produced", "consumed"),
        [
            (int, float),
            (int, "int | None"),
            (bool, int),
            (list[int], "Sequence[int]"),
            (Any, str),
            (str, Any),
        ],
    )
    def test_compatible_edges(self, produced, consumed):
        """Subclasses, unions, generics, Any and the numeric tower are accepted."""
        from collections.abc import Sequence  # noqa: F401 - used by eval below

        consumed_t = eval(consumed) if isinstance(consumed, str) else consumed

        @step
        def value() -> produced:  # type: ignore[valid-type]
            return None

        @step
        def use(value: consumed_t) -> None:  # type: ignore[valid-type]
            return None

        Pipeline("p", [value, use])

    def test_not_a_step(self):
        """An undecorated function in the list is named, with the fix."""

        def helper() -> int:
            return 1

        with pytest.raises(NotAStepError, match="decorate it with @step"):
            Pipeline("p", [helper])

    def test_two_steps_same_name(self):
        """Two different functions with one step name are rejected."""

        @step(name="load")
        def a() -> Annotated[int, "x"]:
            return 1

        @step(name="load")
        def b() -> Annotated[int, "y"]:
            return 1

        with pytest.raises(PipelineDefinitionError, match="two different steps are named"):
            Pipeline("p", [a, b])

    def test_empty_and_bad_lists(self):
        """An empty pipeline or a non-list is rejected."""
        with pytest.raises(PipelineDefinitionError, match="at least one step"):
            Pipeline("p", [])
        with pytest.raises(PipelineDefinitionError, match="list of steps"):
            Pipeline("p", "abc")

    def test_bad_pipeline_name(self):
        """Pipeline names are checked."""

        @step
        def a() -> int:
            return 1

        with pytest.raises(PipelineDefinitionError, match="not valid"):
            Pipeline("has space", [a])

    def test_errors_share_one_root(self):
        """Every definition error is a PipelineDefinitionError."""
        for cls in (CycleError, DuplicateOutputError, MissingInputError, TypeMismatchError):
            assert issubclass(cls, PipelineDefinitionError)


class TestFromModule:
    def test_collects_every_step(self, resource_module):
        """``from_module`` collects the module's steps like pytest collects tests."""
        mod = resource_module("diamond")
        pipe = Pipeline.from_module(mod)
        assert pipe.name == "diamond" and set(pipe.steps) == {"source", "left", "right", "joined"}

    def test_from_path(self, tmp_path, monkeypatch):
        """A file path works too."""
        monkeypatch.syspath_prepend(str(tmp_path))
        (tmp_path / "flow_from_path.py").write_text(
            "from stepflow import step\n@step\ndef a() -> int:\n    return 1\n"
        )
        pipe = Pipeline.from_module(tmp_path / "flow_from_path.py")
        assert list(pipe.steps) == ["a"] and pipe.run()["a"] == 1

    def test_module_without_steps(self, tmp_path, monkeypatch):
        """A module with no steps is a clear error."""
        monkeypatch.syspath_prepend(str(tmp_path))
        (tmp_path / "no_steps_here.py").write_text("x = 1\n")
        with pytest.raises(PipelineDefinitionError, match="defines no steps"):
            Pipeline.from_module(tmp_path / "no_steps_here.py")


def test_param_marker_without_default_is_required():
    """``Param[T]`` without a default must be given at run time."""

    @step
    def a(path: Param[str]) -> str:
        return path

    pipe = Pipeline("p", [a])
    assert pipe.run(params={"path": "x"})["a"] == "x"
