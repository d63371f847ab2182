"""Runs mirrored to a real MLflow tracking store, read back through ``MlflowClient``."""

from __future__ import annotations

import joblib
import pytest

from stepflow import Pipeline, StepState

# MLflow 3.17 asks SQLAlchemy 2.1 for a loader option it deprecated, when this test process
# reads a store back; DeprecationWarnings are errors in this suite, and this one is MLflow's.
pytestmark = pytest.mark.filterwarnings(
    "ignore:The ``noload`` loader strategy is deprecated:DeprecationWarning"
)

TRAINING = """
import stepflow
from stepflow import Secret, step


@step
def trained(rate: float = 0.1, token: Secret[str] = "default-token") -> dict:
    context = stepflow.context()
    for epoch in range(3):
        context.log_metric("loss", 1.0 / (epoch + 1), step=epoch)
    context.log_metric("mae", 12.5)
    context.log_metric("mae", 11.0)
    context.log_param("optimizer", "sgd")
    context.log_param("auth_header", f"Bearer {token}")
    context.set_tag("owner", "pricing-team")
    return {"rate": rate}


@step(cache=False)
def registered(trained: dict) -> int:
    version = stepflow.models.register(
        "PriceModel", trained, metrics={"mae": 11.0}, tags={"data": "ames"},
        description="a fitted slope",
    )
    stepflow.models.set_alias("PriceModel", "candidate", version.version)
    return version.version
"""


@pytest.fixture
def training(mlflow_store, make_module):
    mod = make_module("mlflow_training", TRAINING)
    return Pipeline("training", [mod.trained, mod.registered])


