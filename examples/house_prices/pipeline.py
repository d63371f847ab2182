"""House prices: train and register a model, then score batches of new houses with the
registered model, as in the Azure ML seed article.

Two pipelines share their steps:

``training``       houses -> prepared (train, test) -> model -> evaluation;
                   (model, evaluation) -> registered_model: model "HousePrices" in the registry
``batch_scoring``  houses -> fetched_data -> batches; for each batch, (batch,
                   Model("HousePrices")) -> scored_batches; -> predictions -> saved_predictions;
                   predictions are registered as data set "scored_houses"

Run them from the repository root, training first (it registers the model scoring reads)::

    stepflow run examples/house_prices/pipeline.py:training
    stepflow run examples/house_prices/pipeline.py:batch_scoring

Every step is a plain function: ``fetched_data(df, n=3)`` just returns three rows.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Protocol

import numpy as np
import pandas as pd

import stepflow
from stepflow import Dataset, Model, Param, Pipeline, step

from .data import make_houses

__all__ = [
    "CATEGORICAL_FEATURES",
    "MODEL_NAME",
    "NUMERIC_FEATURES",
    "PREDICTION",
    "PREDICTIONS_FILE",
    "SCORED_DATASET",
    "TARGET",
    "Regressor",
    "batch_scoring",
    "batches",
    "evaluation",
    "features",
    "fetched_data",
    "houses",
    "model",
    "predictions",
    "prepared",
    "registered_model",
    "saved_predictions",
    "scored_batches",
    "training",
]

# Column names exactly as AmesHousing.csv spells them, including its one odd "Overall Cond".
NUMERIC_FEATURES = (
    "LotFrontage",
    "LotArea",
    "OverallQual",
    "Overall Cond",
    "YearBuilt",
    "YearRemodAdd",
    "MasVnrArea",
    "TotalBsmtSF",
    "GrLivArea",
    "FullBath",
    "HalfBath",
    "BedroomAbvGr",
    "TotRmsAbvGrd",
    "Fireplaces",
    "GarageCars",
    "GarageArea",
)
CATEGORICAL_FEATURES = ("Neighborhood", "HouseStyle", "KitchenQual", "CentralAir")
TARGET = "SalePrice"
PREDICTION = "PredictedSalePrice"
PREDICTIONS_FILE = "latest_predictions.csv"
#: the registered model training publishes and batch scoring reads (the seed's "HousePrices")
MODEL_NAME = "HousePrices"
#: the data set each scoring run's predictions are registered as
SCORED_DATASET = "scored_houses"


class Regressor(Protocol):
    """What the scoring steps need from a model; any fitted scikit-learn regressor is one.

    Annotating with this rather than a scikit-learn class keeps scikit-learn out of this
    module's imports: only the ``model`` step needs it, so a worker that only fetches or saves
    data never pays for importing it.
    """

    def predict(self, X: pd.DataFrame) -> np.ndarray: ...


def features(frame: pd.DataFrame) -> pd.DataFrame:
    """The model's input columns from any house table, with uniform dtypes.

    A plain helper, not a step: training and scoring must shape their input identically.
    """
    missing = [c for c in (*NUMERIC_FEATURES, *CATEGORICAL_FEATURES) if c not in frame.columns]
    if missing:
        raise ValueError(
            f"the house table lacks feature column(s) {missing}; it has {list(frame.columns)}"
        )
    out = pd.DataFrame(index=frame.index)
    for column in NUMERIC_FEATURES:
        # A stray text value ("NA", "") becomes NaN and is imputed, instead of failing the fit.
        out[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
    for column in CATEGORICAL_FEATURES:
        # object dtype with None for missing: what OneHotEncoder and SimpleImputer agree on.
        values = frame[column].astype(object)
        out[column] = values.where(values.notna(), None)
    return out


# --- steps ---------------------------------------------------------------------------------


# cache=False: the key would hold csv_path, not the file's content, so an edited CSV could be
# missed. Rerunning is cheap, and an unchanged table still lets the steps after it be reused.
@step(cache=False)
def houses(csv_path: Param[str] = "", n_houses: int = 1500, seed: int = 0) -> pd.DataFrame:
    """All known houses: the CSV at ``csv_path``, or ``n_houses`` embedded synthetic ones."""
    if csv_path:
        return pd.read_csv(csv_path)
    return make_houses(n_houses, seed=seed)


@step
def prepared(
    houses: pd.DataFrame, test_size: float = 0.2, split_seed: int = 0
) -> tuple[Annotated[pd.DataFrame, "train"], Annotated[pd.DataFrame, "test"]]:
    """Feature columns plus the target, for houses with a known price, split train/test."""
    if not 0.0 < test_size < 1.0:
        raise ValueError(f"test_size must be between 0 and 1 (exclusive), got {test_size}")
    labelled = houses[houses[TARGET].notna()]
    table = features(labelled)
    table[TARGET] = labelled[TARGET].astype("float64")
    test = table.sample(frac=test_size, random_state=split_seed)
    return table.drop(index=test.index), test


@step
def model(train: pd.DataFrame, n_estimators: int = 200, max_depth: int = 3) -> Regressor:
    """A gradient-boosted regressor behind its own imputation and one-hot encoding.

    Imputation and encoding are fitted here, on the training split only, and travel inside
    the model, so scoring applies exactly the same transform and ignores categories (a new
    neighbourhood) that training never saw.
    """
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import GradientBoostingRegressor
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline as SklearnPipeline
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    preprocess = ColumnTransformer(
        [
            ("numeric", SimpleImputer(strategy="median"), list(NUMERIC_FEATURES)),
            (
                "categorical",
                make_pipeline(
                    SimpleImputer(strategy="constant", fill_value="missing"),
                    OneHotEncoder(handle_unknown="ignore"),
                ),
                list(CATEGORICAL_FEATURES),
            ),
        ]
    )
    regressor = GradientBoostingRegressor(
        n_estimators=n_estimators, max_depth=max_depth, learning_rate=0.1, random_state=0
    )
    fitted = SklearnPipeline([("preprocess", preprocess), ("regressor", regressor)])
    fitted.fit(train.drop(columns=[TARGET]), train[TARGET])
    return fitted


@step
def evaluation(model: Regressor, test: pd.DataFrame) -> dict[str, float]:
    """RMSE, MAE (dollars) and R² of the model on the held-out split.

    The metrics are also logged with the run (``stepflow runs show``, ``stepflow runs compare``).
    """
    truth = test[TARGET].to_numpy(dtype="float64")
    error = model.predict(test.drop(columns=[TARGET])) - truth
    metrics = {
        "rmse": float(np.sqrt(np.mean(error**2))),
        "mae": float(np.mean(np.abs(error))),
        "r2": float(1.0 - np.sum(error**2) / np.sum((truth - truth.mean()) ** 2)),
    }
    for name, value in metrics.items():
        stepflow.context().log_metric(name, value)
    return metrics


# cache=False: registering is cheap and idempotent (the same model with the same metrics makes
# no new version), and always running it keeps the registry right even in a fresh datastore.
@step(cache=False)
def registered_model(model: Regressor, evaluation: dict[str, float]) -> int:
    """Register the model as ``HousePrices`` with its metrics; returns its version number.

    Inside a run, the registry records this run and step as the model's source.
    """
    version = stepflow.models.register(
        MODEL_NAME,
        model,
        metrics=evaluation,
        description="gradient-boosted trees on the house features, imputation and encoding inside",
    )
    return version.version


@step
def fetched_data(houses: pd.DataFrame, n: int = 10, sample_seed: int = 0) -> pd.DataFrame:
    """A batch of ``n`` "new" houses to price, without their price (the seed's fetch_data)."""
    batch = houses.sample(n=min(n, len(houses)), random_state=sample_seed)
    return batch.drop(columns=[TARGET], errors="ignore").reset_index(drop=True)


@step
def batches(fetched_data: pd.DataFrame, batch_size: int = 4) -> list[pd.DataFrame]:
    """The fetched houses in chunks of ``batch_size`` rows, each scored as a task of its own."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    return [
        fetched_data.iloc[start : start + batch_size]
        for start in range(0, len(fetched_data), batch_size)
    ]


# foreach: one task per chunk (Azure ML's ParallelRunStep), each with its own cache key, so a
# chunk that did not change is never scored twice; with --workers N the chunks run at once.
@step(foreach="batches")
def scored_batches(
    batches: pd.DataFrame, model: Annotated[Regressor, Model(MODEL_NAME)]
) -> pd.DataFrame:
    """One chunk of houses with a ``PredictedSalePrice`` column (the seed's run step).

    ``model`` is the latest registered ``HousePrices`` (in a pipeline that also has the
    ``model`` step, that step's output instead).
    """
    scored = batches.copy()
    scored[PREDICTION] = model.predict(features(batches)).round(2)
    return scored


@step
def predictions(
    scored_batches: list[pd.DataFrame],
) -> Annotated[pd.DataFrame, Dataset(SCORED_DATASET)]:
    """The scored chunks as one table, in the fetched order. When the run succeeds, it is
    registered as a new version of data set ``scored_houses`` (if it changed)."""
    if not scored_batches:
        raise ValueError("no houses were fetched, so there is nothing to score")
    return pd.concat(scored_batches, ignore_index=True)


# cache=False: the file it writes lives outside stepflow's store; a reused result would not
# bring back a deleted or overwritten latest_predictions.csv.
@step(cache=False)
def saved_predictions(predictions: pd.DataFrame, output_dir: Param[str] = "predictions") -> Path:
    """Write ``latest_predictions.csv`` into ``output_dir`` and return its path."""
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / PREDICTIONS_FILE
    # Write then rename, so a reader polling the file never sees half of it.
    partial = folder / f".{PREDICTIONS_FILE}.{os.getpid()}.tmp"
    try:
        predictions.to_csv(partial, index=False)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target.resolve()


# --- pipelines -----------------------------------------------------------------------------

training = Pipeline("training", [houses, prepared, model, evaluation, registered_model])

# The seed's three steps, scoring in chunks; the model comes from the registry, where
# `training` put it.
batch_scoring = Pipeline(
    "batch_scoring",
    [houses, fetched_data, batches, scored_batches, predictions, saved_predictions],
)
