"""A step's work as a generator that hands back every wait, so no thread need sit in it.

``StepRunner.flow`` is a generator: it does the step's own work (look up, build the task,
commit) when resumed, and ``yield``s whatever it must wait for instead of waiting:

- a backend's future (``yield from wait_for(future)``): a ``concurrent.futures.Future``, or
  anything with ``result()`` and ``add_done_callback()``; resumed once it is done;
- a ``Delay`` before a retry: resumed after it, or as soon as the run is cancelled;
- a ``Blocking`` call that may wait long on something outside the run (another process's
  lease on a key): the driver calls it where waiting is harmless and resumes the flow with
  its outcome.

Its return value is the step's report. ``drive`` runs a flow to the end in the calling
thread, waiting where it yields (the sequential run, and everything that is not the parallel
run loop); ``schedule.run_parallel`` resumes flows on a few dispatch threads when what they
wait for is done, so a step waiting on a backend's future holds no thread. ``drive_all`` runs
many flows in the calling thread at once (a fan-out's items on an engine with futures).
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

from stepflow._slotted import Frozen

if TYPE_CHECKING:
    # Imported where a future is made: a fully cached run with one worker makes none.
    from concurrent.futures import Future

__all__ = [
    "Blocking",
    "Delay",
    "Flow",
    "Request",
    "call",
    "drive",
    "drive_all",
    "pause",
    "wait_for",
]

T = TypeVar("T")
K = TypeVar("K")

#: seconds between ``drive_all``'s looks at whether the run was cancelled, while a flow waits
#: out a retry's delay
_CANCEL_POLL = 0.1


class Delay(Frozen):
    """Resume the flow after ``seconds``, or as soon as the run is cancelled."""

    __slots__ = ("seconds",)

    seconds: float

    def __init__(self, seconds: float) -> None:
        object.__setattr__(self, "seconds", seconds)


class Blocking(Frozen):
    """Call ``fn`` where a long wait holds up nothing else; resume with a done future of it."""

    __slots__ = ("fn", "undo")

    fn: Callable[[], Any]
    #: called with ``fn``'s result when the flow was closed before it got it (the run
    #: stopped meanwhile): gives back what ``fn`` took
    undo: Callable[[Any], None] | None

    def __init__(
        self,
        fn: Callable[[], Any],
        undo: Callable[[Any], None] | None = None,
    ) -> None:
        init = object.__setattr__
        init(self, "fn", fn)
        init(self, "undo", undo)


#: what a flow yields
Request: TypeAlias = "Future[Any] | Delay | Blocking"
#: a step's work, returning ``T`` (its report)
Flow = Generator[Request, Any, T]


def wait_for(future: Future[T]) -> Generator[Request, Any, T]:
    """``result = yield from wait_for(future)``: the future's result, raising what it raises."""
    yield future
    return future.result()


def pause(seconds: float) -> Generator[Request, Any, None]:
    """``yield from pause(s)``: wait ``seconds``, or less when the run is cancelled."""
    yield Delay(seconds)


def call(
    fn: Callable[[], T], undo: Callable[[T], None] | None = None
) -> Generator[Request, Any, T]:
    """``value = yield from call(fn)``: ``fn()``, called where waiting is harmless."""
    done: Future[T] = yield Blocking(fn, undo)
    return done.result()


def drive(flow: Generator[Request, Any, T], cancelled: threading.Event) -> T:
    """Run ``flow`` to its end in this thread, waiting wherever it yields."""
    answer: Any = None
    try:
        while True:
            request = flow.send(answer)
            answer = None
            if isinstance(request, Delay):
                cancelled.wait(request.seconds)
            elif isinstance(request, Blocking):
                answer = called(request.fn)
            # A backend's future: the flow's ``future.result()`` waits for it, in this thread.
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    finally:
        # A Ctrl-C while waiting here: the flow's ``finally`` blocks run (leases given back).
        flow.close()


def drive_all(
    flows: Iterable[tuple[K, Generator[Request, Any, T]]],
    *,
    at_once: int,
    cancelled: threading.Event,
    done: Callable[[K, T], None],
) -> None:
    """Run ``flows`` (each with a key) to their ends in this thread, up to ``at_once`` at a
    time, resuming each when what it waits for is done; ``done(key, value)`` as each ends.

    Flows are taken from ``flows`` only as others end. A ``Blocking`` call is made here.
    """
    import queue  # here: a run that drives one flow at a time (``drive``) never needs it

    source = iter(flows)
    #: (key, flow, answer) to resume now
    ready: deque[tuple[K, Generator[Request, Any, T], Any]] = deque()
    #: flows whose future is done, put by the futures' callbacks (from any thread)
    woken: queue.SimpleQueue[tuple[K, Generator[Request, Any, T]]] = queue.SimpleQueue()
    waiting: dict[int, Generator[Request, Any, T]] = {}
    delays: list[tuple[float, int, K, Generator[Request, Any, T]]] = []
    ties = itertools.count()
    in_flight = 0
    try:
        while True:
            while in_flight < at_once and (started := next(source, None)) is not None:
                ready.append((*started, None))
                in_flight += 1
            if cancelled.is_set():
                ready.extend((key, flow, None) for _, _, key, flow in delays)
                delays.clear()
            if ready:
                key, flow, answer = ready.popleft()
                try:
                    request = flow.send(answer)
                except StopIteration as stop:
                    in_flight -= 1
                    done(key, stop.value)
                    continue
                if isinstance(request, Delay):
                    when = time.monotonic() + request.seconds
                    heapq.heappush(delays, (when, next(ties), key, flow))
                elif isinstance(request, Blocking):
                    ready.append((key, flow, called(request.fn)))
                else:
                    waiting[id(flow)] = flow
                    request.add_done_callback(lambda _, k=key, f=flow: woken.put((k, f)))
                continue
            if not in_flight:
                return
            timeout = None
            if delays:
                # Looks at ``cancelled`` now and then: a retry waits no longer once it is set.
                timeout = min(_CANCEL_POLL, max(0.0, delays[0][0] - time.monotonic()))
            with contextlib.suppress(queue.Empty):
                ready.append((*woken.get(timeout=timeout), None))
                while True:
                    ready.append((*woken.get_nowait(), None))
            for _, flow, _ in ready:
                waiting.pop(id(flow), None)
            now = time.monotonic()
            while delays and delays[0][0] <= now:
                _, _, key, flow = heapq.heappop(delays)
                ready.append((key, flow, None))
    finally:
        # Stopped early (Ctrl-C, an error of stepflow's): end the flows where they wait.
        for _, flow, _ in ready:
            flow.close()
        for flow in waiting.values():
            flow.close()
        for _, _, _, flow in delays:
            flow.close()


def called(fn: Callable[[], T]) -> Future[T]:
    """A done future of ``fn()``: its result, or the exception it raised."""
    from concurrent.futures import Future

    future: Future[T] = Future()
    try:
        future.set_result(fn())
    except Exception as exc:
        future.set_exception(exc)
    return future