class TestRun:
    def test_parameters_metrics_and_tags(self, mlflow_store, training):
        """One MLflow run per stepflow run: parameters, metrics with their steps, and tags
        naming the pipeline, the stepflow run, each step's state and the stepflow version."""
        import stepflow

        mlflow_store.configure()
        result = training.run({"rate": 0.25})
        assert result.ok
        run = mlflow_store.only_run("training")
        assert run.info.status == "FINISHED"
        assert run.info.run_name == result.run_id
        pipeline_params = {k: v for k, v in run.data.params.items() if "/" not in k}
        assert pipeline_params == {"rate": "0.25", "token": "***"}
        tags = run.data.tags
        assert tags["stepflow.pipeline"] == "training"
        assert tags["stepflow.run_id"] == result.run_id
        assert tags["stepflow.version"] == stepflow.__version__
        assert tags["stepflow.step.trained"] == "ran"
        assert tags["stepflow.step.registered"] == "ran"
        assert tags["stepflow.state"] == "ok"
        assert tags["stepflow.summary"].startswith("2 ran in ")
        client = mlflow_store.client()
        loss = client.get_metric_history(run.info.run_id, "trained/loss")
        assert [(m.step, m.value) for m in loss] == [(0, 1.0), (1, 0.5), (2, 1.0 / 3)]
        # Values logged without a step of their own are numbered in the order they came.
        mae = client.get_metric_history(run.info.run_id, "trained/mae")
        assert sorted((m.step, m.value) for m in mae) == [(0, 12.5), (1, 11.0)]

    def test_what_steps_logged_with_the_context(self, mlflow_store, training):
        """Parameters a step logged (``log_param``) become ``STEP/NAME`` parameters and tags
        it set (``set_tag``) become run tags; the run's user and code snapshot come along."""
        mlflow_store.configure()
        training.run()
        run = mlflow_store.only_run("training")
        assert run.data.params["trained/optimizer"] == "sgd"
        assert run.data.params["trained/auth_header"] == "Bearer ***"
        assert run.data.tags["owner"] == "pricing-team"
        assert run.data.tags["stepflow.source_hash"]
        assert run.data.tags["mlflow.user"]

    def test_hundreds_of_values(self, mlflow_store, make_module):
        """More parameters, tags and metric values than MLflow takes in one request."""
        mod = make_module(
            "mlflow_many",
            """
import stepflow
from stepflow import step

@step
def many(n: int = 250) -> int:
    context = stepflow.context()
    for i in range(n):
        context.log_param(f"p{i}", i)
        context.set_tag(f"t{i}", i)
    for i in range(2500):
        context.log_metric("curve", float(i), step=i)
    return n
""",
        )
        mlflow_store.configure()
        assert Pipeline("many", [mod.many]).run().ok
        run = mlflow_store.only_run("many")
        assert sum(1 for k in run.data.params if k.startswith("many/p")) == 250
        assert sum(1 for k in run.data.tags if k.startswith("t")) == 250
        history = mlflow_store.client().get_metric_history(run.info.run_id, "many/curve")
        assert len(history) == 2500 and max(m.step for m in history) == 2499

    def test_reused_steps_are_tagged_and_log_no_metrics(self, mlflow_store, training):
        """A rerun is a second MLflow run; a reused step says so and logs nothing again."""
        mlflow_store.configure()
        training.run()
        again = training.run()
        assert again.steps["trained"].state is StepState.REUSED
        first, second = mlflow_store.runs("training")
        assert second.data.tags["stepflow.run_id"] == again.run_id
        assert second.data.tags["stepflow.step.trained"] == "reused"
        assert second.data.tags["stepflow.step.registered"] == "ran"
        assert second.data.tags["stepflow.step.trained.reused_from"] == first.info.run_name
        assert "trained/loss" in first.data.metrics
        assert "trained/loss" not in second.data.metrics

    def test_failed_run(self, mlflow_store, make_module):
        """A failed step fails the MLflow run; the step's state and error type are tags,
        and the step skipped after it is tagged too."""
        mod = make_module(
            "mlflow_failing",
            """
from stepflow import step

@step
def broken(limit: int = 3) -> int:
    raise ValueError("the data is bad")

@step
def after(broken: int) -> int:
    return broken
""",
        )
        mlflow_store.configure()
        result = Pipeline("failing", [mod.broken, mod.after]).run()
        assert not result.ok
        run = mlflow_store.only_run("failing")
        assert run.info.status == "FAILED"
        assert run.data.tags["stepflow.state"] == "failed"
        assert run.data.tags["stepflow.step.broken"] == "failed"
        assert run.data.tags["stepflow.step.broken.error"].endswith("ValueError")
        assert run.data.tags["stepflow.step.after"] == "skipped"
        assert "the data is bad" not in str(run.data.tags)

    def test_experiment_setting(self, mlflow_store, training):
        """``experiment`` puts every pipeline's runs in one experiment."""
        mlflow_store.configure('experiment = "house-prices"\n')
        training.run()
        assert mlflow_store.client().get_experiment_by_name("training") is None
        run = mlflow_store.only_run("house-prices")
        assert run.data.tags["stepflow.pipeline"] == "training"
        # The plugin puts the experiment's artifacts beside the database, not in the
        # working folder.
        experiment = mlflow_store.client().get_experiment_by_name("house-prices")
        assert experiment.artifact_location == (mlflow_store.folder / "mlartifacts").as_uri()
        assert not (mlflow_store.project / "mlruns").exists()

    def test_parallel_workers(self, mlflow_store, training):
        """Metrics logged in worker processes reach MLflow too."""
        mlflow_store.configure()
        assert training.run(workers=2).ok
        run = mlflow_store.only_run("training")
        assert run.data.metrics["trained/loss"] == pytest.approx(1.0 / 3)

    def test_without_the_table_nothing_is_mirrored(self, mlflow_store, training):
        """A project without ``[tool.stepflow.mlflow]`` does not touch MLflow at all."""
        (mlflow_store.project / "pyproject.toml").write_text("[tool.stepflow]\n")
        before = mlflow_store.database.read_bytes()
        assert training.run().ok
        assert mlflow_store.database.read_bytes() == before


