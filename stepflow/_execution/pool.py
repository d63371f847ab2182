"""A pool of ``python -m stepflow.worker --serve`` processes.

Each worker runs in its own process group, so a timeout or a cancel can kill the step and
everything it started, and so the terminal's Ctrl-C reaches only the run loop, which then
stops the workers itself.

Workers die with the run's process however it ends, ``kill -9`` included: each holds the read
end of a pipe whose only write end is in the run's process (``WATCH_ENV`` names it). When the
run's process is gone the pipe reads end-of-file, and the worker kills its own process group,
so no step goes on computing (and writing results) behind a run that no longer exists.

Both classes are public, as ``stepflow.backends.WorkerProcess`` and ``WorkerPool``: a backend
that runs steps with another interpreter (a virtualenv, ``docker exec``, ``ssh host python``)
gives them its own ``argv`` and ``env``.

A pool of default workers (``worker_argv()``: this interpreter) forks them from a fork server
(``stepflow._execution.forkserver``), started with its first worker: one interpreter start
instead of one per worker. Each forked worker is what a started one is (its own session, the
lifeline, the environment, the version check); if the fork server cannot start or dies, the
pool starts its workers as any other command.
"""

from __future__ import annotations

import os
import pickle
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from stepflow._execution.capture import read_output
from stepflow._execution.forkserver import ForkedProcess, ForkServer, ForkServerError
from stepflow._execution.frames import (
    HEADER,
    OUTPUT_ENV,
    READY,
    WATCH_ENV,
    encode_frame,
    frame_length,
    version_mismatch,
)
from stepflow._execution.live import follow_output
from stepflow._execution.task import Task, TaskResult, user_sys_path
from stepflow.errors import BackendError

__all__ = ["WorkerPool", "WorkerProcess", "worker_argv", "worker_env"]

#: seconds a new worker may take to import stepflow and say it is ready
_START_TIMEOUT = 120.0
#: seconds a closed worker may take to exit before it is killed
_CLOSE_WAIT = 5.0


def worker_argv(python: str | os.PathLike[str] | None = None) -> list[str]:
    """The command of a serving worker run by ``python`` (default: this interpreter)."""
    return [os.fspath(python or sys.executable), "-m", "stepflow.worker", "--serve"]


