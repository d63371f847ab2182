"""``stepflow datasets`` and ``stepflow models``, black-box through ``stepflow_runner``."""

from __future__ import annotations

import datetime
import json

import pytest

FLOW = """
from typing import Annotated
import pandas as pd
import stepflow
from stepflow import Dataset, Model, Pipeline, step

@step
def train(factor: int = 2) -> int:
    version = stepflow.models.register(
        "Scaler", {"factor": factor}, metrics={"r2": factor / 10}, tags={"by": "test"}
    )
    return version.version

@step
def scored(houses: Annotated[pd.DataFrame, Dataset("houses")],
           model: Annotated[dict, Model("Scaler")]) -> Annotated[pd.DataFrame, Dataset("scored")]:
    out = houses.copy()
    out["score"] = out["price"] * model["factor"]
    return out

training = Pipeline("training", [train])
scoring = Pipeline("scoring", [scored])
"""


def _project(runner):
    runner.makepyfile(flow=FLOW)
    (runner.path / "houses.csv").write_text("price\n100\n200\n")
    return runner


@pytest.fixture
def project(stepflow_runner):
    return _project(stepflow_runner)


@pytest.fixture(scope="class")
def shared_project(tmp_path_factory):
    """A project and home of their own for one class's bad-input cases, which all start from
    the same state (each exits 2 and changes nothing): made once instead of once per case."""
    from stepflow.testing import StepflowRunner

    project = tmp_path_factory.mktemp("project")
    return _project(StepflowRunner(project, tmp_path_factory.mktemp("stepflow-home")))


@pytest.fixture(scope="class")
def registered(shared_project):
    """Data set ``houses`` v1 registered, once for a class's cases."""
    assert shared_project.run("datasets", "register", "houses", "houses.csv").ret == 0
    return shared_project


@pytest.fixture(scope="class")
def trained(shared_project):
    """Model ``Scaler`` v1 registered by a training run, once for a class's cases."""
    assert shared_project.run("run", "flow.py:training").ret == 0
    return shared_project


def json_out(outcome):
    assert outcome.ret == 0, outcome.stdout + outcome.stderr
    return json.loads(outcome.stdout)


def assert_iso_utc(value: object) -> None:
    """``--json`` times are ISO 8601 strings with an explicit UTC offset, not epoch floats."""
    assert isinstance(value, str), value
    assert datetime.datetime.fromisoformat(value).utcoffset() == datetime.timedelta(0), value


class TestDatasets:
    def test_register_list_show(self, project):
        """Register a file twice (unchanged the second time), change it, list and show."""
        out = project.run("datasets", "register", "houses", "houses.csv", "--description", "v1")
        assert out.ret == 0, out.stderr
        out.fnmatch_lines(["registered data set houses v1 (file, houses.csv, 14 B)"])
        again = project.run("datasets", "register", "houses", "houses.csv")
        again.fnmatch_lines(["data set houses is unchanged: v1 already holds this content*"])
        (project.path / "houses.csv").write_text("price\n100\n200\n300\n")
        project.run("datasets", "register", "houses", "houses.csv").fnmatch_lines(
            ["registered data set houses v2 *"]
        )
        listing = project.run("datasets", "list")
        listing.fnmatch_lines(["name *latest *kind *size *created *source", "houses *v2 *file *"])
        shown = project.run("datasets", "show", "houses", "--version", "1")
        shown.fnmatch_lines(
            [
                "data set houses v1",
                "  kind: *file (houses.csv)",
                "*source: *path */houses.csv",
                "  description: v1",
                "versions of data set houses:",
                "*v1 *file*",
                "*v2 *file*",
            ]
        )

    def test_json_listings(self, project):
        project.run("datasets", "register", "houses", "houses.csv")
        (project.path / "more").mkdir()
        (project.path / "more" / "a.txt").write_text("a")
        registered = json_out(project.run("datasets", "register", "more", "more", "--json"))
        assert (registered["kind"], registered["new"], list(registered["objects"])) == (
            "folder",
            True,
            ["a.txt"],
        )
        listed = json_out(project.run("datasets", "list", "--json"))
        assert [(d["name"], d["version"], d["kind"]) for d in listed] == [
            ("houses", 1, "file"),
            ("more", 1, "folder"),
        ]
        shown = json_out(project.run("datasets", "show", "houses", "--json"))
        assert (shown["name"], shown["latest"], len(shown["versions"])) == ("houses", 1, 1)
        one = json_out(project.run("datasets", "show", "houses", "--version", "1", "--json"))
        assert one["source"]["path"].endswith("houses.csv")
        for when in (registered, *listed, *shown["versions"], one):
            assert_iso_utc(when["created"])

    def test_empty_listing(self, project):
        out = project.run("datasets", "list")
        out.fnmatch_lines(["no data sets registered; register one with *"])
        assert json_out(project.run("datasets", "list", "--json")) == []

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (
                ("datasets", "register", "houses", "missing.csv"),
                "*no file or folder at *missing.csv*",
            ),
            (
                ("datasets", "register", "bad/name", "houses.csv"),
                "*data set name 'bad/name' is not valid*",
            ),
            (("datasets", "show", "nothing"), "*no data set named 'nothing' is registered*"),
            (("datasets", "show", "houses", "--version", "9"), "*has no version 9; versions: 1*"),
            (("datasets", "show", "houses", "--version", "x"), "*invalid int value: 'x'*"),
        ],
        ids=["missing-path", "bad-name", "unknown", "unknown-version", "bad-version"],
    )
    def test_bad_input_exits_2(self, registered, args, message):
        out = registered.run(*args)
        assert out.ret == 2
        out.fnmatch_lines([message], stream="stderr")


