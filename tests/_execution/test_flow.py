"""Flows: a step's work as a generator that yields what it waits for (``flow.py``), and the
drivers that run them in one thread."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future

import pytest

from stepflow._execution.flow import call, drive, drive_all, pause, wait_for


def _later(value: object, seconds: float) -> Future[object]:
    """A future another thread completes after ``seconds``."""
    future: Future[object] = Future()
    timer = threading.Timer(seconds, future.set_result, (value,))
    timer.daemon = True  # a test that stops early leaves no thread to wait for
    timer.start()
    return future


class TestDrive:
    def test_waits_where_the_flow_yields_and_returns_its_value(self):
        def flow():
            got = yield from wait_for(_later(20, 0.05))
            yield from pause(0.01)
            doubled = yield from call(lambda: got * 2)
            return doubled + 2

        assert drive(flow(), threading.Event()) == 42

    def test_a_blocking_call_raises_in_the_flow(self):
        def flow():
            try:
                yield from call(lambda: 1 / 0)
            except ZeroDivisionError:
                return "caught"
            return "not raised"

        assert drive(flow(), threading.Event()) == "caught"

    def test_a_cancelled_run_cuts_a_delay_short(self):
        cancelled = threading.Event()
        cancelled.set()

        def flow():
            yield from pause(600)
            return "on"

        started = time.monotonic()
        assert drive(flow(), cancelled) == "on"
        assert time.monotonic() - started < 60

    def test_a_ctrl_c_where_the_driver_waits_closes_the_flow(self):
        """A Ctrl-C during a blocking call ends the flow where it waits: its ``finally``
        blocks run (a lease is given back), and the interrupt goes on up."""
        cleaned = []

        def interrupted():
            raise KeyboardInterrupt

        def flow():
            try:
                yield from call(interrupted)
                return "not reached"
            finally:
                cleaned.append(True)

        with pytest.raises(KeyboardInterrupt):
            drive(flow(), threading.Event())
        assert cleaned == [True]


class TestDriveAll:
    def test_runs_at_most_at_once_and_reports_each(self):
        in_flight = []
        most = []
        finished = {}

        def item(i):
            in_flight.append(i)
            most.append(len(in_flight))
            value = yield from wait_for(_later(i * i, 0.02))
            if i == 3:
                yield from pause(0.01)  # a retry's delay
            in_flight.remove(i)
            return value

        drive_all(
            ((i, item(i)) for i in range(10)),
            at_once=4,
            cancelled=threading.Event(),
            done=finished.__setitem__,
        )
        assert finished == {i: i * i for i in range(10)}
        assert max(most) == 4

    def test_an_error_closes_the_flows_in_flight(self):
        closed = []

        def item(i):
            try:
                yield from wait_for(_later(i, 0.01 if i == 0 else 30))
                return i
            finally:
                closed.append(i)

        def done(key, value):
            raise RuntimeError("stepflow failed")

        with pytest.raises(RuntimeError):
            drive_all(
                ((i, item(i)) for i in range(3)),
                at_once=3,
                cancelled=threading.Event(),
                done=done,
            )
        assert sorted(closed) == [0, 1, 2]

    def test_a_cancelled_run_cuts_delays_short(self):
        cancelled = threading.Event()
        finished = {}

        def item(i):
            yield from pause(600)
            return i

        threading.Timer(0.1, cancelled.set).start()
        started = time.monotonic()
        drive_all(
            ((i, item(i)) for i in range(2)),
            at_once=2,
            cancelled=cancelled,
            done=finished.__setitem__,
        )
        assert finished == {0: 0, 1: 1}
        assert time.monotonic() - started < 60
