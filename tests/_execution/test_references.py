"""Dataset/Model step inputs and outputs registered on completion, inline and in workers.

Each step appends its name to a log file (also from worker processes), so a test can tell
exactly which steps ran.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pandas as pd
import pytest

import stepflow
from stepflow import StepState
from stepflow._config import load_config
from stepflow._pluginmanager import datastore_kinds, make_plugin_manager
from stepflow._storage.records import RunRecords
from stepflow._storage.stores import open_datastore
from stepflow._surfaces.explain import explain
from stepflow.errors import NotRegisteredError, StepDeclarationError, StepflowWarning, UsageError

FLOW = """
import os
from pathlib import Path
from typing import Annotated
import pandas as pd
import stepflow
from stepflow import Dataset, Model, Pipeline, step

LOG = Path({log!r})

def _called(name):
    with LOG.open("a") as fh:
        fh.write(name + "\\n")

@step
def base(n: int = 2) -> int:
    _called("base")
    return n

@step
def total(houses: Annotated[pd.DataFrame, Dataset("houses")], base: int) -> float:
    _called("total")
    return float(houses["price"].sum()) + base

@step
def first_total(houses_v1: Annotated[pd.DataFrame, Dataset("houses", version=1)]) -> float:
    _called("first_total")
    return float(houses_v1["price"].sum())

@step
def raw(houses_file: Annotated[Path, Dataset("houses")]) -> str:
    _called("raw")
    return houses_file.name + ":" + houses_file.read_text()

@step
def text(houses_text: Annotated[str, Dataset("houses")]) -> bool:
    _called("text")
    return isinstance(houses_text, str) and os.path.isfile(houses_text)

@step
def scaled(base: int, model: Annotated[dict, Model("Scaler")]) -> int:
    _called("scaled")
    return base * model["factor"]

@step
def scaled_prod(base: int, prod: Annotated[dict, Model("Scaler", alias="production")]) -> int:
    _called("scaled_prod")
    return base * prod["factor"]

@step
def where(base: int, model: Annotated[dict, Model("Scaler")]) -> int:
    return os.getpid()

@step
def train(factor: int = 3) -> dict:
    _called("train")
    model = {{"factor": factor}}
    version = stepflow.models.register("Scaler", model, metrics={{"f": float(factor)}})
    return {{"version": version.version, "source": dict(version.source), "pid": os.getpid()}}

@step
def scored(houses: Annotated[pd.DataFrame, Dataset("houses")], base: int
           ) -> Annotated[pd.DataFrame, Dataset("scored")]:
    _called("scored")
    out = houses.copy()
    out["score"] = out["price"] * base
    return out

@step(register_as="report_file")
def report(scored: pd.DataFrame, out_dir: str = "") -> Path:
    path = Path(out_dir) / "report.csv"
    scored.to_csv(path, index=False)
    return path

