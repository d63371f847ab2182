"""One step of a run: reuse it, or run its attempts (with retries) on its backend.

A step is reused when its key finds a usable stored result; otherwise it holds the key's
lease (single flight across runs) and runs, in the run's own process when its backend allows
it, else as a ``Task`` on its backend. An input that fails verification makes its producer run
again, once; a failed attempt is retried after a growing delay, unless the run is cancelled.

The step's work is a generator (``flow``, see ``flow.py``) that yields what it waits for (a
backend's future, a retry's delay, another process's lease) instead of waiting: the parallel
run loop resumes it when that is done, so a step in flight on a backend with futures of its
own holds no thread. ``run_step`` drives it to the end in the calling thread.
"""

from __future__ import annotations

import functools
import threading
import time
import warnings
from collections.abc import Callable, Generator, Mapping
from typing import TYPE_CHECKING, Any

from stepflow._execution.flow import Flow, Request, call, drive, pause, wait_for
from stepflow._execution.result import StepReport, StepState
from stepflow._planning.reuse import CACHE_OFF, REGENERATE, look_up
from stepflow._sentinels import MISSING
from stepflow._storage.hashing import UnhashableValueError, hash_value
from stepflow.errors import StepFailedError, StepflowWarning

if TYPE_CHECKING:
    # Only a step that runs needs these: a fully cached run never imports them.
    from stepflow._authoring.step import StepSpec
    from stepflow._execution.backend import Backend
    from stepflow._execution.capture import Captured
    from stepflow._execution.commit import RunOutputs
    from stepflow._execution.context import StepContext
    from stepflow._execution.journal import Journal
    from stepflow._execution.setup import RunSetup
    from stepflow._execution.task import Task, TaskError, TaskResult
    from stepflow._planning.cachekey import CacheKey
    from stepflow._storage.index import CacheRecord

__all__ = ["StepRunner", "holds_a_thread", "overrides_submit", "run_task"]

_MAX_RETRY_DELAY = 60.0
#: value types whose hash is exact, so an in-place change is detected without false alarms
_MUTABLE_CHECKED = frozenset({"builtins", "numpy", "pandas"})


class _BadInput(Exception):
    """A stored input failed verification; its producer must run again."""

    def __init__(self, output: str, detail: str) -> None:
        super().__init__(detail)
        self.output = output


