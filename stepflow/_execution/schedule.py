"""The order steps run in: one after another (``workers=1``), or several at once.

Either way a step runs only once the steps it depends on succeeded or were reused; what a
failed step's dependants become (skipped) is the run's ``finish``. In parallel, a ready step
starts only when its backend has a free slot and the resources it asks for (``placement``);
until then it waits holding nothing, and steps behind it that fit go first. A Ctrl-C marks the
steps in flight as interrupted and is raised again for the run to stop.

In parallel, each step is a flow (``flow.py``) that a dispatch thread resumes only when what it
waits for is done; between, it holds no thread. A step whose backend has futures of its own
(it overrides ``Backend.submit``) waits on its future that way, so a run with 500 such steps in
flight needs a few dispatch threads, not 500. A step that keeps a thread busy while it runs (in
this process, or in a backend's blocking ``execute``) gets one of its own, as many as there are
slots.
"""

from __future__ import annotations

import contextlib
import contextvars
import heapq
import itertools
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from stepflow._execution.flow import Blocking, Delay, Flow
from stepflow._execution.result import StepReport, StepState
from stepflow._slotted import Slotted

if TYPE_CHECKING:
    from concurrent.futures import Future, ThreadPoolExecutor

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

    def flow(self, name: str) -> Flow[StepReport]:
        """``run_step`` as a flow that yields what it waits for (``flow.py``)."""

    def holds_a_thread(self, name: str) -> bool:
        """Whether step ``name`` keeps a thread busy while it runs (not only while it is
        resumed)."""

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
    _Loop(run, placement).run()


#: how many dispatch threads resume the steps that wait on a backend's futures: their work
#: in this process (look-ups, hashing, commits) mostly holds the GIL, so a few more than the
#: cores (for what waits on a store or the records) is all that goes faster
_LIGHT_THREADS = min(16, (os.cpu_count() or 1) + 4)


class _Flight(Slotted):
    """One step in flight."""

    __slots__ = ("name", "flow", "context", "pool", "pending", "running", "blocking", "closed")
    __eq__ = object.__eq__  # compared and hashed by identity
    __hash__ = object.__hash__

    name: str
    flow: Flow[StepReport]
    #: the flow's own context variables (its step's captured output and context), whichever
    #: dispatch thread resumes it
    context: contextvars.Context
    #: the dispatch threads that resume it
    pool: ThreadPoolExecutor
    #: what it waits for: a dispatch thread's future while it runs there (``running``), a
    #: backend's future, a ``Blocking`` call's future, or a ``Delay``
    pending: Any
    running: bool
    #: the ``Blocking`` request whose call it waits on
    blocking: Blocking | None
    closed: bool

    def __init__(
        self,
        name: str,
        flow: Flow[StepReport],
        context: contextvars.Context,
        pool: ThreadPoolExecutor,
        pending: Any = None,
        running: bool = False,
        blocking: Blocking | None = None,
        closed: bool = False,
    ) -> None:
        self.name = name
        self.flow = flow
        self.context = context
        self.pool = pool
        self.pending = pending
        self.running = running
        self.blocking = blocking
        self.closed = closed

    def resume(self, answer: Any) -> tuple[bool, Any]:
        """Run the flow on to its next wait: ``(False, request)``, or ``(True, report)``."""
        try:
            return False, self.context.run(self.flow.send, answer)
        except StopIteration as stop:
            return True, stop.value

    def close(self) -> None:
        """End the flow where it waits: its ``finally`` blocks run (leases given back)."""
        if not self.closed:
            self.closed = True
            # The run is stopping, and what it reports is why (Ctrl-C, or stepflow's error).
            with contextlib.suppress(Exception):
                self.context.run(self.flow.close)