totals = Pipeline("totals", [base, total, first_total])
files = Pipeline("files", [raw, text])
scaling = Pipeline("scaling", [base, scaled])
production = Pipeline("production", [base, scaled_prod])
placement = Pipeline("placement", [base, where])
training = Pipeline("training", [train])
scoring = Pipeline("scoring", [base, scored])
reporting = Pipeline("reporting", [base, scored, report])
"""


@pytest.fixture
def log(tmp_path):
    path = tmp_path / "calls.log"
    path.touch()

    def calls():
        names = path.read_text().split()
        path.write_text("")
        return names

    return calls


@pytest.fixture
def flow(make_module, tmp_path, log):
    return make_module("refflow", FLOW.format(log=str(tmp_path / "calls.log")))


@pytest.fixture
def houses_csv(tmp_path):
    def write(*prices: int) -> Path:
        path = tmp_path / "data" / "houses.csv"
        path.parent.mkdir(exist_ok=True)
        path.write_text("price\n" + "".join(f"{p}\n" for p in prices))
        return path

    return write


def states(result):
    return {name: report.state.value for name, report in result.steps.items()}


class TestDatasetInputs:
    def test_latest_pinned_version_path_and_str(self, flow, stepflow_home, houses_csv, log):
        """A DataFrame parameter gets a frame, Path a local file, str its path; version=1
        keeps reading version 1 after version 2 exists."""
        stepflow.datasets.register("houses", houses_csv(100, 200), home=stepflow_home)
        result = flow.totals.run(home=stepflow_home)
        assert result.ok, result.summary()
        assert (result["total"], result["first_total"]) == (302.0, 300.0)
        stepflow.datasets.register("houses", houses_csv(1, 2, 3), home=stepflow_home)
        log()
        result = flow.totals.run(home=stepflow_home)
        assert (result["total"], result["first_total"]) == (8.0, 300.0)
        assert log() == ["total"]  # base and first_total reused: nothing they read changed
        files = flow.files.run(home=stepflow_home)
        assert files["raw"] == "houses.csv:price\n1\n2\n3\n"
        assert files["text"] is True

    def test_run_record_names_the_version_read(self, flow, stepflow_home, houses_csv):
        """Lineage: the run record lists the data-set version a step read as an input."""
        version = stepflow.datasets.register("houses", houses_csv(7, 8), home=stepflow_home)
        result = flow.totals.run(home=stepflow_home)
        records = RunRecords(stepflow_home / "runs.db")
        (step,) = [s for s in records.steps(result.run_id) if s.name == "total"]
        records.close()
        read = {io.name: io for io in step.io if io.direction == "in"}
        assert read["houses"].object == f"dataset:houses@v{version.version}"
        assert read["houses"].content_hash == version.content_hash
        assert read["base"].object.endswith(".cloudpickle")

    def test_in_worker_processes(self, flow, stepflow_home, houses_csv):
        """workers=2: the worker loads the version the run resolved."""
        stepflow.datasets.register("houses", houses_csv(5, 6), home=stepflow_home)
        result = flow.totals.run(home=stepflow_home, workers=2)
        assert result.ok, result.summary()
        assert (result["total"], result["first_total"]) == (13.0, 11.0)
        files = flow.files.run(home=stepflow_home, workers=2)
        assert files["raw"] == "houses.csv:price\n5\n6\n"

    def test_missing_data_set_stops_before_anything_runs(self, flow, stepflow_home, log):
        """No step runs; the error names the step, the parameter and the fix."""
        with pytest.raises(NotRegisteredError) as info:
            flow.totals.run(home=stepflow_home)
        message = str(info.value)
        assert "step 'total' parameter 'houses' reads Dataset('houses')" in message
        assert "no data set named 'houses' is registered" in message
        assert "stepflow datasets register houses PATH" in message
        assert log() == []

    def test_missing_version_lists_versions(self, flow, stepflow_home, houses_csv, log):
        stepflow.datasets.register("houses", houses_csv(1), home=stepflow_home)
        (Path(stepflow_home) / "refs" / "datasets" / "houses" / "00000001.json").rename(
            Path(stepflow_home) / "refs" / "datasets" / "houses" / "00000002.json"
        )
        with pytest.raises(UsageError) as info:
            flow.totals.run(home=stepflow_home)
        assert "reads Dataset('houses', version=1)" in str(info.value)
        assert "has no version 1; versions: 2" in str(info.value)
        assert log() == []

    def test_folder_into_a_frame_is_refused_at_start(self, flow, stepflow_home, tmp_path, log):
        (tmp_path / "folder").mkdir()
        (tmp_path / "folder" / "a.csv").write_text("price\n1\n")
        stepflow.datasets.register("houses", tmp_path / "folder", home=stepflow_home)
        with pytest.raises(UsageError, match=r"'houses' reads Dataset.*is a folder of 1 files"):
            flow.totals.run(home=stepflow_home, targets="total")
        assert log() == []

    def test_reused_consumer_never_loads_the_data(self, flow, stepflow_home, houses_csv, log):
        """A fully reused run reads only the registry documents: with the data set's object
        gone from the store, the reused step still succeeds; a step that must run fails
        clearly instead."""
        version = stepflow.datasets.register("houses", houses_csv(7), home=stepflow_home)
        assert flow.totals.run(home=stepflow_home).ok
        log()
        store = open_datastore(None, home=stepflow_home, kinds=datastore_kinds())
        store.delete(version.objects["houses.csv"].name)
        again = flow.totals.run(home=stepflow_home)
        assert again.ok and log() == []
        assert states(again)["total"] == "reused"
        forced = flow.totals.run(home=stepflow_home, regenerate=["total"])
        report = forced.steps["total"]
        assert report.state is StepState.FAILED
        assert "input 'houses' (data set houses v1) could not be loaded" in str(report.error)


class TestModelInputs:
    def test_register_inside_a_step_records_the_run(self, flow, stepflow_home):
        """models.register in a step stores in the run's store and records run and step."""
        result = flow.training.run(home=stepflow_home)
        out = result["train"]
        assert out["version"] == 1
        assert out["source"] == {
            "kind": "run",
            "run_id": result.run_id,
            "pipeline": "training",
            "step": "train",
        }
        assert stepflow.models.get("Scaler", home=stepflow_home).source["run_id"] == (result.run_id)

    def test_register_inside_a_worker(self, flow, stepflow_home):
        import os

        result = flow.training.run(home=stepflow_home, workers=2, params={"factor": 4})
        out = result["train"]
        assert out["pid"] != os.getpid()
        assert out["source"]["run_id"] == result.run_id
        assert stepflow.models.load("Scaler", home=stepflow_home) == {"factor": 4}

    def test_latest_version_and_alias(self, flow, stepflow_home, log):
        stepflow.models.register("Scaler", {"factor": 10}, home=stepflow_home)
        assert flow.scaling.run(home=stepflow_home)["scaled"] == 20
        stepflow.models.register("Scaler", {"factor": 100}, home=stepflow_home)
        log()
        assert flow.scaling.run(home=stepflow_home)["scaled"] == 200
        assert log() == ["scaled"]  # a new latest version invalidates the consumer only
        stepflow.models.set_alias("Scaler", "production", 1, home=stepflow_home)
        assert flow.production.run(home=stepflow_home)["scaled_prod"] == 20
        log()
        stepflow.models.set_alias("Scaler", "production", 2, home=stepflow_home)
        assert flow.production.run(home=stepflow_home)["scaled_prod"] == 200
        assert log() == ["scaled_prod"]

    def test_alias_moved_to_identical_content_keeps_reuse(self, flow, stepflow_home, log):
        """The key holds the content hash: the same model under new metrics is not new."""
        stepflow.models.register("Scaler", {"factor": 2}, metrics={"r2": 0.5}, home=stepflow_home)
        stepflow.models.register("Scaler", {"factor": 2}, metrics={"r2": 0.6}, home=stepflow_home)
        stepflow.models.set_alias("Scaler", "production", 1, home=stepflow_home)
        flow.production.run(home=stepflow_home)
        log()
        stepflow.models.set_alias("Scaler", "production", 2, home=stepflow_home)
        result = flow.production.run(home=stepflow_home)
        assert states(result)["scaled_prod"] == "reused" and log() == []

    def test_missing_alias_says_how_to_set_it(self, flow, stepflow_home, log):
        stepflow.models.register("Scaler", {"factor": 2}, home=stepflow_home)
        with pytest.raises(NotRegisteredError) as info:
            flow.production.run(home=stepflow_home)
        message = str(info.value)
        assert "step 'scaled_prod' parameter 'prod' reads Model('Scaler', alias='production')" in (
            message
        )
        assert "stepflow models alias Scaler production VERSION" in message
        assert log() == []

    def test_missing_model_names_the_fix(self, flow, stepflow_home):
        with pytest.raises(NotRegisteredError, match=r"stepflow.models.register\('Scaler'"):
            flow.scaling.run(home=stepflow_home)

    def test_model_loads_in_a_worker(self, flow, stepflow_home):
        import os

        stepflow.models.register("Scaler", {"factor": 5}, home=stepflow_home)
        result = flow.placement.run(home=stepflow_home, workers=2)
        assert result.ok and result["where"] != os.getpid()
        assert flow.scaling.run(home=stepflow_home, workers=2, regenerate=True)["scaled"] == 10


