"""Workers forked from the pool's fork server are what started workers are.

Each test compares a forked worker with what ``WorkerProcess(worker_argv())`` (a started
interpreter) gives, or checks a guarantee of the pool that forking could break: sessions,
the lifeline, exit codes, fresh user modules, the fork server's own end, and the fallback.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading

import pytest

from stepflow._execution.forkserver import ForkServer
from stepflow._execution.pool import WorkerPool, WorkerProcess, worker_argv
from stepflow._version import __version__

STEPS = """
import json
import os
import sys
import time
from pathlib import Path
from stepflow import step

# Every process that imports this module notes its pid: never the fork server.
with open(Path(__file__).with_name("imported_by"), "a") as fh:
    fh.write(f"{os.getpid()}\\n")

@step
def info() -> int:
    raise RuntimeError("INFO=" + json.dumps({
        "pid": os.getpid(), "ppid": os.getppid(), "sid": os.getsid(0), "pgid": os.getpgid(0),
        "cwd": os.getcwd(), "path": sys.path, "env": dict(os.environ), "argv": sys.argv[1:],
        "main": sys.modules["__main__"].__spec__.name, "version": VERSION,
    }))

@step
def hold() -> int:
    Path(os.environ["HOLD_FILE"] + f".{os.getpid()}").write_text(f"{os.getpid()} {os.getppid()}")
    time.sleep(600)
    return 1

@step
def terminated() -> int:
    os.kill(os.getpid(), 15)
    time.sleep(60)
    return 1

@step
def exit3() -> int:
    os._exit(3)

VERSION = 1
"""


@pytest.fixture
def steps(make_module):
    return make_module("fork_steps", STEPS)


def info(result) -> dict:
    assert result.error is not None
    assert "INFO=" in result.error.message, result.error.message
    return json.loads(result.error.message.split("INFO=", 1)[1])


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _own_env(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if not k.startswith("STEPFLOW_WORKER_")}


def test_default_workers_are_forked_each_in_its_own_session(steps, tmp_path, task_for):
    """Two workers of a default pool are children of one fork server (not of this
    process), each the leader of its own session and process group, and each says this
    stepflow's version; the fork server is in a session of its own too."""
    pool = WorkerPool(2)
    try:
        workers = [pool._acquire(), pool._acquire()]
        for worker in workers:
            assert worker.wait_ready()
            assert worker.hello["stepflow"] == __version__
        found = [info(w.execute(task_for(steps.info.spec), None)) for w in workers]
        for worker in workers:
            pool._release(worker)
        assert pool._forks is not None and pool._forks.proc is not None
        zygote = pool._forks.proc.pid
        zygote_session = os.getsid(zygote)
    finally:
        pool.close()
    assert zygote != os.getpid()
    assert zygote_session == zygote  # the terminal's Ctrl-C does not reach it either
    assert {f["ppid"] for f in found} == {zygote}
    assert len({f["pid"] for f in found}) == 2
    for f in found:
        assert f["sid"] == f["pgid"] == f["pid"]
    assert not _alive(zygote), "the fork server outlived its closed pool"


def test_forked_worker_has_what_a_started_worker_has(steps, tmp_path, monkeypatch, task_for):
    """Environment, ``sys.path``, working directory (this process's at the fork, not the
    fork server's), ``sys.argv`` and ``__main__``: the same in a forked worker as in a
    worker started as a new interpreter."""
    pool = WorkerPool(1)
    try:
        pool.execute(task_for(steps.info.spec), None)  # the fork server runs
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        monkeypatch.chdir(elsewhere)
        pool._idle[0].kill()  # the next task gets a new worker, forked from here
        forked = info(pool.execute(task_for(steps.info.spec), None))
        zygote = pool._forks.proc.pid
    finally:
        pool.close()
    started_worker = WorkerProcess(worker_argv(), pool._env)
    try:
        started = info(started_worker.execute(task_for(steps.info.spec), None))
    finally:
        started_worker.close()
    assert forked["ppid"] == zygote and started["ppid"] == os.getpid()
    assert forked["cwd"] == started["cwd"] == str(elsewhere)
    assert forked["path"] == started["path"]
    assert forked["path"][0] == str(elsewhere)
    assert _own_env(forked["env"]) == _own_env(started["env"])
    assert forked["argv"] == started["argv"] == ["--serve"]
    assert forked["main"] == started["main"] == "stepflow.worker"


