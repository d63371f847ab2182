"""The run loop: decide reuse, dispatch ready steps to their backends, retry, time out,
commit results, stop cleanly.

Sequential runs (``workers=1``) execute in the calling thread; parallel runs keep up to
``workers`` steps in flight, each waiting on its backend in a thread of its own. Either way a
failed step skips only what depends on it, unless the run is fail-fast, and every step that
succeeded is committed to the cache index at once, so a failure loses nothing computed.
"""

from __future__ import annotations

import datetime
import functools
import secrets
import threading
import time
import warnings
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any

import pluggy

from stepflow._config import Config
from stepflow._execution.backend import Backend, open_backends
from stepflow._execution.capture import Captured, capturing, step_output
from stepflow._execution.journal import Journal, RunFacts
from stepflow._execution.result import RunInfo, RunResult, StepReport, StepState
from stepflow._execution.schedule import run_parallel, run_sequential
from stepflow._planning.cachekey import CacheKey, describe_value
from stepflow._planning.plan import Plan
from stepflow._planning.reuse import CACHE_OFF, REGENERATE, Decision, decide, look_up
from stepflow._pluginmanager import serializers_of
from stepflow._sentinels import MISSING
from stepflow._storage.artifacts import ArtifactIO, ArtifactRef
from stepflow._storage.datastore import CorruptedObjectError
from stepflow._storage.hashing import UnhashableValueError, hash_value
from stepflow._storage.home import check_home, make_private_dirs
from stepflow._storage.index import CacheIndex, CacheRecord
from stepflow._storage.locks import key_lock
from stepflow._storage.stores import open_datastore
from stepflow.errors import (
    StepFailedError,
    StepflowWarning,
    StorageError,
    StorageWarning,
)

if TYPE_CHECKING:
    # Only a step that runs needs these: a fully cached run never imports them.
    from stepflow._execution.context import StepContext
    from stepflow._execution.task import TaskError

__all__ = ["new_run_id", "run_plan"]

_MAX_RETRY_DELAY = 60.0
#: value types whose hash is exact, so an in-place change is detected without false alarms
_MUTABLE_CHECKED = frozenset({"builtins", "numpy", "pandas"})


def new_run_id() -> str:
    """Sortable and unique: ``20261123-051200-a1b2c3``."""
    now = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{now}-{secrets.token_hex(3)}"


class _Artifact:
    """One output during a run: an in-memory value, a stored reference, or both."""

    def __init__(
        self, content_hash: str, value: Any = MISSING, ref: ArtifactRef | None = None
    ) -> None:
        self.content_hash = content_hash
        self.value = value
        self.ref = ref
        self._lock = threading.Lock()

    def load(self, io: ArtifactIO) -> Any:
        with self._lock:
            if self.value is MISSING:
                assert self.ref is not None
                self.value = io.load(self.ref)
            return self.value


class _BadInput(Exception):
    """A stored input failed verification; its producer must run again."""

    def __init__(self, output: str, detail: str) -> None:
        super().__init__(detail)
        self.output = output


