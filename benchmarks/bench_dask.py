"""The Dask backend's budgets of DESIGN.md section 6, measured in one run.

Starts a ``LocalCluster`` of 4 worker processes (one thread each) in this process, then, in
turn on that same cluster:

- **bare Dask task**: ``client.submit(f).result()`` of a function returning an int, one at
  a time: Dask's own per-task cost (submit, schedule, run, fetch the result);
- **Dask step, backend alone**: ``DaskBackend.execute(task)`` of a step returning an int,
  one at a time, once every worker has started its stepflow worker, with its output stored
  (the stepflow worker in the Dask worker, the frame
  round trip, the store): minus the bare task, what the backend adds to Dask's own cost;
- **Dask step in a run**: chains of 1 and N steps on the ``dask`` backend (``address`` of
  the same cluster), each adding one to an int, run by ``Pipeline.run`` into a brand-new
  home (cache and run records on, as a user gets them). The 1-step run is the fixed cost of
  a run that uses the cluster (connect, the probe, the first stepflow worker, closing); the
  marginal step is ``(T(N) - T(1)) / (N - 1)``;
- **process step** (reference): the same chains on the built-in ``process`` backend;
- **1,000 independent small steps** on the 4 workers (``Pipeline.run(workers=N)``), next to
  1,000 bare Dask tasks submitted at once and gathered.

Each figure is the median of ``--repeats`` rounds; in each round the cases run one after the
other, so they share the machine's state (its speed drifts 2x within minutes).

    python benchmarks/bench_dask.py [--repeats 3] [--chain 50] [--wide 1000] [--in-flight 8]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def plus_one(x: int) -> int:
    return x + 1


def chain_module(steps: int, backend: str) -> str:
    lines = ["from stepflow import step", ""]
    lines += [f'@step(backend="{backend}")', "def s0() -> int:", "    return 0", ""]
    for i in range(1, steps):
        lines += [
            f'@step(backend="{backend}")',
            f"def s{i}(s{i - 1}: int) -> int:",
            f"    return s{i - 1} + 1",
            "",
        ]
    return "\n".join(lines)


def wide_module(steps: int) -> str:
    lines = ["from stepflow import step", ""]
    for i in range(steps):
        lines += ['@step(backend="cluster")', f"def w{i}() -> int:", f"    return {i}", ""]
    return "\n".join(lines)


def backend_steps(folder: Path, address: str, n: int, round_: int) -> float:
    """Seconds per ``DaskBackend.execute`` of a one-step task, one at a time."""
    from stepflow_dask import DaskBackend

    from stepflow import BackendContext, Task
    from stepflow._config import load_config

    home = Path(tempfile.mkdtemp(prefix="home-", dir=folder))
    config = load_config(folder, home=home)
    context = BackendContext(config=config, workers=1, run_id=f"bench{round_}")
    backend = DaskBackend("cluster", {"address": address}, context)
    backend.check()
    ref = __import__("dask_chain").s0.spec.ref
    fields = {"store_uri": str(home / "objects"), "home": str(home), "sys_path": (str(folder),)}
    try:
        # Every worker starts its stepflow worker before the clock does (a run's fixed cost).
        warm = [Task(f"bench{round_}", "s0", -i, ref, {}, {}, **fields) for i in range(1, 13)]
        for future in [backend.submit(task) for task in warm]:
            assert future.result().ok
        start = time.perf_counter()
        for i in range(1, n + 1):
            task = Task(f"bench{round_}", "s0", i, ref, inputs={}, params={}, **fields)
            assert backend.execute(task, timeout=None).ok
        return (time.perf_counter() - start) / n
    finally:
        backend.close()


def timed_run(folder: Path, module: str, address: str, workers: int = 1) -> float:
    """Seconds of one ``Pipeline.run`` of ``module`` into a brand-new home."""
    from stepflow import Pipeline
    from stepflow._config import load_config

    home = Path(tempfile.mkdtemp(prefix="home-", dir=folder))
    (folder / "pyproject.toml").write_text(
        f'[tool.stepflow.backends.cluster]\nplugin = "dask"\naddress = "{address}"\n\n'
        f'[tool.stepflow.backends.proc]\nplugin = "process"\nworkers = {workers}\n'
    )
    pipeline = Pipeline.from_module(folder / f"{module}.py")
    config = load_config(folder, home=home, workers=workers)
    start = time.perf_counter()
    result = pipeline.run(config=config, workers=workers)
    elapsed = time.perf_counter() - start
    states = {r.state.value for r in result.steps.values()}
    assert states == {"ran"}, states
    return elapsed


def bare_tasks(client, n: int) -> float:
    """Seconds per bare Dask task, one at a time."""
    start = time.perf_counter()
    for i in range(n):
        assert client.submit(plus_one, i, pure=False).result() == i + 1
    return (time.perf_counter() - start) / n


def bare_wide(client, n: int) -> float:
    """Seconds for ``n`` bare Dask tasks submitted at once and gathered."""
    start = time.perf_counter()
    futures = client.map(plus_one, range(n), pure=False)
    assert client.gather(futures)[-1] == n
    return time.perf_counter() - start


def commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chain", type=int, default=50, help="steps of the chain")
    parser.add_argument("--wide", type=int, default=1000, help="independent steps")
    parser.add_argument("--in-flight", type=int, default=8, help="run loop workers, wide run")
    args = parser.parse_args()

    import dask
    import distributed
    from distributed import Client, LocalCluster

    folder = Path(tempfile.mkdtemp(prefix="bench-dask-"))
    os.chdir(folder)
    sys.path.insert(0, str(folder))
    (folder / "dask_chain.py").write_text(chain_module(args.chain, "cluster"))
    (folder / "dask_one.py").write_text(chain_module(1, "cluster"))
    (folder / "proc_chain.py").write_text(chain_module(args.chain, "proc"))
    (folder / "proc_one.py").write_text(chain_module(1, "proc"))
    (folder / "dask_wide.py").write_text(wide_module(args.wide))

    import stepflow

    print(
        f"stepflow {stepflow.__version__} (commit {commit()}), dask {dask.__version__}, "
        f"distributed {distributed.__version__}, Python {platform.python_version()}, "
        f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}"
    )
    with (
        LocalCluster(
            n_workers=4, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        rows: dict[str, list[float]] = {}
        # Warm-up: every worker has imported stepflow once.
        timed_run(folder, "dask_one", cluster.scheduler_address)
        client.map(plus_one, range(8), pure=False)
        address = cluster.scheduler_address
        n = args.chain
        for round_ in range(args.repeats):
            bare = bare_tasks(client, n)
            alone = backend_steps(folder, address, n, round_)
            dask_one = timed_run(folder, "dask_one", address)
            dask_chain = timed_run(folder, "dask_chain", address)
            proc_one = timed_run(folder, "proc_one", address)
            proc_chain = timed_run(folder, "proc_chain", address)
            wide_bare = bare_wide(client, args.wide)
            wide = timed_run(folder, "dask_wide", address, args.in_flight)
            marginal = (dask_chain - dask_one) / (n - 1)
            add = rows.setdefault
            add("bare Dask task, one at a time (per task)", []).append(bare)
            add("Dask step, backend alone (per step)", []).append(alone)
            add("**backend's overhead beyond the bare task**", []).append(alone - bare)
            add("run of 1 Dask step (fixed cost of a run on the cluster)", []).append(dask_one)
            add(f"Dask step in a run, marginal ({n}-step chain)", []).append(marginal)
            add("same, beyond the bare task", []).append(marginal - bare)
            add("run of 1 process step (reference)", []).append(proc_one)
            add(f"process step in a run, marginal ({n}-step chain)", []).append(
                (proc_chain - proc_one) / (n - 1)
            )
            add(f"{args.wide} bare Dask tasks at once (total)", []).append(wide_bare)
            add(
                f"**{args.wide} independent Dask steps, {args.in_flight} in flight (total)**", []
            ).append(wide)
            add("same, per step", []).append(wide / args.wide)

    print(f"\nmedian of {args.repeats} [min - max]; 4 worker processes, 1 thread each\n")
    print("| figure | median | range |")
    print("|---|---|---|")
    for name, values in rows.items():
        print(
            f"| {name} | {_fmt(statistics.median(values))} | "
            f"{_fmt(min(values))} - {_fmt(max(values))} |"
        )


def _fmt(seconds: float) -> str:
    return f"{seconds:.2f} s" if abs(seconds) >= 1 else f"{seconds * 1000:.1f} ms"


if __name__ == "__main__":
    main()
