"""The house prices example runs as documented: Python API, command line, and the real data."""

from __future__ import annotations

import importlib
import math
import os
from pathlib import Path

import pandas as pd
import pytest

import stepflow
from stepflow import StepState
from stepflow._storage.records import RunRecords

REPO = Path(__file__).parents[1]
EXAMPLES = REPO / "examples"
PIPELINE_FILE = EXAMPLES / "house_prices" / "pipeline.py"
AMES_CSV = REPO / ".." / "shared" / "data" / "AmesHousing.csv"

# A smaller model keeps the tests quick; the documented default (200) is run on the real data.
QUICK = {"n_estimators": 60}


@pytest.fixture
def data(hp):
    """The example's ``house_prices.data`` module (the embedded generator)."""
    return importlib.import_module("house_prices.data")


@pytest.fixture
def ames_csv() -> Path:
    """The real AmesHousing.csv; skips without it, except in CI where it must be there."""
    if not AMES_CSV.is_file():
        reason = f"the real Ames data is not at {AMES_CSV.resolve()}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason}, and CI=true requires it")
        pytest.skip(reason)
    return AMES_CSV.resolve()


@pytest.fixture
def trained(hp, stepflow_home):
    """A stepflow home where the training pipeline has registered ``HousePrices``."""
    result = hp.training.run(params=QUICK, home=stepflow_home)
    assert result.ok, result.summary()
    return stepflow_home


def check_metrics(metrics: dict[str, float], *, min_r2: float) -> None:
    assert set(metrics) == {"rmse", "mae", "r2"}
    assert all(math.isfinite(v) for v in metrics.values())
    assert min_r2 < metrics["r2"] <= 1.0
    # Prices are tens of thousands of dollars or more; errors of a few dollars would mean leakage.
    assert 1_000 < metrics["mae"] <= metrics["rmse"] < 100_000


def check_predictions_csv(path: Path, hp, *, rows: int) -> pd.DataFrame:
    assert path.name == "latest_predictions.csv"
    frame = pd.read_csv(path)
    assert len(frame) == rows
    assert hp.TARGET not in frame.columns
    assert frame.columns[-1] == "PredictedSalePrice"
    assert frame["PredictedSalePrice"].between(10_000, 1_000_000).all()
    return frame


# --- the embedded data ----------------------------------------------------------------------


class TestEmbeddedData:
    def test_same_seed_same_houses(self, data):
        """``make_houses`` is deterministic for a seed and differs across seeds."""
        make_houses = data.make_houses
        pd.testing.assert_frame_equal(make_houses(50, seed=3), make_houses(50, seed=3))
        assert not make_houses(50, seed=3).equals(make_houses(50, seed=4))

    def test_shape_and_missing_values(self, hp, data):
        """The generator gives the requested rows, the model's columns and realistic NaNs."""
        frame = data.make_houses(1500)
        assert len(frame) == 1500
        assert {*hp.NUMERIC_FEATURES, *hp.CATEGORICAL_FEATURES, hp.TARGET} <= set(frame.columns)
        assert frame["LotFrontage"].isna().mean() == pytest.approx(0.17, abs=0.04)
        assert frame[hp.TARGET].notna().all()
        assert frame[hp.TARGET].median() == pytest.approx(160_000, rel=0.25)

    def test_columns_and_dtypes_match_the_real_file(self, data, ames_csv):
        """Every generated column exists in AmesHousing.csv under the same name and dtype."""
        real = pd.read_csv(ames_csv)
        fake = data.make_houses(200)
        assert set(fake.columns) <= set(real.columns)
        mismatched = {
            c: (str(fake[c].dtype), str(real[c].dtype))
            for c in fake.columns
            if fake[c].dtype != real[c].dtype
        }
        assert mismatched == {}


# --- steps as plain functions ---------------------------------------------------------------


