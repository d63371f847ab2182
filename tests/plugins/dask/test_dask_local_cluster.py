"""The Dask backend with a cluster stepflow starts itself (``cluster = ...LocalCluster``),
and the checks that stop a run before any step: no scheduler, no worker, bad options."""

from __future__ import annotations

import gc

import pytest

pytestmark = pytest.mark.usefixtures("need_dask")

LOCAL_CLUSTER = """
    [tool.stepflow.backends.cluster]
    plugin = "dask"
    cluster = "dask.distributed.LocalCluster"
    cluster_options = { n_workers = 2, threads_per_worker = 1, dashboard_address = ":0" }
    """

FLOW = """
    import os
    from stepflow import step

    @step(backend="cluster")
    def left() -> str:
        return os.environ["STEPFLOW_DASK_WORKER"]

    @step(backend="cluster")
    def right() -> str:
        return os.environ["STEPFLOW_DASK_WORKER"]

    @step
    def both(left: str, right: str) -> list[str]:
        return [left, right]
    """


@pytest.mark.slow
def test_a_local_cluster_runs_steps_and_is_closed_at_the_end(tmp_path, monkeypatch, write_project):
    """A ``LocalCluster`` (worker processes) started by the run runs its Dask steps, and is
    closed when the run ends: no process of it is left."""
    import psutil

    from stepflow import Pipeline

    write_project(tmp_path, LOCAL_CLUSTER, FLOW)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    result = Pipeline.from_module(tmp_path / "flow.py").run()
    assert {r.state.value for r in result.steps.values()} == {"ran"}, result.steps
    addresses = result["both"]
    assert all(a.startswith("tcp://127.0.0.1:") for a in addresses), addresses
    left = [
        " ".join(p.cmdline())
        for p in psutil.Process().children(recursive=True)
        if p.pid not in before and p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    ]
    # multiprocessing's resource tracker serves this test process until it exits; it is
    # Python's, not the cluster's.
    left = [cmd for cmd in left if "multiprocessing.resource_tracker" not in cmd]
    assert left == [], left