class TestRegisteredOutputs:
    def test_output_marker_registers_on_success(self, flow, stepflow_home, houses_csv):
        """The marked output becomes a data-set version with run, step and output as its
        source; a rerun that reuses it, or recomputes the same content, adds nothing."""
        stepflow.datasets.register("houses", houses_csv(1, 2), home=stepflow_home)
        result = flow.scoring.run(home=stepflow_home)
        version = stepflow.datasets.get("scored", home=stepflow_home)
        assert (version.version, version.kind) == (1, "table")
        assert version.source == {
            "kind": "run",
            "run_id": result.run_id,
            "pipeline": "scoring",
            "step": "scored",
            "output": "scored",
        }
        pd.testing.assert_frame_equal(
            stepflow.datasets.load("scored", home=stepflow_home), result["scored"]
        )
        flow.scoring.run(home=stepflow_home)
        flow.scoring.run(home=stepflow_home, regenerate=True)
        assert len(stepflow.datasets.versions("scored", home=stepflow_home)) == 1
        flow.scoring.run(home=stepflow_home, params={"n": 3})
        assert stepflow.datasets.get("scored", home=stepflow_home).version == 2

    def test_register_as_a_path_output(self, flow, stepflow_home, houses_csv, tmp_path):
        """``@step(register_as=...)`` on a step returning a Path registers the file."""
        stepflow.datasets.register("houses", houses_csv(4), home=stepflow_home)
        result = flow.reporting.run(home=stepflow_home, params={"out_dir": str(tmp_path)})
        assert result.ok, result.summary()
        version = stepflow.datasets.get("report_file", home=stepflow_home)
        assert (version.kind, version.filename) == ("file", "report.csv")
        assert stepflow.datasets.load("report_file", home=stepflow_home)["score"].tolist() == [8]

    def test_a_small_frame_kept_inline_is_registered_as_an_object(self, make_module, stepflow_home):
        """A small frame Parquet cannot hold exactly is pickled and kept inside its index
        record; registered, it becomes an object file of the store, so the version outlives
        the cache entry (a prune keeps it: the registry pins it)."""
        module = make_module(
            "inline_reg",
            """
            from typing import Annotated
            import pandas as pd
            from stepflow import Dataset, Pipeline, step

            @step
            def mixed() -> Annotated[pd.DataFrame, Dataset("mixed")]:
                return pd.DataFrame({"a": [1, "two"]})  # mixed types: no Parquet

            pipe = Pipeline("p", [mixed])
            """,
        )
        result = module.pipe.run(home=stepflow_home)
        assert result.ok, result.summary()
        from stepflow._storage.index import CacheIndex

        ref = CacheIndex(stepflow_home / "index").last("p", "mixed").outputs["mixed"]
        assert ref.inline and ref.serializer == "cloudpickle"
        version = stepflow.datasets.get("mixed", home=stepflow_home)
        assert version.objects["table"] == ref.without_data()
        assert (stepflow_home / "objects" / ref.name[:2] / ref.name[2:]).is_file()
        prune = subprocess.run(
            [sys.executable, "-m", "stepflow", "cache", "prune", "--all"],
            env={**os.environ, "STEPFLOW_HOME": str(stepflow_home)},
            capture_output=True,
            text=True,
        )
        assert prune.returncode == 0, prune.stderr
        loaded = stepflow.datasets.load("mixed", home=stepflow_home)
        assert loaded["a"].tolist() == [1, "two"]

    def test_failed_run_registers_nothing(self, make_module, stepflow_home):
        module = make_module(
            "failing_reg",
            """
            from typing import Annotated
            import pandas as pd
            from stepflow import Dataset, Pipeline, step

            @step
            def made() -> Annotated[pd.DataFrame, Dataset("made")]:
                return pd.DataFrame({"a": [1]})

            @step
            def broken(made: pd.DataFrame) -> int:
                raise ValueError("no")

            pipe = Pipeline("p", [made, broken])
            """,
        )
        result = module.pipe.run(home=stepflow_home)
        assert not result.ok
        with pytest.raises(NotRegisteredError):
            stepflow.datasets.get("made", home=stepflow_home)

    def test_unregistrable_output_warns_and_keeps_results(self, make_module, stepflow_home):
        module = make_module(
            "odd_reg",
            """
            from stepflow import Pipeline, step

            @step(register_as="numbers")
            def numbers() -> list[int]:
                return [1, 2]

            pipe = Pipeline("p", [numbers])
            """,
        )
        with pytest.warns(StepflowWarning, match="was not registered as data set 'numbers'"):
            result = module.pipe.run(home=stepflow_home)
        assert result.ok and result["numbers"] == [1, 2]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert module.pipe.run(home=stepflow_home).steps["numbers"].state.value == "reused"

    def test_bad_output_data_set_name_stops_the_run(self, make_module, stepflow_home):
        module = make_module(
            "badname_reg",
            """
            from stepflow import Pipeline, step

            @step(register_as="no/slash")
            def numbers() -> int:
                return 1

            pipe = Pipeline("p", [numbers])
            """,
        )
        with pytest.raises(UsageError, match=r"step 'numbers' output 'numbers'.*not valid"):
            module.pipe.run(home=stepflow_home)