def test_lost_forked_worker_says_its_signal_or_exit_code(steps, tmp_path, task_for):
    """The exit code of a forked worker reaches the pool through the fork server: a worker
    killed by a signal, or one that exits, is reported as a started one is."""
    messages = {}
    for how, pool in (
        ("forked", WorkerPool(1)),
        ("started", WorkerPool(1, ["env", *worker_argv()])),
    ):
        try:
            messages[how] = [
                pool.execute(task_for(s.spec), None).error.message
                for s in (steps.terminated, steps.exit3)
            ]
        finally:
            pool.close()
    assert messages["forked"] == messages["started"]
    assert "killed by signal 15 before it answered" in messages["forked"][0]
    assert "exited with code 3 before it answered" in messages["forked"][1]


def test_custom_argv_pool_starts_its_workers(steps, tmp_path, task_for):
    """A pool with its own command (another interpreter, a transport) starts processes:
    no fork server, its workers are children of this process."""
    pool = WorkerPool(1, ["env", *worker_argv()])
    try:
        found = info(pool.execute(task_for(steps.info.spec), None))
    finally:
        pool.close()
    assert pool._forks is None
    assert found["ppid"] == os.getpid()
    assert found["sid"] == found["pid"]


def test_changed_user_module_is_imported_fresh_by_each_forked_worker(steps, tmp_path, task_for):
    """The fork server imports no user module: a worker forked after the module changed
    imports the new one, and only workers ever imported it."""
    pool = WorkerPool(1)
    try:
        first = info(pool.execute(task_for(steps.info.spec), None))
        source = tmp_path / "fork_steps.py"
        # Another size as well as another content: a cached .pyc is checked on both.
        source.write_text(source.read_text().replace("VERSION = 1", "VERSION = 22"))
        assert "exited with code 3" in pool.execute(task_for(steps.exit3.spec), None).error.message
        second = info(pool.execute(task_for(steps.info.spec), None))
        zygote = pool._forks.proc.pid
    finally:
        pool.close()
    assert (first["version"], second["version"]) == (1, 22)
    assert first["ppid"] == second["ppid"] == zygote
    importers = {int(p) for p in (tmp_path / "imported_by").read_text().split()}
    assert zygote not in importers
    assert {first["pid"], second["pid"]} <= importers


def test_busy_worker_killed_by_timeout_takes_its_children(
    steps, tmp_path, monkeypatch, task_for, wait_for
):
    """A forked worker's process group is its own: the timeout kills the step's process."""
    monkeypatch.setenv("HOLD_FILE", str(tmp_path / "hold"))
    pool = WorkerPool(1)
    try:
        result = pool.execute(task_for(steps.hold.spec), 3.0)
    finally:
        pool.close()
    assert result.error is not None and result.error.timed_out
    (held,) = tmp_path.glob("hold.*")
    pid, ppid = map(int, held.read_text().split())
    assert ppid != os.getpid()
    wait_for(lambda: not _alive(pid), what=f"worker {pid} to die")


RUN_AND_HOLD = """
import sys, threading
sys.path.insert(0, sys.argv[1])
from stepflow._execution.pool import WorkerPool
from stepflow._execution.task import Task
import fork_steps
spec = fork_steps.hold.spec
pool = WorkerPool(2)
task = Task(run_id="r", step=spec.name, attempt=1, ref=spec.ref, inputs={}, params={},
            store_uri=sys.argv[1] + "/store", sys_path=(sys.argv[1],))
for _ in range(2):
    threading.Thread(target=pool.execute, args=(task, None)).start()
threading.Event().wait()
"""


