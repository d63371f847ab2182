"""The public backend kit, ``stepflow.backends``, and what a run hands a backend."""

from __future__ import annotations

import sys
import sysconfig
import textwrap
import threading
from concurrent.futures import Future

import pytest

import stepflow
import stepflow.backends as kit
from stepflow import Pipeline, Resources
from stepflow._execution.backend import BackendContext

PLUGIN = """
import stepflow
from stepflow.backends import Backend
from stepflow.worker import execute_task

tasks = []

class Recording(Backend):
    kind = "recording"
    # What the step below asks for: a backend must declare it, or the step is refused.
    supported_env = frozenset({"requirements"})
    supported_resources = frozenset({"cpus", "memory", "gpus"})

    def execute(self, task, *, timeout):
        tasks.append((task, timeout))
        return execute_task(task)

@stepflow.hookimpl
def stepflow_backend_types():
    return {"recording": Recording}
"""

FLOW = """
from stepflow import step

@step(backend="recording", timeout=30, resources={"cpus": 2, "gpus": 1},
      env={"requirements": ["numpy"]})
def answer() -> int:
    return 42
"""


def test_the_kit_is_the_implementation():
    """``stepflow.backends`` re-exports the classes the built-in backends use."""
    from stepflow._execution import frames, pool, task

    assert kit.Backend is stepflow.Backend
    assert kit.TaskResult is stepflow.TaskResult is task.TaskResult
    assert kit.WorkerPool is pool.WorkerPool and kit.WorkerProcess is pool.WorkerProcess
    assert kit.read_frame is frames.read_frame and kit.write_frame is frames.write_frame
    assert all(hasattr(kit, name) for name in kit.__all__)


def test_task_carries_env_resources_timeout_and_only_user_paths(make_module, stepflow_home):
    """A backend gets the step's env, resources and timeout on the task, and a ``sys_path``
    without the run's standard library and site-packages."""
    plugin = make_module("recording_plugin", textwrap.dedent(PLUGIN))
    flow = make_module("recording_flow", textwrap.dedent(FLOW))
    result = Pipeline("p", [flow.answer]).run(plugins=["recording_plugin"])
    assert result.ok and result["answer"] == 42
    ((task, timeout),) = plugin.tasks
    assert task.timeout == timeout == 30
    assert task.resources == Resources(cpus=2, gpus=1)
    assert task.env == {"requirements": ["numpy"]}
    own = sysconfig.get_paths()
    for path in (own["stdlib"], own["purelib"], own["platlib"]):
        assert path not in task.sys_path
    assert str(flow.__file__).rsplit("/", 1)[0] in task.sys_path


class Answering(kit.Backend):
    kind = "answering"

    def __init__(self) -> None:
        super().__init__("answering", {}, BackendContext(config=None, workers=2, run_id="r"))  # type: ignore[arg-type]
        self.seen: list[tuple[str, float | None, str]] = []

    def execute(self, task, *, timeout):
        self.seen.append((task.step, timeout, threading.current_thread().name))
        return kit.TaskResult(task.step, task.attempt, run_id=task.run_id)


def _task(step: str, timeout: float | None = None) -> kit.Task:
    from stepflow._authoring.step import StepRef

    return kit.Task(
        run_id="r",
        step=step,
        attempt=1,
        ref=StepRef("m", step),
        inputs={},
        params={},
        store_uri="unused",
        timeout=timeout,
    )


def test_submit_runs_execute_off_the_calling_thread_and_returns_a_future():
    backend = Answering()
    try:
        futures = [backend.submit(_task("a", 5.0)), backend.submit(_task("b"))]
        assert all(isinstance(f, Future) for f in futures)
        results = [f.result(timeout=30) for f in futures]
    finally:
        backend.close()
    assert [(r.step, r.ok) for r in results] == [("a", True), ("b", True)]
    seen = sorted(backend.seen)
    assert [(step, timeout) for step, timeout, _ in seen] == [("a", 5.0), ("b", None)]
    assert all(name.startswith("stepflow-answering") for _, _, name in seen)


def test_submit_after_close_starts_again():
    """``close`` shuts the submit threads down; a backend reused later makes new ones."""
    backend = Answering()
    backend.submit(_task("a")).result(timeout=30)
    backend.close()
    backend.close()  # twice is harmless
    assert backend.submit(_task("b")).result(timeout=30).ok
    backend.close()


@pytest.mark.parametrize(
    ("make", "exc_type", "message"),
    [
        (
            lambda t: kit.TaskResult.timed_out(t, 2.5),
            "stepflow.errors.StepTimeoutError",
            "step 's' ran past its timeout of 2.5s and its process was killed",
        ),
        (
            lambda t: kit.TaskResult.lost(t, "lost its SSH connection"),
            "stepflow.errors.BackendError",
            "the worker process running step 's' lost its SSH connection",
        ),
        (
            kit.TaskResult.cancelled,
            "stepflow.errors.BackendError",
            "step 's' was cancelled before it finished",
        ),
    ],
    ids=["timed_out", "lost", "cancelled"],
)
def test_ready_made_results(make, exc_type, message):
    """The results a backend builds itself name the task's step, attempt and run."""
    result = make(_task("s"))
    assert (result.step, result.attempt, result.run_id) == ("s", 1, "r")
    assert result.error is not None
    assert (result.error.exc_type, result.error.message) == (exc_type, message)
    assert result.error.timed_out == (exc_type == "stepflow.errors.StepTimeoutError")
    assert result.error.internal == (not result.error.timed_out)


def test_frame_codec_round_trip(tmp_path):
    path = tmp_path / "frames"
    with path.open("wb") as fh:
        kit.write_frame(fh, {"a": 1})
        kit.write_frame(fh, [sys.version])
    with path.open("rb") as fh:
        assert kit.read_frame(fh) == {"a": 1}
        assert kit.read_frame(fh) == [sys.version]
        with pytest.raises(EOFError):
            kit.read_frame(fh)
