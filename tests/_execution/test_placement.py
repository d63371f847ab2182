"""Mixed backends (DESIGN §8): refusals before the run, slots per backend, resource pools,
and backends driven through their own futures."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from stepflow import Pipeline
from stepflow._config import load_config
from stepflow._execution.result import StepState
from stepflow.errors import BackendUnavailableError

#: a plugin module: "imagey" honours env image (as a container backend would), "futures"
#: has only submit() (an engine with futures of its own), never execute()
PLUGIN = """
import threading
from concurrent.futures import Future

import stepflow
from stepflow.worker import execute_task

class Imagey(stepflow.Backend):
    kind = "imagey"
    supported_env = frozenset({"image"})
    supported_resources = frozenset({"cpus", "memory", "gpus"})

    def execute(self, task, *, timeout):
        return execute_task(task)

class Futures(stepflow.Backend):
    kind = "futures"

    def submit(self, task):
        future = Future()
        threading.Thread(target=lambda: future.set_result(execute_task(task))).start()
        return future

@stepflow.hookimpl
def stepflow_backend_types():
    return {"imagey": Imagey, "futures": Futures}
"""

#: each step appends (name, start, end) to a log, so the test can see which ran at once
TIMED = """
import json, time
from pathlib import Path
from stepflow import step

LOG = Path({log!r})

def _span(name, seconds):
    start = time.time()
    time.sleep(seconds)
    with LOG.open("a") as fh:
        fh.write(json.dumps([name, start, time.time()]) + "\\n")

@step(backend="gpu", resources={{"gpus": 1}})
def train_a() -> int:
    _span("train_a", 0.6)
    return 1

@step(backend="gpu", resources={{"gpus": 1}})
def train_b() -> int:
    _span("train_b", 0.6)
    return 2

@step
def prep_a() -> int:
    _span("prep_a", 0.05)
    return 3

@step
def prep_b() -> int:
    _span("prep_b", 0.05)
    return 4
"""


def _project(tmp_path: Path, backends: str) -> Path:
    project = tmp_path / "project"
    project.mkdir()
    (project / "pyproject.toml").write_text(textwrap.dedent(backends))
    return project


def _spans(log: Path) -> dict[str, tuple[float, float]]:
    return {n: (a, b) for n, a, b in map(json.loads, log.read_text().splitlines())}


def _overlap(one: tuple[float, float], two: tuple[float, float]) -> bool:
    return one[0] < two[1] and two[0] < one[1]


class TestRefusals:
    FLOW = """
    from pathlib import Path
    from stepflow import step

    @step
    def first() -> int:
        Path({marker!r}).write_text("ran")
        return 1

    @step(env={{"image": "python:3.12-slim"}})
    def boxed(first: int) -> int:
        return first
    """

    def test_local_refuses_an_image_and_names_the_backend_that_can(self, make_module, tmp_path):
        """A step asking for an image on the local backend fails the run before any step
        runs, naming the step, what it asked, and the configured backend that could."""
        make_module("placement_plugin", PLUGIN)
        mod = make_module("refused", self.FLOW.format(marker=str(tmp_path / "ran")))
        project = _project(tmp_path, '[tool.stepflow.backends.box]\nplugin = "imagey"\n')
        with pytest.raises(BackendUnavailableError) as info:
            Pipeline("p", [mod.first, mod.boxed]).run(
                config=load_config(project, plugins=("placement_plugin",))
            )
        message = str(info.value)
        assert "step 'boxed' asks env={'image': 'python:3.12-slim'}" in message
        assert "backend 'local' cannot run step 'boxed'" in message
        assert "does not provide env image" in message
        assert "'box' (imagey)" in message and "--backend boxed=NAME" in message
        assert not (tmp_path / "ran").exists()

    def test_without_a_configured_backend_the_installed_kinds_are_named(
        self, make_module, tmp_path, monkeypatch
    ):
        # Away from the checkout, whose pyproject.toml configures a docker backend for the
        # example (that one could run the step, and would be named instead).
        monkeypatch.chdir(tmp_path)
        make_module("placement_plugin", PLUGIN)
        mod = make_module("refused2", self.FLOW.format(marker=str(tmp_path / "ran")))
        with pytest.raises(BackendUnavailableError, match=r"installed kinds that could: .*imagey"):
            Pipeline("p", [mod.first, mod.boxed]).run(plugins=["placement_plugin"])
        assert not (tmp_path / "ran").exists()

    def test_the_capable_backend_runs_it(self, make_module, tmp_path):
        make_module("placement_plugin", PLUGIN)
        mod = make_module("refused3", self.FLOW.format(marker=str(tmp_path / "ran")))
        project = _project(tmp_path, '[tool.stepflow.backends.box]\nplugin = "imagey"\n')
        result = Pipeline("p", [mod.first, mod.boxed]).run(
            backends={"boxed": "box"},
            config=load_config(project, plugins=("placement_plugin",)),
        )
        assert result.ok and result["boxed"] == 1

    def test_more_than_the_pool_lends_is_refused(self, make_module, tmp_path):
        """A step asking more GPUs than its backend's pool holds would wait forever."""
        mod = make_module(
            "greedy",
            """
            from stepflow import step

            @step(backend="gpu", resources={"gpus": 2})
            def greedy() -> int:
                return 1
            """,
        )
        project = _project(
            tmp_path,
            """
            [tool.stepflow.backends.gpu]
            plugin = "process"
            resources = {gpus = 1}
            """,
        )
        with pytest.raises(BackendUnavailableError) as info:
            Pipeline("p", [mod.greedy]).run(config=load_config(project))
        assert "asks gpus=2 but its pool lends at most 1 at once" in str(info.value)
        assert "resources.gpus in [tool.stepflow.backends.gpu]" in str(info.value)

    def test_a_bad_amount_against_a_pool_is_named(self, make_module, tmp_path):
        mod = make_module(
            "bad_amount",
            """
            from stepflow import step

            @step(backend="gpu", resources={"memory": "plenty"})
            def hungry() -> int:
                return 1
            """,
        )
        project = _project(
            tmp_path,
            """
            [tool.stepflow.backends.gpu]
            plugin = "process"
            resources = {memory = "1G"}
            """,
        )
        with pytest.raises(BackendUnavailableError) as info:
            Pipeline("p", [mod.hungry]).run(config=load_config(project))
        assert "step 'hungry': resources memory='plenty'" in str(info.value)
        assert "is not a size" in str(info.value)

    def test_gpus_without_a_pool_are_refused_on_process(self, make_module, tmp_path):
        mod = make_module(
            "nogpu",
            """
            from stepflow import step

            @step(backend="process", resources={"gpus": 1})
            def wants_gpu() -> int:
                return 1
            """,
        )
        with pytest.raises(BackendUnavailableError, match="does not provide resources gpus"):
            Pipeline("p", [mod.wants_gpu]).run()

    @pytest.mark.parametrize(
        "table, said",
        [
            ("workers = 0", "option workers=0 must be a whole number >= 1"),
            ('resources = "lots"', "resources must be a table"),
            ("resources = {tpus = 1}", "unknown resource 'tpus'"),
            ('resources = {memory = "much"}', "resources.memory in"),
            ("resources = {gpus = -1}", "-1 is not a number >= 0"),
        ],
    )
    def test_bad_tables_are_named(self, make_module, tmp_path, table, said):
        mod = make_module(
            "plain",
            """
            from stepflow import step

            @step(backend="gpu")
            def plain() -> int:
                return 1
            """,
        )
        project = _project(tmp_path, f'[tool.stepflow.backends.gpu]\nplugin = "process"\n{table}\n')
        with pytest.raises(BackendUnavailableError, match="backend 'gpu'") as info:
            Pipeline("p", [mod.plain]).run(config=load_config(project))
        assert said in str(info.value)


