"""Planning a run: targets, parameters, backends; every mistake is a UsageError up front."""

from __future__ import annotations

import pytest

from stepflow import Dataset, Pipeline, step
from stepflow.errors import ParameterParseError, UsageError


@pytest.fixture
def diamond(resource_module):
    return resource_module("diamond").diamond


class TestTargets:
    def test_all_by_default(self, diamond):
        """No targets: every step, in order."""
        assert diamond.plan().steps == ("source", "left", "right", "joined")

    def test_target_selects_ancestors(self, diamond):
        """A target runs only what it needs."""
        assert diamond.plan(targets=["left"]).steps == ("source", "left")

    def test_target_by_output_name(self, diamond):
        """An output name selects its producer."""
        assert diamond.plan(targets="hi").steps == ("source", "right")

    def test_unknown_target(self, diamond):
        """An unknown target suggests close names."""
        with pytest.raises(UsageError, match="did you mean 'left'"):
            diamond.plan(targets=["lefft"])


class TestParams:
    def test_defaults(self, diamond):
        """Defaults fill every parameter."""
        plan = diamond.plan()
        assert plan.params == {"n": 4, "scale": 2.0, "label": "sum"}
        assert plan.step_params["left"] == {"scale": 2.0}

    def test_override_is_checked_and_coerced(self, diamond):
        """Overrides are checked against the annotation (text is parsed like the CLI)."""
        plan = diamond.plan({"n": "7", "scale": 3})
        assert plan.params["n"] == 7 and plan.params["scale"] == 3.0

    def test_bad_override(self, diamond):
        """A value of the wrong type is a ParameterParseError naming the parameter."""
        with pytest.raises(ParameterParseError) as info:
            diamond.plan({"n": "many"})
        assert info.value.parameter == "n"

    def test_unknown_parameter(self, diamond):
        """An unknown parameter lists the available ones."""
        with pytest.raises(UsageError, match="available: label, n, scale"):
            diamond.plan({"m": 1})

    def test_required_parameter(self):
        """A Param without default and without a value names the flag to use."""
        from stepflow import Param

        @step
        def a(path: Param[str]) -> str:
            return path

        with pytest.raises(UsageError, match="--param path=VALUE"):
            Pipeline("p", [a]).plan()

    def test_parameters_of_unselected_steps_are_not_required(self):
        """A required parameter only matters when its step is selected."""
        from stepflow import Param

        @step
        def a() -> int:
            return 1

        @step
        def b(path: Param[str]) -> str:
            return path

        assert Pipeline("p", [a, b]).plan(targets=["a"]).steps == ("a",)


class TestBackends:
    def test_default_and_override(self):
        """Step option, then --backend override, then the default backend."""

        @step(backend="gpu")
        def a() -> int:
            return 1

        @step
        def b(a: int) -> int:
            return a

        pipe = Pipeline("p", [a, b])
        assert pipe.plan().backends == {"a": "gpu", "b": "local"}
        assert pipe.plan(backends={"b": "process"}).backends["b"] == "process"

    def test_override_of_unknown_step(self):
        """--backend for a step that does not exist is rejected."""

        @step
        def a() -> int:
            return 1

        with pytest.raises(UsageError, match="unknown step 'z'"):
            Pipeline("p", [a]).plan(backends={"z": "process"})


def test_reference_inputs_are_planned_and_resolved_when_the_run_starts():
    """Planning needs no datastore: a Dataset reference input is planned like any step; the
    run resolves it against the registry (tests/_execution/test_references.py)."""
    from typing import Annotated

    import pandas as pd

    @step
    def use(data: Annotated[pd.DataFrame, Dataset("houses")]) -> int:
        return len(data)

    plan = Pipeline("p", [use]).plan()
    assert plan.steps == ("use",)
    assert plan.step_params["use"] == {}
