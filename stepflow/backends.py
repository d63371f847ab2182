"""The backend kit: everything a compute backend needs, public and stable.

A backend moves a ``Task`` to where it should run, runs ``python -m stepflow.worker`` there
and brings the ``TaskResult`` back (see ``docs/how-to/write-a-backend.md``)::

    from stepflow.backends import Backend, WorkerPool, worker_argv

    class VenvBackend(Backend):
        kind = "venv"

        def execute(self, task, *, timeout):
            return self.pool.execute(task, timeout)

- ``Backend``, ``BackendContext``: the base class and what it knows about the run.
- ``Task``, ``TaskResult``, ``TaskError``, ``ArtifactRef``: what travels. ``TaskResult.timed_out``,
  ``TaskResult.lost``, ``TaskResult.cancelled`` and ``TaskResult.failed`` build the results a
  backend reports itself.
- ``WorkerProcess(argv, env)``, ``WorkerPool(size, argv, env)``: serving workers started with
  any command (``worker_argv(python)``, or it behind ``ssh`` or ``docker exec``);
  ``worker_env()`` is the environment they get by default. A worker says its stepflow and
  Python versions when it starts, and one that differs from the run is refused with a
  ``BackendError`` naming both.
- ``read_frame``, ``write_frame``: the frame codec of ``python -m stepflow.worker --serve``.
- ``user_sys_path()``: the import paths of the user's code, without this interpreter's
  standard library and site-packages (what ``Task.sys_path`` holds).
- ``follow_output(task, directory)``, ``publish_output(task, stream, text)``: show what a
  step prints while it runs (``stepflow ui``), from files a worker writes or from text the
  backend receives; the run masks secrets. ``WorkerProcess`` does it by itself.
- ``masked(text, task.secret_values, final=)``: the run's masking rule, for a backend that
  must mask before output leaves the machine a step runs on.
"""

from __future__ import annotations

from stepflow._execution.backend import Backend, BackendContext
from stepflow._execution.frames import read_frame, write_frame
from stepflow._execution.live import follow_output, masked, publish_output
from stepflow._execution.pool import WorkerPool, WorkerProcess, worker_argv, worker_env
from stepflow._execution.task import ArtifactRef, Task, TaskError, TaskResult, user_sys_path

__all__ = [
    "ArtifactRef",
    "Backend",
    "BackendContext",
    "Task",
    "TaskError",
    "TaskResult",
    "WorkerPool",
    "WorkerProcess",
    "follow_output",
    "masked",
    "publish_output",
    "read_frame",
    "user_sys_path",
    "worker_argv",
    "worker_env",
    "write_frame",
]