class _Runner:
    def __init__(
        self,
        plan: Plan,
        *,
        pipeline: str,
        config: Config,
        pm: pluggy.PluginManager,
        workers: int,
        fail_fast: bool,
        regenerate: Collection[str],
    ) -> None:
        self.plan = plan
        self.dag = plan.dag
        self.pipeline = pipeline
        self.config = config
        self.pm = pm
        self.workers = workers
        self.fail_fast = fail_fast
        self.regenerate = set(regenerate)
        self.run_id = new_run_id()
        self.info = RunInfo(
            run_id=self.run_id,
            pipeline=pipeline,
            steps=plan.steps,
            params={k: ("***" if k in plan.secret_params else v) for k, v in plan.params.items()},
            workers=workers,
            fail_fast=fail_fast,
        )
        self.artifacts: dict[str, _Artifact] = {}
        self.reports: dict[str, StepReport] = {}
        self.keys: dict[str, CacheKey] = {}
        self.cancelled = threading.Event()
        #: steps whose "last result" pointer is written at the end of the run, in one
        #: transaction (for `explain`; a run killed before then keeps the earlier pointers)
        self._touched: list[tuple[str, str, str]] = []
        self._touch_lock = threading.Lock()
        #: what could not be recorded after the steps it is about succeeded (a full disk, a
        #: read-only home, a locked index): those steps stay `ran`, and the user is told
        self.storage_errors: list[StorageError] = []
        check_home(config.home)  # before anything is made there
        make_private_dirs(config.home)
        self.serializers = serializers_of(pm)
        store = open_datastore(config.store, home=config.home, options=config.store_options, pm=pm)
        self.io = ArtifactIO(store, self.serializers)
        #: whether any selected step reads or registers a data set or model (the registry
        #: code is imported only then)
        self.has_references = any(
            port.reference is not None
            for name in plan.steps
            for port in (*plan.dag.steps[name].inputs, *plan.dag.steps[name].outputs)
        )
        #: step → parameter → the data-set or model version it reads: resolved before any
        #: step runs, so a missing one is a usage error that costs nothing
        self.references: dict[str, dict[str, Any]] = {}
        if self.has_references:
            from stepflow._execution.references import resolve_references

            try:
                self.references = resolve_references(plan, store)
            except BaseException:
                store.close()
                raise
        self.index = CacheIndex(config.home / "index", store=store)
        self.backends = self._open_backends()
        # Steps' output is recorded, and also shown as it happens unless the user asked for
        # quiet ("--capture=quiet"); then the report shows it for failed steps only.
        capture = config.options.get("capture") or config.settings.get("capture", "tee")
        self.echo = capture != "quiet"
        self.secret_values = tuple(
            str(v) for k, v in plan.params.items() if k in plan.secret_params and str(v)
        )
        #: step → (attempt, stream, text) of every attempt, and what it logged
        self.journal = Journal(
            RunFacts(
                run_id=self.run_id,
                pipeline=pipeline,
                plan=plan,
                config=config,
                workers=workers,
                secret_values=self.secret_values,
                reports=self.reports,
                outputs=self.artifacts,
                keys=self.keys,
                references=self.references,
                bookkeeping_failed=self.bookkeeping_failed,
                pm=pm,
            )
        )

    # --- set-up ---------------------------------------------------------------------------

    def _open_backends(self) -> dict[str, Backend]:
        try:
            return open_backends(
                self.plan, self.config, self.pm, workers=self.workers, run_id=self.run_id
            )
        except BaseException:
            self.index.close()
            raise

    def _context(self, name: str, attempt: int) -> StepContext:
        from stepflow._execution.context import StepContext

        return StepContext(
            run_id=self.run_id,
            pipeline=self.pipeline,
            step=name,
            attempt=attempt,
            store=self.io.store,
            serializers=tuple(self.serializers),
            home=self.config.home,
            secrets=self.secret_values,
        )

    # --- the loop -------------------------------------------------------------------------

    def run(self) -> RunResult:
        self.journal.start()
        completed = False
        try:
            result = self._run_all()
            completed = True
        finally:
            # Also when stepflow itself failed: the record must not say "running" forever.
            self.journal.finish(
                interrupted=not completed or result.interrupted, crashed=not completed
            )
        # Again: the run records are written last, after the result was made.
        result.storage_errors = tuple(self.storage_errors)
        self.pm.hook.stepflow_run_finish(run=self.info, result=result)
        return result

    def _run_all(self) -> RunResult:
        start = time.perf_counter()
        interrupted = False
        self.pm.hook.stepflow_run_start(run=self.info)
        try:
            with capturing():
                if self.workers == 1:
                    run_sequential(self)
                else:
                    run_parallel(self, self.workers)
        except KeyboardInterrupt:
            interrupted = True
            self.cancel()
        finally:
            for backend in self.backends.values():
                backend.close()
            try:
                self.index.touch_many(self._touched)
            except StorageError as exc:
                # The results are committed; only the "latest result" pointers are stale.
                self.bookkeeping_failed(exc)
            finally:
                self.index.close()
        for name in self.plan.steps:
            if name not in self.reports:
                reason = "the run was interrupted" if interrupted else "the run stopped early"
                self._finish(StepReport(name, StepState.SKIPPED, reason=reason))
        if not interrupted:
            self._publish_outputs()
        outputs = {out: functools.partial(self._load_output, out) for out in self.artifacts}
        result = RunResult(
            info=self.info,
            steps={n: self.reports[n] for n in self.plan.steps},
            outputs=outputs,
            duration=time.perf_counter() - start,
            producers={o: s for o, s in self.dag.producers.items() if s in self.reports},
            interrupted=interrupted,
            storage_errors=self.storage_errors,
            edges=[
                (e.producer, e.consumer)
                for e in self.dag.edges
                if e.producer in self.reports and e.consumer in self.reports
            ],
        )
        return result

    def _load_output(self, output: str) -> Any:
        """An output for ``RunResult``; one that fails its check is dropped, so that the
        next run computes it again instead of reusing it.

        A missing object needs nothing: the next run's availability check misses. A
        corrupted one keeps its size and passes that check, so its index entry is dropped
        here, and the object too, which makes it a miss for every home sharing the store.
        """
        artifact = self.artifacts[output]
        try:
            return artifact.load(self.io)
        except CorruptedObjectError as exc:
            producer = self.dag.producers[output]
            key = self.keys.get(producer)
            if key is not None:
                # A fresh handle: the run's own may have been closed since the run ended.
                CacheIndex(self.config.home / "index", store=self.io.store).delete(key.digest)
            if artifact.ref is not None:
                self.io.store.delete(artifact.ref.name)
            raise CorruptedObjectError(
                f"output {output!r} of step {producer!r} cannot be loaded: {exc}. Its stored "
                f"result was dropped from the cache, so the next run computes it again."
            ) from exc

    # --- what scheduling calls (``schedule.Steps``) ------------------------------------------

    def run_step(self, name: str) -> StepReport:
        return self._run_step(name)

    def finish(self, report: StepReport) -> None:
        self._finish(report)

    def interrupted(self, name: str) -> StepReport:
        return self._interrupted_report(name)

    def cancel(self) -> None:
        self.cancelled.set()
        for backend in self.backends.values():
            backend.cancel()

    def _finish(self, report: StepReport) -> None:
        if report.name in self.reports:
            return
        report = self.journal.step_finished(report)
        self.reports[report.name] = report
        self.pm.hook.stepflow_step_finish(run=self.info, report=report)
        if report.state is StepState.FAILED:
            if self.fail_fast:
                self.cancelled.set()
            below = self.dag.descendants([report.name])
            for name in self.plan.steps:
                if name != report.name and name in below:
                    self._finish(
                        StepReport(
                            name,
                            StepState.SKIPPED,
                            reason=f"upstream step {report.name!r} failed",
                        )
                    )

    def bookkeeping_failed(self, error: StorageError) -> None:
        """Something about a finished step could not be recorded: say so, fail nothing."""
        with self._touch_lock:
            self.storage_errors.append(error)
        warnings.warn(StorageWarning(error), stacklevel=2)

    def _interrupted_report(self, name: str) -> StepReport:
        error = StepFailedError(
            f"step {name!r} was interrupted (Ctrl-C)", step=name, exc_type="KeyboardInterrupt"
        )
        return StepReport(name, StepState.FAILED, error=error, backend=self.plan.backends[name])

    def _publish_outputs(self) -> None:
        """Register outputs marked as data sets (``register_on_complete``); see registry."""
        if not self.has_references:
            return
        from stepflow._execution.references import OutputValue, publish_outputs

        ok = (StepState.RAN, StepState.REUSED)
        if not all(self.reports[n].state in ok for n in self.plan.steps):
            return  # only a run that succeeded registers its outputs
        io = self.io
        publish_outputs(
            self.plan,
            {
                out: OutputValue(a.content_hash, a.ref, lambda a=a: a.load(io))
                for out, a in self.artifacts.items()
            },
            store=io.store,
            serializers=self.serializers,
            run_id=self.run_id,
            pipeline=self.pipeline,
        )

    # --- reuse ----------------------------------------------------------------------------

    def _decide(self, name: str, *, quick: bool = False) -> Decision:
        spec = self.dag.steps[name]
        inputs = {
            p.name: self.artifacts[p.name].content_hash
            for p in spec.inputs
            if p.name in self.dag.producers
        }
        decision = decide(
            self.plan,
            name,
            inputs=inputs,
            references=self.references.get(name),
            serializers=self.serializers,
            backend_env=self.backends[self.plan.backends[name]].environment(),
            home=self.config.home,
            index=self.index,
            io=self.io,
            regenerate=self.regenerate,
            quick=quick,
        )
        self.keys[name] = decision.key
        return self._usable(decision)

    def _usable(self, decision: Decision) -> Decision:
        """``decision``, after dropping a stored result that is incomplete (said once)."""
        if decision.record is not None and not decision.available:
            warnings.warn(
                StepflowWarning(
                    f"stored result of step {decision.record.step!r} is incomplete (an object "
                    f"is missing or damaged); recomputing it"
                ),
                stacklevel=1,
            )
            self.index.delete(decision.key.digest)
        return decision

    def _reuse(self, name: str, record: CacheRecord) -> StepReport:
        self.journal.reused(name, record)
        for out, ref in record.outputs.items():
            self.artifacts[out] = _Artifact(ref.content_hash, ref=ref)
        with self._touch_lock:
            self._touched.append((self.pipeline, name, record.key))
        spec = self.dag.steps[name]
        return StepReport(
            name,
            StepState.REUSED,
            backend=self.plan.backends[name],
            outputs=tuple(p.name for p in spec.outputs),
        )

    def _commit(self, name: str, key: CacheKey) -> None:
        spec = self.dag.steps[name]
        outputs = {}
        for port in spec.outputs:
            ref = self.artifacts[port.name].ref
            assert ref is not None
            outputs[port.name] = ref
        params = self.plan.step_params[name]
        record = CacheRecord(
            key=key.digest,
            step=name,
            pipeline=self.pipeline,
            run_id=self.run_id,
            created=time.time(),
            outputs=outputs,
            components=key.components,
            param_values={
                k: ("***" if k in self.plan.secret_params else describe_value(v))
                for k, v in params.items()
            },
        )
        # Committed before the step's lease is released, so a run that waited for the lease
        # finds the record.
        try:
            self.index.put(record, last=False)
        except StorageError as exc:
            # The step succeeded and its outputs are stored: only its reuse by later runs is
            # lost (it runs again then), and that is no reason to report it failed.
            self.bookkeeping_failed(exc)
            return
        with self._touch_lock:
            self._touched.append((self.pipeline, name, key.digest))

    # --- one step -------------------------------------------------------------------------

    def _run_step(self, name: str) -> StepReport:
        # Quick: a brand-new index still being created holds nothing; if another run made
        # the result meanwhile, it holds the lease, and the look after waiting finds it.
        decision = self._decide(name, quick=True)
        if decision.reuse:
            assert decision.record is not None
            return self._reuse(name, decision.record)
        if decision.reason in (CACHE_OFF, REGENERATE):
            return self._execute(name, decision.key)
        key = decision.key
        with key_lock(self.config.home, key.digest) as waited:
            if waited:
                # Another run computed it while we waited: use theirs (single flight).
                decision = self._usable(look_up(key, index=self.index, io=self.io))
                if decision.reuse:
                    assert decision.record is not None
                    return self._reuse(name, decision.record)
            return self._execute(name, key)

    def _execute(self, name: str, key: CacheKey) -> StepReport:
        # Imported here: a fully cached run never makes a step context.
        from stepflow._execution.context import activate

        spec = self.dag.steps[name]
        backend = self.backends[self.plan.backends[name]]
        attempts = spec.options.retries + 1
        attempt = 1
        #: inputs recomputed because they failed their check: a second failure is the
        #: store's fault, and recomputing again would loop
        recomputed: set[str] = set()
        while True:
            self.pm.hook.stepflow_step_start(run=self.info, step=name, attempt=attempt)
            started = time.perf_counter()
            self.journal.attempt_started(name)
            ctx = self._context(name, attempt)
            captured: Captured | None = None
            try:
                with (
                    activate(ctx),
                    step_output(echo=self.echo, secrets=self.secret_values) as captured,
                ):
                    error = self._attempt(name, backend, attempt)
            except _BadInput as bad:
                if bad.output in recomputed:
                    error = StepFailedError(
                        f"input {bad.output!r} failed its check again right after it was "
                        f"recomputed ({bad}); the store at {self.io.store.uri} is damaged "
                        f"or changing under the run: check its disk or bucket",
                        step=name,
                        exc_type="stepflow._storage.datastore.ArtifactMissingError",
                    )
                    return StepReport(name, StepState.FAILED, backend=backend.name, error=error)
                recomputed.add(bad.output)
                failure = self._recompute(bad.output, str(bad))
                if failure is None:
                    continue
                error = StepFailedError(
                    f"input {bad.output!r} had to be recomputed and its step failed: {failure}",
                    step=name,
                    exc_type=failure.exc_type,
                    traceback=failure.traceback,
                )
                return StepReport(name, StepState.FAILED, backend=backend.name, error=error)
            finally:
                self.journal.attempt_output(name, attempt, captured, ctx)
            duration = time.perf_counter() - started
            if error is None:
                if spec.options.cache:
                    self._commit(name, key)
                return StepReport(
                    name,
                    StepState.RAN,
                    duration=duration,
                    attempts=attempt,
                    backend=backend.name,
                    outputs=tuple(p.name for p in spec.outputs),
                )
            report = StepReport(
                name,
                StepState.FAILED,
                duration=duration,
                attempts=attempt,
                backend=backend.name,
                error=error,
            )
            if attempt == attempts or self.cancelled.is_set():
                return report
            delay = min(spec.options.retry_delay * 2 ** (attempt - 1), _MAX_RETRY_DELAY)
            self.pm.hook.stepflow_step_retry(run=self.info, report=report, delay=delay)
            if self.cancelled.wait(delay):
                return report
            attempt += 1

    def _recompute(self, output: str, detail: str) -> StepFailedError | None:
        """Run the producer of a stored output that failed verification again."""
        producer = self.dag.producers[output]
        warnings.warn(
            StepflowWarning(
                f"stored output {output!r} of step {producer!r} is unusable ({detail}); "
                f"recomputing it"
            ),
            stacklevel=1,
        )
        key = self.keys.get(producer) or self._decide(producer).key
        self.index.delete(key.digest)
        report = self._execute(producer, key)
        if report.error is None and producer in self.reports:
            # Reported reused before its stored output turned out damaged: it ran after all,
            # and the run's report, records and summary say so.
            report = self.journal.step_finished(report)
            self.reports[producer] = report
            self.pm.hook.stepflow_step_finish(run=self.info, report=report)
        return report.error

    def _attempt(self, name: str, backend: Backend, attempt: int) -> StepFailedError | None:
        """Run one attempt; store its outputs and return ``None``, or return the error."""
        spec = self.dag.steps[name]
        params = self.plan.step_params[name]
        edges = [p.name for p in spec.inputs if p.name in self.dag.producers]
        refs = self.references.get(name, {})
        if backend.runs_inline(spec):
            from stepflow._execution.attempt import run_attempt
            from stepflow._execution.capture import inline_fd_output

            artifacts = self.artifacts
            outcome = run_attempt(
                spec,
                step=name,
                # Values it holds in memory are not read back from the store.
                inputs={e: functools.partial(artifacts[e].load, self.io) for e in edges},
                references=refs,
                params=params,
                io=self.io,
                home=self.config.home,
                # At the descriptor level, so what the step's child processes print is kept.
                output=inline_fd_output,
                check_inputs=functools.partial(self._check_mutation, name, edges),
            )
            for out, ref in outcome.outputs.items():
                artifacts[out] = _Artifact(ref.content_hash, value=outcome.values[out], ref=ref)
            return _failure(name, outcome.error)
        from stepflow._execution.task import Task, by_value

        task = Task(
            run_id=self.run_id,
            step=name,
            attempt=attempt,
            ref=spec.ref,
            func=by_value(spec),
            inputs={e: self._stored(e) for e in edges},
            references=refs,
            params=params,
            store_uri=self.io.store.uri,
            store_kind=self.io.store.kind,
            store_options=self.config.store_options,
            home=str(self.config.home),
            pipeline=self.pipeline,
            secret_params=tuple(sorted(self.plan.secret_params)),
            echo=self.echo,
            serializers=tuple(self.serializers),
            sys_path=self._user_sys_path,
            env=spec.options.env,
            resources=spec.options.resources,
            timeout=spec.options.timeout,
        )
        try:
            result = backend.execute(task, timeout=spec.options.timeout)
        except Exception as exc:
            return StepFailedError(
                f"backend {backend.name!r} failed to run step {name!r}: "
                f"{type(exc).__name__}: {exc}",
                step=name,
                exc_type=type(exc).__name__,
            )
        if (result.step, result.attempt) != (name, attempt) or result.run_id not in (
            "",
            self.run_id,
        ):
            # Never committed: it may hold outputs of other inputs or code.
            of_run = f" of run {result.run_id}" if result.run_id else ""
            return StepFailedError(
                f"backend {backend.name!r} answered attempt {attempt} of step {name!r} with "
                f"the result of attempt {result.attempt} of step {result.step!r}{of_run} (a "
                f"late answer of a timed-out or superseded attempt?); it was rejected and "
                f"nothing was stored. Check the backend plugin.",
                step=name,
                exc_type="stepflow.errors.BackendError",
            )
        self.journal.worker_output(name, attempt, result)
        if result.error is None:
            for out, ref in result.outputs.items():
                self.artifacts[out] = _Artifact(ref.content_hash, ref=ref)
        return _failure(name, result.error)

    @functools.cached_property
    def _user_sys_path(self) -> tuple[str, ...]:
        """Only the user's code paths travel with a task: a worker running another
        interpreter must import its own packages, not this one's site-packages first.
        Computed for the first task, so a fully cached run never imports the task module."""
        from stepflow._execution.task import user_sys_path

        return user_sys_path()

    def _stored(self, output: str) -> ArtifactRef:
        ref = self.artifacts[output].ref
        assert ref is not None, "every output is stored when it is made"
        return ref

    def _check_mutation(self, name: str, edges: list[str], kwargs: Mapping[str, Any]) -> None:
        """A step that changed its input in place must not hand the change to other steps."""
        for edge in edges:
            artifact = self.artifacts[edge]
            if type(kwargs[edge]).__module__.partition(".")[0] not in _MUTABLE_CHECKED:
                # Other objects hash through pickle, which can differ after harmless calls
                # (an estimator's predict() caches attributes): no reliable check there.
                continue
            try:
                changed = hash_value(kwargs[edge]) != artifact.content_hash
            except UnhashableValueError:
                changed = True
            if changed:
                warnings.warn(
                    StepflowWarning(
                        f"step {name!r} modified its input {edge!r} in place; other steps "
                        f"get the stored, unmodified value (copy the input before changing "
                        f"it to avoid this warning)"
                    ),
                    stacklevel=1,
                )
                artifact.value = MISSING


def _failure(name: str, error: TaskError | None) -> StepFailedError | None:
    """The step error for an attempt's outcome, ``None`` when it succeeded.

    :raises _BadInput: a stored input failed verification; its producer must run again.
    """
    if error is None:
        return None
    if error.bad_input is not None:
        raise _BadInput(error.bad_input, error.message)
    from stepflow._execution.attempt import step_error

    return step_error(name, error)


def run_plan(
    plan: Plan,
    *,
    pipeline: str,
    config: Config,
    pm: pluggy.PluginManager,
    workers: int,
    fail_fast: bool,
    regenerate: Collection[str] = (),
) -> RunResult:
    """Execute ``plan`` and return its result; step errors never raise from here."""
    from stepflow._execution.loading import refuse_nested_run

    refuse_nested_run()
    runner = _Runner(
        plan,
        pipeline=pipeline,
        config=config,
        pm=pm,
        workers=workers,
        fail_fast=fail_fast,
        regenerate=regenerate,
    )
    return runner.run()