def test_kill_9_of_the_run_ends_forked_workers_and_the_fork_server(steps, tmp_path, wait_for):
    """``kill -9`` of the run's process: its forked workers die (lifeline) and so does the
    fork server (its socket closes); nothing is left."""
    env = {**os.environ, "HOLD_FILE": str(tmp_path / "hold")}
    run = subprocess.Popen([sys.executable, "-c", RUN_AND_HOLD, str(tmp_path)], env=env)
    try:

        def held() -> list[tuple[int, ...]]:
            return [tuple(map(int, f.read_text().split())) for f in tmp_path.glob("hold.*")]

        # A file may exist before its pids are written.
        wait_for(lambda: [len(p) for p in held()] == [2, 2], what="both steps to start")
        pids = held()
        workers = [pid for pid, _ in pids]
        (zygote,) = {ppid for _, ppid in pids}
        assert zygote != run.pid and _alive(zygote)
        run.kill()
        run.wait()
        wait_for(
            lambda: not any(_alive(p) for p in [*workers, zygote]),
            what=f"workers {workers} and fork server {zygote} to die",
        )
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()


# A fork server that has started a thread: it must refuse to fork.
THREADED_FORK_SERVER = """
import sys, threading
threading.Thread(target=threading.Event().wait, daemon=True).start()
from stepflow._execution.forkserver import serve
if serve(int(sys.argv[1])):
    raise SystemExit("forked with a thread running")
"""


def test_pool_starts_workers_when_the_fork_server_cannot_start(steps, tmp_path, task_for):
    """A fork server that exits at once, whose program does not exist, or that refuses to
    fork because it has a thread: the pool starts its workers as any command, and does not
    try the fork server again."""
    why = []
    for argv in (
        [sys.executable, "-c", "raise SystemExit(1)"],
        [str(tmp_path / "no-python")],
        [sys.executable, "-c", THREADED_FORK_SERVER],
    ):
        pool = WorkerPool(1)
        pool._forks = ForkServer(pool._env, argv)
        try:
            first = info(pool.execute(task_for(steps.info.spec), None))
            assert pool._forks.broken is not None
            pool._idle[0].kill()
            second = info(pool.execute(task_for(steps.info.spec), None))
        finally:
            pool.close()
        assert first["ppid"] == second["ppid"] == os.getpid()
        assert first["sid"] == first["pid"]
        assert pool._forks.proc is None or pool._forks.proc.poll() is not None
        why.append(pool._forks.broken)
    assert "did not start" in why[1]
    assert "it has more than one thread" in why[2]


def test_pool_bypasses_a_fork_server_that_died(steps, tmp_path, task_for):
    """``kill -9`` of the fork server: the workers it forked go on serving; one that then
    ends says its exit code was lost with the fork server; new workers are started."""
    pool = WorkerPool(1)
    try:
        first = info(pool.execute(task_for(steps.info.spec), None))
        zygote = pool._forks.proc
        assert first["ppid"] == zygote.pid
        os.kill(zygote.pid, signal.SIGKILL)
        zygote.wait()
        again = info(pool.execute(task_for(steps.info.spec), None))
        assert again["pid"] == first["pid"]
        lost = pool.execute(task_for(steps.exit3.spec), None).error.message
        assert "exit status was lost with the fork server" in lost
        done = threading.Event()
        results = []

        def run() -> None:
            results.append(pool.execute(task_for(steps.info.spec), None))
            done.set()

        threading.Thread(target=run, daemon=True).start()
        assert done.wait(60), "a new worker never started after the fork server died"
        started = info(results[0])
    finally:
        pool.close()
    assert started["ppid"] == os.getpid()
    assert pool._forks.broken is not None


def test_fork_server_imports_no_step_and_serves_several_pools_of_one_process(
    steps, tmp_path, task_for
):
    """Two runs in one process (two pools): each has its own fork server, gone with its
    pool, and a module changed between them is imported fresh."""
    versions, zygotes = [], []
    for version in (1, 333):
        source = tmp_path / "fork_steps.py"
        source.write_text(textwrap.dedent(STEPS).replace("VERSION = 1", f"VERSION = {version}"))
        pool = WorkerPool(1)
        try:
            versions.append(info(pool.execute(task_for(steps.info.spec), None))["version"])
            zygotes.append(pool._forks.proc.pid)
        finally:
            pool.close()
        assert not _alive(zygotes[-1])
    assert versions == [1, 333]