class TestStepsAsFunctions:
    def test_fetched_data_is_a_plain_function(self, hp):
        """Calling a step runs its body: three rows, no price, nothing stored."""
        houses = hp.houses()
        batch = hp.fetched_data(houses, n=3)
        assert isinstance(batch, pd.DataFrame)
        assert len(batch) == 3
        assert hp.TARGET not in batch.columns
        assert list(batch.columns) == [c for c in houses.columns if c != hp.TARGET]

    def test_prepared_splits_by_test_size(self, hp):
        """``prepared`` returns (train, test) in the ratio asked, disjoint, target kept."""
        train, test = hp.prepared(hp.houses(n_houses=500), test_size=0.3)
        assert (len(train), len(test)) == (350, 150)
        assert train.index.intersection(test.index).empty
        expected = [*hp.NUMERIC_FEATURES, *hp.CATEGORICAL_FEATURES, hp.TARGET]
        assert list(train.columns) == list(test.columns) == expected

    def test_prepared_rejects_a_bad_test_size(self, hp):
        """A test_size outside (0, 1) is refused with a message naming it."""
        with pytest.raises(ValueError, match="test_size"):
            hp.prepared(hp.houses(n_houses=50), test_size=1.5)

    def test_predictions_survive_unseen_categories_and_gaps(self, hp):
        """A neighbourhood never seen in training and missing values still get a price."""
        train, _ = hp.prepared(hp.houses(n_houses=400))
        fitted = hp.model(train, n_estimators=20)
        batch = hp.fetched_data(hp.houses(n_houses=400), n=4)
        batch.loc[0, "Neighborhood"] = "Atlantis"
        batch.loc[1, ["GrLivArea", "KitchenQual"]] = [None, None]
        scored = hp.scored_batches(batch, fitted)
        assert scored["PredictedSalePrice"].notna().all()
        assert (scored["PredictedSalePrice"] > 0).all()

    def test_missing_feature_column_is_named(self, hp):
        """A table without a feature column fails with that column's name in the message."""
        houses = hp.houses(n_houses=20).drop(columns=["Overall Cond"])
        with pytest.raises(ValueError, match="Overall Cond"):
            hp.features(houses)

    def test_saved_predictions_writes_the_csv(self, hp, tmp_path):
        """``saved_predictions`` writes latest_predictions.csv and leaves no temporary file."""
        frame = pd.DataFrame({"GrLivArea": [1000, 2000], "PredictedSalePrice": [1.5e5, 2.5e5]})
        path = hp.saved_predictions(frame, output_dir=str(tmp_path / "out"))
        assert path == (tmp_path / "out" / "latest_predictions.csv").resolve()
        pd.testing.assert_frame_equal(pd.read_csv(path), frame, check_dtype=False)
        assert [p.name for p in path.parent.iterdir()] == ["latest_predictions.csv"]


# --- the pipelines through the Python API ---------------------------------------------------


class TestPipelinesApi:
    def test_pipeline_shapes(self, hp):
        """The two pipelines hold the steps the README describes."""
        assert set(hp.training.steps) == {
            "houses",
            "prepared",
            "model",
            "evaluation",
            "registered_model",
        }
        assert set(hp.batch_scoring.steps) == {
            "houses",
            "fetched_data",
            "batches",
            "scored_batches",
            "predictions",
            "saved_predictions",
        }
        assert hp.batch_scoring.steps["scored_batches"].options.foreach == "batches"

    def test_training_on_embedded_data(self, hp, stepflow_home):
        """Training on the embedded houses splits 80/20 and scores R² well above 0.8."""
        result = hp.training.run(params=QUICK, home=stepflow_home)
        assert result.ok, result.summary()
        assert all(r.state is StepState.RAN for r in result.steps.values())
        train, test = result["train"], result["test"]
        assert (len(train), len(test)) == (1200, 300)
        assert hp.TARGET in train.columns
        check_metrics(result["evaluation"], min_r2=0.85)
        # The evaluation's metrics are in the run record too.
        records = RunRecords(stepflow_home / "runs.db")
        logged = records.metrics(result.run_id)["evaluation"]
        records.close()
        assert {m.name: m.value for m in logged} == result["evaluation"]

    def test_batch_scoring_on_embedded_data(self, hp, trained, tmp_path):
        """Batch scoring writes n priced houses to output_dir/latest_predictions.csv."""
        out = tmp_path / "out"
        result = hp.batch_scoring.run(params={"output_dir": str(out), "n": 7}, home=trained)
        assert result.ok, result.summary()
        path = result["saved_predictions"]
        assert path == (out / "latest_predictions.csv").resolve()
        written = check_predictions_csv(path, hp, rows=7)
        fetched = result["fetched_data"]
        assert list(written.columns) == [*fetched.columns, "PredictedSalePrice"]
        assert written["Order"].tolist() == fetched["Order"].tolist()

    def test_sample_seed_changes_the_batch(self, hp, stepflow_home, tmp_path):
        """Another sample_seed fetches other houses; the same one fetches the same houses."""
        params = {"output_dir": str(tmp_path), "n": 5}
        runs = [
            hp.batch_scoring.run(
                params={**params, "sample_seed": seed}, targets="fetched_data", home=stepflow_home
            )["fetched_data"]["Order"].tolist()
            for seed in (1, 1, 2)
        ]
        assert runs[0] == runs[1] != runs[2]


