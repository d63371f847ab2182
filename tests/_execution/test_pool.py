"""Worker processes and pools: versions, environments, and the results a pool makes itself."""

from __future__ import annotations

import os
import platform
import sys
import sysconfig
import textwrap

import pytest

from stepflow._execution.pool import WorkerPool, WorkerProcess, worker_argv, worker_env
from stepflow._execution.task import user_sys_path
from stepflow._version import __version__
from stepflow.errors import BackendError

STEPS = """
import os
import time
from stepflow import step

@step
def marked() -> str:
    raise RuntimeError("MARK=" + os.environ.get("STEPFLOW_TEST_MARK", "unset"))

@step
def sleepy() -> int:
    time.sleep(60)
    return 1
"""

# Speaks the worker's side of the protocol, as a worker of another stepflow and Python would.
OLD_WORKER = """
import sys
from stepflow._execution.frames import READY, write_frame
write_frame(sys.stdout.buffer, {
    "ready": READY, "stepflow": "0.0.1", "python": "3.99.0", "executable": "/opt/old/bin/python"
})
sys.stdin.buffer.read()
"""


@pytest.fixture
def steps(make_module):
    return make_module("pool_steps", textwrap.dedent(STEPS))


def test_worker_of_another_version_is_refused_naming_both(steps, tmp_path, task_for):
    """A worker that says another stepflow and Python version is a ``BackendError`` naming
    both versions and its interpreter, not a lost worker."""
    worker = WorkerProcess([sys.executable, "-c", OLD_WORKER])
    with pytest.raises(BackendError) as info:
        worker.wait_ready()
    message = str(info.value)
    assert "/opt/old/bin/python runs stepflow 0.0.1 on Python 3.99.0" in message
    assert f"this run uses stepflow {__version__} on Python {platform.python_version()}" in message
    assert not worker.alive

    result = WorkerProcess([sys.executable, "-c", OLD_WORKER]).execute(
        task_for(steps.marked.spec), None
    )
    assert result.error is not None
    assert result.error.exc_type == "stepflow.errors.BackendError"
    assert "runs stepflow 0.0.1" in result.error.message
    assert "before it answered" not in result.error.message


def test_real_worker_says_its_versions(tmp_path):
    worker = WorkerProcess(worker_argv())
    try:
        assert worker.wait_ready()
        assert worker.hello["stepflow"] == __version__
        assert worker.hello["python"] == platform.python_version()
    finally:
        worker.close()


def test_pool_workers_get_the_env_given(steps, tmp_path, task_for):
    """``WorkerPool(size, argv, env)`` starts its workers with that environment."""
    env = {**worker_env(), "STEPFLOW_TEST_MARK": "from-the-pool"}
    pool = WorkerPool(1, worker_argv(), env)
    try:
        result = pool.execute(task_for(steps.marked.spec), None)
    finally:
        pool.close()
    assert result.error is not None
    assert "MARK=from-the-pool" in result.error.message


def test_cancelled_task_says_so(steps, tmp_path, task_for):
    """A task whose worker ``cancel`` killed comes back cancelled, not as a crashed worker."""
    import threading

    pool = WorkerPool(1)
    results = []
    thread = threading.Thread(
        target=lambda: results.append(pool.execute(task_for(steps.sleepy.spec), None))
    )
    thread.start()
    # Cancel once the worker has the task: its process is busy.
    while not pool._busy or not next(iter(pool._busy))._ready:
        thread.join(0.05)
    pool.cancel()
    thread.join()
    (result,) = results
    assert result.error is not None
    assert result.error.message == "step 'sleepy' was cancelled before it finished"


def test_timed_out_result(steps, tmp_path, task_for):
    pool = WorkerPool(1)
    try:
        result = pool.execute(task_for(steps.sleepy.spec), 0.5)
    finally:
        pool.close()
    assert result.error is not None and result.error.timed_out
    assert result.error.exc_type == "stepflow.errors.StepTimeoutError"
    assert result.run_id == "run1"


# A worker that, once its stdin closes, notes it, then exits only when the test says so.
SLOW_TO_EXIT = """
import os, sys, time
log, go = sys.argv[1], sys.argv[2]
sys.stdin.buffer.read()
with open(log, "a") as fh:
    fh.write(f"eof {os.getpid()}\\n")
while not os.path.exists(go):
    time.sleep(0.01)
with open(log, "a") as fh:
    fh.write(f"exit {os.getpid()}\\n")
"""


def test_close_asks_every_idle_worker_before_waiting_for_any(tmp_path):
    """``WorkerPool.close`` closes every idle worker's stdin first, then waits for them
    all: none waits for another to exit first, so none is killed for running out of time."""
    import threading

    log, go = tmp_path / "log", tmp_path / "go"
    pool = WorkerPool(3, [sys.executable, "-c", SLOW_TO_EXIT, str(log), str(go)])
    workers = [pool._acquire() for _ in range(3)]
    for worker in workers:
        pool._release(worker)
    closing = threading.Thread(target=pool.close)
    closing.start()
    try:
        # Every worker sees its stdin closed while the others still run (one after another,
        # the first would have to exit, or be killed after 5 s, before the next is asked).
        while not (log.exists() and log.read_text().count("eof") == 3):
            assert closing.is_alive(), log.read_text() if log.exists() else "no worker saw EOF"
            closing.join(0.02)
    finally:
        go.touch()
        closing.join()
    lines = log.read_text().split("\n")
    assert sorted(line.split()[0] for line in lines if line) == ["eof"] * 3 + ["exit"] * 3
    assert not any(worker.alive for worker in workers)


def _site_dirs() -> list[str]:
    paths = sysconfig.get_paths()
    return [paths["stdlib"], paths["purelib"], paths["platlib"]]


def test_user_sys_path_leaves_out_stdlib_and_site_packages(tmp_path):
    """Only the user's code paths travel: not this interpreter's stdlib or site-packages."""
    stdlib, purelib, platlib = _site_dirs()
    paths = ["", str(tmp_path), stdlib, purelib, platlib, os.path.join(stdlib, "lib-dynload")]
    assert user_sys_path(paths) == (os.getcwd(), str(tmp_path))


def test_worker_env_has_no_site_packages():
    """The workers' ``PYTHONPATH`` holds the user's paths, not this interpreter's packages,
    which another interpreter would import before its own."""
    entries = worker_env()["PYTHONPATH"].split(os.pathsep)
    assert os.getcwd() in entries
    for own in _site_dirs():
        assert own not in entries