DECLARATION_ERRORS = [
    (
        "@step\ndef f() -> Annotated[pd.DataFrame, Dataset('x', version=2)]: ...",
        "registers a new version, so it takes no version",
    ),
    (
        "@step\ndef f() -> Annotated[object, Model('M')]: ...",
        r"cannot carry a Model marker.*stepflow.models.register\('M'",
    ),
    (
        "@step(register_as='x')\ndef f() -> tuple[Annotated[int, 'a'], Annotated[int, 'b']]: ...",
        "has 2 outputs, so register_as needs a dict",
    ),
    (
        "@step(register_as={'nope': 'x'})\ndef f() -> int: ...",
        "register_as names output 'nope', which it does not produce; its outputs: f",
    ),
    (
        "@step(register_as='y')\ndef f() -> Annotated[int, Dataset('x')]: ...",
        r"is marked Dataset\('x'\) and register_as says 'y'; keep one",
    ),
    ("@step(register_as=3)\ndef f() -> int: ...", "give a data-set name"),
]
DECLARATION_IDS = ["version", "model", "str-many", "unknown-output", "conflict", "type"]


class TestDeclarations:
    def test_output_marker_on_named_and_tuple_outputs(self):
        from typing import Annotated

        from stepflow import Dataset, step

        @step
        def one() -> Annotated[pd.DataFrame, "clean", Dataset("clean_v")]:
            return pd.DataFrame()

        @step
        def two() -> tuple[
            Annotated[pd.DataFrame, "a", Dataset("a_set")], Annotated[pd.DataFrame, "b"]
        ]:
            return pd.DataFrame(), pd.DataFrame()

        assert [(p.name, p.reference) for p in one.spec.outputs] == [("clean", Dataset("clean_v"))]
        assert [(p.name, p.reference) for p in two.spec.outputs] == [
            ("a", Dataset("a_set")),
            ("b", None),
        ]

    def test_register_as_forms(self):
        """A name for a one-output step; a dict of output → data set for several."""
        from typing import Annotated

        from stepflow import Dataset, step

        @step(register_as={"b": "b_set"})
        def two() -> tuple[Annotated[pd.DataFrame, "a"], Annotated[pd.DataFrame, "b"]]:
            return pd.DataFrame(), pd.DataFrame()

        @step(register_as="single")
        def one() -> pd.DataFrame:
            return pd.DataFrame()

        assert one.spec.outputs[0].reference == Dataset("single")
        assert one.spec.options.register_as == {"one": "single"}
        assert [p.reference for p in two.spec.outputs] == [None, Dataset("b_set")]

    @pytest.mark.parametrize(("source", "message"), DECLARATION_ERRORS, ids=DECLARATION_IDS)
    def test_declaration_is_refused(self, source, message):
        """Each misuse of output registration fails at decoration, naming the step."""
        with pytest.raises(StepDeclarationError, match=message):
            exec(
                "from typing import Annotated\nimport pandas as pd\n"
                "from stepflow import Dataset, Model, step\n" + source,
                {},
            )


