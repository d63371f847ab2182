"""The run loop with a backend that has futures of its own (``Backend.submit``): a step
waiting on its future holds no thread, and retries, timeouts, failures and Ctrl-C work the
same as on a backend that blocks in ``execute``.

The backend is ``tests/resources/futures_backend.py``: its ``submit`` returns at once, and one
thread of its own runs the tasks in a worker process and completes the futures.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from stepflow import Pipeline
from stepflow._config import load_config
from stepflow._execution.result import StepState
from stepflow.errors import StepTimeoutError

IN_FLIGHT = 64


def _config(tmp_path: Path, **options: int):
    project = tmp_path / "project"
    project.mkdir(exist_ok=True)
    table = "".join(f"{key} = {value}\n" for key, value in options.items())
    (project / "pyproject.toml").write_text(
        f'[tool.stepflow.backends.gathering]\nplugin = "gathering"\n{table}'
    )
    return load_config(project, plugins=("futures_backend",))


@pytest.fixture
def backend(resource_module):
    """The backend plugin module; ``backend.INSTANCES[-1]`` is the last run's backend."""
    return resource_module("futures_backend")


def test_steps_waiting_on_futures_hold_no_thread_each(
    backend, make_module, tmp_path, stepflow_home
):
    """64 steps in flight at once (the backend holds every submit before it completes any)
    are served by a few dispatch threads, not one thread per step."""
    source = "from stepflow import step\n" + "".join(
        f'\n@step(backend="gathering")\ndef s{i}() -> int:\n    return {i}\n'
        for i in range(IN_FLIGHT)
    )
    mod = make_module("many_on_futures", source)
    steps = [getattr(mod, f"s{i}") for i in range(IN_FLIGHT)]
    config = _config(tmp_path, workers=IN_FLIGHT, gather=IN_FLIGHT)
    result = Pipeline("p", steps).run(workers=IN_FLIGHT, config=config)
    assert result.ok, result.summary()
    assert [result[f"s{i}"] for i in range(IN_FLIGHT)] == list(range(IN_FLIGHT))
    ((held, threads),) = backend.INSTANCES[-1].samples
    assert held == IN_FLIGHT, "the run did not have every step in flight at once"
    # The dispatch threads that resume flows (at most 16, fewer on a small machine), and no
    # other of the run loop's; before, 64 dispatch threads waited on the futures.
    resuming = [name for name in threads if name.startswith("stepflow-resume")]
    assert 1 <= len(resuming) <= 16, threads
    assert not [name for name in threads if name.startswith(("stepflow-dispatch", "stepflow-wait"))]
    assert len(threads) < IN_FLIGHT // 2, threads


FLOW = """
import time
from pathlib import Path
from stepflow import step

MARKER = Path({marker!r})

@step(backend="gathering", retries=2, retry_delay=0.05)
def flaky() -> int:
    if not MARKER.exists():
        MARKER.write_text("failed once")
        raise RuntimeError("first attempt fails")
    return 1

@step(backend="gathering", timeout=1)
def hangs() -> int:
    time.sleep(60)
    return 2

@step(backend="gathering")
def broken() -> int:
    raise ValueError("bad value")

@step(backend="gathering")
def after_broken(broken: int) -> int:
    return broken

@step(backend="gathering")
def fine(flaky: int) -> int:
    return flaky + 10
"""


