"""What runs inside a Dask worker: one stepflow attempt per Dask task.

A Dask task never runs the step in the Dask worker's own process. It hands the ``Task`` to a
serving ``python -m stepflow.worker`` subprocess (``stepflow.backends.WorkerProcess``) in a
process group of its own, so that a timeout or a cancel kills the step and every process it
started, which a Python thread never could. Serving workers are kept between tasks (at most
one idle per Dask thread), so a step pays for starting Python only the first time.

A running Dask task cannot be interrupted, so a watcher thread stops the attempt instead: it
polls the Dask worker's own state of each running key, and once the key is no longer being
executed (the client cancelled the future, or went away and the scheduler released it) it
kills that attempt's process group. If the Dask worker process itself dies, its serving
workers die with it (their lifeline pipe closes; see ``stepflow.backends.WorkerProcess``).

Only step metadata comes back through Dask (output references, logs, metrics): the data goes
through the run's datastore. What the step prints while it runs goes to the run's client as
Dask events (``_live``).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import os
import platform
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from stepflow.backends import Task, TaskResult, WorkerProcess, worker_argv, worker_env

if TYPE_CHECKING:
    from distributed import Worker

__all__ = [
    "WORKER_ENV",
    "WORKER_NAME_ENV",
    "close_idle",
    "describe",
    "interpreter",
    "process_origin",
    "run_attempt",
]

#: seconds between two looks of the watcher at the running keys' states
POLL = 0.1

#: Dask's worker-side states of a task that is still wanted and running; any other state of a
#: running attempt's key (``cancelled``, ``released``, gone) means nobody waits for it
_WANTED = frozenset({"executing", "long-running", "resumed"})

_lock = threading.Condition()
#: Dask worker address → its serving workers waiting for the next task (several Dask workers
#: share this module when they are threads of one process: ``LocalCluster(processes=False)``)
_idle: dict[str, list[WorkerProcess]] = {}
#: Dask key → (the Dask worker running it, the serving worker running its step)
_running: dict[str, tuple[Worker, WorkerProcess]] = {}
#: keys whose attempt the watcher killed because the run no longer wanted them
_stopped: set[str] = set()
_watcher: threading.Thread | None = None


def run_attempt(
    task: Task, live: str | None = None, origin: tuple[str, int] | None = None
) -> TaskResult:
    """The Dask task of one attempt: run ``task`` in a serving worker and return its result.

    With ``live`` (a topic of the run's client), what the step prints is sent as it prints
    it, as events of that topic (``_live``), unless this is the run's own process
    (``origin``: its host and process id; a ``LocalCluster(processes=False)``), where the
    serving worker's output files are followed by the run itself. Never raises for the
    step's own failure: errors, timeouts and a lost worker come back as a failed
    ``TaskResult``, as from any backend.
    """
    from distributed import get_worker

    dask_worker = get_worker()
    key = str(dask_worker.get_current_task())
    proc = _acquire(dask_worker)
    with _lock:
        _running[key] = (dask_worker, proc)
        _start_watcher()
        _lock.notify_all()
    try:
        if live is None or origin == process_origin():
            result = proc.execute(task, task.timeout)
        else:
            from stepflow_dask._live import follow

            with follow(key, live, dask_worker, proc.output_dir, task):
                result = proc.execute(task, task.timeout)
    except (OSError, ValueError) as exc:
        # The watcher closed the worker's pipes while this thread was reading them.
        result = TaskResult.lost(task, f"could not be read ({type(exc).__name__}: {exc})")
    finally:
        with _lock:
            _running.pop(key, None)
            stopped = key in _stopped
            _stopped.discard(key)
        _release(proc, dask_worker)
    if stopped and result.error is not None and result.error.internal:
        # Killed by the watcher, not lost: say so rather than "killed by signal 9".
        return TaskResult.cancelled(task, logs=result.logs)
    return result


def process_origin() -> tuple[str, int]:
    """This process, as ``run_attempt``'s ``origin`` names the run's: host and process id."""
    return platform.node(), os.getpid()


def describe(task: Task) -> dict[str, Any]:
    """The probe's Dask task: run ``task`` (the probe step) and say where and with what.

    The backend's ``check()`` compares the interpreter with its own, and ``environment()``
    reports it when it differs.
    """
    from distributed import get_worker

    return {
        "result": run_attempt(task),
        "worker": get_worker().address,
        **interpreter(),
    }


def interpreter() -> dict[str, str]:
    """This process's stepflow and Python versions, and one digest of its distributions."""
    import stepflow

    found = sorted(
        {f"{d.metadata['Name']}=={d.version}" for d in importlib.metadata.distributions()}
    )
    digest = hashlib.sha256("\n".join(found).encode()).hexdigest()[:16]
    return {
        "stepflow": stepflow.__version__,
        "python": platform.python_version(),
        "packages": digest,
        "executable": sys.executable,
    }


def close_idle() -> int:
    """Stop this process's idle serving workers (the end of a run); return how many."""
    with _lock:
        idle = [proc for procs in _idle.values() for proc in procs]
        _idle.clear()
    for proc in idle:
        proc.close()
    return len(idle)


#: environment variables that tell a step which Dask worker runs it
WORKER_ENV = "STEPFLOW_DASK_WORKER"
WORKER_NAME_ENV = "STEPFLOW_DASK_WORKER_NAME"


def _acquire(dask_worker: Worker) -> WorkerProcess:
    with _lock:
        idle = _idle.get(dask_worker.address, [])
        while idle:
            proc = idle.pop()
            if proc.alive:
                return proc
    env = worker_env()
    env[WORKER_ENV] = dask_worker.address
    env[WORKER_NAME_ENV] = str(dask_worker.name)
    return WorkerProcess(worker_argv(), env)


def _release(proc: WorkerProcess, dask_worker: Worker) -> None:
    with _lock:
        idle = _idle.setdefault(dask_worker.address, [])
        if proc.alive and len(idle) < max(1, dask_worker.state.nthreads):
            idle.append(proc)
            return
    if proc.alive:
        proc.close()
    else:
        proc.kill()


def _start_watcher() -> None:
    # Called with ``_lock`` held.
    global _watcher
    if _watcher is None or not _watcher.is_alive():
        _watcher = threading.Thread(target=_watch, name="stepflow-dask-watcher", daemon=True)
        _watcher.start()


def _watch() -> None:
    while True:
        with _lock:
            while not _running:
                _lock.wait()
            running = list(_running.items())
        for key, (dask_worker, proc) in running:
            state = dask_worker.state.tasks.get(key)
            if state is None or state.state not in _WANTED:
                with _lock:
                    if key not in _running:
                        continue  # it finished meanwhile
                    _stopped.add(key)
                # Its output folder stays for ``execute`` to read what the step printed.
                with contextlib.suppress(OSError):
                    proc.kill(keep_output=True)
        time.sleep(POLL)
