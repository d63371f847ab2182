"""A backend with futures of its own, as an engine such as Dask has: ``submit`` returns a
future at once, and one thread of the backend's runs the tasks one after another in a worker
process (``WorkerPool``, so timeouts and cancels kill a real process) and completes them.

Options of ``[tool.stepflow.backends.NAME]`` (``plugin = "gathering"``):

- ``gather``: hold the first this many submits before running any, and note then which
  threads the process has (``Gathering.samples``): every step is in flight at that moment.
- ``interrupt_after``: after this many submits, interrupt the main thread as a Ctrl-C would.

Each instance is kept in ``INSTANCES`` for the test to read.
"""

from __future__ import annotations

import _thread
import queue
import threading
import time
from concurrent.futures import Future
from typing import Any

import stepflow
from stepflow.backends import Backend, Task, TaskResult, WorkerPool

#: every backend made, newest last
INSTANCES: list[Gathering] = []
#: seconds the backend waits for the submits it gathers before it runs what it has
GATHER_WAIT = 60.0


class Gathering(Backend):
    kind = "gathering"

    def __init__(self, name: str, options: Any, context: Any) -> None:
        super().__init__(name, options, context)
        self.gather = int(self.options.get("gather", 1))
        self.interrupt_after = int(self.options.get("interrupt_after", 0))
        #: (submits received, names of the process's threads) when the gathered ones arrived
        self.samples: list[tuple[int, list[str]]] = []
        self.submitted: list[str] = []
        self.cancels = 0
        self._tasks: queue.SimpleQueue[tuple[Task, Future[TaskResult]] | None] = queue.SimpleQueue()
        self._pool = WorkerPool(1)
        self._cancelled = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="gathering-backend", daemon=True)
        self._thread.start()
        INSTANCES.append(self)

    def submit(self, task: Task) -> Future[TaskResult]:
        future: Future[TaskResult] = Future()
        future.set_running_or_notify_cancel()
        self.submitted.append(f"{task.step}#{task.attempt}")
        self._tasks.put((task, future))
        if self.interrupt_after and len(self.submitted) == self.interrupt_after:
            _thread.interrupt_main()
        return future

    def execute(self, task: Task, *, timeout: float | None) -> TaskResult:
        return self.submit(task).result()

    def cancel(self) -> None:
        self.cancels += 1
        self._cancelled.set()
        self._pool.cancel()

    def close(self) -> None:
        self._tasks.put(None)
        self._thread.join(timeout=60)
        self._pool.close()
        super().close()

    def _serve(self) -> None:
        if self.gather > 1:
            held = []
            deadline = time.monotonic() + GATHER_WAIT
            while len(held) < self.gather:
                try:
                    item = self._tasks.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break  # run what came; the sample says how much
                if item is None:
                    return
                held.append(item)
            self.samples.append((len(held), sorted(t.name for t in threading.enumerate())))
            for task, future in held:
                self._run(task, future)
        while (item := self._tasks.get()) is not None:
            self._run(*item)

    def _run(self, task: Task, future: Future[TaskResult]) -> None:
        try:
            result = None if self._cancelled.is_set() else self._pool.execute(task, task.timeout)
        except Exception as exc:
            if not self._cancelled.is_set():
                future.set_exception(exc)
                return
            result = None  # the pool was cancelled under it
        future.set_result(TaskResult.cancelled(task) if result is None else result)


@stepflow.hookimpl
def stepflow_backend_types() -> dict[str, type[Backend]]:
    return {"gathering": Gathering}