# --- the command line -----------------------------------------------------------------------


class TestRegistry:
    def test_training_registers_the_model_once(self, hp, stepflow_home):
        """Training registers HousePrices with its metrics and the run as source; training
        again, in-process or in worker processes, makes no new version."""
        first = hp.training.run(params=QUICK, home=stepflow_home)
        assert first["registered_model"] == 1
        version = stepflow.models.get(hp.MODEL_NAME, home=stepflow_home)
        assert version.metrics == pytest.approx(first["evaluation"])
        assert version.source["run_id"] == first.run_id
        assert version.source["step"] == "registered_model"
        again = hp.training.run(params=QUICK, home=stepflow_home, workers=2)
        assert again.ok, again.summary()
        assert again["registered_model"] == 1
        assert len(stepflow.models.versions(hp.MODEL_NAME, home=stepflow_home)) == 1
        bigger = hp.training.run(params={"n_estimators": 80}, home=stepflow_home)
        assert bigger["registered_model"] == 2

    def test_scoring_uses_the_registered_model(self, hp, trained):
        """Predictions come from the registered model and are registered as scored_houses."""
        result = hp.batch_scoring.run(params={"n": 5}, targets="predictions", home=trained)
        assert result.ok, result.summary()
        model = stepflow.models.load(hp.MODEL_NAME, home=trained)
        expected = model.predict(hp.features(result["fetched_data"])).round(2)
        assert result["predictions"][hp.PREDICTION].tolist() == expected.tolist()
        scored = stepflow.datasets.get(hp.SCORED_DATASET, home=trained)
        assert (scored.version, scored.source["run_id"]) == (1, result.run_id)
        pd.testing.assert_frame_equal(
            stepflow.datasets.load(hp.SCORED_DATASET, home=trained), result["predictions"]
        )

    def test_scoring_in_chunks(self, hp, trained):
        """Each chunk is scored as its own task: the table is the chunks in order, and a
        run whose fetched rows changed in one chunk only scores that chunk again."""
        result = hp.batch_scoring.run(
            params={"n": 10, "batch_size": 4}, targets="predictions", home=trained
        )
        assert result.ok, result.summary()
        assert [len(b) for b in result["batches"]] == [4, 4, 2]
        assert result.steps["scored_batches"].items == {"ran": 3}
        assert result["predictions"]["PID"].tolist() == result["fetched_data"]["PID"].tolist()
        # The same houses with one changed in the last chunk (a stubbed fetch): only that
        # chunk is scored again.
        edited = result["fetched_data"].copy()
        edited.loc[9, "GrLivArea"] = edited.loc[9, "GrLivArea"] + 500
        again = hp.batch_scoring.run(
            params={"batch_size": 4},
            targets="predictions",
            home=trained,
            stub={"fetched_data": edited},
        )
        assert again.ok, again.summary()
        assert again.steps["scored_batches"].items == {"ran": 1, "reused": 2}
        before, after = result["predictions"], again["predictions"]
        assert after[hp.PREDICTION][:8].tolist() == before[hp.PREDICTION][:8].tolist()
        with pytest.raises(ValueError, match="batch_size must be at least 1"):
            hp.batches(result["fetched_data"], batch_size=0)

    def test_scoring_without_a_model_says_to_train(self, hp, stepflow_home):
        """Batch scoring in a fresh home stops before running, naming the fix."""
        with pytest.raises(stepflow.errors.UsageError, match=r"models.register\('HousePrices'"):
            hp.batch_scoring.run(home=stepflow_home)


