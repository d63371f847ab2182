"""The Docker backend's cost per step against a bare ``docker run`` of the same command.

DESIGN.md section 6: "a Docker step costs at most 1.2x a bare docker run of the same
command". Both run in this one process, in turn, on the same environment image:

- bare: ``docker run --rm IMAGE /opt/stepflow/venv/bin/python -c WORK`` (subprocess, wall);
- step: the step ``work`` (the same ``WORK`` in its body) on the docker backend, with
  ``regenerate`` so it runs every time; the step's own duration (container created, started,
  waited for, logs read, removed) and the whole ``Pipeline.run`` are both shown.

A local step of the same body is timed too, for scale. Median [min-max] of N.

    python benchmarks/bench_docker.py [--repeats 5] [--image stepflow-test-base:bookworm]

The image must be on the engine (the tests build ``stepflow-test-base:bookworm`` with
debootstrap; ``python:3.11-slim`` works where a registry is reachable).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

#: the command both run: a sum, then a sleep of SECONDS (0: the fixed cost alone)
WORK = "import time; value = sum(range(200_000)); time.sleep({seconds}); print(value)"

FLOW = """
from stepflow import step

@step(backend="box")
def work(seconds: float = 0.0) -> int:
    import time
    value = sum(range(200_000))
    time.sleep(seconds)
    print(value)
    return value

@step
def local_work(seconds: float = 0.0) -> int:
    import time
    value = sum(range(200_000))
    time.sleep(seconds)
    print(value)
    return value
"""


def _median(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} s [{min(values):.3f}-{max(values):.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--image", default="stepflow-test-base:bookworm")
    parser.add_argument(
        "--seconds", type=float, nargs="+", default=[0.0, 3.0], help="sleeps in the command"
    )
    args = parser.parse_args()

    from stepflow import Pipeline
    from stepflow._config import load_config

    with tempfile.TemporaryDirectory(prefix="stepflow-bench-docker-") as tmp:
        project = Path(tmp) / "project"
        project.mkdir()
        (project / "pyproject.toml").write_text(
            f'[tool.stepflow.backends.box]\nplugin = "docker"\nimage = "{args.image}"\n'
            'pull = "never"\n'
        )
        (project / "flow.py").write_text(textwrap.dedent(FLOW))
        os.chdir(project)
        config = load_config(project, home=Path(tmp) / "home")
        pipeline = Pipeline.from_module(project / "flow.py")
        # The first run builds (or finds) the environment image; not timed.
        first = pipeline.run(config=config, targets=["work"])
        assert first.steps["work"].state.value == "ran", first.steps["work"]
        import docker

        client = docker.from_env()
        images = [i for i in client.images.list("stepflow-env") if i.tags]
        image = max(images, key=lambda i: i.attrs["Created"]).tags[0]
        rows = []
        for seconds in args.seconds:
            command = WORK.format(seconds=seconds)
            bare_cmd = ["docker", "run", "--rm", image, "/opt/stepflow/venv/bin/python", "-c"]
            bare: list[float] = []
            step: list[float] = []
            whole: list[float] = []
            local: list[float] = []
            params = {"seconds": seconds}
            for _ in range(args.repeats):
                start = time.perf_counter()
                subprocess.run([*bare_cmd, command], check=True, capture_output=True)
                bare.append(time.perf_counter() - start)
                start = time.perf_counter()
                result = pipeline.run(params, config=config, targets=["work"], regenerate=True)
                whole.append(time.perf_counter() - start)
                assert result.steps["work"].state.value == "ran", result.steps["work"]
                step.append(result.steps["work"].duration)
                result = pipeline.run(
                    params, config=config, targets=["local_work"], regenerate=True
                )
                local.append(result.steps["local_work"].duration)
            rows.append((seconds, bare, step, whole, local))
        client.close()
    print(f"machine: {platform.node()} {os.cpu_count()} cores, Python {sys.version.split()[0]}")
    print(f"image: {image} (from {args.image}); {args.repeats} repeats, in turn")
    for seconds, bare, step, whole, local in rows:
        ratio = statistics.median(step) / statistics.median(bare)
        print(f"-- the command sleeps {seconds:g} s")
        print(f"bare docker run            {_median(bare)}")
        print(f"docker step (its duration) {_median(step)}  = {ratio:.2f}x bare (budget 1.2x)")
        print(f"Pipeline.run of that step  {_median(whole)}")
        print(f"the same step, local       {_median(local)}")


if __name__ == "__main__":
    main()
