"""The run loop: set up, schedule the steps, finish every step, close.

A run is four parts, each in its own module: ``setup`` opens what the run works with (store,
index, backends, references), ``schedule`` decides when each step runs (one after another,
or up to ``workers`` at once), ``step`` reuses or runs one step's attempts, and ``commit``
holds the outputs and tells the cache index. This module ties them together and owns the
steps' reports: a failed step skips only what depends on it, unless the run is fail-fast.
The run records see the run only through the journal's ``RunFacts``.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Collection
from typing import TYPE_CHECKING

from stepflow._execution.capture import capturing
from stepflow._execution.commit import RunOutputs
from stepflow._execution.journal import Journal, RunFacts
from stepflow._execution.result import RunResult, StepReport, StepState
from stepflow._execution.schedule import run_parallel, run_sequential
from stepflow._execution.setup import RunSetup, new_run_id, open_run
from stepflow._execution.step import StepRunner, holds_a_thread
from stepflow.errors import StepFailedError

if TYPE_CHECKING:
    import pluggy

    from stepflow._config import Config
    from stepflow._execution.flow import Flow
    from stepflow._planning.plan import Plan

__all__ = ["new_run_id", "run_plan"]


class _Runner:
    """One run of a plan; what scheduling calls (``schedule.Steps``)."""

    def __init__(self, setup: RunSetup) -> None:
        self.setup = setup
        self.plan = setup.plan
        self.dag = setup.plan.dag
        self.reports: dict[str, StepReport] = {}
        self.cancelled = threading.Event()
        self.outputs = RunOutputs(setup)
        #: step → (attempt, stream, text) of every attempt, and what it logged
        self.journal = Journal(
            RunFacts(
                run_id=setup.run_id,
                pipeline=setup.pipeline,
                plan=setup.plan,
                config=setup.config,
                workers=setup.workers,
                secret_values=setup.secret_values,
                reports=self.reports,
                outputs=self.outputs.artifacts,
                keys=self.outputs.keys,
                references=setup.references,
                bookkeeping_failed=self.outputs.bookkeeping_failed,
                open_store=setup.open_store,
            )
        )
        self.steps = StepRunner(
            setup,
            self.outputs,
            self.journal,
            cancelled=self.cancelled,
            ran_after_all=self._ran_after_all,
        )

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
        result.storage_errors = tuple(self.outputs.storage_errors)
        self.setup.pm.hook.stepflow_run_finish(run=self.setup.info, result=result)
        return result

    def _run_all(self) -> RunResult:
        setup = self.setup
        start = time.perf_counter()
        interrupted = False
        setup.pm.hook.stepflow_run_start(run=setup.info)
        try:
            with capturing():
                if self._run_workers() == 1:
                    run_sequential(self)
                else:
                    from stepflow._execution.placement import Placement

                    run_parallel(self, Placement(self.plan, setup.backends))
        except KeyboardInterrupt:
            interrupted = True
            self.cancel()
        finally:
            for backend in setup.backends.values():
                backend.close()
            self.outputs.close()
        for name in self.plan.steps:
            if name not in self.reports:
                reason = "the run was interrupted" if interrupted else "the run stopped early"
                self.finish(StepReport(name, StepState.SKIPPED, reason=reason))
        if not interrupted:
            self.outputs.publish(self.reports)
        outputs = self.outputs
        return RunResult(
            info=setup.info,
            steps={n: self.reports[n] for n in self.plan.steps},
            outputs={out: functools.partial(outputs.load_output, out) for out in outputs.artifacts},
            duration=time.perf_counter() - start,
            producers={o: s for o, s in self.dag.producers.items() if s in self.reports},
            interrupted=interrupted,
            storage_errors=outputs.storage_errors,
            edges=[
                (e.producer, e.consumer)
                for e in self.dag.edges
                if e.producer in self.reports and e.consumer in self.reports
            ]
            + [pair for pair in self.dag.after if set(pair) <= self.reports.keys()],
        )

    def _run_workers(self) -> int:
        """1 when the run goes one step after another (see ``placement.run_workers_of``)."""
        for backend in self.setup.backends.values():
            return backend.context.run_workers or backend.context.workers
        return 1

    # --- what scheduling calls (``schedule.Steps``) ------------------------------------------

    def run_step(self, name: str) -> StepReport:
        return self.steps.run_step(name)

    def flow(self, name: str) -> Flow[StepReport]:
        return self.steps.flow(name)

    def holds_a_thread(self, name: str) -> bool:
        return holds_a_thread(self.setup.backend_of(name), self.dag.steps[name])

    def finish(self, report: StepReport) -> None:
        if report.name in self.reports:
            return
        report = self.journal.step_finished(report)
        self.reports[report.name] = report
        self.setup.pm.hook.stepflow_step_finish(run=self.setup.info, report=report)
        if report.state is StepState.FAILED:
            if self.setup.fail_fast:
                self.cancelled.set()
            below = self.dag.descendants([report.name])
            for name in self.plan.steps:
                if name != report.name and name in below:
                    self.finish(
                        StepReport(
                            name,
                            StepState.SKIPPED,
                            reason=f"upstream step {report.name!r} failed",
                        )
                    )

    def interrupted(self, name: str) -> StepReport:
        error = StepFailedError(
            f"step {name!r} was interrupted (Ctrl-C)", step=name, exc_type="KeyboardInterrupt"
        )
        return StepReport(name, StepState.FAILED, error=error, backend=self.plan.backends[name])

    def cancel(self) -> None:
        self.cancelled.set()
        for backend in self.setup.backends.values():
            backend.cancel()

    def _ran_after_all(self, report: StepReport) -> None:
        """A producer reported reused ran after all, because a consumer found its stored
        output damaged: the run's report, records and summary say it ran."""
        if report.name not in self.reports:
            return
        report = self.journal.step_finished(report)
        self.reports[report.name] = report
        self.setup.pm.hook.stepflow_step_finish(run=self.setup.info, report=report)


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
    setup = open_run(
        plan,
        pipeline=pipeline,
        config=config,
        pm=pm,
        workers=workers,
        fail_fast=fail_fast,
        regenerate=regenerate,
    )
    return _Runner(setup).run()
