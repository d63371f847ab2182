"""stepflow-echo: run each step in a fresh ``python -m stepflow.worker`` process.

A complete third-party backend plugin. It registers the backend kind ``echo``, adds
``stepflow run --echo-tag TAG``, and marks the worker's environment so a step can tell which
backend ran it::

    [tool.stepflow.backends.gpu]
    plugin = "echo"
    log = "echo.log"      # optional: one line per task, relative to the project
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import stepflow
from stepflow.errors import BackendUnavailableError, UsageError

__all__ = ["EchoBackend"]

#: set by ``stepflow_configure`` from ``--echo-tag``; the CLI configures once per process
_tag: str | None = None


class EchoBackend(stepflow.Backend):
    """Pickle the task to a file, run the worker on it in a new process, read the result.

    Options: ``log`` (a file that gets one line per task) and ``python`` (the interpreter
    that runs the worker; default: the one running stepflow).
    """

    kind = "echo"

    def __init__(
        self, name: str, options: Mapping[str, Any], context: stepflow.BackendContext
    ) -> None:
        super().__init__(name, options, context)
        self.python = str(self.options.get("python", sys.executable))
        log = self.options.get("log")
        self.log = None if log is None else context.config.rootdir / str(log)
        self._running: set[subprocess.Popen[bytes]] = set()
        self._lock = threading.Lock()

    def check(self) -> None:
        # Runs before any step: a wrong interpreter is reported up front, not as N failures.
        if not Path(self.python).is_file():
            raise BackendUnavailableError(
                f"backend {self.name!r}: python = {self.python!r} does not exist"
            )

    def environment(self) -> dict[str, str]:
        # Part of every cache key: a result made by another interpreter is not reused.
        return {} if self.python == sys.executable else {"python": self.python}

    def execute(self, task: stepflow.Task, *, timeout: float | None) -> stepflow.TaskResult:
        with tempfile.TemporaryDirectory(prefix="stepflow-echo-") as tmp:
            task_file = Path(tmp, "task.pickle")
            result_file = Path(tmp, "result.pickle")
            task_file.write_bytes(pickle.dumps(task, protocol=5))
            env = dict(os.environ, STEPFLOW_ECHO_BACKEND=self.name)
            if _tag is not None:
                env["STEPFLOW_ECHO_TAG"] = _tag
            started = time.monotonic()
            # A session of its own, so a timeout or a cancel kills the step's children too.
            proc = subprocess.Popen(
                [self.python, "-m", "stepflow.worker", str(task_file), str(result_file)],
                env=env,
                start_new_session=True,
            )
            with self._lock:
                self._running.add(proc)
            try:
                code = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill(proc)
                self._log(task, "timeout")
                return stepflow.TaskResult(
                    task.step,
                    task.attempt,
                    error=stepflow.TaskError(
                        exc_type="stepflow.errors.StepTimeoutError",
                        message=f"step {task.step!r} ran past its timeout of {timeout:g}s on "
                        f"backend {self.name!r} and its process was killed",
                        traceback="",
                        timed_out=True,
                    ),
                    duration=time.monotonic() - started,
                )
            finally:
                with self._lock:
                    self._running.discard(proc)
            if code != 0 or not result_file.exists():
                self._log(task, f"lost (exit code {code})")
                return stepflow.TaskResult(
                    task.step,
                    task.attempt,
                    error=stepflow.TaskError(
                        exc_type="stepflow.errors.BackendError",
                        message=f"the echo worker for step {task.step!r} exited with code "
                        f"{code} without a result",
                        traceback="",
                        internal=True,
                    ),
                    duration=time.monotonic() - started,
                )
            # Safe to unpickle: our own worker wrote it, in a folder only we can write to.
            result: stepflow.TaskResult = pickle.loads(result_file.read_bytes())
        self._log(task, "ok" if result.ok else "failed")
        return result

    def cancel(self) -> None:
        with self._lock:
            running = list(self._running)
        for proc in running:
            _kill(proc)

    def _log(self, task: stepflow.Task, status: str) -> None:
        if self.log is None:
            return
        line = f"{self.name} {task.run_id} {task.step} attempt={task.attempt} {status}\n"
        with self._lock, open(self.log, "a") as fh:
            fh.write(line)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
    proc.wait()


@stepflow.hookimpl
def stepflow_backend_types() -> dict[str, type[stepflow.Backend]]:
    return {"echo": EchoBackend}


@stepflow.hookimpl
def stepflow_addoption(parser: argparse.ArgumentParser, command: str) -> None:
    if command == "run":
        parser.add_argument(
            "--echo-tag", metavar="TAG", help="echo backend: set STEPFLOW_ECHO_TAG in workers"
        )


@stepflow.hookimpl
def stepflow_configure(config: Any) -> None:
    global _tag
    tag = config.options.get("echo_tag")
    if tag is not None and not re.fullmatch(r"[\w.-]+", tag):
        raise UsageError(f"--echo-tag {tag!r}: use letters, digits, '.', '-' and '_' only")
    _tag = tag


@stepflow.hookimpl
def stepflow_unconfigure(config: Any) -> None:
    global _tag
    _tag = None
