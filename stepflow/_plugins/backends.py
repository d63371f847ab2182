"""The built-in backends: ``local`` (in-process, or worker processes when parallel) and
``process`` (always a worker process).

They register through ``stepflow_backend_types`` like any third-party backend.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from stepflow._authoring.step import StepSpec
from stepflow._execution.backend import Backend, BackendContext
from stepflow.hookspecs import hookimpl

if TYPE_CHECKING:
    # Only a step that runs needs these: a fully cached run never imports them.
    from stepflow._execution.pool import WorkerPool
    from stepflow._execution.task import Task, TaskResult


class ProcessBackend(Backend):
    """Runs each task in a pool of ``python -m stepflow.worker`` processes.

    Its pool has one process per slot (``workers`` in its table; default the run's
    ``workers``).
    """

    kind = "process"

    def __init__(self, name: str, options: Mapping[str, Any], context: BackendContext) -> None:
        super().__init__(name, options, context)
        self._size = context.workers
        self._pool: WorkerPool | None = None
        self._lock = threading.Lock()

    @property
    def pool(self) -> WorkerPool:
        with self._lock:
            if self._pool is None:
                from stepflow._execution.pool import WorkerPool

                self._pool = WorkerPool(self._size)
            return self._pool

    def execute(self, task: Task, *, timeout: float | None) -> TaskResult:
        return self.pool.execute(task, timeout)

    def cancel(self) -> None:
        if self._pool is not None:
            self._pool.cancel()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
        super().close()


class LocalBackend(ProcessBackend):
    """The default: in this process when the run is sequential, worker processes otherwise.

    A step with a ``timeout`` always runs in a worker process, because only a process can be
    stopped for sure when the step does not return.
    """

    kind = "local"

    def runs_inline(self, spec: StepSpec) -> bool:
        run_workers = self.context.run_workers or self.context.workers
        return run_workers == 1 and spec.options.timeout is None


@hookimpl
def stepflow_backend_types() -> dict[str, type[Backend]]:
    return {"local": LocalBackend, "process": ProcessBackend}