class TestSecrets:
    def test_secret_value_appears_nowhere_in_the_store(self, mlflow_store, training):
        """A ``Secret[str]`` parameter is ``***`` in MLflow, and its value is in no file of
        the store: not the database, not an artifact."""
        secret = "tok-8c1f0e5d-never-shown"
        mlflow_store.configure()
        assert training.run({"token": secret}).ok
        run = mlflow_store.only_run("training")
        assert run.data.params["token"] == "***"
        assert run.data.params["trained/auth_header"] == "Bearer ***"
        assert mlflow_store.files_containing("PriceModel")  # the search itself can find text
        assert mlflow_store.files_containing(secret) == []


class TestModels:
    def test_registered_model_becomes_an_mlflow_model_version(self, mlflow_store, training):
        """A model a step registers is logged as an artifact of the MLflow run and
        registered as a version of the MLflow model of the same name, with stepflow's
        version, content hash, metrics, tags and aliases."""
        mlflow_store.configure()
        result = training.run()
        run = mlflow_store.only_run("training")
        assert run.data.tags["stepflow.models"] == "PriceModel v1"
        client = mlflow_store.client()
        (version,) = client.search_model_versions("name='PriceModel'")
        assert version.run_id == run.info.run_id
        assert version.description == "a fitted slope"
        assert version.tags["stepflow.model.version"] == "1"
        assert version.tags["stepflow.run_id"] == result.run_id
        assert version.tags["stepflow.step"] == "registered"
        assert version.tags["stepflow.metric.mae"] == "11.0"
        assert version.tags["stepflow.tag.data"] == "ames"
        assert version.tags["stepflow.model.content_hash"]
        alias = client.get_model_version_by_alias("PriceModel", "candidate")
        assert alias.version == version.version
        # The artifact is the model itself, loadable with joblib.
        from mlflow.artifacts import download_artifacts

        folder = download_artifacts(artifact_uri=version.source, tracking_uri=mlflow_store.uri)
        assert joblib.load(f"{folder}/model.joblib") == {"rate": 0.1}

    def test_unchanged_model_makes_no_new_mlflow_version(self, mlflow_store, training):
        """Registering the same model again makes no stepflow version, so no MLflow one."""
        mlflow_store.configure()
        training.run()
        training.run()
        training.run({"rate": 0.5})
        client = mlflow_store.client()
        versions = client.search_model_versions("name='PriceModel'")
        assert sorted(v.tags["stepflow.model.version"] for v in versions) == ["1", "2"]
        runs = mlflow_store.runs("training")
        assert [r.data.tags.get("stepflow.models") for r in runs] == [
            "PriceModel v1",
            None,
            "PriceModel v2",
        ]

    def test_register_models_off(self, mlflow_store, training):
        """``register_models = false`` mirrors the run and leaves MLflow's registry alone."""
        mlflow_store.configure("register_models = false\n")
        training.run()
        assert mlflow_store.only_run("training").data.tags["stepflow.state"] == "ok"
        assert mlflow_store.client().search_registered_models() == []


class TestFileStore:
    def test_folder_store(self, mlflow_store, training, monkeypatch):
        """MLflow's file store (in maintenance mode, opened only with
        MLFLOW_ALLOW_FILE_STORE=true): a relative folder is the project's."""
        from mlflow.tracking import MlflowClient

        monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
        mlflow_store.configure(uri="mlruns")
        assert training.run().ok
        folder = mlflow_store.project / "mlruns"
        client = MlflowClient(tracking_uri=folder.as_uri(), registry_uri=folder.as_uri())
        experiment = client.get_experiment_by_name("training")
        (run,) = client.search_runs([experiment.experiment_id])
        assert run.data.tags["stepflow.step.trained"] == "ran"
        assert run.data.params["token"] == "***"
        (version,) = client.search_model_versions("name='PriceModel'")
        assert version.tags["stepflow.model.version"] == "1"