@pytest.mark.parametrize("workers", [1, 4], ids=["sequential", "parallel"])
def test_retries_timeouts_and_failures_through_futures(
    backend, make_module, tmp_path, stepflow_home, workers
):
    """A failed attempt is retried (a new submit), a step past its timeout is killed and
    reported so, a failing step skips what depends on it, and the rest run."""
    mod = make_module("mixed_on_futures", FLOW.format(marker=str(tmp_path / "marker")))
    pipe = Pipeline("p", [mod.flaky, mod.hangs, mod.broken, mod.after_broken, mod.fine])
    result = pipe.run(workers=workers, config=_config(tmp_path, workers=workers))
    steps = result.steps
    assert steps["flaky"].state is StepState.RAN and steps["flaky"].attempts == 2
    assert result["fine"] == 11
    assert isinstance(steps["hangs"].error, StepTimeoutError)
    assert steps["broken"].state is StepState.FAILED
    assert "ValueError: bad value" in str(steps["broken"].error)
    assert steps["after_broken"].state is StepState.SKIPPED
    submitted = backend.INSTANCES[-1].submitted
    assert submitted.count("flaky#1") == submitted.count("flaky#2") == 1
    assert "after_broken#1" not in submitted
    # A rerun reuses what succeeded and runs only what failed.
    again = pipe.run(workers=workers, config=_config(tmp_path, workers=workers))
    assert again.steps["fine"].state is StepState.REUSED


def test_fail_fast_stops_a_retry_waiting_out_its_delay(
    backend, make_module, tmp_path, stepflow_home
):
    """With fail-fast, a step waiting out a long retry delay gives up once another fails."""
    mod = make_module(
        "fail_fast_on_futures",
        """
        import time
        from stepflow import step

        @step(backend="gathering", retries=1, retry_delay=600)
        def patient() -> int:
            raise RuntimeError("always")

        @step(backend="gathering")
        def broken() -> int:
            time.sleep(0.5)  # after patient's first attempt failed
            raise ValueError("bad")
        """,
    )
    result = Pipeline("p", [mod.patient, mod.broken]).run(
        workers=2, fail_fast=True, config=_config(tmp_path, workers=2)
    )
    assert result.steps["broken"].state is StepState.FAILED
    assert result.steps["patient"].state is StepState.FAILED
    assert result.steps["patient"].attempts == 1
    assert "patient#2" not in backend.INSTANCES[-1].submitted


def test_ctrl_c_interrupts_the_steps_in_flight_and_cancels_the_backend(
    backend, make_module, tmp_path, stepflow_home
):
    """A Ctrl-C while steps wait on their futures marks them interrupted, skips what is left
    and cancels the backend; the steps' leases are given back, so the next run in the same
    process runs the same steps (same keys) at once."""
    slow = tmp_path / "slow"
    slow.write_text("sleep")
    mod = make_module(
        "interrupted_on_futures",
        f"""
        import time
        from pathlib import Path
        from stepflow import step

        SLOW = Path({str(slow)!r})

        @step(backend="gathering")
        def a() -> int:
            if SLOW.exists():
                time.sleep(30)
            return 1

        @step(backend="gathering")
        def b() -> int:
            if SLOW.exists():
                time.sleep(30)
            return 2

        @step
        def total(a: int, b: int) -> int:
            return a + b
        """,
    )
    pipe = Pipeline("p", [mod.a, mod.b, mod.total])
    result = pipe.run(workers=3, config=_config(tmp_path, workers=2, interrupt_after=2))
    assert result.interrupted
    for name in ("a", "b"):
        assert result.steps[name].state is StepState.FAILED
        assert "interrupted (Ctrl-C)" in str(result.steps[name].error)
    assert result.steps["total"].state is StepState.SKIPPED
    assert backend.INSTANCES[-1].cancels >= 1

    slow.unlink()
    finished = []
    # In a thread: a lease left taken would make this run wait forever.
    thread = threading.Thread(
        target=lambda: finished.append(pipe.run(workers=3, config=_config(tmp_path, workers=2))),
        daemon=True,
    )
    thread.start()
    thread.join(timeout=120)
    assert finished, "the next run waited for a lease the interrupted run kept"
    assert finished[0].ok and finished[0]["total"] == 3
    assert finished[0].steps["a"].state is StepState.RAN


FAN = """
import time
from pathlib import Path
from stepflow import step

@step
def items(n: int = {n}) -> list[int]:
    return list(range(n))

@step(backend="gathering", foreach="items", retries=1, retry_delay=0.05, timeout=2)
def squared(items: int, marker: str = {marker!r}) -> int:
    if items == 3 and not Path(marker).exists():
        Path(marker).write_text("failed once")
        raise ConnectionError("item 3 fails its first attempt")
    if items == 5:
        time.sleep(60)
    return items * items
"""


