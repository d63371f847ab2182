"""``@step``: decoration, options, ports read from signatures."""

from __future__ import annotations

import datetime
from typing import Annotated, Any, NamedTuple

import cloudpickle
import pandas as pd
import pytest

from stepflow import Dataset, Model, Param, Resources, Secret, step
from stepflow._authoring.step import StepSpec, is_step, parse_duration
from stepflow._sentinels import MISSING
from stepflow.errors import PipelineDefinitionError, StepDeclarationError


class Split(NamedTuple):
    train: list
    test: list


@step
def fetched_data(houses: pd.DataFrame, n: int = 10) -> pd.DataFrame:
    return houses.head(n)


class TestPlainFunction:
    def test_called_directly(self):
        """A decorated step is the same function and runs its body with no machinery."""
        frame = pd.DataFrame({"x": range(20)})
        assert len(fetched_data(frame, n=3)) == 3
        assert fetched_data.__name__ == "fetched_data"

    def test_spec_attribute(self):
        """The spec hangs on the function as ``.spec``."""
        assert is_step(fetched_data)
        assert isinstance(fetched_data.spec, StepSpec)
        assert fetched_data.spec.name == "fetched_data"

    def test_with_and_without_parentheses(self):
        """``@step`` and ``@step()`` are the same."""

        @step()
        def a() -> int:
            return 1

        @step
        def b() -> int:
            return 2

        assert a.spec.outputs[0].name == "a" and b.spec.outputs[0].name == "b"

    def test_positional_name_is_rejected(self):
        """``@step("name")`` is a misuse with a message that shows the fix."""
        with pytest.raises(StepDeclarationError, match=r"@step\(name='load'\)"):
            step("load")

    def test_not_a_function(self):
        """Classes and other callables are rejected."""
        with pytest.raises(StepDeclarationError, match="plain functions"):
            step(type("X", (), {}))

    def test_spec_pickles(self):
        """Specs survive cloudpickle (they travel to worker processes)."""
        spec = cloudpickle.loads(cloudpickle.dumps(fetched_data.spec))
        assert spec.name == "fetched_data"
        assert [p.name for p in spec.inputs] == ["houses", "n"]


class TestInputs:
    def test_plain_and_default(self):
        """A parameter keeps its type and default."""
        houses, n = fetched_data.spec.inputs
        assert houses.annotation is pd.DataFrame and houses.default is MISSING
        assert n.annotation is int and n.default == 10 and not n.is_param

    def test_param_marker(self):
        """``Param[T]`` marks a pipeline parameter, with or without a default."""

        @step
        def s(path: Param[str], k: Param[int] = 3) -> None:
            return None

        path, k = s.spec.inputs
        assert path.is_param and path.annotation is str and path.default is MISSING
        assert k.is_param and k.default == 3

    def test_secret_marker(self):
        """``Secret[T]`` is a parameter whose value is secret."""

        @step
        def s(token: Secret[str]) -> None:
            return None

        (token,) = s.spec.inputs
        assert token.is_param and token.secret and token.annotation is str

    def test_reference_markers(self):
        """``Dataset``/``Model`` in ``Annotated`` become references."""

        @step
        def s(
            data: Annotated[pd.DataFrame, Dataset("houses", version=2)],
            model: Annotated[object, Model("HousePrices", alias="production")],
        ) -> None:
            return None

        data, model = s.spec.inputs
        assert data.reference == Dataset("houses", version=2)
        assert model.reference == Model("HousePrices", alias="production")

    @pytest.mark.parametrize("sig", ["*args", "**kwargs", "a, /"])
    def test_unnamed_parameters_rejected(self, sig):
        """*args, **kwargs and positional-only parameters cannot be wired by name."""
        namespace: dict[str, Any] = {}
        exec(f"def f({sig}): pass", namespace)
        with pytest.raises(StepDeclarationError, match="every input needs a name"):
            step(namespace["f"])

    def test_unresolvable_annotation_is_kept_as_text(self):
        """A forward reference that cannot be evaluated does not break decoration."""
        namespace: dict[str, Any] = {}
        exec(
            "from __future__ import annotations\n"
            "def f(x: NotDefinedAnywhere, y: int) -> int:\n    return y\n",
            namespace,
        )
        spec = step(namespace["f"]).spec
        assert spec.inputs[0].annotation == "NotDefinedAnywhere"
        assert spec.inputs[1].annotation is int


