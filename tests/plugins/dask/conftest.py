"""Real Dask clusters for the stepflow-dask tests (DESIGN.md section 5).

``dask_cluster`` is a ``dask scheduler`` and two ``dask worker`` processes started for the
session: ``cpu-worker``, and ``gpu-worker`` which offers the resource ``GPU=1``. Tests that
start a ``LocalCluster`` through the backend's ``cluster`` option do so themselves.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import pytest

#: seconds the cluster may take to start on a busy machine
START_TIMEOUT = 90.0


class DaskCluster:
    """A scheduler and its workers, each a process of its own."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.scheduler_file = folder / "scheduler.json"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: list[BinaryIO] = []

    @property
    def address(self) -> str:
        return json.loads(self.scheduler_file.read_text())["address"]

    def start(
        self,
        name: str,
        *args: str,
        env: dict[str, str] | None = None,
        prefix: tuple[str, ...] = (),
    ) -> None:
        log = open(self.folder / f"{name}.log", "wb")
        self._logs.append(log)
        self.procs[name] = subprocess.Popen(
            [*prefix, sys.executable, "-m", "distributed.cli.dask_" + args[0], *args[1:]],
            stdout=log,
            stderr=subprocess.STDOUT,
            # Its own group: the teardown stops it and everything it started.
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )

    def worker(self, name: str, *extra: str, prefix: tuple[str, ...] = ()) -> None:
        self.start(
            name,
            "worker",
            "--scheduler-file",
            str(self.scheduler_file),
            "--name",
            name,
            "--nthreads",
            "1",
            "--no-dashboard",
            "--host",
            "127.0.0.1",
            *extra,
            prefix=prefix,
        )

    def wait_for_workers(self, n: int) -> None:
        from distributed import Client

        deadline = time.monotonic() + START_TIMEOUT
        while not self.scheduler_file.exists():
            self._check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"no scheduler file after {START_TIMEOUT}s: {self.logs()}")
            time.sleep(0.1)
        with Client(self.address, timeout=START_TIMEOUT, set_as_default=False) as client:
            if n:
                client.wait_for_workers(n, timeout=START_TIMEOUT)

    def worker_pids(self) -> list[int]:
        """The process ids of every process of the cluster (nannies, workers, their children)."""
        import psutil

        pids = []
        for proc in self.procs.values():
            try:
                top = psutil.Process(proc.pid)
                pids += [top.pid, *(p.pid for p in top.children(recursive=True))]
            except psutil.NoSuchProcess:
                pass
        return pids

    def stepflow_workers(self) -> list[str]:
        """The command lines of stepflow worker processes running under the cluster's processes."""
        import psutil

        found = []
        for pid in self.worker_pids():
            try:
                cmdline = psutil.Process(pid).cmdline()
            except psutil.NoSuchProcess:
                continue
            if "stepflow.worker" in cmdline:
                found.append(" ".join(cmdline))
        return found

    def _check_alive(self) -> None:
        dead = {n: p.returncode for n, p in self.procs.items() if p.poll() is not None}
        if dead:
            raise RuntimeError(f"cluster processes died: {dead}: {self.logs()}")

    def logs(self) -> str:
        return "\n".join(
            f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}"
            for log in sorted(self.folder.glob("*.log"))
        )

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            proc.wait()
        for log in self._logs:
            log.close()


@pytest.fixture
def need_dask(need: Callable[[str], None]) -> None:
    """Skip (fail when CI=true) without Dask's distributed package and stepflow-dask."""
    try:
        import distributed  # noqa: F401
        import stepflow_dask  # noqa: F401
    except ImportError as exc:
        need(f"Dask is not installed ({exc}): pip install -e plugins/stepflow-dask")


def _scheduler(cluster: DaskCluster) -> None:
    cluster.start(
        "scheduler",
        "scheduler",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--no-dashboard",
        "--scheduler-file",
        str(cluster.scheduler_file),
        # stepflow retries steps itself: a task whose worker died is not run again by Dask.
        env={"DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0"},
    )


@pytest.fixture(scope="session")
def dask_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaskCluster]:
    """A ``dask scheduler`` with ``cpu-worker`` and ``gpu-worker`` (``--resources GPU=1``)."""
    try:
        import distributed  # noqa: F401
    except ImportError:
        pytest.skip("Dask is not installed")  # tests ask need_dask first, which says why
    cluster = DaskCluster(tmp_path_factory.mktemp("dask-cluster"))
    try:
        _scheduler(cluster)
        cluster.worker("cpu-worker")
        cluster.worker("gpu-worker", "--resources", "GPU=1")
        cluster.wait_for_workers(2)
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def lonely_scheduler(tmp_path: Path) -> Iterator[DaskCluster]:
    """A scheduler without any worker."""
    cluster = DaskCluster(tmp_path / "lonely")
    cluster.folder.mkdir()
    try:
        _scheduler(cluster)
        cluster.wait_for_workers(0)
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def write_project() -> Callable[..., Path]:
    """``write_project(path, backends, flow, store=None, extra="")``: see ``_project``."""
    return _project


@pytest.fixture
def gone() -> Callable[..., bool]:
    """``gone(pid, seconds=20)``: see ``_wait_gone``."""
    return _wait_gone


def _project(
    path: Path, backends: str, flow: str, *, store: Path | None = None, extra: str = ""
) -> Path:
    """Write ``pyproject.toml`` (the given backends tables) and ``flow.py`` into ``path``."""
    head = "[tool.stepflow]\n"
    if store is not None:
        head += f'store = "{store}"\n'
    (path / "pyproject.toml").write_text(head + extra + "\n" + textwrap.dedent(backends))
    (path / "flow.py").write_text(textwrap.dedent(flow).lstrip())
    return path / "flow.py"


def _wait_gone(pid: int, seconds: float = 20.0) -> bool:
    """Wait until process ``pid`` is gone (or a zombie nobody reaps); ``False`` if it lives on."""
    import psutil

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False
