"""One stepflow run mirrored to one MLflow run, through ``mlflow.tracking.MlflowClient``.

The MLflow calls run in a thread of their own, in the order the run's hooks queued them, so
importing MLflow, opening its store and every request overlap with the steps instead of
holding them up; the run's end waits for the queue to drain, so the MLflow run is complete
when ``Pipeline.run`` returns or ``stepflow run`` exits.

Every MLflow call goes through ``Mirror._guarded``: the first failure (a server that does not
answer, a store that cannot be written, a value MLflow refuses) becomes one
``MlflowTrackingWarning`` naming the tracking URI, and the mirror stops for the rest of that
run. The stepflow run itself never fails because of MLflow.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import re
import socket
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from stepflow.errors import StepflowError
from stepflow_mlflow._errors import MlflowTrackingWarning
from stepflow_mlflow._settings import Settings, shown_uri

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from stepflow import RunInfo, RunResult, StepReport
    from stepflow._config import Config

__all__ = ["Mirror", "mlflow_client", "warn"]

# MLflow's limits (mlflow.utils.validation): longer values are refused, so they are cut.
_MAX_PARAM_VALUE = 6000
_MAX_TAG_VALUE = 8000
#: how far back (seconds) a model version may be dated and still belong to this run, for
#: clocks of remote workers that run behind
_CLOCK_SKEW = 3600.0
#: where a mirrored model's bytes go in its MLflow run's artifacts
MODELS_ARTIFACT_PATH = "stepflow-models"


class Mirror:
    """The MLflow side of one stepflow run: a run created at start, fed as steps finish,
    terminated (with the run's models registered) at the end."""

    def __init__(self, settings: Settings, config: Config, run: RunInfo) -> None:
        self.settings = settings
        self.config = config
        self.run = run
        self.started = time.time()
        self.client: MlflowClient | None = None
        #: the MLflow run's id, once created
        self.run_id: str | None = None
        self.artifact_uri: str | None = None
        #: set after the first failure: nothing more is sent for this run
        self.broken = False
        #: (step, metric name) → how many values without a step of their own were sent
        self._counters: dict[tuple[str, str], int] = {}
        #: (what, action) in hook order; ``None`` ends the thread
        self._queue: queue.SimpleQueue[tuple[str, Callable[[], None]] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(
            target=self._work, name=f"stepflow-mlflow-{run.run_id}", daemon=True
        )

    # --- the lifecycle (called by the hooks, in the run's threads) ------------------------

    def start(self) -> None:
        self._queue.put(("start the MLflow run", self._start))
        self._thread.start()

    def step_finished(self, report: StepReport) -> None:
        self._queue.put((f"log step {report.name!r}", lambda: self._step_finished(report)))

    def finish(self, result: RunResult) -> None:
        """Queue the end of the MLflow run and wait until everything queued was sent."""
        self._queue.put(("finish the MLflow run", lambda: self._finish(result)))
        self._queue.put(None)
        self._thread.join()

    def abandon(self) -> None:
        """The run never reached its end (stepflow itself failed): mark the MLflow run
        failed rather than leave it running forever, and end the thread."""
        self._queue.put(("end the abandoned MLflow run", self._abandon))
        self._queue.put(None)
        self._thread.join()

    def _abandon(self) -> None:
        if self.client is not None and self.run_id is not None:
            self.client.set_tag(self.run_id, "stepflow.state", "crashed")
            self.client.set_terminated(self.run_id, "FAILED")

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            self._guarded(*item)

    # --- the work -------------------------------------------------------------------------

    def _start(self) -> None:
        _check_reachable(self.settings)
        from mlflow.entities import Param

        import stepflow

        self.client = _client(self.settings)
        experiment = self.settings.experiment or self.run.pipeline
        experiment_id = _experiment_id(self.client, experiment, self.settings.artifact_location)
        tags = {
            "stepflow.pipeline": self.run.pipeline,
            "stepflow.run_id": self.run.run_id,
            "stepflow.version": stepflow.__version__,
            "stepflow.workers": str(self.run.workers),
            "stepflow.steps": _cut(", ".join(self.run.steps), _MAX_TAG_VALUE),
        }
        created = self.client.create_run(experiment_id, run_name=self.run.run_id, tags=tags)
        self.run_id = created.info.run_id
        self.artifact_uri = created.info.artifact_uri
        # The run's parameters as stepflow hands them to plugins: secrets are already "***".
        params = [
            Param(name, _cut(str(value), _MAX_PARAM_VALUE))
            for name, value in sorted(self.run.params.items())
        ]
        _log_batches(self.client, self.run_id, params=params)
        self.client.set_tag(self.run_id, "stepflow.state", "running")

    def _step_finished(self, report: StepReport) -> None:
        from mlflow.entities import Metric, RunTag

        assert self.client is not None and self.run_id is not None
        tags = [RunTag(f"stepflow.step.{report.name}", str(report.state))]
        if report.error is not None:
            # The error's type only: its message may quote values the run was given.
            kind = getattr(report.error, "exc_type", None) or type(report.error).__name__
            tags.append(RunTag(f"stepflow.step.{report.name}.error", str(kind)))
        metrics = []
        for metric in report.metrics:
            key = (report.name, metric.name)
            if metric.step is None:
                step = self._counters.get(key, 0)
                self._counters[key] = step + 1
            else:
                step = metric.step
            stamp = metric.timestamp or time.time()
            name = _key(f"{report.name}/{metric.name}")
            metrics.append(Metric(name, float(metric.value), int(stamp * 1000), step))
        _log_batches(self.client, self.run_id, tags=tags, metrics=metrics)

    def _finish(self, result: RunResult) -> None:
        from mlflow.entities import RunTag

        assert self.client is not None and self.run_id is not None
        params, tags = self._recorded()
        outcome = "interrupted" if result.interrupted else "ok" if result.ok else "failed"
        tags += [RunTag("stepflow.state", outcome), RunTag("stepflow.summary", result.summary())]
        models = self._models() if self.settings.register_models else []
        if models:
            names = ", ".join(f"{m.name} v{m.version}" for m in models)
            tags.append(RunTag("stepflow.models", _cut(names, _MAX_TAG_VALUE)))
        _log_batches(self.client, self.run_id, params=params, tags=tags)
        for model in models:
            self._register(model)
        status = "KILLED" if result.interrupted else "FINISHED" if result.ok else "FAILED"
        self.client.set_terminated(self.run_id, status)

    def _recorded(self) -> tuple[list[Any], list[Any]]:
        """What only the run records hold: the parameters and tags steps logged with
        ``stepflow.context()`` (secret values already masked there), the run that made each
        reused step's result, and the run's commit, user, host and code snapshot."""
        from mlflow.entities import Param, RunTag

        from stepflow._storage.read import ReadAPI

        try:
            with ReadAPI(self.config) as api:
                recorded = api.run(self.run.run_id)
                steps = api.steps(recorded)
        except StepflowError as exc:
            # The records could not be written or read (a full disk, say): the run's own
            # outcome still reaches MLflow, without what only the records hold.
            warn(
                f"the records of run {self.run.run_id} cannot be read ({exc}); the parameters "
                f"and tags its steps logged are not mirrored to MLflow"
            )
            return [], []
        params, tags = [], []
        for step in steps:
            for name, value in step.params.items():
                value = _cut(str(value), _MAX_PARAM_VALUE)
                params.append(Param(_key(f"{step.name}/{name}"), value))
            for name, value in step.tags.items():
                tags.append(RunTag(_key(name), _cut(str(value), _MAX_TAG_VALUE)))
            if step.reused_from:
                tags.append(RunTag(f"stepflow.step.{step.name}.reused_from", step.reused_from))
        for key, value in (
            ("mlflow.source.git.commit", recorded.git_commit),
            ("mlflow.user", recorded.user),
            ("stepflow.host", recorded.host),
            ("stepflow.source_hash", recorded.source_hash),
        ):
            if value:
                tags.append(RunTag(key, str(value)))
        return params, tags

    # --- models ---------------------------------------------------------------------------

    def _models(self) -> list[Any]:
        """The model versions registered by a step of this run, oldest first."""
        import stepflow

        since = self.started - _CLOCK_SKEW
        found = []
        for latest in stepflow.models.list(config=self.config):
            if latest.created < since:
                continue
            for version in reversed(stepflow.models.versions(latest.name, config=self.config)):
                if version.created < since:
                    break
                if version.source.get("run_id") == self.run.run_id:
                    found.append(version)
        return sorted(found, key=lambda v: (v.created, v.name, v.version))

    def _register(self, model: Any) -> None:
        """Log the model's object as an artifact of the MLflow run, then register that
        artifact as a new version of the MLflow registered model of the same name."""
        import joblib

        import stepflow

        assert self.client is not None and self.run_id is not None
        path = f"{MODELS_ARTIFACT_PATH}/{model.name}/v{model.version}"
        value = stepflow.models.load(model.name, version=model.version, config=self.config)
        with tempfile.TemporaryDirectory(prefix="stepflow-mlflow-") as folder:
            joblib.dump(value, Path(folder) / "model.joblib")
            self.client.log_artifacts(self.run_id, folder, path)
        _ensure_registered_model(self.client, model.name)
        tags = {
            "stepflow.model.version": str(model.version),
            "stepflow.model.content_hash": model.content_hash,
            "stepflow.model.type": model.type,
            "stepflow.run_id": self.run.run_id,
            "stepflow.pipeline": self.run.pipeline,
            "stepflow.step": str(model.source.get("step", "")),
        }
        tags.update({f"stepflow.metric.{k}": repr(v) for k, v in model.metrics.items()})
        tags.update({f"stepflow.tag.{k}": _cut(v, _MAX_TAG_VALUE) for k, v in model.tags.items()})
        created = self.client.create_model_version(
            model.name,
            source=f"{self.artifact_uri}/{path}",
            run_id=self.run_id,
            tags=tags,
            description=model.description,
        )
        for alias in model.aliases:
            self.client.set_registered_model_alias(model.name, alias, created.version)

    # --- failures -------------------------------------------------------------------------

    def _guarded(self, what: str, action: Callable[[], None]) -> None:
        if self.broken:
            return
        try:
            _ignore_mlflow_deprecations()
            action()
        except Exception as exc:  # any failure of MLflow: the run must go on
            self.broken = True
            warn(
                f"MLflow tracking at {shown_uri(self.settings.tracking_uri)} failed to "
                f"{what} of run {self.run.run_id} ({type(exc).__name__}: "
                f"{_first_line(exc)}); the rest of this run is not mirrored to MLflow, "
                f"and the run goes on"
            )


def warn(message: str) -> None:
    """Warn without ever raising: where warnings are errors (``-W error``, pytest's
    ``filterwarnings = error``) the message goes to stderr instead, because a tracking
    problem must not fail the run."""
    try:
        # Attributed to the plugin, not to a line of its thread: the report shows
        # "stepflow-mlflow:0: MlflowTrackingWarning: ..." without a line of source under it.
        warnings.warn_explicit(
            MlflowTrackingWarning(message),
            MlflowTrackingWarning,
            filename="stepflow-mlflow",
            lineno=0,
            module="stepflow_mlflow",
        )
    except Warning:
        print(f"stepflow-mlflow: warning: {message}", file=sys.stderr)


# --- MLflow, wrapped ------------------------------------------------------------------------


def mlflow_client(settings: Settings) -> MlflowClient:
    """An ``MlflowClient`` for ``settings``, its stores opened."""
    with _quiet_mlflow():
        client = _client(settings)
        # Opening the stores imports MLflow's SQL modules, which is where SQLAlchemy warns.
        client.search_experiments(max_results=1)
        client.search_registered_models(max_results=1)
    return client


def _client(settings: Settings) -> MlflowClient:
    # Imported only when a run is mirrored: importing MLflow costs seconds.
    from mlflow.tracking import MlflowClient

    # MLflow announces creating and migrating a new SQLite store at INFO, in the middle of
    # stepflow's report; say it only when something goes wrong.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    logging.getLogger("alembic.runtime.migration").setLevel(logging.WARNING)
    if settings.tracking_uri.startswith("sqlite:////"):
        # SQLite makes the database file, not the folders above it.
        Path(settings.tracking_uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(
        tracking_uri=settings.tracking_uri,
        registry_uri=settings.registry_uri or settings.tracking_uri,
    )


#: deprecation warnings MLflow's own code triggers (SQLAlchemy 2.1 deprecating a loader
#: option MLflow 3.17 uses, say) are for MLflow's developers, not for the user of a pipeline,
#: and where warnings are errors they would stop the mirror
_MLFLOW_MODULES = r"(mlflow|sqlalchemy|alembic)(\.|$)"


def _ignore_mlflow_deprecations() -> None:
    """Put the filter first, as each action starts: from the mirror's thread, where
    ``catch_warnings`` would race with the steps' own (restoring its copy of the filters
    could undo theirs). Python's default filters already hide these warnings outside
    ``__main__``; this keeps them hidden under ``-W error`` and pytest's filters too."""
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=_MLFLOW_MODULES)


@contextlib.contextmanager
def _quiet_mlflow() -> Iterator[None]:
    """The same, for a call in the caller's own thread (``stepflow_mlflow.client()``)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=_MLFLOW_MODULES)
        yield


def _check_reachable(settings: Settings) -> None:
    """Fail fast on an HTTP(S) server that does not answer: MLflow's own retries would hold
    the run for minutes before giving up."""
    for uri in {settings.tracking_uri, settings.registry_uri or settings.tracking_uri}:
        parts = urlsplit(uri)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            continue
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            socket.create_connection((parts.hostname, port), settings.connect_timeout).close()
        except OSError as exc:
            raise ConnectionError(
                f"cannot connect to {parts.hostname}:{port} within "
                f"{settings.connect_timeout:g}s: {exc}"
            ) from exc


def _experiment_id(client: MlflowClient, name: str, artifact_location: str | None) -> str:
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    try:
        return str(client.create_experiment(name, artifact_location=artifact_location))
    except MlflowException as exc:
        # Another run created it in the meantime.
        found = client.get_experiment_by_name(name)
        if found is None:
            raise exc from None
        return str(found.experiment_id)


def _ensure_registered_model(client: MlflowClient, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        try:
            client.create_registered_model(
                name, tags={"stepflow.registry": "mirrored from stepflow's model registry"}
            )
        except MlflowException:
            client.get_registered_model(name)  # made meanwhile by another run; else raise


def _log_batches(
    client: MlflowClient,
    run_id: str,
    *,
    params: Sequence[Any] = (),
    tags: Sequence[Any] = (),
    metrics: Sequence[Any] = (),
) -> None:
    """``log_batch`` within MLflow's limits on one request (100 parameters, 100 tags and
    1,000 metrics)."""
    batches = max(-(-len(params) // 100), -(-len(tags) // 100), -(-len(metrics) // 1000))
    for i in range(batches):
        client.log_batch(
            run_id,
            params=list(params[i * 100 : (i + 1) * 100]),
            tags=list(tags[i * 100 : (i + 1) * 100]),
            metrics=list(metrics[i * 1000 : (i + 1) * 1000]),
        )


#: what MLflow accepts in a metric, parameter or tag name (mlflow.utils.validation)
_NOT_IN_MLFLOW_NAMES = re.compile(r"[^\w./ :-]")


def _key(name: str) -> str:
    """A stepflow name as MLflow accepts it: other characters (``acc@top5``) become ``_``,
    so one odd name does not stop the mirror."""
    return _NOT_IN_MLFLOW_NAMES.sub("_", name)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else "no message"
