"""Execute step tasks: ``python -m stepflow.worker``.

Every backend except the in-process one runs steps through this module, so a new backend is
only transport. Three modes:

``python -m stepflow.worker --serve``
    Say ``READY`` with this worker's stepflow and Python versions (the run refuses a worker
    whose versions differ from its own, naming both), then read framed tasks from stdin and
    write framed results to stdout until stdin closes (the protocol is in
    ``stepflow._execution.frames``). The step's own prints go to stderr so they cannot
    corrupt the protocol.

``python -m stepflow.worker --fork-server FD``
    The fork server of a ``WorkerPool`` (``stepflow._execution.forkserver``): import what a
    worker needs once, then fork each new ``--serve`` worker when the run asks on the Unix
    socket ``FD``. Imports no user code.

``python -m stepflow.worker TASK_FILE RESULT_FILE``
    Run the pickled task in ``TASK_FILE`` and write the pickled result to ``RESULT_FILE``
    (for transports that move files more easily than pipes). With ``STEPFLOW_WORKER_OUTPUT``
    set to a folder, the step's stdout and stderr are captured in files there as it runs
    (``stepflow.backends.follow_output`` shows them while it does).

In Python, ``execute_task(task)`` does the work of one task in the current process: it
loads the inputs from the datastore (verified), runs the step, and stores the outputs.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import io
import os
import pickle
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any, BinaryIO

from stepflow._authoring.step import StepRef, StepSpec
from stepflow._execution.attempt import internal_error, run_attempt
from stepflow._execution.capture import capturing, fd_output, step_output
from stepflow._execution.context import StepContext, activate
from stepflow._execution.frames import (
    OUTPUT_ENV,
    READY,
    WATCH_ENV,
    read_frame,
    ready_frame,
    write_frame,
)
from stepflow._execution.loading import loading_step
from stepflow._execution.task import Task, TaskResult
from stepflow._storage.artifacts import ArtifactIO
from stepflow._storage.datastore import Datastore
from stepflow._storage.serializers import builtin_serializers

__all__ = ["OUTPUT_ENV", "READY", "WATCH_ENV", "execute_task", "main", "read_frame", "write_frame"]


def load_step(ref: StepRef) -> StepSpec:
    """Import the step named by ``ref`` in this process."""
    if ref.module == "__main__" and ref.file:
        # A step defined in a script run as ``python script.py``: load the script under
        # another name, so its ``if __name__ == "__main__":`` block does not run again.
        ref = StepRef("__stepflow_main__", ref.qualname, ref.file)
        module = sys.modules.get(ref.module)
        if module is None:
            module = _load_file(ref.module, ref.file)
        return _lookup(module, ref.qualname)
    module = sys.modules.get(ref.module)
    if module is None:
        try:
            module = importlib.import_module(ref.module)
        except ImportError:
            if not ref.file:
                raise
            module = _load_file(ref.module, ref.file)
    return _lookup(module, ref.qualname)


def task_step(task: Task) -> StepSpec:
    """The step ``task`` runs: unpickled from ``task.func``, or imported through ``task.ref``."""
    if not task.func:
        return load_step(task.ref)
    ref = task.ref
    if ref.module != "__main__" and ref.module not in sys.modules:
        # What the step uses from its own module travels by reference: import the module
        # the way ``load_step`` does, so that unpickling finds it even when it was loaded
        # from a file. It may fail where the step was made (a notebook): unpickling then
        # says what is missing.
        with contextlib.suppress(Exception):
            importlib.import_module(ref.module)
        if ref.module not in sys.modules and ref.file:
            with contextlib.suppress(Exception):
                _load_file(ref.module, ref.file)
    import cloudpickle

    spec = cloudpickle.loads(task.func)
    if isinstance(spec, str):
        raise TypeError(spec)  # why the run's process could not send the step (``by_value``)
    if not isinstance(spec, StepSpec):
        raise TypeError(f"the step sent by value is a {type(spec).__name__}, not a step")
    return spec


def _load_file(name: str, path: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path} as module {name!r}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _lookup(module: ModuleType, qualname: str) -> StepSpec:
    obj: Any = module
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj.spec


def open_store(task: Task) -> Datastore:
    """The datastore a task names, made by the factory its kind's plugin registers."""
    from stepflow._pluginmanager import datastore_kinds
    from stepflow._storage.stores import open_datastore

    home = Path(task.home or Path.cwd() / ".stepflow")
    return open_datastore(
        task.store_uri, home=home, options=task.store_options, kinds=datastore_kinds()
    )


def _internal(task: Task, exc: BaseException, start: float, what: str) -> TaskResult:
    return TaskResult(
        task.step,
        task.attempt,
        run_id=task.run_id,
        error=internal_error(exc, what),
        duration=time.perf_counter() - start,
    )


