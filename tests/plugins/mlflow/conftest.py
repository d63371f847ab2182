"""Fixtures for the MLflow plugin: a real MLflow tracking store (SQLite) in a temporary folder.

Creating an MLflow database runs its schema migrations, which takes seconds; one is made per
session and each test gets a copy of it, so every test still has a store of its own.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import shutil
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest


def _plugin_installed() -> bool:
    eps = importlib.metadata.entry_points(group="stepflow")
    return any(ep.name == "mlflow" and ep.value == "stepflow_mlflow" for ep in eps)


@pytest.fixture
def need_mlflow(need: Callable[[str], None]) -> None:
    """Skip (fail under CI=true) unless mlflow and the plugin's entry point are installed."""
    if importlib.util.find_spec("mlflow") is None:
        need("mlflow is not installed: pip install -e plugins/stepflow-mlflow")
    if not _plugin_installed():
        need("the stepflow-mlflow plugin is not installed: pip install -e plugins/stepflow-mlflow")


class Store:
    """A real MLflow tracking store in a folder of its own, and a project that uses it."""

    def __init__(self, project: Path, folder: Path) -> None:
        #: the project folder (holds ``pyproject.toml``); the working folder of the test
        self.project = project
        #: everything MLflow writes: the database and the artifacts
        self.folder = folder
        self.database = folder / "mlflow.db"
        self.uri = f"sqlite:///{self.database}"

    def configure(self, extra: str = "", *, uri: str | None = None) -> None:
        """Write the project's ``pyproject.toml`` with a ``[tool.stepflow.mlflow]`` table."""
        (self.project / "pyproject.toml").write_text(
            f'[tool.stepflow.mlflow]\ntracking_uri = "{uri or self.uri}"\n{extra}'
        )

    def client(self) -> Any:
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    def runs(self, experiment: str) -> list[Any]:
        """The MLflow runs of an experiment, oldest first."""
        client = self.client()
        found = client.get_experiment_by_name(experiment)
        assert found is not None, f"no MLflow experiment named {experiment!r}"
        runs = client.search_runs([found.experiment_id], order_by=["attributes.start_time ASC"])
        return list(runs)

    def only_run(self, experiment: str) -> Any:
        runs = self.runs(experiment)
        assert len(runs) == 1, [r.data.tags.get("stepflow.run_id") for r in runs]
        return runs[0]

    def files_containing(self, text: str) -> list[Path]:
        """Every file under the store's folder whose bytes contain ``text`` (grep -rl)."""
        needle = text.encode()
        return [p for p in self.folder.rglob("*") if p.is_file() and needle in p.read_bytes()]


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow SQLite database with MLflow's schema, made once per session."""
    if importlib.util.find_spec("mlflow") is None:
        return Path("/nonexistent")  # need_mlflow skips (or fails) the tests that use it
    from mlflow.tracking import MlflowClient

    folder = tmp_path_factory.mktemp("mlflow-template")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    with warnings.catch_warnings():
        # MLflow 3.17 asks SQLAlchemy 2.1 for a loader option it deprecated: MLflow's to fix.
        warnings.filterwarnings("ignore", "The ``noload`` loader strategy", DeprecationWarning)
        MlflowClient(tracking_uri=uri).search_experiments()
    return folder / "mlflow.db"


@pytest.fixture
def mlflow_store(
    need_mlflow: None,
    mlflow_template: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Store]:
    """A project folder (the working folder) and a fresh MLflow store beside it.

    The project's ``pyproject.toml`` is written by ``store.configure()``.
    """
    project = tmp_path / "project"
    folder = tmp_path / "mlflow"
    project.mkdir()
    folder.mkdir()
    shutil.copyfile(mlflow_template, folder / "mlflow.db")
    monkeypatch.chdir(project)
    monkeypatch.syspath_prepend(str(project))
    monkeypatch.delenv("STEPFLOW_MLFLOW_TRACKING_URI", raising=False)
    yield Store(project, folder)