class TestExplain:
    def _explain(self, flow, step, home):
        config = load_config(home=home)
        pm = make_plugin_manager(config.plugins)
        return explain(flow, step, params=None, config=config, pm=pm)

    def test_new_data_set_version_is_named(self, flow, stepflow_home, houses_csv):
        stepflow.datasets.register("houses", houses_csv(1), home=stepflow_home)
        flow.totals.run(home=stepflow_home)
        assert self._explain(flow.totals, "total", stepflow_home).verdict == "reuse"
        stepflow.datasets.register("houses", houses_csv(2), home=stepflow_home)
        found = self._explain(flow.totals, "total", stepflow_home)
        assert found.verdict == "run"
        assert "data set houses v1 -> v2 (input 'houses')" in found.reasons
        assert self._explain(flow.totals, "first_total", stepflow_home).verdict == "reuse"

    def test_moved_alias_is_named(self, flow, stepflow_home):
        stepflow.models.register("Scaler", {"factor": 1}, home=stepflow_home)
        stepflow.models.register("Scaler", {"factor": 2}, home=stepflow_home)
        stepflow.models.set_alias("Scaler", "production", 1, home=stepflow_home)
        flow.production.run(home=stepflow_home)
        stepflow.models.set_alias("Scaler", "production", 2, home=stepflow_home)
        found = self._explain(flow.production, "scaled_prod", stepflow_home)
        assert found.reasons == ("model Scaler v1 -> v2 (alias production) (input 'prod')",)

    def test_missing_reference_is_the_runs_usage_error(self, flow, stepflow_home):
        with pytest.raises(NotRegisteredError, match="step 'total' parameter 'houses'"):
            self._explain(flow.totals, "total", stepflow_home)


class TestObjectStore:
    def test_registry_lives_in_the_store_not_the_home(
        self, flow, s3_server, tmp_path, houses_csv, log
    ):
        """With an S3 store, a second home that shares only the store sees the data sets and
        models, runs the scoring from them, and reuses the first home's results."""
        project = tmp_path / "project"
        project.mkdir()
        (project / "pyproject.toml").write_text(s3_server.pyproject())
        first = load_config(project, home=tmp_path / "home-a")
        second = load_config(project, home=tmp_path / "home-b")
        stepflow.datasets.register("houses", houses_csv(1, 2), config=first)
        assert flow.training.run(config=first, params={"factor": 4}).ok
        result = flow.scoring.run(config=first)
        assert result.ok, result.summary()
        assert not (tmp_path / "home-a" / "refs").exists()  # documents went to the bucket
        log()
        elsewhere = flow.scoring.run(config=second)
        assert states(elsewhere) == {"base": "reused", "scored": "reused"}
        assert log() == []
        assert stepflow.models.load("Scaler", config=second) == {"factor": 4}
        assert stepflow.datasets.get("scored", config=second).source["run_id"] == result.run_id
        assert stepflow.datasets.load("houses", config=second)["price"].tolist() == [1, 2]