def test_no_scheduler_at_the_address_stops_the_run_before_any_step(stepflow_runner, write_project):
    """An address where no scheduler answers is a usage error (exit 2) that says how to
    start one; no step runs."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    backends = f"""
        [tool.stepflow.backends.cluster]
        plugin = "dask"
        address = "tcp://127.0.0.1:{port}"
        connect_timeout = 1
        """
    write_project(stepflow_runner.path, backends, FLOW)
    out = stepflow_runner.run("run", "flow.py")
    assert out.ret == 2, out.stdout + out.stderr
    assert f"no Dask scheduler answers at tcp://127.0.0.1:{port}" in out.stderr, out.stderr
    assert "dask scheduler" in out.stderr and "dask worker" in out.stderr
    assert "ran" not in out.stdout


@pytest.mark.slow
def test_a_scheduler_without_workers_fails_the_check(
    stepflow_runner, lonely_scheduler, write_project
):
    """A scheduler that has no worker to run the probe fails the check after
    ``probe_timeout``, saying there are no workers and how to start one."""
    backends = f"""
        [tool.stepflow.backends.cluster]
        plugin = "dask"
        address = "{lonely_scheduler.address}"
        probe_timeout = 1
        """
    write_project(stepflow_runner.path, backends, FLOW)
    out = stepflow_runner.run("run", "flow.py")
    assert out.ret == 2, out.stdout + out.stderr
    assert "ran stepflow's probe within 1s (the scheduler has 0 worker(s))" in out.stderr
    assert "dask worker" in out.stderr


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "has neither of address and cluster"),
        (
            {"address": "tcp://127.0.0.1:1", "cluster": "dask.distributed.LocalCluster"},
            "has both of address and cluster",
        ),
        ({"address": "tcp://127.0.0.1:1", "workers": 3}, "unknown option(s) ['workers']"),
        ({"address": "tcp://127.0.0.1:1", "adapt": True}, "adapt applies to a cluster stepflow"),
        ({"address": ""}, "address must be a non-empty string"),
        ({"cluster": "LocalCluster"}, "must name a class with its module"),
        ({"cluster": "dask.distributed.LocalCluster", "adapt": 3}, "adapt must be true, false"),
        (
            {"cluster": "dask.distributed.LocalCluster", "cluster_options": [1]},
            "cluster_options must be a table",
        ),
        ({"address": "tcp://127.0.0.1:1", "connect_timeout": -1}, "connect_timeout must be"),
        ({"address": "tcp://127.0.0.1:1", "probe_timeout": True}, "probe_timeout must be"),
        # These two are found when the backend starts its cluster (check), before any step.
        ({"cluster": "dask.distributed.NoSuchCluster"}, "has no class 'NoSuchCluster'"),
        pytest.param(
            {"cluster": "dask.distributed.LocalCluster", "cluster_options": {"n_wrkers": 1}},
            "LocalCluster(**cluster_options) failed",
            # Dask leaves the socket of a cluster that failed to start to the collector.
            marks=pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
        ),
    ],
)
def test_bad_options_name_the_option_and_the_fix(tmp_path, options, message):
    """Each mistake in the backend's table is a ``BackendUnavailableError`` (exit code 2 on
    the command line) that names the backend, the option and what it should be."""
    from stepflow_dask import DaskBackend

    from stepflow import BackendContext
    from stepflow._config import Config
    from stepflow.errors import BackendUnavailableError

    context = BackendContext(config=Config(rootdir=tmp_path, home=tmp_path), workers=1, run_id="r")
    with pytest.raises(BackendUnavailableError) as info:
        backend = DaskBackend("cluster", options, context)
        try:
            backend.check()
        finally:
            backend.close()
    assert message in str(info.value)
    assert "backend 'cluster'" in str(info.value)
    # What a failed cluster left behind is collected within this test (see the mark above).
    info = None
    gc.collect()


def test_a_missing_cluster_package_says_what_to_install(tmp_path, need):
    """A cluster class from a package that is not installed names the package to install."""
    import importlib.util

    from stepflow_dask import DaskBackend

    from stepflow import BackendContext
    from stepflow._config import Config
    from stepflow.errors import BackendUnavailableError

    if importlib.util.find_spec("dask_jobqueue") is not None:
        need("dask-jobqueue is installed here: this test needs it absent")
    context = BackendContext(config=Config(rootdir=tmp_path, home=tmp_path), workers=1, run_id="r")
    backend = DaskBackend("hpc", {"cluster": "dask_jobqueue.SLURMCluster"}, context)
    with pytest.raises(BackendUnavailableError, match=r"pip install dask-jobqueue"):
        backend.check()
    backend.close()


def test_bad_options_stop_the_command_line_with_exit_code_2(stepflow_runner, write_project):
    """On the command line, a bad option is a usage error: exit code 2, nothing runs."""
    backends = '[tool.stepflow.backends.cluster]\nplugin = "dask"\nadress = "tcp://x:1"\n'
    write_project(stepflow_runner.path, backends, FLOW)
    out = stepflow_runner.run("run", "flow.py")
    assert out.ret == 2, out.stdout + out.stderr
    assert "unknown option(s) ['adress']" in out.stderr, out.stderr
    assert "ran" not in out.stdout


@pytest.mark.slow
def test_dask_workers_share_results_through_an_s3_store(
    stepflow_runner, s3_server, write_project, tmp_path_factory
):
    """With an object store, the workers of a ``LocalCluster`` read their inputs from and
    write their outputs to the bucket; another home on the same bucket reuses them all. The
    padded list (over 32 KiB) is an object; the small total comes back inside its result and
    lives inside its shared record."""
    flow = """
        from stepflow import step

        @step(backend="cluster")
        def numbers() -> list[int]:
            return list(range(10)) + [0] * 20_000

        @step(backend="cluster")
        def total(numbers: list[int]) -> int:
            return sum(numbers)
        """
    extra = f'store = "{s3_server.url()}"\n\n[tool.stepflow.store_options]\n'
    extra += f'endpoint_url = "{s3_server.endpoint_url}"\n'
    write_project(stepflow_runner.path, LOCAL_CLUSTER, flow, extra=extra)
    out = stepflow_runner.run("run", "flow.py")
    assert out.ret == 0, out.stdout + out.stderr
    out.fnmatch_lines(["*2 ran in*"])
    objects = s3_server.fs().find(f"{s3_server.bucket}/stepflow/objects")
    assert len(objects) == 1, objects
    records = s3_server.fs().find(f"{s3_server.bucket}/stepflow/refs/index")
    assert len(records) == 2, records
    other_home = tmp_path_factory.mktemp("other-home")
    again = stepflow_runner.run("run", "flow.py", env={"STEPFLOW_HOME": str(other_home)})
    assert again.ret == 0, again.stdout + again.stderr
    again.fnmatch_lines(["*2 reused*"])


@pytest.mark.slow
@pytest.mark.usefixtures("needs_root")
def test_workers_that_cannot_see_the_store_fail_the_check(
    stepflow_runner, lonely_scheduler, write_project, need
):
    """A worker that sees another folder where the run's store is (here an empty tmpfs
    mounted over the home, in the worker's own mount namespace) fails the check before any
    step runs, naming the store and the ways to share one."""
    import shutil

    if shutil.which("unshare") is None:
        need("no unshare command: apt-get install util-linux")
    home = str(stepflow_runner.home)
    hide_home = (
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        'mount -t tmpfs -o mode=700 none "$0" && exec "$@"',
        home,
    )
    lonely_scheduler.worker("blind-worker", prefix=hide_home)
    lonely_scheduler.wait_for_workers(1)
    backends = f"""
        [tool.stepflow.backends.cluster]
        plugin = "dask"
        address = "{lonely_scheduler.address}"
        """
    write_project(stepflow_runner.path, backends, FLOW)
    out = stepflow_runner.run("run", "flow.py")
    assert out.ret == 2, out.stdout + out.stderr
    assert "cannot read the run's datastore at" in out.stderr, out.stderr
    assert "is not in the store" in out.stderr, out.stderr
    assert "s3://" in out.stderr, out.stderr
    assert " ran" not in out.stdout