class TestOutputs:
    def test_named_after_function(self):
        """One output, named after the step."""
        assert [p.name for p in fetched_data.spec.outputs] == ["fetched_data"]

    def test_unannotated(self):
        """No return annotation: one output of type Any."""

        @step
        def raw():
            return 1

        assert raw.spec.outputs[0].annotation is Any

    def test_annotated_name(self):
        """``-> Annotated[T, "name"]`` renames the output."""

        @step
        def load() -> Annotated[pd.DataFrame, "houses"]:
            return pd.DataFrame()

        assert [(p.name, p.annotation) for p in load.spec.outputs] == [("houses", pd.DataFrame)]

    def test_several_outputs(self):
        """A tuple of named ``Annotated`` elements declares several outputs."""

        @step
        def split() -> tuple[Annotated[pd.DataFrame, "train"], Annotated[pd.DataFrame, "test"]]:
            return pd.DataFrame(), pd.DataFrame()

        assert [p.name for p in split.spec.outputs] == ["train", "test"]
        assert split.spec.output_kind == "multiple"

    def test_namedtuple(self):
        """A NamedTuple return declares one output per field."""

        @step
        def split() -> Split:
            return Split([], [])

        assert [(p.name, p.annotation) for p in split.spec.outputs] == [
            ("train", list),
            ("test", list),
        ]

    def test_plain_tuple_is_one_output(self):
        """An unnamed tuple type is a single output of that type."""

        @step
        def pair() -> tuple[int, int]:
            return 1, 2

        assert pair.spec.output_kind == "single"

    def test_none_is_sink(self):
        """``-> None`` produces nothing."""

        @step
        def sink(x: int) -> None:
            return None

        assert sink.spec.outputs == () and sink.spec.output_kind == "none"

    def test_partly_named_tuple_rejected(self):
        """Naming only some tuple elements is an error that shows the fix."""
        with pytest.raises(StepDeclarationError, match="name every one"):

            @step
            def bad() -> tuple[Annotated[int, "a"], int]:
                return 1, 2

    def test_bad_output_name(self):
        """Output names must be identifiers, since consumers use them as parameters."""
        with pytest.raises(StepDeclarationError, match="not a Python identifier"):

            @step
            def bad() -> Annotated[int, "my output"]:
                return 1

    def test_duplicate_output_names(self):
        """One step cannot declare the same output twice."""
        with pytest.raises(StepDeclarationError, match="twice"):

            @step
            def bad() -> tuple[Annotated[int, "a"], Annotated[int, "a"]]:
                return 1, 2


class TestOptions:
    def test_all_options(self):
        """Every option lands on the spec, normalised."""

        @step(
            name="renamed",
            backend="gpu-box",
            retries=2,
            retry_delay="2s",
            timeout="30m",
            cache=False,
            resources={"cpus": 2, "gpus": 1, "memory": "4G"},
            env={"image": "python:3.11-slim"},
            tags=["nightly"],
        )
        def f() -> int:
            return 1

        opts = f.spec.options
        assert f.spec.name == "renamed" and f.spec.outputs[0].name == "renamed"
        assert opts.backend == "gpu-box" and opts.retries == 2 and opts.retry_delay == 2.0
        assert opts.timeout == 1800.0 and opts.cache is False
        assert opts.resources == Resources(cpus=2, memory="4G", gpus=1)
        assert opts.env == {"image": "python:3.11-slim"} and opts.tags == ("nightly",)

    @pytest.mark.parametrize(
        ("kwargs", "match"),
        [
            ({"retries": -1}, "retries"),
            ({"retries": 1.5}, "retries"),
            ({"cache": "yes"}, "cache"),
            ({"timeout": "soon"}, "not a duration"),
            ({"timeout": -1}, "negative"),
            ({"name": "bad name"}, "identifier"),
            ({"resources": {"tpus": 1}}, "unknown key"),
            ({"backend": ""}, "backend"),
        ],
    )
    def test_bad_options(self, kwargs, match):
        """Bad options fail at decoration time, naming the option; all are definition errors."""
        with pytest.raises(PipelineDefinitionError, match=match):
            step(**kwargs)

    @pytest.mark.parametrize(
        ("value", "seconds"),
        [
            (90, 90.0),
            ("90s", 90.0),
            ("30m", 1800.0),
            ("1h30m", 5400.0),
            ("250ms", 0.25),
            ("1.5", 1.5),
            ("1w", 604800.0),
            ("1d12h", 129600.0),
            (datetime.timedelta(minutes=2), 120.0),
        ],
    )
    def test_durations(self, value, seconds):
        """Durations accept seconds, unit strings and timedeltas."""
        assert parse_duration(value, "timeout") == pytest.approx(seconds)
