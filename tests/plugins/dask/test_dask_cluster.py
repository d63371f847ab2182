"""The Dask backend on a real cluster: a ``dask scheduler`` and two ``dask worker`` processes.

Every run goes through the ``stepflow`` command line in a process of its own, as a user runs
it; the cluster is the session's ``dask_cluster`` (``cpu-worker``, and ``gpu-worker`` with
``--resources GPU=1``), given to the backend by ``address`` so that runs leave it running.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("need_dask")]


def _backends(cluster, extra: str = "") -> str:
    return f"""
        [tool.stepflow.backends.cluster]
        plugin = "dask"
        address = "{cluster.address}"
        {extra}

        [tool.stepflow.backends.proc]
        plugin = "process"
        """


def _scheduler_keys(cluster) -> list[str]:
    """The keys the scheduler still holds for stepflow attempts."""
    from distributed import Client

    def keys(dask_scheduler):
        return [str(k) for k in dask_scheduler.tasks if str(k).startswith("stepflow-")]

    with Client(cluster.address, timeout=30, set_as_default=False) as client:
        return client.run_on_scheduler(keys)


def _until(check, seconds: float = 20.0):
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


MIXED = """
    import json
    import os
    from pathlib import Path

    from stepflow import step


    def where() -> dict:
        return {
            "pid": os.getpid(),
            "dask_name": os.environ.get("STEPFLOW_DASK_WORKER_NAME"),
            "dask_address": os.environ.get("STEPFLOW_DASK_WORKER"),
        }


    @step
    def first() -> dict:
        return where()


    @step(backend="proc")
    def second(first: dict) -> dict:
        return where()


    @step(backend="cluster", resources={"gpus": 1})
    def third(second: dict) -> dict:
        return where()


    @step(backend="cluster")
    def fourth(third: dict) -> dict:
        return where()


    @step
    def report(first: dict, second: dict, third: dict, fourth: dict) -> None:
        steps = {"first": first, "second": second, "third": third, "fourth": fourth}
        Path("where.json").write_text(json.dumps({"run": os.getpid(), **steps}))
    """


def test_one_run_mixes_local_process_and_dask_steps(stepflow_runner, dask_cluster, write_project):
    """Local, process and Dask steps pass data to each other through the store in one run;
    the GPU step lands on the worker that offers ``GPU=1`` (as the step itself sees it)."""
    write_project(stepflow_runner.path, _backends(dask_cluster), MIXED)
    out = stepflow_runner.run("run", "flow.py")
    assert out.ret == 0, out.stdout + out.stderr
    out.fnmatch_lines(["*5 ran in*"])
    where = json.loads((stepflow_runner.path / "where.json").read_text())
    run = where["run"]
    assert where["first"] == {"pid": run, "dask_name": None, "dask_address": None}
    assert where["second"]["pid"] != run and where["second"]["dask_name"] is None
    assert where["third"]["dask_name"] == "gpu-worker"
    assert where["fourth"]["dask_name"] in {"cpu-worker", "gpu-worker"}
    from distributed import Client

    with Client(dask_cluster.address, timeout=30, set_as_default=False) as client:
        workers = client.scheduler_info()["workers"]
    names = {info["name"]: address for address, info in workers.items()}
    assert where["third"]["dask_address"] == names["gpu-worker"]
    # The cluster given by address is left running, without the run's keys.
    assert set(names) == {"cpu-worker", "gpu-worker"}
    assert _until(lambda: not _scheduler_keys(dask_cluster)), _scheduler_keys(dask_cluster)

    again = stepflow_runner.run("run", "flow.py")
    assert again.ret == 0, again.stdout + again.stderr
    again.fnmatch_lines(["*5 reused*"])


def test_gpu_steps_all_land_on_the_gpu_worker(stepflow_runner, dask_cluster, write_project):
    """Three independent ``gpus=1`` steps, in parallel, all run on ``gpu-worker``."""
    flow = """
        import os
        from pathlib import Path
        from stepflow import step

        for i in range(3):
            def gpu() -> str:
                return os.environ["STEPFLOW_DASK_WORKER_NAME"]
            globals()[f"gpu{i}"] = step(
                name=f"gpu{i}", backend="cluster", resources={"gpus": 1}, cache=False
            )(gpu)

        @step
        def names(gpu0: str, gpu1: str, gpu2: str) -> None:
            Path("names.txt").write_text(" ".join([gpu0, gpu1, gpu2]))
        """
    write_project(stepflow_runner.path, _backends(dask_cluster), flow)
    out = stepflow_runner.run("run", "flow.py", "--workers", "3")
    assert out.ret == 0, out.stdout + out.stderr
    names = (stepflow_runner.path / "names.txt").read_text()
    assert names == "gpu-worker gpu-worker gpu-worker"


def test_a_resource_no_worker_offers_is_an_error_naming_it(
    stepflow_runner, dask_cluster, write_project
):
    """A step asking for two GPUs, which no worker has, fails with a message saying what
    the workers offer and how to start one that fits, instead of waiting forever."""
    flow = """
        from stepflow import step

        @step(backend="cluster", resources={"gpus": 2})
        def big() -> int:
            return 1
        """
    write_project(stepflow_runner.path, _backends(dask_cluster), flow)
    out = stepflow_runner.run("run", "flow.py")
    text = out.stdout + out.stderr
    assert out.ret in (1, 2), text
    assert "GPU=2" in text and "no worker" in text, text
    assert "GPU=1" in text and "--resources" in text, text


def test_retries_run_a_new_attempt_under_a_new_key(stepflow_runner, dask_cluster, write_project):
    """A step that fails once is retried by stepflow (Dask's own retries are off): the second
    attempt succeeds, and it knows it is attempt 2."""
    flow = """
        import stepflow
        from stepflow import step

        @step(backend="cluster", retries=1, cache=False)
        def flaky() -> int:
            attempt = stepflow.context().attempt
            if attempt == 1:
                raise RuntimeError("the first attempt fails")
            return attempt

        @step
        def show(flaky: int) -> None:
            print("succeeded on attempt", flaky)
        """
    write_project(stepflow_runner.path, _backends(dask_cluster), flow)
    out = stepflow_runner.run("run", "flow.py")
    assert out.ret == 0, out.stdout + out.stderr
    out.fnmatch_lines(["*succeeded on attempt 2*"])


def _hanging_flow(pid_file) -> str:
    return f"""
        import subprocess
        from pathlib import Path
        from stepflow import step

        @step(backend="cluster", cache=False, timeout=TIMEOUT)
        def hang() -> int:
            print("started the child", flush=True)
            child = subprocess.Popen(["sleep", "300"])
            Path({str(pid_file)!r}).write_text(str(child.pid))
            child.wait()
            return 1
        """


def test_a_timeout_kills_the_steps_process_tree(stepflow_runner, dask_cluster, write_project, gone):
    """A step past its timeout is killed on the Dask worker with the process it started,
    reported as timed out, and keeps what it printed; the cluster keeps no key of it."""
    pid_file = stepflow_runner.path / "child.pid"
    flow = _hanging_flow(pid_file).replace("TIMEOUT", "3")
    write_project(stepflow_runner.path, _backends(dask_cluster), flow)
    out = stepflow_runner.run("run", "flow.py")
    assert out.ret == 1, out.stdout + out.stderr
    assert "timeout" in out.stdout, out.stdout
    assert gone(int(pid_file.read_text())), "the step's child process outlived its timeout"
    logs = stepflow_runner.run("logs", "last", "hang")
    assert "started the child" in logs.stdout, logs.stdout + logs.stderr
    assert _until(lambda: not _scheduler_keys(dask_cluster)), _scheduler_keys(dask_cluster)


@pytest.mark.parametrize("how", ["ctrl-c", "kill-9"])
def test_a_stopped_run_leaves_nothing_running_on_the_cluster(
    stepflow_runner, dask_cluster, write_project, gone, how
):
    """Ctrl-C (SIGINT to the run's process group, as a terminal sends it) cancels the run's
    futures: the step and its child are killed on the worker, the run exits 130. After
    ``kill -9`` of the run, the scheduler drops its futures and the same happens. No
    stepflow process is left under the cluster's workers (after ``kill -9``, once the next
    run has ended)."""
    pid_file = stepflow_runner.path / "child.pid"
    flow = _hanging_flow(pid_file).replace("TIMEOUT", "None")
    write_project(stepflow_runner.path, _backends(dask_cluster), flow)
    proc = subprocess.Popen(
        [sys.executable, "-m", "stepflow", "run", "flow.py"],
        cwd=stepflow_runner.path,
        env={**os.environ, "STEPFLOW_HOME": str(stepflow_runner.home)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert _until(lambda: pid_file.exists() and pid_file.read_text(), 90), "no step started"
        child = int(pid_file.read_text())
        assert _scheduler_keys(dask_cluster), "the attempt is not a key on the scheduler"
        if how == "ctrl-c":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.kill()
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    if how == "ctrl-c":
        assert proc.returncode == 130, stdout + stderr
        assert "interrupted" in stdout, stdout
    assert gone(child), "the step's child process outlived the run"
    assert _until(lambda: not _scheduler_keys(dask_cluster)), _scheduler_keys(dask_cluster)
    if how == "kill-9":
        # The killed run could not stop its idle stepflow workers (they compute nothing);
        # the next run on the cluster sweeps them when it ends.
        write_project(stepflow_runner.path, _backends(dask_cluster), "x = 1\n")
        stepflow_runner.makepyfile(
            other="""
            from stepflow import step

            @step(backend="cluster", cache=False)
            def quick() -> int:
                return 1
            """
        )
        out = stepflow_runner.run("run", "other.py")
        assert out.ret == 0, out.stdout + out.stderr
    assert _until(lambda: not dask_cluster.stepflow_workers()), dask_cluster.stepflow_workers()