class TestCommandLine:
    def test_batch_scoring_cli(self, hp, stepflow_runner, tmp_path):
        """Training then ``stepflow run .../pipeline.py:batch_scoring`` (6 steps) writes the
        CSV, with the model from the registry."""
        trained = stepflow_runner.run(
            "run", f"{PIPELINE_FILE}:training", "--param", "n_estimators=60"
        )
        assert trained.ret == 0, trained.stdout + trained.stderr
        stepflow_runner.run("models", "list").fnmatch_lines(["HousePrices *v1 *r2=*"])
        out = tmp_path / "scored"
        outcome = stepflow_runner.run(
            "run",
            f"{PIPELINE_FILE}:batch_scoring",
            "--param",
            f"output_dir={out}",
        )
        assert outcome.ret == 0, outcome.stdout + outcome.stderr
        outcome.fnmatch_lines(
            [
                "*stepflow run batch_scoring*",
                "scored_batches *ran*[[]3 items: 3 ran[]]",
                "saved_predictions *ran*",
                "*6 ran in*",
            ]
        )
        stepflow_runner.run("datasets", "list").fnmatch_lines(["scored_houses *v1 *table *"])
        check_predictions_csv(out / "latest_predictions.csv", hp, rows=10)

    def test_training_cli_with_two_workers(self, stepflow_runner):
        """``--workers 2`` runs the training pipeline in worker processes."""
        outcome = stepflow_runner.run(
            "run",
            f"{PIPELINE_FILE}:training",
            "--workers",
            "2",
            "--param",
            "n_estimators=60",
        )
        assert outcome.ret == 0, outcome.stdout + outcome.stderr
        outcome.fnmatch_lines(["*5 steps, 2 workers*", "*5 ran in*"])
        # Metrics logged in a worker process reach the run record.
        shown = stepflow_runner.run("runs", "show", "last")
        shown.fnmatch_lines(["metrics:", "*evaluation*rmse*", "*evaluation*mae*", "*r2*"])

    def test_bad_param_is_a_usage_error(self, stepflow_runner):
        """A --param that does not parse as its type exits 2 and names the parameter."""
        outcome = stepflow_runner.run("run", f"{PIPELINE_FILE}:batch_scoring", "--param", "n=many")
        assert outcome.ret == 2
        outcome.fnmatch_lines(["*parameter 'n'*int*"], stream="stderr")
        assert not (stepflow_runner.path / "predictions").exists()


# --- the real Ames data ---------------------------------------------------------------------


class TestRealData:
    def test_training_on_ames(self, hp, stepflow_home, ames_csv):
        """On AmesHousing.csv, with the default model, R² on the held-out 20% exceeds 0.8."""
        result = hp.training.run(params={"csv_path": str(ames_csv)}, home=stepflow_home)
        assert result.ok, result.summary()
        assert len(result["train"]) + len(result["test"]) == 2930
        assert len(result["test"]) == 586
        check_metrics(result["evaluation"], min_r2=0.8)

    def test_batch_scoring_on_ames(self, hp, stepflow_home, ames_csv, tmp_path):
        """Scoring a sample of real houses keeps all 81 input columns and adds the prediction."""
        params = {"csv_path": str(ames_csv)}
        assert hp.training.run(params={**QUICK, **params}, home=stepflow_home).ok
        result = hp.batch_scoring.run(
            params={**params, "output_dir": str(tmp_path)}, home=stepflow_home
        )
        assert result.ok, result.summary()
        written = check_predictions_csv(result["saved_predictions"], hp, rows=10)
        assert "Overall Cond" in written.columns
        assert len(written.columns) == 82
