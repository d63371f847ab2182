"""Detached attempts: a dropped connection reattaches, timeouts and cancels kill the remote
process group, and the next run kills what a dead run left running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from ssh_testing import alive, masters, wait_for

SLOW = """
import os, subprocess, sys, time
from pathlib import Path
from stepflow import step

@step(backend="gpu", timeout=TIMEOUT)
def slow(folder: str = "") -> str:
    here = Path(folder)
    with open(here / "runs.txt", "a") as fh:
        fh.write(f"{os.getpid()}\\n")
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    (here / "pids.txt").write_text(f"{os.getpid()} {child.pid}")
    deadline = time.monotonic() + 120
    while not (here / "go").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    child.kill()
    return "finished"

@step(backend="gpu")
def quick() -> int:
    return 1
"""


def _start(root: Path, home: Path, *args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, STEPFLOW_HOME=str(home))
    return subprocess.Popen(
        [sys.executable, "-m", "stepflow", "run", "flow.py", *args],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _pids(folder: Path) -> list[int]:
    return [int(p) for p in (folder / "pids.txt").read_text().split()]


def _kill_mid_step(root: Path, home: Path, folder: Path) -> None:
    """``stepflow run`` of the slow step, killed (-9) once the step runs on the host."""
    proc = _start(root, home, "--target", "slow", "--param", f"folder={folder}")
    try:
        wait_for(lambda: (folder / "pids.txt").exists(), what="the step to start")
        proc.kill()
        proc.wait()
    finally:
        proc.kill()
        if proc.stdout is not None:
            proc.stdout.close()


def test_killing_the_control_master_mid_step_runs_the_step_once(
    project, sshd, stepflow_runner, tmp_path_factory
):
    """The connection drops while the step runs: the run reconnects, follows the same
    attempt to its end, and the step's body ran exactly once."""
    folder = tmp_path_factory.mktemp("shared")
    root = project(SLOW.replace("TIMEOUT", "None"))
    proc = _start(root, stepflow_runner.home, "--target", "slow", "--param", f"folder={folder}")
    try:
        wait_for(lambda: (folder / "pids.txt").exists(), what="the step to start")
        killed = masters()
        assert killed, "the run has a ControlMaster"
        for pid in killed:
            os.kill(pid, signal.SIGKILL)
        (folder / "go").touch()
        out, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    assert "1 ran" in out
    assert len((folder / "runs.txt").read_text().splitlines()) == 1
    assert not any(pid in masters() for pid in killed)


def test_a_timeout_leaves_no_remote_process(project, stepflow_runner, tmp_path_factory):
    """The step and the child it started are killed on the host (the whole process group)."""
    folder = tmp_path_factory.mktemp("shared")
    project(SLOW.replace("TIMEOUT", "2"))
    out = stepflow_runner.run("run", "flow.py", "--target", "slow", "--param", f"folder={folder}")
    assert out.ret == 1, out.stdout + out.stderr
    assert "timeout" in out.stdout + out.stderr
    for pid in _pids(folder):
        wait_for(lambda pid=pid: not alive(pid), 10, f"process {pid} to die")


def test_cancel_kills_the_remote_process_group(
    project, stepflow_runner, tmp_path_factory, remote_workdir
):
    """SIGTERM (like Ctrl-C) cancels the run: the remote step and its child die."""
    folder = tmp_path_factory.mktemp("shared")
    root = project(SLOW.replace("TIMEOUT", "None"))
    proc = _start(root, stepflow_runner.home, "--target", "slow", "--param", f"folder={folder}")
    try:
        wait_for(lambda: (folder / "pids.txt").exists(), what="the step to start")
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, out
    for pid in _pids(folder):
        wait_for(lambda pid=pid: not alive(pid), 10, f"process {pid} to die")
    assert not list((remote_workdir / "attempts").rglob("status.json"))


def test_the_next_run_kills_the_attempts_of_a_dead_run(
    project, stepflow_runner, tmp_path_factory, remote_workdir
):
    """kill -9 of the run leaves its detached attempt running on the host; the next run's
    check finds that its run is dead and kills it before any step runs."""
    folder = tmp_path_factory.mktemp("shared")
    root = project(SLOW.replace("TIMEOUT", "None"))
    _kill_mid_step(root, stepflow_runner.home, folder)
    pids = _pids(folder)
    assert all(alive(pid) for pid in pids), "detached: the attempt outlives its run's process"
    out = stepflow_runner.run("run", "flow.py", "--target", "quick")
    assert out.ret == 0, out.stdout + out.stderr
    for pid in pids:
        wait_for(lambda pid=pid: not alive(pid), 10, f"process {pid} to die")
    assert len((folder / "runs.txt").read_text().splitlines()) == 1
    assert not list((remote_workdir / "attempts").rglob("status.json"))


def test_an_unfollowed_attempt_kills_itself_after_orphan_timeout(
    project, stepflow_runner, tmp_path_factory, remote_workdir
):
    """With no next run at all, an attempt whose run died stops once nobody renewed its
    lease for ``orphan_timeout`` seconds (a run on another machine is found this way)."""
    folder = tmp_path_factory.mktemp("shared")
    root = project(SLOW.replace("TIMEOUT", "None"), orphan_timeout=2)
    _kill_mid_step(root, stepflow_runner.home, folder)
    for pid in _pids(folder):
        wait_for(lambda pid=pid: not alive(pid), 30, f"process {pid} to die")
    (status,) = (remote_workdir / "attempts").rglob("status.json")
    wait_for(lambda: '"orphaned"' in status.read_text(), 10, "the supervisor's final status")


PRINTING = """
import time
from pathlib import Path
from stepflow import Secret, step

@step(backend="gpu")
def chatty(token: Secret[str], folder: str = "") -> str:
    print("remote line one", flush=True)
    print("token", token, flush=True)
    while not (Path(folder) / "go").exists():
        time.sleep(0.05)
    print("remote last line", flush=True)
    return "done"
"""


def test_what_a_remote_step_prints_is_shown_while_it_runs(
    project, stepflow_runner, tmp_path_factory, live_log
):
    """The follower's polls bring the step's captured output as it grows: `stepflow ui`
    shows it while the step still runs on the host, the secret masked by the run."""
    folder = tmp_path_factory.mktemp("shared")
    root = project(PRINTING)
    secret = "ssh-live-secret-42"
    env = dict(os.environ, STEPFLOW_HOME=str(stepflow_runner.home), SSH_TOKEN=secret)
    argv = ["run", "flow.py", "--param", f"folder={folder}", "--param", "token=env:SSH_TOKEN"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "stepflow", *argv],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seen: list[str] = []
    try:
        home = stepflow_runner.home
        wait_for(
            lambda: seen.append(live_log(home, "chatty")) or "token ***" in seen[-1],
            what="the remote step's first lines",
        )
        assert seen[-1] == "[stdout #1] remote line one\ntoken ***\n"
        (folder / "go").touch()
        out, _ = proc.communicate(timeout=120)
    finally:
        (folder / "go").touch()
        proc.kill()
        proc.communicate()
    assert proc.returncode == 0, out
    assert all(secret not in text for text in seen)
    assert not (stepflow_runner.home / "live").exists()
