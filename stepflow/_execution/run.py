"""The run loop: dispatch ready steps to their backends, retry, time out, stop cleanly.

Sequential runs (``workers=1``) execute in the calling thread; parallel runs keep up to
``workers`` steps in flight, each waiting on its backend in a thread of its own. Either way a
failed step skips only what depends on it, unless the run is fail-fast.
"""

from __future__ import annotations

import datetime
import os
import secrets
import sys
import threading
import time
from collections.abc import Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

import pluggy

from stepflow._config import Config
from stepflow._execution.backend import Backend, BackendContext
from stepflow._execution.invoke import StepRaised, invoke
from stepflow._execution.result import RunInfo, RunResult, StepReport, StepState
from stepflow._execution.task import ArtifactRef, Task, TaskError
from stepflow._planning.plan import Plan
from stepflow._sentinels import MISSING
from stepflow._storage.datastore import LocalDatastore
from stepflow.errors import (
    BackendUnavailableError,
    StepFailedError,
    StepTimeoutError,
)
from stepflow.worker import load_artifact, store_value

__all__ = ["new_run_id", "run_plan"]

_MAX_RETRY_DELAY = 60.0


def new_run_id() -> str:
    """Sortable and unique: ``20261123-051200-a1b2c3``."""
    now = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{now}-{secrets.token_hex(3)}"


