"""``stepflow run`` and ``stepflow show`` with several backends in one run (DESIGN §8,
"Mixed backends"): slots and resource pools per backend, refusals before any step runs."""

from __future__ import annotations

import json

import pytest

PYPROJECT = """
[tool.stepflow.backends.gpu]
plugin = "process"
workers = 2
resources = {gpus = 1, memory = "1G"}
"""

FLOW = """
import json, os, time
from pathlib import Path
from stepflow import step

LOG = Path("spans.log")

def _span(name, seconds):
    start = time.time()
    time.sleep(seconds)
    with LOG.open("a") as fh:
        fh.write(json.dumps([name, os.getpid(), start, time.time()]) + "\\n")

@step
def data() -> int:
    _span("data", 0.0)
    return 10

@step(backend="gpu", resources={"gpus": 1, "memory": "512M"})
def train_a(data: int) -> int:
    _span("train_a", 0.5)
    return data + 1

@step(backend="gpu", resources={"gpus": 1})
def train_b(data: int) -> int:
    _span("train_b", 0.5)
    return data + 2

@step(resources={"cpus": 1})
def report(train_a: int, train_b: int) -> int:
    _span("report", 0.0)
    return train_a + train_b
"""


def _spans(path) -> dict[str, tuple[int, float, float]]:
    return {n: (pid, a, b) for n, pid, a, b in map(json.loads, path.read_text().splitlines())}


@pytest.mark.slow
def test_one_run_mixes_local_and_process_backends_with_a_gpu_pool(stepflow_runner):
    """The local backend (one slot: --workers 1) and the gpu backend (two slots, one GPU)
    run side by side; the two GPU steps never hold the one GPU at once."""
    (stepflow_runner.path / "pyproject.toml").write_text(PYPROJECT)
    stepflow_runner.makepyfile(flow=FLOW)
    out = stepflow_runner.run("run", "flow.py")
    assert out.ret == 0, out.stderr
    assert "4 ran" in out.stdout
    spans = _spans(stepflow_runner.path / "spans.log")
    # The local backend's one slot is one worker process; the gpu backend has its own.
    assert spans["data"][0] == spans["report"][0]
    assert spans["train_a"][0] != spans["data"][0] and spans["train_b"][0] != spans["data"][0]
    a, b = spans["train_a"][1:], spans["train_b"][1:]
    assert a[1] <= b[0] or b[1] <= a[0], "two steps held the one GPU at once"
    again = stepflow_runner.run("run", "flow.py")
    assert again.ret == 0 and "4 reused" in again.stdout


def test_a_refused_step_is_a_usage_error_before_anything_runs(stepflow_runner):
    (stepflow_runner.path / "pyproject.toml").write_text(PYPROJECT)
    stepflow_runner.makepyfile(
        flow="""
        from pathlib import Path
        from stepflow import step

        @step
        def first() -> int:
            Path("ran").write_text("yes")
            return 1

        @step(env={"image": "python:3.12-slim"}, resources={"gpus": 1})
        def boxed(first: int) -> int:
            return first
        """
    )
    out = stepflow_runner.run("run", "flow.py")
    assert out.ret == 2
    assert "step 'boxed' asks env={'image': 'python:3.12-slim'} and resources={'gpus': 1}" in (
        out.stderr
    )
    assert "backend 'local' cannot run step 'boxed'" in out.stderr
    assert "does not provide env image" in out.stderr
    assert "does not provide resources gpus" in out.stderr
    assert not (stepflow_runner.path / "ran").exists()


class TestShow:
    def test_text_shows_backend_env_and_resources(self, stepflow_runner):
        (stepflow_runner.path / "pyproject.toml").write_text(PYPROJECT)
        stepflow_runner.makepyfile(flow=FLOW)
        out = stepflow_runner.run("show", "flow.py")
        assert out.ret == 0, out.stderr
        out.fnmatch_lines(
            [
                "  train_a(data) -> train_a: int  "
                "[[]backend=gpu, resources={'memory': '512M', 'gpus': 1}[]]",
                "  report(train_a, train_b) -> report: int  [[]resources={'cpus': 1}[]]",
                "backends:",
                "  local: data, report",
                "  gpu: train_a, train_b",
            ]
        )

    def test_json_shows_backend_env_and_resources(self, stepflow_runner):
        stepflow_runner.makepyfile(
            flow="""
            from stepflow import step

            @step(backend="box", env={"image": "python:3.12-slim"}, resources={"gpus": 2})
            def boxed() -> int:
                return 1

            @step
            def plain(boxed: int) -> int:
                return boxed
            """
        )
        out = stepflow_runner.run("show", "flow.py", "--format", "json")
        assert out.ret == 0, out.stderr
        steps = {s["name"]: s for s in json.loads(out.stdout)["steps"]}
        assert steps["boxed"]["backend"] == "box"
        assert steps["boxed"]["env"] == {"image": "python:3.12-slim"}
        assert steps["boxed"]["resources"] == {"gpus": 2}
        assert (steps["plain"]["backend"], steps["plain"]["env"]) == ("local", {})
        assert steps["plain"]["resources"] == {}