def test_a_fan_out_waits_on_its_items_futures_from_one_thread(
    backend, make_module, tmp_path, stepflow_home
):
    """The items of a fan-out on a backend with futures are all in flight at once, waited
    on from one thread; an item is retried, one past its timeout fails alone."""
    n = 24
    mod = make_module("fan_on_futures", FAN.format(n=n, marker=str(tmp_path / "marker")))
    config = _config(tmp_path, workers=n, gather=n)
    result = Pipeline("p", [mod.items, mod.squared]).run(workers=2, config=config)
    report = result.steps["squared"]
    assert report.state is StepState.FAILED
    assert isinstance(report.error, StepTimeoutError) and "(item 5)" in str(report.error)
    assert report.items == {"ran": n - 1, "failed": 1}
    gathering = backend.INSTANCES[-1]
    ((held, threads),) = gathering.samples
    assert held == n, "the fan-out did not have every item in flight at once"
    assert len(threads) < n, threads
    assert gathering.submitted.count("squared.3#1") == gathering.submitted.count("squared.3#2") == 1


def test_a_step_another_run_is_computing_waits_off_the_dispatch_threads(
    backend, make_module, tmp_path, stepflow_home
):
    """Single flight: a second run finds the step's lease taken by a first run that is
    computing it, waits for it on a thread set aside for such waits, and reuses its result;
    meanwhile its other steps go on."""
    started = tmp_path / "started"
    mod = make_module(
        "single_flight_on_futures",
        f"""
        import time
        from pathlib import Path
        from stepflow import step

        @step(backend="gathering")
        def shared() -> int:
            Path({str(started)!r}).write_text("yes")
            time.sleep(2)
            return 7

        @step(backend="gathering", cache=False)
        def other() -> int:
            return 8
        """,
    )
    first: list = []
    thread = threading.Thread(
        target=lambda: first.append(
            Pipeline("p", [mod.shared]).run(workers=2, config=_config(tmp_path, workers=2))
        )
    )
    thread.start()
    deadline = time.monotonic() + 60
    while not started.exists():
        assert time.monotonic() < deadline and thread.is_alive(), "the first run never started"
        time.sleep(0.02)
    second = Pipeline("p", [mod.shared, mod.other]).run(
        workers=2, config=_config(tmp_path, workers=2)
    )
    thread.join(timeout=60)
    assert first[0].steps["shared"].state is StepState.RAN
    assert second.steps["shared"].state is StepState.REUSED
    assert second["shared"] == 7 and second["other"] == 8
    assert "shared#1" not in backend.INSTANCES[-1].submitted


NOT_A_FUTURE = """
import stepflow
from stepflow.worker import execute_task

class Eager(stepflow.Backend):
    \"\"\"A common mistake: submit() answers the result itself instead of a future of it.\"\"\"

    kind = "eager"

    def submit(self, task):
        return execute_task(task)

@stepflow.hookimpl
def stepflow_backend_types():
    return {"eager": Eager}
"""


@pytest.mark.parametrize("workers", [1, 2], ids=["sequential", "parallel"])
def test_submit_that_returns_no_future_fails_the_step_saying_so(
    make_module, stepflow_home, workers
):
    make_module("eager_backend", NOT_A_FUTURE)
    mod = make_module(
        "on_eager",
        """
        from stepflow import step

        @step(backend="eager")
        def answer() -> int:
            return 42
        """,
    )
    result = Pipeline("p", [mod.answer]).run(workers=workers, plugins=["eager_backend"])
    error = str(result.steps["answer"].error)
    assert result.steps["answer"].state is StepState.FAILED
    assert "backend 'eager' failed to run step 'answer'" in error
    assert "submit() returned TaskResult, not a future" in error