class _Artifact:
    """One output during a run: an in-memory value, a stored reference, or both."""

    def __init__(self, value: Any = MISSING, ref: ArtifactRef | None = None) -> None:
        self.value = value
        self.ref = ref
        self._lock = threading.Lock()

    def load(self, store: LocalDatastore) -> Any:
        with self._lock:
            if self.value is MISSING:
                assert self.ref is not None
                self.value = load_artifact(store, self.ref)
            return self.value

    def stored(self, store: LocalDatastore) -> ArtifactRef:
        with self._lock:
            if self.ref is None:
                self.ref = store_value(store, self.value)
            return self.ref


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
    ) -> None:
        self.plan = plan
        self.dag = plan.dag
        self.config = config
        self.pm = pm
        self.workers = workers
        self.fail_fast = fail_fast
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
        self.cancelled = threading.Event()
        self._store: LocalDatastore | None = None
        self._store_lock = threading.Lock()
        self._sys_path = tuple(os.getcwd() if p == "" else p for p in sys.path)
        self.backends = self._open_backends()

    # --- set-up ---------------------------------------------------------------------------

    @property
    def store(self) -> LocalDatastore:
        with self._store_lock:
            if self._store is None:
                self.config.home.mkdir(parents=True, exist_ok=True, mode=0o700)
                self._store = LocalDatastore(self.config.home / "objects")
            return self._store

    def _open_backends(self) -> dict[str, Backend]:
        kinds: dict[str, Any] = {}
        for mapping in self.pm.hook.stepflow_backend_types():
            for kind, factory in (mapping or {}).items():
                kinds.setdefault(kind, factory)
        context = BackendContext(config=self.config, workers=self.workers, run_id=self.run_id)
        backends: dict[str, Backend] = {}
        try:
            for name in dict.fromkeys(self.plan.backends.values()):
                options = dict(self.config.backends.get(name, {"plugin": name}))
                kind = options.pop("plugin")
                factory = kinds.get(kind)
                if factory is None:
                    users = [s for s, b in self.plan.backends.items() if b == name]
                    raise BackendUnavailableError(_unknown_backend(name, kind, users, kinds))
                backend = factory(name, options, context)
                backends[name] = backend
                backend.check()
        except BaseException:
            for backend in backends.values():
                backend.close()
            raise
        return backends

    # --- the loop -------------------------------------------------------------------------

    def run(self) -> RunResult:
        start = time.perf_counter()
        interrupted = False
        self.pm.hook.stepflow_run_start(run=self.info)
        try:
            if self.workers == 1:
                self._run_sequential()
            else:
                self._run_parallel()
        except KeyboardInterrupt:
            interrupted = True
            self.cancelled.set()
            for backend in self.backends.values():
                backend.cancel()
        finally:
            for backend in self.backends.values():
                backend.close()
        for name in self.plan.steps:
            if name not in self.reports:
                reason = "the run was interrupted" if interrupted else "the run stopped early"
                self._finish(StepReport(name, StepState.SKIPPED, reason=reason))
        store = self._store
        outputs = {
            out: (lambda a=artifact: a.load(store or self.store))
            for out, artifact in self.artifacts.items()
        }
        result = RunResult(
            info=self.info,
            steps={n: self.reports[n] for n in self.plan.steps},
            outputs=outputs,
            duration=time.perf_counter() - start,
            producers={o: s for o, s in self.dag.producers.items() if s in self.reports},
            interrupted=interrupted,
        )
        self.pm.hook.stepflow_run_finish(run=self.info, result=result)
        return result

    def _run_sequential(self) -> None:
        for name in self.plan.steps:
            if name in self.reports:
                continue
            if self.cancelled.is_set():
                break
            try:
                report = self._run_step(name)
            except KeyboardInterrupt:
                self._finish(self._interrupted_report(name))
                raise
            self._finish(report)

    def _run_parallel(self) -> None:
        selected = set(self.plan.steps)
        waiting = {n: set(self.dag.upstream[n]) & selected for n in self.plan.steps}
        ready = [n for n in self.plan.steps if not waiting[n]]
        running: dict[Future[StepReport], str] = {}
        executor = ThreadPoolExecutor(self.workers, thread_name_prefix="stepflow-dispatch")
        try:
            while ready or running:
                while ready and len(running) < self.workers and not self.cancelled.is_set():
                    name = ready.pop(0)
                    if name not in self.reports:
                        running[executor.submit(self._run_step, name)] = name
                if not running:
                    break
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in sorted(done, key=lambda f: self.plan.steps.index(running[f])):
                    name = running.pop(future)
                    report = future.result()
                    self._finish(report)
                    if report.state is StepState.RAN:
                        for child in self.dag.downstream[name]:
                            if child in waiting:
                                waiting[child].discard(name)
                                if not waiting[child] and child not in self.reports:
                                    ready.append(child)
        except KeyboardInterrupt:
            self.cancelled.set()
            for backend in self.backends.values():
                backend.cancel()
            for future, name in running.items():
                future.cancel()
                self._finish(self._interrupted_report(name))
            raise
        finally:
            executor.shutdown(wait=False, cancel_futures=True)

    def _finish(self, report: StepReport) -> None:
        if report.name in self.reports:
            return
        self.reports[report.name] = report
        self.pm.hook.stepflow_step_finish(run=self.info, report=report)
        if report.state is StepState.FAILED:
            if self.fail_fast:
                self.cancelled.set()
            for name in self.plan.steps:
                if name != report.name and name in self.dag.descendants([report.name]):
                    self._finish(
                        StepReport(
                            name,
                            StepState.SKIPPED,
                            reason=f"upstream step {report.name!r} failed",
                        )
                    )

    def _interrupted_report(self, name: str) -> StepReport:
        error = StepFailedError(
            f"step {name!r} was interrupted (Ctrl-C)", step=name, exc_type="KeyboardInterrupt"
        )
        return StepReport(name, StepState.FAILED, error=error, backend=self.plan.backends[name])

    # --- one step -------------------------------------------------------------------------

    def _run_step(self, name: str) -> StepReport:
        spec = self.dag.steps[name]
        backend = self.backends[self.plan.backends[name]]
        attempts = spec.options.retries + 1
        for attempt in range(1, attempts + 1):
            self.pm.hook.stepflow_step_start(run=self.info, step=name, attempt=attempt)
            started = time.perf_counter()
            error = self._attempt(name, backend, attempt)
            duration = time.perf_counter() - started
            if error is None:
                outputs = tuple(p.name for p in spec.outputs)
                return StepReport(
                    name,
                    StepState.RAN,
                    duration=duration,
                    attempts=attempt,
                    backend=backend.name,
                    outputs=outputs,
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
        raise AssertionError("unreachable")

    def _attempt(self, name: str, backend: Backend, attempt: int) -> StepFailedError | None:
        """Run one attempt; store its outputs and return ``None``, or return the error."""
        spec = self.dag.steps[name]
        params = self.plan.step_params[name]
        edges = [p.name for p in spec.inputs if p.name in self.dag.producers]
        if backend.runs_inline(spec):
            kwargs = {e: self.artifacts[e].load(self.store) for e in edges}
            kwargs.update(params)
            try:
                values = invoke(spec, kwargs)
            except StepRaised as raised:
                return _step_error(name, raised.error)
            for out, value in values.items():
                self.artifacts[out] = _Artifact(value=value)
            return None
        task = Task(
            run_id=self.run_id,
            step=name,
            attempt=attempt,
            ref=spec.ref,
            inputs={e: self.artifacts[e].stored(self.store) for e in edges},
            params=params,
            store_uri=self.store.uri,
            sys_path=self._sys_path,
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
        if result.error is not None:
            return _step_error(name, result.error)
        for out, ref in result.outputs.items():
            self.artifacts[out] = _Artifact(ref=ref)
        return None


def _step_error(name: str, error: TaskError) -> StepFailedError:
    cls = StepTimeoutError if error.timed_out else StepFailedError
    message = f"{error.exc_type}: {error.message}" if error.message else error.exc_type
    if error.timed_out or error.internal:
        message = error.message
    return cls(
        message,
        step=name,
        exc_type=error.exc_type,
        traceback=error.traceback,
        full_traceback=error.full_traceback,
    )


def _unknown_backend(name: str, kind: str, users: list[str], kinds: Mapping[str, Any]) -> str:
    steps = ", ".join(repr(s) for s in users)
    installed = ", ".join(sorted(kinds)) or "none"
    if name == kind:
        return (
            f"no backend named {name!r} (used by step {steps}); backend kinds installed: "
            f"{installed}. Configure it in pyproject.toml as [tool.stepflow.backends.{name}] "
            f'with plugin = "KIND", or install the plugin that provides it'
        )
    return (
        f"backend {name!r} (used by step {steps}) needs plugin {kind!r}, which is not "
        f"installed; installed kinds: {installed}"
    )


def run_plan(
    plan: Plan,
    *,
    pipeline: str,
    config: Config,
    pm: pluggy.PluginManager,
    workers: int,
    fail_fast: bool,
) -> RunResult:
    """Execute ``plan`` and return its result; step errors never raise from here."""
    runner = _Runner(
        plan, pipeline=pipeline, config=config, pm=pm, workers=workers, fail_fast=fail_fast
    )
    return runner.run()
