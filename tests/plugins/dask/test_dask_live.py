"""A Dask step's output is shown while it runs (``stepflow ui``'s live area), sent by its Dask
worker as events through the scheduler: the session's real ``dask scheduler`` and ``dask
worker`` processes, each run a ``stepflow run`` process of its own.

Each step waits for a file the test creates only once it has seen the step's lines in the
live area (through the UI's reader, ``ReadAPI.live_log``): the lines arrived while it ran.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("need_dask")]

SECRET = "dask-live-secret-42"


def _backends(cluster) -> str:
    return f"""
        [tool.stepflow.backends.cluster]
        plugin = "dask"
        address = "{cluster.address}"
        """


@contextlib.contextmanager
def _running(root: Path, home: Path, folder: Path) -> Iterator[subprocess.Popen[str]]:
    """``stepflow run flow.py`` in a process of its own, killed if the block fails."""
    argv = ["run", "flow.py", "--param", f"folder={folder}", "--param", "token=env:DASK_TOKEN"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "stepflow", *argv],
        cwd=root,
        env={**os.environ, "STEPFLOW_HOME": str(home), "DASK_TOKEN": SECRET},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _finish(proc: subprocess.Popen[str], gate: Path) -> None:
    """Release the step by creating ``gate``; the run must then succeed."""
    gate.touch()
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out


@pytest.fixture
def release(tmp_path: Path) -> Iterator[Path]:
    """The folder whose files ``go-1``, ``go-2``… let the step go on; all are made at the
    end, so that a failing test never leaves a step waiting on the shared cluster."""
    folder = tmp_path / "release"
    folder.mkdir()
    yield folder
    for n in range(1, 4):
        (folder / f"go-{n}").touch()


def _live_events(cluster) -> list[dict]:
    """Every live-output event the scheduler still holds, of any run."""
    from distributed import Client
    from stepflow_dask._live import MARK

    with Client(cluster.address, timeout=30, set_as_default=False) as client:
        topics = client.get_events()
    return [m for events in topics.values() for _, m in events if isinstance(m, dict) and MARK in m]


RETRIED = """
    import time
    from pathlib import Path
    from stepflow import Secret, step

    def wait(folder, name):
        while not (Path(folder) / name).exists():
            time.sleep(0.05)

    @step(backend="cluster", retries=1, cache=False)
    def chatty(token: Secret[str], folder: str = "") -> str:
        tried = Path(folder) / "tried"
        if not tried.exists():
            tried.touch()
            print("dask line one", flush=True)
            print("token", token, flush=True)
            wait(folder, "go-1")
            raise RuntimeError("the first attempt fails")
        print("second attempt", flush=True)
        wait(folder, "go-2")
        print("dask last line", flush=True)
        return "done"
    """


def test_what_a_dask_step_prints_is_shown_while_it_runs(
    stepflow_runner, dask_cluster, write_project, release, wait_for, live_log
):
    """The Dask worker sends the step's lines as it prints them, the secret masked before
    they leave the worker (the scheduler's events never hold it) and again by the run; a
    retry's lines come under its own attempt; the live area is gone after the run."""
    home = stepflow_runner.home
    write_project(stepflow_runner.path, _backends(dask_cluster), RETRIED)
    scheduler_log = dask_cluster.folder / "scheduler.log"
    logged = scheduler_log.stat().st_size
    seen: list[str] = []

    def shows(text: str) -> bool:
        seen.append(live_log(home, "chatty"))
        return text in seen[-1]

    with _running(stepflow_runner.path, home, release) as proc:
        wait_for(lambda: shows("token ***\n"), 120, "the first attempt's lines, live")
        assert seen[-1] == "[stdout #1] dask line one\ntoken ***\n"
        (release / "go-1").touch()
        wait_for(lambda: shows("[stdout #2] second attempt\n"), 120, "the retry's line, live")
        events = _live_events(dask_cluster)
        _finish(proc, release / "go-2")
    assert all(SECRET not in text for text in seen)
    first = [e for e in events if e["stepflow-live"].endswith("-chatty-1")]
    assert "".join(e.get("stdout", "") for e in first) == "dask line one\ntoken ***\n", events
    assert all(SECRET not in repr(e) for e in events)
    assert not (home / "live").exists()
    logs = stepflow_runner.run("logs", "last", "chatty")
    assert "dask last line" in logs.stdout, logs.stdout + logs.stderr
    # The run left the topic before it left: the scheduler never wrote to a closed client.
    with open(scheduler_log, "rb") as fh:
        fh.seek(logged)
        assert b"Closed comm" not in fh.read()


FLOOD = """
    import sys, time
    from pathlib import Path
    from stepflow import Secret, step

    @step(backend="cluster", cache=False)
    def flood(token: Secret[str], folder: str = "") -> int:
        line = "x" * 99 + "\\n"
        for _ in range(40):
            sys.stdout.write(line * 10_000)  # 40 MB in all
        print("token", token, "after the flood", flush=True)
        while not (Path(folder) / "go-1").exists():
            time.sleep(0.05)
        return 1
    """


def test_a_step_printing_a_lot_is_coalesced_not_flooding_the_scheduler(
    stepflow_runner, dask_cluster, write_project, release, wait_for, live_log
):
    """40 MB printed at once: the live view jumps to the newest lines, saying how much it
    left out, every event stays within its bound, and the run goes on as usual."""
    from stepflow_dask._live import CHUNK

    home = stepflow_runner.home
    write_project(stepflow_runner.path, _backends(dask_cluster), FLOOD)
    with _running(stepflow_runner.path, home, release) as proc:
        text = wait_for(
            lambda: (t := live_log(home, "flood")) and "after the flood" in t and t,
            120,
            "the line printed after the flood, live",
        )
        events = [e for e in _live_events(dask_cluster) if "flood" in e["stepflow-live"]]
        _finish(proc, release / "go-1")
    assert "token *** after the flood\n" in text
    assert "characters of stdout not shown live]" in text
    assert len(text) < 20 * CHUNK, len(text)
    assert events and all(len(e.get("stdout", "")) <= CHUNK + 100 for e in events)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))


THREADS = """
    import time
    from pathlib import Path
    from stepflow import Secret, step

    def wait(folder, name):
        while not (Path(folder) / name).exists():
            time.sleep(0.05)

    @step(backend="threads", cache=False)
    def chatty(token: Secret[str], folder: str = "") -> int:
        print("one", flush=True)
        wait(folder, "go-1")
        print("two", token, flush=True)
        wait(folder, "go-2")
        return 2
    """


def test_dask_workers_in_the_runs_own_process_show_each_line_once(
    stepflow_runner, write_project, release, wait_for, live_log
):
    """A ``LocalCluster(processes=False)``: the Dask worker is a thread of the run's process,
    where the run follows the step's output files itself; the worker sends no events, so no
    line is shown twice."""
    home = stepflow_runner.home
    backends = """
        [tool.stepflow.backends.threads]
        plugin = "dask"
        cluster = "dask.distributed.LocalCluster"
        cluster_options = { processes = false, n_workers = 1, threads_per_worker = 1 }
        """
    write_project(stepflow_runner.path, backends, THREADS)
    with _running(stepflow_runner.path, home, release) as proc:
        wait_for(lambda: "one\n" in live_log(home, "chatty"), 120, "the first line, live")
        (release / "go-1").touch()
        text = wait_for(
            lambda: (t := live_log(home, "chatty")) and "two" in t and t, 60, "the second line"
        )
        _finish(proc, release / "go-2")
    assert text == "[stdout #1] one\ntwo ***\n"
