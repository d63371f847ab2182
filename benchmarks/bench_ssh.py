"""The cost of a step on an SSH host over a warm connection (DESIGN.md section 6).

Run from the repository root, as a user who may start ``sshd`` (root, or with ``/run/sshd``)::

    python benchmarks/bench_ssh.py            # 30 steps per backend, 5 rounds
    python benchmarks/bench_ssh.py --quick    # 10 steps, 3 rounds

It starts a real ``sshd`` on a loopback port (the tests' fixture), opens one SSH backend and
one local process backend, and then, in turn in each round, runs the same trivial step as a
``Task`` on each: through a warm serving worker on this machine, and as a detached attempt on
the "host" (this machine, through sshd) over the warm ControlMaster. The step's input is a
small stored object and its output a small one, so the transfers are a few hundred bytes; the
difference per step is the SSH backend's own cost: the launch, the polls, the supervisor
and a fresh worker process on the host, bringing the output back and removing the attempt.
It only measures: no test asserts these timings.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "plugins" / "ssh"))

STEP = """
from stepflow import step

@step
def bump(x: int = 0) -> int:
    return x + 1
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    steps, rounds = (10, 3) if args.quick else (30, 5)

    from ssh_testing import start_sshd, stop_sshd
    from stepflow_ssh import SSHBackend

    from stepflow._config import load_config
    from stepflow._plugins.backends import ProcessBackend
    from stepflow.backends import BackendContext, Task

    with tempfile.TemporaryDirectory(prefix="bench-ssh-") as tmp:
        base = Path(tmp)
        server = start_sshd(base / "sshd")
        project = base / "project"
        project.mkdir()
        (project / "pyproject.toml").write_text("[tool.stepflow]\n")
        (project / "benchstep.py").write_text(STEP)
        sys.path.insert(0, str(project))
        import benchstep

        config = load_config(project, home=base / "home")
        context = BackendContext(config=config, workers=1, run_id="bench")
        options = server.options(base / "remote")
        options.pop("plugin")
        ssh = SSHBackend("gpu", options, context)
        local = ProcessBackend("process", {}, context)
        store = base / "home" / "objects"
        try:
            started = time.perf_counter()
            ssh.check()
            check = time.perf_counter() - started

            def task(n: int) -> Task:
                return Task(
                    run_id="bench",
                    step="bump",
                    attempt=n,
                    ref=benchstep.bump.spec.ref,
                    inputs={},
                    params={"x": n},
                    store_uri=str(store),
                    sys_path=(str(project),),
                )

            # Warm: the snapshot uploaded, the serving worker started.
            for backend in (ssh, local):
                assert backend.execute(task(0), timeout=None).ok
            figures: dict[str, list[float]] = {"process": [], "ssh": []}
            for r in range(rounds):
                for name, backend in (("process", local), ("ssh", ssh)):
                    times = []
                    for i in range(steps):
                        t0 = time.perf_counter()
                        result = backend.execute(task(1 + r * steps + i), timeout=None)
                        times.append(time.perf_counter() - t0)
                        assert result.ok, result.error
                    figures[name].append(statistics.median(times))
        finally:
            ssh.close()
            local.close()
            stop_sshd(server)

    process = statistics.median(figures["process"])
    remote = statistics.median(figures["ssh"])
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    print(f"commit {commit}, Python {platform.python_version()}, {platform.machine()}")
    print(f"{steps} steps x {rounds} rounds, median per step (rounds: min-max)")
    print(f"  check() (connect, agent, hello)  {check * 1000:8.1f} ms")
    for name, values in figures.items():
        lo, hi = min(values) * 1000, max(values) * 1000
        print(f"  {name:<32} {statistics.median(values) * 1000:8.1f} ms  [{lo:.1f}-{hi:.1f}]")
    print(f"  ssh minus process                {(remote - process) * 1000:8.1f} ms  (budget 50)")


if __name__ == "__main__":
    main()