class TestModels:
    def test_list_show_alias(self, project):
        """Models registered by a run: listing, details with the source run, aliases."""
        assert project.run("run", "flow.py:training").ret == 0
        assert project.run("run", "flow.py:training", "--param", "factor=3").ret == 0
        project.run("models", "list").fnmatch_lines(
            ["name *latest *aliases *metrics *created *source", "Scaler *v2 *- *r2=0.3 *run *"]
        )
        moved = project.run("models", "alias", "Scaler", "production", "1")
        moved.fnmatch_lines(["model Scaler: alias production -> v1 (new alias)"])
        project.run("models", "alias", "Scaler", "production", "2").fnmatch_lines(
            ["model Scaler: alias production -> v2 (was v1)"]
        )
        shown = project.run("models", "show", "Scaler")
        shown.fnmatch_lines(
            [
                "model Scaler: 2 versions",
                "aliases: production -> v2",
                "",
                "v2  [[]production]  * builtins.dict *",
                "  metrics: r2=0.3",
                "  tags:    by=test",
                "  source:  run * (pipeline training, step train)",
                "*",
                "",
                "v1  *",
            ]
        )

    def test_json(self, project):
        project.run("run", "flow.py:training")
        project.run("models", "alias", "Scaler", "staging", "1")
        listed = json_out(project.run("models", "list", "--json"))
        assert [(m["name"], m["version"], m["aliases"]) for m in listed] == [
            ("Scaler", 1, ["staging"])
        ]
        shown = json_out(project.run("models", "show", "Scaler", "--json"))
        (version,) = shown["versions"]
        assert version["metrics"] == {"r2": 0.2}
        assert version["source"]["step"] == "train"
        moved = json_out(project.run("models", "alias", "Scaler", "staging", "1", "--json"))
        assert moved["previous"] == 1
        for when in (*listed, version, moved):
            assert_iso_utc(when["created"])

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (("models", "alias", "Scaler", "production", "5"), "*model 'Scaler' has no version 5*"),
            (("models", "alias", "Scaler", "latest", "1"), "*'latest' always means the newest*"),
            (("models", "alias", "Nope", "production", "1"), "*no model named 'Nope'*"),
            (("models", "show", "Scaler", "--version", "3"), "*has no version 3*"),
        ],
        ids=["unknown-version", "reserved-alias", "unknown-model", "show-version"],
    )
    def test_bad_input_exits_2(self, trained, args, message):
        out = trained.run(*args)
        assert out.ret == 2
        out.fnmatch_lines([message], stream="stderr")


class TestRuns:
    def test_scoring_with_registered_data_and_model(self, project):
        """A run reads the registered data set and model, and registers its output."""
        missing = project.run("run", "flow.py:scoring")
        assert missing.ret == 2
        missing.fnmatch_lines(
            [
                "*step 'scored' parameter 'houses' reads Dataset('houses'), but no data set "
                "named 'houses' is registered*",
                "*",
                "register it with `stepflow datasets register houses PATH`*",
            ],
            stream="stderr",
        )
        project.run("datasets", "register", "houses", "houses.csv")
        project.run("run", "flow.py:training")
        out = project.run("run", "flow.py:scoring")
        assert out.ret == 0, out.stdout + out.stderr
        shown = json_out(project.run("datasets", "show", "scored", "--version", "1", "--json"))
        assert shown["source"]["step"] == "scored"
        explained = project.run("explain", "flow.py:scoring", "scored")
        explained.fnmatch_lines(["step 'scored' would be reused*"])
        project.run("run", "flow.py:training", "--param", "factor=5")
        explained = project.run("explain", "flow.py:scoring", "scored")
        explained.fnmatch_lines(
            ["step 'scored' would be run", "  - model Scaler v1 -> v2 (input 'model')"]
        )

    def test_prune_keeps_registered_objects(self, project):
        """``cache prune --all`` removes results, never what registered versions need."""
        project.run("datasets", "register", "houses", "houses.csv")
        project.run("run", "flow.py:training")
        assert project.run("run", "flow.py:scoring").ret == 0
        pruned = project.run("cache", "prune", "--all")
        assert pruned.ret == 0, pruned.stderr
        check = project.makepyfile(
            check="""
            import stepflow
            print(stepflow.datasets.load("houses")["price"].sum())
            print(stepflow.datasets.load("scored")["score"].sum())
            print(stepflow.models.load("Scaler"))
            """
        )
        import subprocess
        import sys

        done = subprocess.run(
            [sys.executable, str(check)],
            cwd=project.path,
            env={**__import__("os").environ, "STEPFLOW_HOME": str(project.home)},
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.split("\n")[:3] == ["300", "600", "{'factor': 2}"]
        # Pruning did remove the unpinned results (the registered table's result stays).
        project.run("run", "flow.py:scoring").fnmatch_lines(["scored *reused*"])
        project.run("run", "flow.py:training").fnmatch_lines(["train *ran*"])
