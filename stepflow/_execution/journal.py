"""What the run loop tells the run records: the run, each step, its logs, metrics and lineage.

The journal keeps per-step facts while a run goes (when it started, what each attempt wrote,
what it logged through ``stepflow.context()``), turns each finished step into a record row,
and writes rows in batches (see ``stepflow._storage.records``). The source snapshot is taken,
and its files stored in the run's datastore, in a background thread while steps run. If the
records cannot be opened, the run still runs and a warning says what was lost.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import attrs

from stepflow._execution import live
from stepflow._execution.result import StepReport, StepState
from stepflow._slotted import Frozen, Slotted
from stepflow._storage.faults import is_storage_fault, storage_error
from stepflow._storage.records import (
    MetricRow,
    RunRecords,
    RunRow,
    StepIO,
    StepRow,
    encode_params,
)
from stepflow._version import __version__
from stepflow.errors import StepFailedError, StepflowWarning

if TYPE_CHECKING:
    from stepflow._config import Config
    from stepflow._execution.capture import Captured
    from stepflow._execution.context import StepContext
    from stepflow._execution.task import TaskResult
    from stepflow._planning.cachekey import CacheKey
    from stepflow._planning.plan import Plan
    from stepflow._storage.artifacts import ArtifactRef
    from stepflow._storage.datastore import Datastore
    from stepflow._storage.index import CacheRecord
    from stepflow._storage.source import Scan
    from stepflow.errors import StorageError

__all__ = ["Journal", "RunFacts", "open_records"]

#: seconds between writes of finished steps while a run goes on
_FLUSH_EVERY = 1.0


def open_records(home: os.PathLike[str] | str) -> RunRecords:
    from pathlib import Path

    return RunRecords.shared(Path(home) / "runs.db")


class Output(Protocol):
    """An output made or reused during the run."""

    content_hash: str
    ref: ArtifactRef | None


class RunFacts(Frozen):
    """What the journal reads of a run: exactly this, and nothing else of the run loop.

    The mappings are the run loop's own, read as they fill while the run goes on.
    """

    __slots__ = (
        "run_id",
        "pipeline",
        "plan",
        "config",
        "workers",
        "secret_values",
        "reports",
        "outputs",
        "keys",
        "references",
        "bookkeeping_failed",
        "open_store",
    )

    run_id: str
    pipeline: str
    plan: Plan
    config: Config
    workers: int
    #: parameter values to mask as ``***`` in everything recorded
    secret_values: tuple[str, ...]
    #: step → its report, once finished
    reports: Mapping[str, StepReport]
    #: output → the artifact made or reused for it
    outputs: Mapping[str, Output]
    #: step → its cache key, once computed
    keys: Mapping[str, CacheKey]
    #: step → parameter → the registry version it reads
    references: Mapping[str, Mapping[str, Any]]
    #: told about what could not be recorded because the home's storage failed
    bookkeeping_failed: Callable[[StorageError], None]
    #: opens a datastore of its own for the code snapshot (the run's may be closed before
    #: the snapshot is stored); ``None``: the snapshot's files are not stored
    open_store: Callable[[], Datastore] | None

    def __init__(
        self,
        run_id: str,
        pipeline: str,
        plan: Plan,
        config: Config,
        workers: int,
        secret_values: tuple[str, ...],
        reports: Mapping[str, StepReport],
        outputs: Mapping[str, Output],
        keys: Mapping[str, CacheKey],
        references: Mapping[str, Mapping[str, Any]],
        bookkeeping_failed: Callable[[StorageError], None],
        open_store: Callable[[], Datastore] | None = None,
    ) -> None:
        init = object.__setattr__
        init(self, "run_id", run_id)
        init(self, "pipeline", pipeline)
        init(self, "plan", plan)
        init(self, "config", config)
        init(self, "workers", workers)
        init(self, "secret_values", secret_values)
        init(self, "reports", reports)
        init(self, "outputs", outputs)
        init(self, "keys", keys)
        init(self, "references", references)
        init(self, "bookkeeping_failed", bookkeeping_failed)
        init(self, "open_store", open_store)


class _StepFacts(Slotted):
    __slots__ = ("started", "logs", "last_logs", "metrics", "params", "tags", "files", "reused")

    started: float | None
    logs: list[tuple[int, str, str]]
    last_logs: dict[str, str]
    metrics: tuple[Any, ...]
    params: dict[str, str]
    tags: dict[str, str]
    files: dict[str, Any]
    reused: CacheRecord | None

    def __init__(
        self,
        started: float | None = None,
        logs: list[tuple[int, str, str]] | None = None,
        last_logs: dict[str, str] | None = None,
        metrics: tuple[Any, ...] = (),
        params: dict[str, str] | None = None,
        tags: dict[str, str] | None = None,
        files: dict[str, Any] | None = None,
        reused: CacheRecord | None = None,
    ) -> None:
        self.started = started
        self.logs = [] if logs is None else logs
        self.last_logs = {} if last_logs is None else last_logs
        self.metrics = metrics
        self.params = {} if params is None else params
        self.tags = {} if tags is None else tags
        self.files = {} if files is None else files
        self.reused = reused


def _user() -> str | None:
    """``getpass.getuser()``, spelled out: importing getpass (and termios with it) cost more
    than the rest of a run's set-up of its records."""
    for name in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        user = os.environ.get(name)
        if user:
            return user
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError, OSError):  # no pwd module (Windows), or no entry
        return None