class _Loop:
    """The parallel run loop: starts ready steps as slots free up, resumes each flow on a
    dispatch thread when what it waits for is done, and finishes steps in plan order."""

    def __init__(self, run: Steps, placement: Placement) -> None:
        # Imported here: a run of one step at a time (``run_sequential``) needs neither.
        import queue
        from concurrent.futures import ThreadPoolExecutor

        self.run_ = run
        self.placement = placement
        plan = run.plan
        self.order = {name: i for i, name in enumerate(plan.steps)}
        selected = set(plan.steps)
        self.waiting = {n: set(plan.dag.upstream[n]) & selected for n in plan.steps}
        self.ready = [n for n in plan.steps if not self.waiting[n]]
        self.flights: dict[str, _Flight] = {}
        #: (flight, a future of it that is done), put by done callbacks from any thread
        self.events: queue.SimpleQueue[tuple[_Flight, Future[Any]]] = queue.SimpleQueue()
        #: (when, tie-breaker, flight) of the flows waiting out a retry's delay
        self.delays: list[tuple[float, int, _Flight]] = []
        self._ties = itertools.count()
        # Threads are made on demand, when none is idle: a run whose steps wait on futures
        # makes a few, however many slots it has.
        slots = placement.slots
        self.busy = ThreadPoolExecutor(slots, thread_name_prefix="stepflow-dispatch")
        self.light = ThreadPoolExecutor(
            min(slots, _LIGHT_THREADS), thread_name_prefix="stepflow-resume"
        )
        # ``Blocking`` calls: at most one per step in flight, so none queues behind another.
        self.side = ThreadPoolExecutor(slots, thread_name_prefix="stepflow-wait")

    def run(self) -> None:
        run = self.run_
        try:
            while True:
                if not run.cancelled.is_set():
                    self._start_ready()
                elif self.delays:
                    # A retry waits no longer once the run is cancelled (fail-fast).
                    for _, _, flight in self.delays:
                        self._resume(flight, None)
                    self.delays.clear()
                if not self.flights:
                    break
                finished = self._next_events()
                for flight, report in sorted(finished, key=lambda f: self.order[f[0].name]):
                    self._finish(flight, report)
        except KeyboardInterrupt:
            run.cancel()
            names = list(self.flights)
            self._close_all()
            for name in names:
                run.finish(run.interrupted(name))
            raise
        finally:
            self._close_all()  # also when stepflow itself failed: no lease stays taken
            for pool in (self.busy, self.light, self.side):
                pool.shutdown(wait=False, cancel_futures=True)

    def _start_ready(self) -> None:
        run, placement = self.run_, self.placement
        gone = set()
        for name in self.ready:
            if placement.full:
                break  # scanning further would only find steps that must wait
            if name in run.reports:
                gone.add(name)
            elif placement.has_room(name) and placement.take(name):
                gone.add(name)
                pool = self.busy if run.holds_a_thread(name) else self.light
                flight = _Flight(name, run.flow(name), contextvars.copy_context(), pool)
                self.flights[name] = flight
                self._resume(flight, None)
        if gone:
            self.ready = [n for n in self.ready if n not in gone]

    def _next_events(self) -> list[tuple[_Flight, StepReport]]:
        """Wait for what comes next (a future done, a delay run out), act on it, and return
        the steps that finished with their reports."""
        timeout = None
        if self.delays:
            timeout = max(0.0, self.delays[0][0] - time.monotonic())
        events = []
        import queue  # imported already (``__init__``): a dictionary look-up

        try:
            events.append(self.events.get(timeout=timeout))
            while True:
                events.append(self.events.get_nowait())
        except queue.Empty:
            pass
        finished = []
        for flight, future in events:
            if future is not flight.pending:
                continue
            if flight.running:
                done, value = future.result()  # stepflow's own failure is raised here
                if done:
                    finished.append((flight, value))
                else:
                    self._wait(flight, value)
            else:
                # A backend's future (the flow reads its result), or a blocking call's.
                flight.blocking = None
                self._resume(flight, future)
        now = time.monotonic()
        while self.delays and self.delays[0][0] <= now:
            _, _, flight = heapq.heappop(self.delays)
            self._resume(flight, None)
        return finished

    def _resume(self, flight: _Flight, answer: Any) -> None:
        flight.running = True
        self._follow(flight, flight.pool.submit(flight.resume, answer))

    def _follow(self, flight: _Flight, future: Future[Any]) -> None:
        flight.pending = future
        future.add_done_callback(lambda f: self.events.put((flight, f)))

    def _wait(self, flight: _Flight, request: Any) -> None:
        flight.running = False
        if isinstance(request, Delay):
            flight.pending = request
            when = time.monotonic() + request.seconds
            heapq.heappush(self.delays, (when, next(self._ties), flight))
        elif isinstance(request, Blocking):
            flight.blocking = request
            self._follow(flight, self.side.submit(request.fn))
        elif callable(getattr(request, "add_done_callback", None)):
            # A backend's future: a ``concurrent.futures.Future``, or one of its engine's.
            self._follow(flight, request)
        else:
            raise TypeError(
                f"backend of step {flight.name!r} gave {request!r} from submit(), which is not "
                f"a future (it has no add_done_callback); return a concurrent.futures.Future"
            )

    def _finish(self, flight: _Flight, report: StepReport) -> None:
        run = self.run_
        name = flight.name
        del self.flights[name]
        self.placement.give_back(name)
        run.finish(report)
        if report.state in (StepState.RAN, StepState.REUSED):
            for child in run.plan.dag.downstream[name]:
                if child in self.waiting:
                    self.waiting[child].discard(name)
                    if not self.waiting[child] and child not in run.reports:
                        self.ready.append(child)

    def _close_all(self) -> None:
        """End every flow in flight (the run stopped): each where it waits now, or, when a
        dispatch thread runs it, as soon as it waits next."""
        for flight in self.flights.values():
            pending = flight.pending
            if flight.running and not pending.cancel():
                pending.add_done_callback(lambda f, flight=flight: _close_after(flight, f))
                continue
            flight.close()
            undo = flight.blocking.undo if flight.blocking is not None else None
            if undo is not None:
                # Its call may still take what it waits for (a lease): give it back then.
                pending.add_done_callback(lambda f, undo=undo: _undo(undo, f))
        self.flights.clear()
        self.delays.clear()


def _close_after(flight: _Flight, future: Future[Any]) -> None:
    """Close ``flight`` once a dispatch thread has run it on to its next wait."""
    if not future.cancelled() and future.exception() is None:
        flight.close()


def _undo(undo: Callable[[Any], None], future: Future[Any]) -> None:
    if not future.cancelled() and future.exception() is None:
        undo(future.result())
