"""The order steps run in: one after another (``workers=1``), or several at once.

Either way a step runs only once the steps it depends on succeeded or were reused; what a
failed step's dependants become (skipped) is the run's ``finish``. In parallel, a ready step
starts only when its backend has a free slot and the resources it asks for (``placement``);
until then it waits holding nothing, and steps behind it that fit go first. A Ctrl-C marks the
steps in flight as interrupted and is raised again for the run to stop.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Protocol

from stepflow._execution.result import StepReport, StepState

if TYPE_CHECKING:
    from stepflow._execution.placement import Placement
    from stepflow._planning.plan import Plan

__all__ = ["Steps", "run_parallel", "run_sequential"]


class Steps(Protocol):
    """What scheduling needs of a run."""

    plan: Plan
    #: step → its report, once finished
    reports: Mapping[str, StepReport]
    cancelled: threading.Event

    def run_step(self, name: str) -> StepReport:
        """Reuse or run step ``name``; never raises for the step's own failure."""

    def finish(self, report: StepReport) -> None:
        """Record a finished step (and skip what depends on it when it failed)."""

    def interrupted(self, name: str) -> StepReport:
        """The report of a step stopped by Ctrl-C."""

    def cancel(self) -> None:
        """Stop every step in flight: the run was interrupted."""


def run_sequential(run: Steps) -> None:
    for name in run.plan.steps:
        if name in run.reports:
            continue
        if run.cancelled.is_set():
            break
        try:
            report = run.run_step(name)
        except KeyboardInterrupt:
            run.finish(run.interrupted(name))
            raise
        run.finish(report)


def run_parallel(run: Steps, placement: Placement) -> None:
    plan = run.plan
    dag = plan.dag
    selected = set(plan.steps)
    waiting = {n: set(dag.upstream[n]) & selected for n in plan.steps}
    ready = [n for n in plan.steps if not waiting[n]]
    running: dict[Future[StepReport], str] = {}
    executor = ThreadPoolExecutor(placement.slots, thread_name_prefix="stepflow-dispatch")
    try:
        while ready or running:
            if not run.cancelled.is_set():
                gone = set()
                for name in ready:
                    if placement.full:
                        break  # scanning further would only find steps that must wait
                    if name in run.reports:
                        gone.add(name)
                    elif placement.has_room(name) and placement.take(name):
                        gone.add(name)
                        running[executor.submit(run.run_step, name)] = name
                if gone:
                    ready = [n for n in ready if n not in gone]
            if not running:
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in sorted(done, key=lambda f: plan.steps.index(running[f])):
                name = running.pop(future)
                placement.give_back(name)
                report = future.result()
                run.finish(report)
                if report.state in (StepState.RAN, StepState.REUSED):
                    for child in dag.downstream[name]:
                        if child in waiting:
                            waiting[child].discard(name)
                            if not waiting[child] and child not in run.reports:
                                ready.append(child)
    except KeyboardInterrupt:
        run.cancel()
        for future, name in running.items():
            future.cancel()
            run.finish(run.interrupted(name))
        raise
    finally:
        executor.shutdown(wait=False, cancel_futures=True)
