"""Container labels, and the sweep of containers whose run died.

Every container stepflow starts carries ``io.stepflow.owner = HOST:PID:START``: the host, the
process id and the process's start time (from ``/proc``) of the run that made it. A run
starting on the same host removes every container whose owner process is gone (``kill -9``,
power loss), running or not, so nothing outlives a dead run once the next run has started.
Containers of live runs, and of other hosts sharing the engine, are left alone.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import docker

__all__ = ["ATTEMPT", "BUILD", "OWNER", "RUN", "STEP", "owner_labels", "sweep"]

RUN = "io.stepflow.run"
STEP = "io.stepflow.step"
ATTEMPT = "io.stepflow.attempt"
OWNER = "io.stepflow.owner"
#: on the containers that build an image (its tag) or probe one
BUILD = "io.stepflow.build"


def owner_labels() -> dict[str, str]:
    """The label that ties a container to this process (see the module's docstring)."""
    pid = os.getpid()
    return {OWNER: f"{socket.gethostname()}:{pid}:{_started(pid)}"}


def _started(pid: int) -> str:
    """The start time of process ``pid`` in clock ticks since boot; ``""`` if unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return ""
    # The command name (field 2) may hold spaces and parentheses: split after its end.
    return stat[stat.rindex(b")") + 2 :].split()[19].decode()


def _alive(pid: int, started: str) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    # A recycled pid belongs to another process: its start time differs.
    return not started or _started(pid) in ("", started)


def sweep(client: docker.DockerClient, attempts: Path) -> list[str]:
    """Remove the containers of dead runs on this host; returns their names."""
    from stepflow_docker._engine import docker_errors

    host = socket.gethostname()
    removed = []
    # ignore_removed: another run sweeping at the same moment may remove a container
    # between the listing and its inspection (a 404 that failed the run's check).
    listed = client.containers.list(all=True, filters={"label": OWNER}, ignore_removed=True)
    for container in listed:
        parts = container.labels.get(OWNER, "").rsplit(":", 2)
        if len(parts) != 3 or parts[0] != host or not parts[1].isdigit():
            continue
        if _alive(int(parts[1]), parts[2]):
            continue
        with contextlib.suppress(*docker_errors()):
            container.remove(force=True)
            removed.append(container.name)
        # The dead run's task and result files, if it used this home.
        shutil.rmtree(attempts / container.name, ignore_errors=True)
    return removed