class StepRunner:
    """Runs one step at a time, from any thread; what it made goes to ``outputs``."""

    def __init__(
        self,
        setup: RunSetup,
        outputs: RunOutputs,
        journal: Journal,
        *,
        cancelled: threading.Event,
        ran_after_all: Callable[[StepReport], None],
    ) -> None:
        self.setup = setup
        self.plan = setup.plan
        self.dag = setup.plan.dag
        self.outputs = outputs
        self.journal = journal
        self.cancelled = cancelled
        #: told when a producer reported reused had to run after all (its output was damaged)
        self.ran_after_all = ran_after_all

    def run_step(self, name: str) -> StepReport:
        """Reuse or run step ``name`` in this thread; never raises for the step's own failure."""
        return drive(self.flow(name), self.cancelled)

    def flow(self, name: str) -> Flow[StepReport]:
        """Reuse or run step ``name``, yielding what it waits for (see ``flow.py``); returns
        its report and never raises for the step's own failure."""
        outputs = self.outputs
        # Quick: a brand-new index still being created holds nothing; if another run made
        # the result meanwhile, it holds the lease, and the look after waiting finds it.
        decision = outputs.decide(name, quick=True)
        if decision.reuse:
            assert decision.record is not None
            return self._reuse(name, decision.record)
        if decision.reason in (CACHE_OFF, REGENERATE):
            return (yield from self.execute(name, decision.key))
        from stepflow._storage.locks import KeyLease  # only a step that runs takes a lease

        key = decision.key
        lease = KeyLease(self.setup.config.home, key.digest)
        waited = not lease.try_take()
        if waited:
            # Another holder may keep it for as long as its step runs: wait off the
            # dispatch threads. Should the run stop first, the lease is given back at once.
            yield from call(lease.take, undo=lambda _: lease.give_back())
        try:
            if waited:
                # Another run computed it while we waited: use theirs (single flight).
                decision = outputs.usable(look_up(key, index=outputs.index, io=outputs.io))
                if decision.reuse:
                    assert decision.record is not None
                    return self._reuse(name, decision.record)
            return (yield from self.execute(name, key))
        finally:
            lease.give_back()

    def _reuse(self, name: str, record: CacheRecord) -> StepReport:
        self.journal.reused(name, record)
        return self.outputs.reuse(name, record)

    def execute(self, name: str, key: CacheKey) -> Flow[StepReport]:
        """Run step ``name``'s attempts until one succeeds, retries run out, or the run is
        cancelled; commit what the successful one made under ``key``."""
        if self.dag.steps[name].options.foreach is not None:
            from stepflow._execution import live
            from stepflow._execution.fanout import run_foreach

            # Shown running while its items go (their output is recorded item by item).
            setup = self.setup
            with live.attempt(setup.config.home, setup.run_id, name, 1):
                if holds_a_thread(setup.backend_of(name), self.dag.steps[name]):
                    return run_foreach(self, name, key)
                # Its items wait on the backend's futures from one thread of the fan-out's own.
                return (yield from call(lambda: run_foreach(self, name, key)))
        # Imported here: a fully cached run never makes a step context.
        from stepflow._execution import live
        from stepflow._execution.capture import step_output
        from stepflow._execution.context import activate

        setup = self.setup
        home = setup.config.home
        pm = setup.pm
        spec = self.dag.steps[name]
        backend = setup.backend_of(name)
        attempts = spec.options.retries + 1
        attempt = 1
        #: inputs recomputed because they failed their check: a second failure is the
        #: store's fault, and recomputing again would loop
        recomputed: set[str] = set()
        while True:
            pm.hook.stepflow_step_start(run=setup.info, step=name, attempt=attempt)
            started = time.perf_counter()
            self.journal.attempt_started(name)
            ctx = self._context(name, attempt)
            captured: Captured | None = None
            try:
                with (
                    activate(ctx),
                    step_output(echo=setup.echo, secrets=setup.secret_values) as captured,
                    # What it prints so far, for `stepflow ui` (the home's live area).
                    live.attempt(
                        home,
                        setup.run_id,
                        name,
                        attempt,
                        secrets=setup.secret_values,
                        captured=captured,
                    ),
                ):
                    error = yield from self._attempt(name, backend, attempt)
            except _BadInput as bad:
                if bad.output in recomputed:
                    error = StepFailedError(
                        f"input {bad.output!r} failed its check again right after it was "
                        f"recomputed ({bad}); the store at {setup.io.store.uri} is damaged "
                        f"or changing under the run: check its disk or bucket",
                        step=name,
                        exc_type="stepflow._storage.datastore.ArtifactMissingError",
                    )
                    return StepReport(name, StepState.FAILED, backend=backend.name, error=error)
                recomputed.add(bad.output)
                failure = yield from self._recompute(bad.output, str(bad))
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
                    self.outputs.commit(name, key)
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
            pm.hook.stepflow_step_retry(run=setup.info, report=report, delay=delay)
            yield from pause(delay)
            if self.cancelled.is_set():
                return report
            attempt += 1

    def _recompute(self, output: str, detail: str) -> Flow[StepFailedError | None]:
        """Run the producer of a stored output that failed verification again."""
        producer = self.dag.producers[output]
        warnings.warn(
            StepflowWarning(
                f"stored output {output!r} of step {producer!r} is unusable ({detail}); "
                f"recomputing it"
            ),
            stacklevel=1,
        )
        key = self.outputs.keys.get(producer) or self.outputs.decide(producer).key
        self.outputs.forget(key)
        report = yield from self.execute(producer, key)
        if report.error is None:
            self.ran_after_all(report)
        return report.error

    def _context(self, name: str, attempt: int) -> StepContext:
        from stepflow._execution.context import StepContext

        setup = self.setup
        return StepContext(
            run_id=setup.run_id,
            pipeline=setup.pipeline,
            step=name,
            attempt=attempt,
            store=setup.io.store,
            serializers=setup.serializers,
            home=setup.config.home,
            secrets=setup.secret_values,
        )

    # --- one attempt --------------------------------------------------------------------

    def _attempt(self, name: str, backend: Backend, attempt: int) -> Flow[StepFailedError | None]:
        """Run one attempt; store its outputs and return ``None``, or return the error."""
        spec = self.dag.steps[name]
        params = self.plan.step_params[name]
        edges = [p.name for p in spec.inputs if p.name in self.dag.producers]
        refs = self.setup.references.get(name, {})
        outputs = self.outputs
        if backend.runs_inline(spec):
            from stepflow._execution.attempt import run_attempt
            from stepflow._execution.capture import inline_fd_output

            artifacts = outputs.artifacts
            io = self.setup.io
            outcome = run_attempt(
                spec,
                step=name,
                # Values it holds in memory are not read back from the store.
                inputs={e: functools.partial(artifacts[e].load, io) for e in edges},
                references=refs,
                params=params,
                io=io,
                home=self.setup.config.home,
                # At the descriptor level, so what the step's child processes print is kept.
                output=inline_fd_output,
                check_inputs=functools.partial(self._check_mutation, name, edges),
            )
            outputs.made(outcome.outputs, outcome.values)
            return _failure(name, outcome.error)
        return (yield from self._remote_attempt(name, backend, attempt, edges, refs))

    def _remote_attempt(
        self,
        name: str,
        backend: Backend,
        attempt: int,
        edges: list[str],
        refs: Mapping[str, Any],
    ) -> Flow[StepFailedError | None]:
        from stepflow._execution.task import Task, by_value

        setup = self.setup
        spec = self.dag.steps[name]
        task = Task(
            run_id=setup.run_id,
            step=name,
            attempt=attempt,
            ref=spec.ref,
            func=by_value(spec),
            inputs={e: self.outputs.stored(e) for e in edges},
            references=refs,
            params=self.plan.step_params[name],
            store_uri=setup.io.store.uri,
            store_kind=setup.io.store.kind,
            store_options=setup.config.store_options,
            home=str(setup.config.home),
            pipeline=setup.pipeline,
            secret_params=tuple(sorted(self.plan.secret_params)),
            echo=setup.echo,
            serializers=setup.serializers,
            sys_path=self._user_sys_path,
            env=spec.options.env,
            resources=spec.options.resources,
            timeout=spec.options.timeout,
            hasher_plugins=self._hasher_plugins,
        )
        try:
            result = yield from run_task(backend, task)
        except Exception as exc:
            return StepFailedError(
                f"backend {backend.name!r} failed to run step {name!r}: "
                f"{type(exc).__name__}: {exc}",
                step=name,
                exc_type=type(exc).__name__,
            )
        if (result.step, result.attempt) != (name, attempt) or result.run_id not in (
            "",
            setup.run_id,
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
            self.outputs.made(result.outputs)
        return _failure(name, result.error)

    @functools.cached_property
    def _user_sys_path(self) -> tuple[str, ...]:
        """Only the user's code paths travel with a task: a worker running another
        interpreter must import its own packages, not this one's site-packages first.
        Computed for the first task, so a fully cached run never imports the task module."""
        from stepflow._execution.task import user_sys_path

        return user_sys_path()

    @functools.cached_property
    def _hasher_plugins(self) -> tuple[str, ...]:
        from stepflow._pluginmanager import hasher_plugin_modules

        return hasher_plugin_modules(self.setup.pm)

    def _check_mutation(self, name: str, edges: list[str], kwargs: Mapping[str, Any]) -> None:
        """A step that changed its input in place must not hand the change to other steps."""
        for edge in edges:
            artifact = self.outputs.artifacts[edge]
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


def overrides_submit(backend: Backend) -> bool:
    """Whether ``backend`` has futures of its own (it overrides ``Backend.submit``)."""
    from stepflow._execution.backend import Backend

    return type(backend).submit is not Backend.submit


def holds_a_thread(backend: Backend, spec: StepSpec) -> bool:
    """Whether step ``spec`` keeps a thread busy while it runs on ``backend``: in this
    process, or in a backend's blocking ``execute``; not while it waits on ``submit``'s
    future."""
    return not overrides_submit(backend) or backend.runs_inline(spec)


def run_task(backend: Backend, task: Task) -> Generator[Request, Any, TaskResult]:
    """``task``'s result from ``backend``: through its own ``submit`` when it has one (an
    engine with futures), yielding the future; else ``execute`` in this thread (the default
    ``submit`` would only hand it to another thread)."""
    if not overrides_submit(backend):
        return backend.execute(task, timeout=task.timeout)
    from concurrent.futures import CancelledError

    future = backend.submit(task)
    if not callable(getattr(future, "add_done_callback", None)):
        raise TypeError(
            f"submit() returned {type(future).__name__}, not a future; return a "
            f"concurrent.futures.Future of the task's TaskResult"
        )
    try:
        return (yield from wait_for(future))
    except CancelledError:
        from stepflow._execution.task import TaskResult

        return TaskResult.cancelled(task)


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