class WorkerProcess:
    """One long-lived worker process speaking the framed protocol on its stdin/stdout.

    ``argv`` starts a serving worker (``worker_argv()``, or that command behind a transport
    such as ``ssh host``), with the environment ``env`` (default: ``worker_env()``). The
    process starts at once; ``execute`` sends it one task at a time. With ``fork_server``
    (for ``worker_argv()`` only) it is forked from there, or started with ``argv`` when the
    fork server cannot.
    """

    def __init__(
        self,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        *,
        fork_server: ForkServer | None = None,
    ) -> None:
        self.argv = list(argv)
        # Only this process holds the write end (os.pipe is not inherited by other workers).
        watch, self._lifeline = os.pipe()
        self._lifeline_lock = threading.Lock()
        full_env = dict(worker_env() if env is None else env)
        full_env[WATCH_ENV] = str(watch)
        # The worker captures each step's stdout and stderr in files here, so what a step
        # printed survives when the worker is killed (timeout, crash).
        self.output_dir = Path(tempfile.mkdtemp(prefix="stepflow-worker-"))
        full_env[OUTPUT_ENV] = str(self.output_dir)
        self.proc: subprocess.Popen[bytes] | ForkedProcess
        try:
            self.proc = self._start(full_env, watch, fork_server)
        except BaseException:
            os.close(self._lifeline)
            shutil.rmtree(self.output_dir, ignore_errors=True)
            raise
        finally:
            os.close(watch)
        self._ready = False
        #: the worker's ready frame once it said it (its stepflow and Python versions)
        self.hello: dict[str, str] = {}

    def _start(
        self, env: dict[str, str], watch: int, fork_server: ForkServer | None
    ) -> subprocess.Popen[bytes] | ForkedProcess:
        if fork_server is not None:
            try:
                return fork_server.spawn(env, watch)
            except ForkServerError:
                pass  # started as any command below
        return subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            start_new_session=True,
            pass_fds=(watch,),
        )

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_ready(self) -> bool:
        """Wait until the worker says it is ready; ``False`` when it died or never said so.

        :raises BackendError: the worker runs another stepflow or Python version than this
            process (it is killed); the message names both versions and its interpreter.
        """
        if self._ready:
            return True
        try:
            header = self._read(HEADER.size, time.monotonic() + _START_TIMEOUT)
            hello = None if header is None else self._read(frame_length(header), None)
        except EOFError:
            return False
        frame = None if hello is None else pickle.loads(hello)  # noqa: S301 - our own worker
        mismatch = version_mismatch(frame, self.argv[0])
        if mismatch is not None:
            self.kill()
            raise BackendError(mismatch)
        if not (isinstance(frame, dict) and frame.get("ready") == READY):
            self.kill()
            return False
        self.hello = frame
        self._ready = True
        return True

    def execute(self, task: Task, timeout: float | None) -> TaskResult:
        """Send ``task`` and wait for its result; kill the worker if ``timeout`` passes.

        Never raises for a step or a worker that fails: a timeout, a lost worker or a worker
        of another version comes back as a failed ``TaskResult``. What the step prints is
        published as it prints it (``stepflow ui``), from the worker's output files.
        """
        with follow_output(task, self.output_dir):
            return self._execute(task, timeout)

    def _execute(self, task: Task, timeout: float | None) -> TaskResult:
        assert self.proc.stdin is not None
        # A step's timeout starts when the worker can take it, not while Python starts.
        try:
            if not self.wait_ready():
                return self._lost(task)
        except BackendError as exc:
            return TaskResult.failed(task, str(exc))
        data = encode_frame(task)
        try:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            return self._lost(task)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            header = self._read(HEADER.size, deadline)
            if header is None:
                return self._timed_out(task, timeout)
            body = self._read(frame_length(header), None)
        except EOFError:
            return self._lost(task)
        assert body is not None
        return pickle.loads(body)  # noqa: S301 - our own worker

    def _read(self, n: int, deadline: float | None) -> bytes | None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        chunks: list[bytes] = []
        while n:
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                    return None
            chunk = os.read(fd, min(n, 1 << 20))
            if not chunk:
                raise EOFError
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    def _printed(self, task: Task) -> dict[str, str]:
        """What the step of ``task`` printed before its worker died (call after it is dead)."""
        secrets = task.secret_values
        return read_output(self.output_dir, secrets)

    def _timed_out(self, task: Task, timeout: float | None) -> TaskResult:
        self.kill(keep_output=True)
        logs = self._printed(task)
        shutil.rmtree(self.output_dir, ignore_errors=True)
        return TaskResult.timed_out(task, timeout, logs=logs)

    def _lost(self, task: Task) -> TaskResult:
        code = self.proc.wait()
        logs = self._printed(task) if self._ready else {}
        how = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
        if getattr(self.proc, "status_lost", False):
            how = "ended (its exit status was lost with the fork server that started it)"
        return TaskResult.lost(
            task,
            f"{how} before it answered (out of memory, os._exit() or a crash in native code?)",
            logs=logs,
        )

    def kill(self, *, keep_output: bool = False) -> None:
        """Kill the worker's whole process group (and remove its output folder)."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
        # kill() may race with itself (a cancel while a timeout fires): close the fd once.
        with self._lifeline_lock:
            lifeline, self._lifeline = self._lifeline, -1
        if lifeline >= 0:
            os.close(lifeline)
        if not keep_output:
            shutil.rmtree(self.output_dir, ignore_errors=True)

    def close(self) -> None:
        """Ask the worker to finish (stdin closed), then make sure it is gone."""
        self.ask_to_finish()
        self.wait_gone(time.monotonic() + _CLOSE_WAIT)

    def ask_to_finish(self) -> None:
        """Close the worker's stdin: it finishes its current task, if any, then exits."""
        if self.proc.stdin is not None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass

    def wait_gone(self, deadline: float) -> None:
        """Wait until ``deadline`` (``time.monotonic``) for the worker to exit, then kill
        whatever is left of its process group and remove its output folder."""
        try:
            self.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        self.kill()


