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
from typing import TYPE_CHECKING

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
    """The configurations in force, with their settings, and the runs being mirrored.

    ``Pipeline.run`` configures and unconfigures the plugins around each run, and two runs
    may overlap in one process (threads): each ``stepflow_unconfigure`` removes its own
    configuration and ends only the mirrors started under it.
    """

    def __init__(self) -> None:
        #: (config, its settings), in configure order; a run uses the latest
        self.configured: list[tuple[Config, Settings | None]] = []
        #: stepflow run id → (the config it started under, its mirror)
        self.mirrors: dict[str, tuple[Config, Mirror]] = {}
        self.lock = threading.Lock()


_state = _State()


@stepflow.hookimpl
def stepflow_configure(config: Config) -> None:
    # Checked here, before any step runs: a wrong table is a usage error (exit code 2).
    found = read_settings(config.settings, config.rootdir)
    with _state.lock:
        _state.configured.append((config, found))


@stepflow.hookimpl
def stepflow_unconfigure(config: Config) -> None:
    with _state.lock:
        _state.configured = [(c, s) for c, s in _state.configured if c is not config]
        left = [run_id for run_id, (c, _) in _state.mirrors.items() if c is config]
        abandoned = [_state.mirrors.pop(run_id)[1] for run_id in left]
    for mirror in abandoned:
        mirror.abandon()


@stepflow.hookimpl
def stepflow_run_start(run: RunInfo) -> None:
    with _state.lock:
        if not _state.configured:
            return
        config, found = _state.configured[-1]
    if found is None:
        return
    from stepflow_mlflow._mirror import Mirror

    mirror = Mirror(found, config, run)
    with _state.lock:
        _state.mirrors[run.run_id] = (config, mirror)
    mirror.start()


@stepflow.hookimpl
def stepflow_step_finish(run: RunInfo, report: StepReport) -> None:
    with _state.lock:
        entry = _state.mirrors.get(run.run_id)
    if entry is not None:
        entry[1].step_finished(report)


@stepflow.hookimpl
def stepflow_run_finish(run: RunInfo, result: RunResult) -> None:
    with _state.lock:
        entry = _state.mirrors.pop(run.run_id, None)
    if entry is not None:
        entry[1].finish(result)
