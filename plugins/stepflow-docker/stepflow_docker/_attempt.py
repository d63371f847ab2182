"""One attempt in one container: create (the claim), start, wait, collect, remove.

The container is named ``stepflow-<run>-<step>-<attempt>`` and labelled with the run, the
step, the attempt and its owner process. The worker runs in file mode: the task is a file in
a per-attempt folder mounted into the container, and the worker writes its result beside
it. No ``auto_remove``: the exit code and the logs are read before the container is removed.

The run's process holds the container's stdin (an attach socket, ``StdinOnce``), and the
worker watches it (``STEPFLOW_WORKER_LIFELINE=0``): when the run's process dies, even by
``kill -9``, the engine closes that stdin and the worker kills itself, so no step computes
on behind a dead run. The next run removes the stopped container (``_labels.sweep``).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import shutil
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

# Every folder made in the home is owner-only at each level (DESIGN.md section 7).
from stepflow._storage.home import make_private_dirs
from stepflow.backends import Task, TaskResult, follow_output
from stepflow.worker import OUTPUT_ENV
from stepflow_docker._engine import docker_errors
from stepflow_docker._labels import ATTEMPT, RUN, STEP, owner_labels

if TYPE_CHECKING:
    import docker

__all__ = ["Launch", "container_name", "run_attempt"]

#: where the attempt folder (task and result files) is mounted in the container
ATTEMPT_DIR = "/stepflow/attempt"
#: where a copy of this process's stepflow package is mounted (the container's PYTHONPATH)
SOURCE_DIR = "/opt/stepflow/src"
#: where the home's bytecode cache is mounted (``PYTHONPYCACHEPREFIX``)
PYCACHE_DIR = "/opt/stepflow/pycache"


@attrs.frozen
class Launch:
    """What every container of one backend shares."""

    image_id: str
    python: str
    #: host path → (container path, "ro" or "rw")
    mounts: Mapping[str, tuple[str, str]]
    environment: Mapping[str, str]
    working_dir: str
    #: ``docker.types.DeviceRequest`` list, ``nano_cpus``, ``mem_limit``, ``network_mode``
    host_options: Mapping[str, Any]
    stop_timeout: float


def container_name(task: Task) -> str:
    """``stepflow-<run>-<step>-<attempt>``, with characters Docker refuses replaced."""
    step = re.sub(r"[^a-zA-Z0-9_.-]", "_", task.step)
    return f"stepflow-{task.run_id}-{step}-{task.attempt}"


def run_attempt(
    client: docker.DockerClient,
    task: Task,
    launch: Launch,
    folder: Path,
    timeout: float | None,
    cancelled: Any,
) -> TaskResult:
    """Run ``task`` in its container; never raises for what the step or the container did."""
    import docker.errors

    name = container_name(task)
    make_private_dirs(folder)
    # The container echoes the step's output to its own logs, so what a step printed before
    # it was stopped (timeout, cancel) is still there; the result holds the captured copy.
    (folder / "task.pkl").write_bytes(pickle.dumps(attrs.evolve(task, echo=True), protocol=5))
    api = client.api
    mounts = dict(launch.mounts)
    mounts[str(folder)] = (ATTEMPT_DIR, "rw")
    host_config = api.create_host_config(
        binds={host: {"bind": inside, "mode": mode} for host, (inside, mode) in mounts.items()},
        init=True,
        # A step container never gets the Docker socket, privileges or capabilities.
        privileged=False,
        cap_drop=["ALL"],
        security_opt=["no-new-privileges"],
        **launch.host_options,
    )
    config = api.create_container_config(
        launch.image_id,
        [
            f"{launch.python}",
            "-m",
            "stepflow.worker",
            f"{ATTEMPT_DIR}/task.pkl",
            f"{ATTEMPT_DIR}/result.pkl",
        ],
        user=f"{os.getuid()}:{os.getgid()}",
        # The worker captures the step's output in the mounted attempt folder, where the
        # run follows it while the step runs (``stepflow ui``).
        environment={**launch.environment, OUTPUT_ENV: f"{ATTEMPT_DIR}/output"},
        working_dir=launch.working_dir,
        labels={
            RUN: task.run_id,
            STEP: task.step,
            ATTEMPT: str(task.attempt),
            **owner_labels(),
        },
        stdin_open=True,
        host_config=host_config,
    )
    # The engine closes the container's stdin when our attach socket closes (we died).
    config["StdinOnce"] = True
    lifeline = None
    try:
        try:
            container_id = api.create_container_from_config(config, name)["Id"]
        except docker.errors.APIError as exc:
            if exc.status_code != 409:
                raise
            # Created already: the claim is taken, so attach to it, never launch it again.
            container_id = api.inspect_container(name)["Id"]
        lifeline = api.attach_socket(container_id, params={"stdin": 1, "stream": 1})
        with contextlib.suppress(docker.errors.APIError):
            api.start(container_id)  # already running when reattached
        if cancelled.is_set():
            api.stop(container_id, timeout=0)
        follower = _follow(api, container_id) if task.echo else None
        with follow_output(task, folder / "output"):
            state = _wait(api, container_id, timeout)
        if follower is not None:
            follower.join(timeout=5)
        if state is None:  # past its timeout: SIGTERM, then SIGKILL after stop_timeout
            api.stop(container_id, timeout=int(launch.stop_timeout))
            return TaskResult.timed_out(task, timeout, logs=_logs(api, container_id, task))
        result_file = folder / "result.pkl"
        if state.get("StatusCode") == 0 and result_file.is_file():
            with open(result_file, "rb") as fh:
                return pickle.load(fh)  # noqa: S301 - written by our own worker
        logs = _logs(api, container_id, task)
        if cancelled.is_set():
            return TaskResult.cancelled(task, logs=logs)
        return TaskResult.lost(task, _why(api, container_id, state), logs=logs)
    except docker_errors() as exc:
        return TaskResult.failed(
            task, f"the Docker engine failed to run container {name}: {exc}", logs={}
        )
    finally:
        if lifeline is not None:
            # The SDK hands a SocketIO over the response's socket: close both.
            for closing in (lifeline, getattr(lifeline, "_sock", None)):
                with contextlib.suppress(OSError, AttributeError):
                    closing.close()
        with contextlib.suppress(*docker_errors()):
            api.remove_container(name, force=True)
        shutil.rmtree(folder, ignore_errors=True)


def _follow(api: Any, container_id: str) -> threading.Thread:
    """Show what the step prints as it prints it, as a worker process does (on our fd 2,
    beside the run's report, not through the run's own captured streams)."""

    def copy() -> None:
        with contextlib.suppress(*docker_errors(), OSError):
            for chunk in api.logs(container_id, stream=True, follow=True):
                os.write(2, chunk)

    thread = threading.Thread(target=copy, name="stepflow-docker-logs", daemon=True)
    thread.start()
    return thread


def _wait(api: Any, container_id: str, timeout: float | None) -> dict[str, Any] | None:
    """The container's exit state, or ``None`` when it is still running after ``timeout``."""
    import requests.exceptions

    try:
        if timeout is None:
            return dict(api.wait(container_id))
        return dict(api.wait(container_id, timeout=max(timeout, 0.001)))
    except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
        if api.inspect_container(container_id)["State"]["Running"]:
            return None
        return dict(api.wait(container_id))


def _why(api: Any, container_id: str, state: Mapping[str, Any]) -> str:
    info = api.inspect_container(container_id)["State"]
    code = state.get("StatusCode")
    if info.get("OOMKilled"):
        return (
            f"was killed by the kernel for using more memory than its limit (exit code "
            f"{code}); raise resources={{'memory': ...}} or the backend's memory option"
        )
    return f"exited with code {code} before it answered (os._exit(), a crash in native code?)"


def _logs(api: Any, container_id: str, task: Task) -> dict[str, str]:
    """What the step printed, from the container's logs, secrets masked."""
    secrets = task.secret_values
    logs = {}
    for stream in ("stdout", "stderr"):
        try:
            raw = api.logs(container_id, stdout=stream == "stdout", stderr=stream == "stderr")
        except docker_errors():
            continue
        text = raw.decode("utf-8", "replace")
        for secret in secrets:
            text = text.replace(secret, "***")
        if text:
            logs[stream] = text
    return logs