@pytest.mark.slow
class TestPools:
    def test_a_gpu_step_waits_for_the_gpu_not_for_a_cpu_slot(self, make_module, tmp_path):
        """Two GPU steps on a backend with two slots but one GPU never run at once, while
        the CPU steps run beside them."""
        log = tmp_path / "spans.log"
        mod = make_module("timed_gpu", TIMED.format(log=str(log)))
        project = _project(
            tmp_path,
            """
            [tool.stepflow.backends.gpu]
            plugin = "process"
            workers = 2
            resources = {gpus = 1}
            """,
        )
        steps = [mod.train_a, mod.train_b, mod.prep_a, mod.prep_b]
        result = Pipeline("p", steps).run(workers=2, config=load_config(project))
        assert result.ok, [r.error for r in result.steps.values()]
        spans = _spans(log)
        assert not _overlap(spans["train_a"], spans["train_b"])
        # The CPU steps did not wait for both GPU steps to end.
        gpu_done = max(spans["train_a"][1], spans["train_b"][1])
        assert spans["prep_a"][1] < gpu_done and spans["prep_b"][1] < gpu_done

    def test_slots_per_backend(self, make_module, tmp_path):
        """``workers = 1`` in a backend's table: its steps run one at a time, whatever the
        run's --workers (this backend runs tasks in the calling thread, so only the run
        loop's slots keep them apart)."""
        make_module("placement_plugin", PLUGIN)
        log = tmp_path / "spans.log"
        source = TIMED.format(log=str(log)).replace(', resources={"gpus": 1}', "")
        mod = make_module("timed_slots", source)
        project = _project(
            tmp_path,
            """
            [tool.stepflow.backends.gpu]
            plugin = "imagey"
            workers = 1
            """,
        )
        config = load_config(project, plugins=("placement_plugin",))
        result = Pipeline("p", [mod.train_a, mod.train_b]).run(workers=4, config=config)
        assert result.ok
        spans = _spans(log)
        assert not _overlap(spans["train_a"], spans["train_b"])
        assert {r.backend for r in result.steps.values()} == {"gpu"}


def test_a_backend_with_only_submit_runs_through_its_futures(make_module, stepflow_home):
    """The run loop calls ``submit`` of a backend that overrides it (it never calls the
    ``execute`` this backend lacks), sequential or parallel."""
    make_module("placement_plugin", PLUGIN)
    mod = make_module(
        "on_futures",
        """
        from stepflow import step

        @step(backend="futures")
        def made() -> int:
            return 41

        @step
        def used(made: int) -> int:
            return made + 1
        """,
    )
    for workers in (1, 2):
        result = Pipeline("p", [mod.made, mod.used]).run(
            workers=workers, plugins=["placement_plugin"], regenerate=True
        )
        assert result.ok, result.steps["made"].error
        assert result["used"] == 42 and result.steps["made"].state is StepState.RAN