def worker_env() -> dict[str, str]:
    """The environment for a worker: ours, with our import path so it finds user modules.

    Only the user's code paths go on ``PYTHONPATH`` (``user_sys_path``), never this
    interpreter's standard library or site-packages, so a worker running another interpreter
    imports its own packages.
    """
    env = dict(os.environ)
    paths = list(user_sys_path())
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(p for p in paths if p))
    return env


class WorkerPool:
    """Up to ``size`` worker processes, started on demand and reused between tasks.

    Each is a ``WorkerProcess(argv, env)``: ``argv`` defaults to ``worker_argv()`` (this
    interpreter) and ``env`` to ``worker_env()``. ``execute`` is thread-safe; call it from as
    many threads as the pool has workers.
    """

    def __init__(
        self,
        size: int,
        argv: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.size = size
        self.argv = list(argv or worker_argv())
        self._idle: list[WorkerProcess] = []
        self._busy: set[WorkerProcess] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._cancelled = False
        self._env = dict(worker_env() if env is None else env)
        # Forked, when they run this interpreter; started lazily with the first worker.
        self._forks = ForkServer(self._env) if self.argv == worker_argv() else None

    def execute(self, task: Task, timeout: float | None) -> TaskResult:
        """Run ``task`` on an idle worker (or a new one); see ``WorkerProcess.execute``."""
        worker = self._acquire()
        try:
            result = worker.execute(task, timeout)
        finally:
            self._release(worker)
        if self._cancelled and result.error is not None and result.error.internal:
            # Killed by ``cancel``, not lost: say so rather than "killed by signal 9".
            return TaskResult.cancelled(task, logs=result.logs)
        return result

    def _acquire(self) -> WorkerProcess:
        with self._lock:
            if self._closed:
                raise RuntimeError("worker pool is closed")
            while self._idle:
                worker = self._idle.pop()
                if worker.alive:
                    self._busy.add(worker)
                    return worker
        # Started outside the lock: threads that each need a new worker (the first tasks of a
        # run with --workers 8) start theirs at the same time, not one after another.
        worker = WorkerProcess(self.argv, self._env, fork_server=self._forks)
        with self._lock:
            if not self._closed:
                self._busy.add(worker)
                return worker
        worker.kill()  # closed or cancelled meanwhile: this one was never seen by either
        raise RuntimeError("worker pool is closed")

    def _release(self, worker: WorkerProcess) -> None:
        with self._lock:
            self._busy.discard(worker)
            if worker.alive and not self._closed and len(self._idle) < self.size:
                self._idle.append(worker)
                return
        worker.close() if worker.alive else worker.kill()

    def cancel(self) -> None:
        """Kill every worker, busy ones included; their tasks come back as lost."""
        with self._lock:
            self._closed = self._cancelled = True
            workers = list(self._busy) + self._idle
            self._idle = []
        for worker in workers:
            worker.kill()
        if self._forks is not None:
            self._forks.close()

    def close(self) -> None:
        """Let idle workers finish, kill busy ones; the pool takes no more tasks."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
            busy = list(self._busy)
        # All asked first, then waited for: each takes a while to exit (its interpreter
        # shuts down), and one after another that was 8 x 0.1-0.2 s at the end of every
        # run with --workers 8. Within one deadline, as one worker's close has.
        for worker in idle:
            worker.ask_to_finish()
        deadline = time.monotonic() + _CLOSE_WAIT
        for worker in idle:
            worker.wait_gone(deadline)
        for worker in busy:
            worker.kill()
        # Last: the workers' exit codes come from the fork server.
        if self._forks is not None:
            self._forks.close()