class Journal:
    """Collects a run's facts and writes them to the run records."""

    def __init__(self, run: RunFacts) -> None:
        self.run = run
        self.facts: dict[str, _StepFacts] = {}
        self._pending: list[StepRow] = []
        self._flushed = time.monotonic()
        self._lock = threading.Lock()
        self.records: RunRecords | None = None
        #: writes finished steps that no later step's finish wrote within a second, so a
        #: reader (``stepflow ui``) sees a run's progress while a long step goes on
        self._timer: threading.Timer | None = None
        self._finished = False
        #: steps whose attempts started and that have not finished: only while one runs
        #: can finished steps wait long for their write (a reused step runs no attempt)
        self._in_flight: set[str] = set()

    def _fact(self, name: str) -> _StepFacts:
        fact = self.facts.get(name)
        if fact is None:
            fact = self.facts[name] = _StepFacts()
        return fact

    def _mask(self, text: str) -> str:
        for secret in self.run.secret_values:
            text = text.replace(secret, "***")
        return text

    # --- run ----------------------------------------------------------------------------

    def start(self) -> None:
        run = self.run
        try:
            self.records = open_records(run.config.home)
            self.records.mark_abandoned()
            self.records.start_run(self._run_row(), plan=self._plan())
        except Exception as exc:  # the run goes on without records (see _lost)
            self._lost(exc)
            return
        if run.config.settings.get("record_source", True):
            # Not a daemon: the snapshot writes itself to the record when it is done, after
            # the run has returned if need be, and the process waits for it before exiting.
            threading.Thread(
                target=self._take_snapshot, name="stepflow-source", daemon=False
            ).start()

    def _lost(self, exc: BaseException) -> None:
        if self.records is not None:
            try:
                self.records.close()
            except Exception:  # noqa: S110 - already reporting the first problem
                pass
        self.records = None
        path = self.run.config.home / "runs.db"
        report = self.run.bookkeeping_failed
        if is_storage_fault(exc):
            # A full disk, a read-only home, a locked database: the run's result and exit
            # code say so (RunResult.storage_errors), the steps' states stand.
            report(
                storage_error(
                    exc,
                    path=path,
                    what=f"the run records of run {self.run.run_id}",
                )
            )
            return
        warnings.warn(
            StepflowWarning(
                f"run records are not being kept for this run ({type(exc).__name__}: {exc}); "
                f"the run itself goes on. Check {path}"
            ),
            stacklevel=2,
        )

    def _run_row(self) -> RunRow:
        run = self.run
        plan = run.plan
        selected = set(plan.steps)
        if selected == set(plan.dag.steps):
            targets: tuple[str, ...] = ()
        else:
            # The steps nothing selected depends on: selecting them again selects the same set.
            targets = tuple(n for n in plan.steps if not (set(plan.dag.downstream[n]) & selected))
        user = _user()
        options = run.config.options
        return RunRow(
            id=run.run_id,
            pipeline=run.pipeline,
            state="running",
            started=time.time(),
            target=options.get("target") if isinstance(options.get("target"), str) else None,
            params=encode_params(plan.params, plan.secret_params),
            secret_params=tuple(sorted(plan.secret_params)),
            targets=targets,
            workers=run.workers,
            user=user,
            stepflow_version=__version__,
            python_version=sys.version.split()[0],
            resumed_from=options.get("resume_from"),
            # A scheduled run carries its schedule and tick (``stepflow run PUB --tick``).
            tags=dict(options.get("run_tags") or {}),
        )

    def _plan(self) -> dict[str, list[Any]]:
        """What the run will run and the edges between, so the run's graph can be drawn
        while it goes (``stepflow ui``)."""
        plan = self.run.plan
        selected = set(plan.steps)
        edges = {
            (e.producer, e.consumer): None
            for e in plan.dag.edges
            if e.producer in selected and e.consumer in selected
        }
        # Ordering without data (``after=[...]``) is drawn as an edge too.
        edges.update({pair: None for pair in plan.dag.after if set(pair) <= selected})
        return {"steps": list(plan.steps), "edges": [list(pair) for pair in edges]}

    def _take_snapshot(self) -> None:
        config = self.run.config
        try:
            from stepflow._storage.source import scan

            found = scan(config.rootdir, home=config.home)
            source = found.snapshot.to_dict()
        except Exception:  # a missing snapshot must not fail the run
            return
        self._store_snapshot(found)
        if self.records is not None:
            try:
                # Looked up again: the run's own handle may have been closed meanwhile (a
                # home deleted and made anew); then there is no row left to update.
                records = open_records(self.run.config.home)
                try:
                    records.set_source(self.run.run_id, source)
                finally:
                    records.close()
            except Exception as exc:  # a missing snapshot must not fail the run
                if is_storage_fault(exc):
                    exc = storage_error(
                        exc,
                        path=self.run.config.home / "runs.db",
                        what=f"the source snapshot of run {self.run.run_id}",
                    )
                warnings.warn(
                    StepflowWarning(f"the run's source snapshot was not recorded: {exc}"),
                    stacklevel=1,
                )

    def _store_snapshot(self, found: Scan) -> None:
        """Store the files of the snapshot in the run's datastore (each file once, by hash),
        so that ``stepflow runs source RUN --to DIR`` can give them back."""
        config = self.run.config
        try:
            from stepflow._storage.source.store import save_scan

            if self.run.open_store is None:
                return
            # A store of its own: the run's store may be closed before the snapshot is done.
            store = self.run.open_store()
            try:
                save_scan(found, store, home=config.home)
            finally:
                store.close()
        except Exception as exc:  # a missing snapshot must not fail the run
            warnings.warn(
                StepflowWarning(
                    f"the code of run {self.run.run_id} was not stored, so `stepflow runs "
                    f"source` cannot give it back (its list of files is recorded): {exc}"
                ),
                stacklevel=1,
            )

    def finish(self, *, interrupted: bool, crashed: bool = False) -> None:
        """Say how the run ended; ``crashed``: stepflow itself raised (recorded as failed)."""
        self._stop_timer()
        try:
            self._finish(interrupted=interrupted, crashed=crashed)
        finally:
            live.run_ended(self.run.config.home, self.run.run_id)

    def _finish(self, *, interrupted: bool, crashed: bool) -> None:
        if self.records is None:
            return
        run = self.run
        reports = run.reports
        if crashed:
            state = "failed"
        elif interrupted:
            state = "interrupted"
        elif any(r.state is StepState.FAILED for r in reports.values()):
            state = "failed"
        else:
            state = "succeeded"
        counts = {s.value: sum(1 for r in reports.values() if r.state is s) for s in StepState}
        tags: dict[str, str] = dict(run.config.options.get("run_tags") or {})
        for fact in self.facts.values():
            tags.update(fact.tags)
        rows = self._take_pending()
        try:
            # The source snapshot is not waited for: it records itself when it is done.
            self.records.finish_run(
                run.run_id,
                state=state,
                counts={k: v for k, v in counts.items() if v},
                tags=tags,
                steps=rows,
            )
        except Exception as exc:  # a missing snapshot must not fail the run
            self._lost(exc)
            return
        self.records.close()

    # --- steps --------------------------------------------------------------------------

    def attempt_started(self, name: str) -> None:
        fact = self._fact(name)
        if fact.started is None:
            fact.started = time.time()
        with self._lock:
            self._in_flight.add(name)
            # Steps finished before this one started are written within a second, should
            # it run long.
            if self._pending:
                self._arm_timer()

    def attempt_output(
        self, name: str, attempt: int, captured: Captured | None, ctx: StepContext
    ) -> None:
        """What an inline attempt wrote and logged (worker attempts arrive separately)."""
        fact = self._fact(name)
        if captured is not None:
            texts = captured.texts(self.run.secret_values)
            if texts:
                fact.last_logs = texts
                fact.logs.extend((attempt, stream, text) for stream, text in texts.items())
        if ctx.metrics or ctx.params or ctx.tags or ctx.artifacts:
            fact.metrics = tuple(ctx.metrics)
            fact.params = dict(ctx.params)
            fact.tags = dict(ctx.tags)
            fact.files = dict(ctx.artifacts)

    def item_output(self, name: str, item: int, attempt: int, texts: Mapping[str, str]) -> None:
        """What one item of a fan-out step wrote (secrets masked already): its own log
        entries, as streams ``item N stdout`` (``stepflow logs`` shows and filters them)."""
        if not texts:
            return
        fact = self._fact(name)
        # Not the step's "last logs" (the report's): 10,000 items' output would be shown on
        # failure; the fan-out puts its failed items' output in the report itself.
        fact.logs.extend((attempt, f"item {item} {stream}", text) for stream, text in texts.items())

    def worker_output(self, name: str, attempt: int, result: TaskResult) -> None:
        fact = self._fact(name)
        if result.logs:
            texts = {k: self._mask(v) for k, v in result.logs.items()}
            fact.last_logs = texts
            fact.logs.extend((attempt, stream, text) for stream, text in texts.items())
        fact.metrics = tuple(result.metrics)
        fact.params = dict(result.logged_params)
        fact.tags = dict(result.tags)
        fact.files = dict(result.files)

    def reused(self, name: str, record: CacheRecord) -> None:
        self._fact(name).reused = record

    def step_finished(self, report: StepReport) -> StepReport:
        """Record a finished step; returns the report with its captured output and metrics
        attached."""
        fact = self._fact(report.name)
        if fact.last_logs and not report.logs:
            report = attrs.evolve(report, logs=dict(fact.last_logs))
        if fact.metrics and not report.metrics:
            report = attrs.evolve(report, metrics=tuple(fact.metrics))
        if report.error is not None and self.run.secret_values:
            report = attrs.evolve(report, error=self._masked_error(report.error))
        if self.records is None:
            return report
        row = self._row(report, fact)
        with self._lock:
            self._pending.append(row)
            self._in_flight.discard(report.name)
            # Written within a second, so a run killed outright loses at most that much of
            # its record; batching keeps the cost per step far below a commit each.
            urgent = report.state is StepState.FAILED or (
                time.monotonic() - self._flushed > _FLUSH_EVERY
            )
            if not urgent and self._in_flight:
                # Another step is running, and may run long: the timer writes this one.
                # (Without one, the next step to finish or start writes it or arms it:
                # a fully cached rerun starts no timer thread.)
                self._arm_timer()
        if urgent:
            try:
                self._flush()
            except Exception as exc:  # a missing snapshot must not fail the run
                self._lost(exc)
        return report

    def _arm_timer(self) -> None:
        """Write the pending steps in a second, unless done before (called locked)."""
        if self._timer is None and not self._finished:
            self._timer = threading.Timer(_FLUSH_EVERY, self._timed_flush)
            self._timer.daemon = True
            self._timer.start()

    def _timed_flush(self) -> None:
        with self._lock:
            self._timer = None
            if self._finished:
                return
        try:
            self._flush()
        except Exception as exc:  # the run goes on without records (see _lost)
            self._lost(exc)

    def _stop_timer(self) -> None:
        with self._lock:
            self._finished = True
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
            if timer is not threading.current_thread():
                timer.join()  # a flush under way ends before the run's last write

    def _masked_error(self, error: StepFailedError) -> StepFailedError:
        """The error with secret values masked: it is shown, raised and recorded."""
        masked = type(error)(
            self._mask(str(error)),
            step=error.step,
            exc_type=error.exc_type,
            traceback=self._mask(error.traceback),
            full_traceback=self._mask(error.full_traceback),
        )
        masked.__cause__ = None
        return masked

    def _row(self, report: StepReport, fact: _StepFacts) -> StepRow:
        run = self.run
        now = time.time()
        spec = run.plan.dag.steps[report.name]
        io: list[StepIO] = []
        for port in spec.inputs:
            artifact = run.outputs.get(port.name) if port.name in run.plan.dag.producers else None
            if artifact is not None:
                ref = artifact.ref
                io.append(
                    StepIO(
                        "in",
                        port.name,
                        ref.name if ref else None,
                        artifact.content_hash,
                        ref.size if ref else None,
                    )
                )
        for param, version in run.references.get(report.name, {}).items():
            # A registered data set or model read by the step: named by registry version.
            kind = "model" if hasattr(version, "metrics") else "dataset"
            label = f"{kind}:{version.name}@v{version.version}"
            io.append(StepIO("in", param, label, version.content_hash, version.size))
        if report.state in (StepState.RAN, StepState.REUSED):
            for port in spec.outputs:
                artifact = run.outputs.get(port.name)
                if artifact is not None and artifact.ref is not None:
                    ref = artifact.ref
                    io.append(StepIO("out", port.name, ref.name, ref.content_hash, ref.size))
        for file_name, ref in fact.files.items():
            if ref is not None:
                io.append(StepIO("file", file_name, ref.name, ref.content_hash, ref.size))
        error = report.error
        key = run.keys.get(report.name)
        reused = fact.reused if report.state is StepState.REUSED else None
        return StepRow(
            name=report.name,
            state=report.state.value,
            started=fact.started if fact.started is not None else (now if reused else None),
            finished=now if report.state is not StepState.SKIPPED else None,
            duration=report.duration,
            attempts=report.attempts,
            backend=report.backend or None,
            cache_key=reused.key if reused else (key.digest if key is not None else None),
            reused_from=reused.run_id if reused else None,
            reason=report.reason or None,
            error_type=error.exc_type if error else None,
            error=self._mask(str(error)) if error else None,
            traceback=self._mask(error.traceback or "") if error else None,
            params=fact.params,
            tags=fact.tags,
            io=tuple(io),
            metrics=tuple(MetricRow(m.name, m.value, m.step, m.timestamp) for m in fact.metrics),
            logs=tuple(fact.logs),
        )

    def _take_pending(self) -> list[StepRow]:
        with self._lock:
            rows, self._pending = self._pending, []
            self._flushed = time.monotonic()
        return rows

    def _flush(self) -> None:
        rows = self._take_pending()
        if rows and self.records is not None:
            self.records.write_steps(self.run.run_id, rows)
            # Their logs are readable from the records now: the live copies go.
            live.recorded(self.run.config.home, self.run.run_id, [r.name for r in rows])