def execute_task(task: Task, output_dir: Path | None = None) -> TaskResult:
    """Load inputs, run the step, store its outputs; never raises for a step's own error.

    With ``output_dir``, the step's stdout and stderr are captured at the file-descriptor
    level into files there (child processes included; see ``capture.fd_output``), which
    changes this whole process's descriptors 1 and 2 while the step runs.
    """
    start = time.perf_counter()
    for entry in reversed(task.sys_path):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    try:
        if task.hasher_plugins:
            from stepflow._pluginmanager import install_hasher_plugins

            # Before the step's outputs are hashed: their hashes go into later steps' keys.
            install_hasher_plugins(task.hasher_plugins)
        with loading_step(task.step, task.ref.file or task.ref.module):
            spec = task_step(task)
        io = ArtifactIO(
            open_store(task),
            list(task.serializers) or builtin_serializers(),
        )
    except Exception as exc:
        return _internal(task, exc, start, f"the worker could not prepare step {task.step!r}")
    secrets = task.secret_values
    home = Path(task.home) if task.home else None
    ctx = StepContext(
        run_id=task.run_id,
        pipeline=task.pipeline or None,
        step=task.step,
        attempt=task.attempt,
        store=io.store,
        serializers=tuple(io.serializers),
        home=home,
        secrets=secrets,
    )
    with (
        capturing(),
        activate(ctx),
        step_output(echo=task.echo, secrets=secrets) as captured,
    ):
        # The same attempt as the in-process backend's (``_execution.attempt``).
        attempt = run_attempt(
            spec,
            step=task.step,
            inputs={name: functools.partial(io.load, ref) for name, ref in task.inputs.items()},
            references=task.references,
            params=task.params,
            io=io,
            home=home or Path.cwd() / ".stepflow",
            output=lambda: (
                fd_output(output_dir, captured) if output_dir else contextlib.nullcontext()
            ),
        )
    logged = {
        "logs": captured.texts(secrets),
        "metrics": tuple(ctx.metrics),
        "logged_params": dict(ctx.params),
        "tags": dict(ctx.tags),
        "files": {k: v for k, v in ctx.artifacts.items() if v is not None},
    }
    if attempt.error is not None:
        return TaskResult(
            task.step,
            task.attempt,
            run_id=task.run_id,
            error=attempt.error,
            duration=time.perf_counter() - start,
            **logged,
        )
    return TaskResult(
        task.step,
        task.attempt,
        run_id=task.run_id,
        outputs=attempt.outputs,
        duration=time.perf_counter() - start,
        **logged,
    )


def serve(stdin: BinaryIO, stdout: BinaryIO, output_dir: Path | None = None) -> None:
    """Say ``READY`` (``ready_frame()``), then answer framed tasks until stdin closes."""
    write_frame(stdout, ready_frame())
    while True:
        try:
            task = read_frame(stdin)
        except EOFError:
            return
        write_frame(stdout, execute_task(task, output_dir))


def _unbuffered(fd: int) -> io.TextIOWrapper:
    # Every write reaches the descriptor at once: what a step printed is in its output file
    # even when the step is then killed (timeout), and keeps its order with child processes.
    return io.TextIOWrapper(
        io.FileIO(fd, "w", closefd=False),
        encoding="utf-8",
        errors="backslashreplace",
        write_through=True,
    )


def die_with_parent() -> None:
    """Kill this worker's process group once the run's end of the lifeline pipe closes.

    The run's process closes it when it drops the worker, or the kernel does when that
    process dies (``kill -9`` included); either way nobody will read what the step produces,
    so the step and everything it started stop rather than compute on as orphans.
    """
    value = os.environ.pop(WATCH_ENV, "")
    if not value.isdigit():
        return
    fd = int(value)
    # The step's own child processes must not hold the pipe open.
    os.set_inheritable(fd, False)
    # Nobody is left to remove the output folder the run's process made for this worker.
    output = os.environ.get(OUTPUT_ENV, "")

    def watch() -> None:
        try:
            while os.read(fd, 1024):
                pass
        except OSError:
            pass
        if output:
            shutil.rmtree(output, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.killpg(0, signal.SIGKILL)
        os._exit(1)

    threading.Thread(target=watch, name="stepflow-lifeline", daemon=True).start()


def _preload() -> None:
    """Import in the fork server what each worker's first task would import: stepflow's own
    modules and their libraries only (a user's module is imported afresh by each worker)."""
    import uuid  # noqa: F401

    import cloudpickle  # noqa: F401 - steps sent by value

    from stepflow._pluginmanager import datastore_kinds
    from stepflow._storage import stores  # noqa: F401

    datastore_kinds()("local")  # the built-in storage plugin, which opens the local store


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 2 and argv[0] == "--fork-server" and argv[1].isdigit():
        from stepflow._execution.forkserver import serve as serve_forks

        _preload()
        if not serve_forks(int(argv[1])):
            os._exit(0)  # the run is gone or done; nothing of this process needs tidying
        # A forked child, set up as a fresh ``--serve`` worker would be: serve like one.
        argv = ["--serve"]
    die_with_parent()
    if argv == ["--serve"]:
        # Keep the protocol on a private copy of fd 1, and send the step's prints (fd 1) to
        # stderr, so that a print() in user code can never corrupt a frame.
        proto = os.fdopen(os.dup(1), "wb")
        os.dup2(2, 1)
        sys.stdout, sys.stderr = _unbuffered(1), _unbuffered(2)
        # The run's process reads a killed step's output from here (``WorkerProcess``).
        output = os.environ.pop(OUTPUT_ENV, "")
        serve(sys.stdin.buffer, proto, Path(output) if output else None)
        return 0
    if len(argv) == 2:
        with open(argv[0], "rb") as fh:
            task = pickle.load(fh)  # noqa: S301 - written by our own parent
        sys.stdout, sys.stderr = _unbuffered(1), _unbuffered(2)
        given = os.environ.pop(OUTPUT_ENV, "")
        if given:
            # A folder the backend reads while the step runs (a container's mounted attempt
            # folder), to show what it prints as it prints it.
            os.makedirs(given, mode=0o700, exist_ok=True)
            result = execute_task(task, Path(given))
        else:
            with tempfile.TemporaryDirectory(prefix="stepflow-output-") as output_dir:
                result = execute_task(task, Path(output_dir))
        with open(argv[1], "wb") as fh:
            pickle.dump(result, fh, protocol=5)
        return 0
    print(
        "usage: python -m stepflow.worker --serve | python -m stepflow.worker TASK RESULT",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
