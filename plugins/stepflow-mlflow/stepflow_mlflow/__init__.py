"""stepflow-mlflow: mirror each stepflow run to an MLflow tracking server or store.

Configured in the project's ``pyproject.toml``::

    [tool.stepflow.mlflow]
    tracking_uri = "sqlite:///mlflow.db"   # or http://mlflow.internal:5000, databricks, ...

Each run becomes an MLflow run (in the experiment named after the pipeline, or
``experiment``) with the run's parameters (``Secret`` values masked), every metric the steps
logged with ``stepflow.context().log_metric`` (as ``STEP/NAME``, with their steps), tags
(pipeline, stepflow run id, each step's state, the stepflow version) and, for every model a
step registered with ``stepflow.models.register``, an artifact and a new version of the MLflow
registered model of the same name. ``STEPFLOW_MLFLOW_TRACKING_URI`` overrides the URI (``off``
turns mirroring off). A tracking failure is a warning naming the URI; the run goes on.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import stepflow
from stepflow.errors import UsageError
from stepflow_mlflow._errors import MlflowTrackingWarning
from stepflow_mlflow._settings import Settings, read_settings

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from stepflow import RunInfo, RunResult, StepReport
    from stepflow._config import Config
    from stepflow_mlflow._mirror import Mirror

# ``_mirror`` is imported when a run is mirrored: every ``stepflow`` command loads installed
# plugins, and a project without [tool.stepflow.mlflow] should not pay for it.

__all__ = ["MlflowTrackingWarning", "Settings", "client", "settings"]


def settings(project: str | os.PathLike[str] | None = None) -> Settings | None:
    """The plugin's settings for the project found from ``project`` (default: the working
    folder), as a run would use them; ``None`` when mirroring is off there.

    :raises UsageError: the ``[tool.stepflow.mlflow]`` table is wrong.
    """
    from stepflow._config import load_config

    config = load_config(None if project is None else Path(project))
    return read_settings(config.settings, config.rootdir)


def client(project: str | os.PathLike[str] | None = None) -> MlflowClient:
    """An ``MlflowClient`` for the tracking and registry URIs the project's runs are
    mirrored to (relative paths resolved as the plugin resolves them), to read them back.

    :raises UsageError: the project has no ``[tool.stepflow.mlflow]`` table.
    """
    found = settings(project)
    if found is None:
        raise UsageError(
            'MLflow mirroring is off here: add [tool.stepflow.mlflow] tracking_uri = "..." to '
            "the project's pyproject.toml, or set STEPFLOW_MLFLOW_TRACKING_URI"
        )
    from stepflow_mlflow._mirror import mlflow_client

    return mlflow_client(found)


class _State:
    """What ``stepflow_configure`` read, and the runs being mirrored (by stepflow run id)."""

    def __init__(self) -> None:
        self.settings: Settings | None = None
        self.config: Config | None = None
        self.mirrors: dict[str, Mirror] = {}
        self.lock = threading.Lock()


_state = _State()


@stepflow.hookimpl
def stepflow_configure(config: Config) -> None:
    # Checked here, before any step runs: a wrong table is a usage error (exit code 2).
    _state.settings = read_settings(config.settings, config.rootdir)
    _state.config = config


@stepflow.hookimpl
def stepflow_unconfigure(config: Any) -> None:
    with _state.lock:
        left, _state.mirrors = list(_state.mirrors.values()), {}
    for mirror in left:
        mirror.abandon()
    _state.settings = None
    _state.config = None


@stepflow.hookimpl
def stepflow_run_start(run: RunInfo) -> None:
    if _state.settings is None:
        return
    from stepflow_mlflow._mirror import Mirror

    mirror = Mirror(_state.settings, _state.config, run)
    with _state.lock:
        _state.mirrors[run.run_id] = mirror
    mirror.start()


@stepflow.hookimpl
def stepflow_step_finish(run: RunInfo, report: StepReport) -> None:
    mirror = _state.mirrors.get(run.run_id)
    if mirror is not None:
        mirror.step_finished(report)


@stepflow.hookimpl
def stepflow_run_finish(run: RunInfo, result: RunResult) -> None:
    with _state.lock:
        mirror = _state.mirrors.pop(run.run_id, None)
    if mirror is not None:
        mirror.finish(result)
