"""Reuse: results are content-addressed, reruns do only what changed, never a stale answer.

Calls are counted the joblib way: each step appends a line to a file, so a test can tell
exactly which steps ran.
"""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stepflow import Pipeline, StepState
from stepflow._storage.datastore import ArtifactMissingError
from stepflow._storage.index import CacheIndex
from stepflow.errors import StepflowWarning

FLOW = '''
from pathlib import Path
from stepflow import step
import helpers

LOG = Path({log!r})
SCALE = {scale}

def _called(name):
    with LOG.open("a") as fh:
        fh.write(name + "\\n")

@step
def numbers(n: int = 4) -> list[int]:
    _called("numbers")
    return list(range(n))

@step
def parity(numbers: list[int]) -> int:
    """Only the parity of the sum: often unchanged when numbers change."""
    _called("parity")
    return sum(numbers) % 2

@step
def scaled(numbers: list[int]) -> list[int]:
    _called("scaled")
    return [helpers.times(x, SCALE) for x in numbers]

@step
def total(scaled: list[int]) -> int:
    _called("total")
    return sum(scaled)

@step
def label(parity: int) -> str:
    _called("label")
    return "odd" if parity else "even"

@step(cache=False)
def always(total: int) -> int:
    _called("always")
    return total
'''

HELPERS = """
def times(x, k):
    return x * k
"""


class Project:
    """A flow module and its helper module that tests rewrite between runs."""

    def __init__(self, make_module, tmp_path: Path):
        self.make_module = make_module
        self.log = tmp_path / "calls.log"
        self.scale = 2
        self.helpers = HELPERS

    def pipeline(self, *steps: str) -> Pipeline:
        self.make_module("helpers", self.helpers)
        mod = self.make_module("flow", FLOW.format(log=str(self.log), scale=self.scale))
        names = steps or ("numbers", "parity", "scaled", "total", "label", "always")
        return Pipeline("flow", [getattr(mod, n) for n in names])

    def calls(self) -> list[str]:
        """The steps that ran since the last call."""
        text = self.log.read_text() if self.log.exists() else ""
        self.log.write_text("")
        return text.split()

    def run(self, **kwargs):
        result = self.pipeline().run(**kwargs)
        assert result.ok, result.summary()
        return result, self.calls()


@pytest.fixture
def project(make_module, tmp_path, stepflow_home):
    return Project(make_module, tmp_path)


def states(result) -> dict[str, str]:
    return {n: r.state.value for n, r in result.steps.items()}


class TestReuse:
    def test_rerun_reuses_everything_but_cache_false(self, project):
        """A second identical run reuses every step except the cache=False one."""
        first, calls = project.run()
        assert sorted(calls) == ["always", "label", "numbers", "parity", "scaled", "total"]
        second, calls = project.run()
        assert calls == ["always"]
        assert states(second)["total"] == "reused" and states(second)["always"] == "ran"
        assert second["total"] == first["total"] == 12
        assert second.summary().startswith("1 ran, 5 reused in ")

    def test_parameter_change(self, project):
        """A changed parameter reruns the step and what its outputs change."""
        project.run()
        result, calls = project.run(params={"n": 6})  # sum 15: parity changes too
        assert sorted(calls) == ["always", "label", "numbers", "parity", "scaled", "total"]
        assert result["total"] == 30

    def test_early_cutoff(self, project):
        """A step whose rerun yields the same value lets its consumers reuse."""
        project.run(params={"n": 4})  # sum 6 -> parity 0
        result, calls = project.run(params={"n": 5})  # sum 10 -> parity 0 again
        assert "parity" in calls and "label" not in calls
        assert states(result)["label"] == "reused" and result["label"] == "even"

    def test_helper_in_other_module_invalidates(self, project):
        """Editing a helper function in another module reruns the steps that use it."""
        project.run()
        project.helpers = "def times(x, k):\n    return x * k + 1\n"
        result, calls = project.run()
        assert sorted(calls) == ["always", "scaled", "total"]
        assert result["total"] == 16

    def test_comment_and_docstring_do_not_invalidate(self, project):
        """Comments, docstrings and formatting in a helper do not count."""
        project.run()
        project.helpers = (
            '"""Doc."""\n\n\ndef times(x, k):\n'
            '    """Multiply."""\n    # why\n    return (x *\n            k)\n'
        )
        _, calls = project.run()
        assert calls == ["always"]

    def test_module_constant_invalidates(self, project):
        """A module-level constant a step reads is part of its key."""
        project.run()
        project.scale = 3
        result, calls = project.run()
        assert sorted(calls) == ["always", "scaled", "total"] and result["total"] == 18

    def test_regenerate_all(self, project):
        """``regenerate=True`` runs every step again."""
        project.run()
        _, calls = project.run(regenerate=True)
        assert len(calls) == 6

    def test_regenerate_step_and_dependants(self, project):
        """``regenerate=[step]`` reruns that step and what depends on it, nothing else."""
        project.run()
        _, calls = project.run(regenerate=["scaled"])
        assert sorted(calls) == ["always", "scaled", "total"]

    def test_lazy_loading(self, project, stored, damage):
        """A fully cached rerun loads no data: a damaged object is noticed only on access."""
        project.run()
        damage_all(damage, "flip")  # same size, different bytes
        result = project.pipeline("numbers", "scaled", "total").run()
        assert states(result) == {"numbers": "reused", "scaled": "reused", "total": "reused"}
        assert project.calls() == []
        with pytest.raises(Exception, match="corrupted"):
            result["total"]

    def test_run_result_loads_reused_outputs(self, project):
        """Outputs of reused steps load from the store on access."""
        project.run()
        result = project.pipeline().run()
        assert result["scaled"] == [0, 2, 4, 6] and result["label"] == "even"


def damage_all(damage, how: str) -> None:
    """Damage every stored output (the ``damage`` fixture of conftest.py)."""
    home = Path(os.environ["STEPFLOW_HOME"])
    for record in list(CacheIndex(home / "index").records()):
        damage(home, record, how)


def flip_output(damage, step: str, output: str | None = None) -> None:
    """Flip one byte of ``step``'s last stored output (same size), in its object file or
    inside its index record."""
    home = Path(os.environ["STEPFLOW_HOME"])
    record = CacheIndex(home / "index").last("flow", step)
    damage(home, record, "flip", output or step)


class TestDamagedStore:
    @pytest.mark.parametrize("workers", [1, 2])
    def test_corrupted_input_is_recomputed(self, project, workers, stored, damage):
        """A consumer that must run and finds its stored input corrupted recomputes it, in
        the run's process or in a worker, in that same run; the repaired result is then
        reused, never the damaged one."""
        project.run()
        flip_output(damage, "numbers")
        project.scale = 5  # scaled must run, and its input 'numbers' is damaged
        with pytest.warns(StepflowWarning, match="'numbers'.*unusable"):
            result = project.pipeline().run(workers=workers)
        assert result.ok and result["total"] == 30
        assert sorted(project.calls()) == ["always", "numbers", "scaled", "total"]
        # It was first reported reused, then recomputed: the run says it ran.
        assert result.steps["numbers"].state is StepState.RAN
        again, calls = project.run()
        assert calls == ["always"] and again["numbers"] == [0, 1, 2, 3]

    def test_input_failing_again_after_recompute_fails_the_step(self, project, monkeypatch):
        """A store that damages an input again right after it was recomputed fails the
        consumer with a clear error instead of recomputing forever."""
        from stepflow._execution import commit as commit_module
        from stepflow._storage.datastore import CorruptedObjectError

        project.run()
        project.scale = 5

        def always_bad(self, io):
            raise CorruptedObjectError(f"object {self.content_hash} is corrupted")

        # Every input the step is handed fails its check, the way a damaged store does.
        monkeypatch.setattr(commit_module.Artifact, "load", always_bad)
        with pytest.warns(StepflowWarning, match="unusable"):
            result = project.pipeline("numbers", "scaled").run()
        assert result.steps["scaled"].state is StepState.FAILED
        assert "failed its check again" in str(result.steps["scaled"].error)
        assert project.calls() == ["numbers"]

    def test_corrupted_final_result_is_dropped_when_loaded(self, project, stored, damage):
        """A reused result that fails its check when the user loads it is dropped from the
        index: the next run computes it again instead of reporting it reused forever."""
        project.run()
        flip_output(damage, "total")
        result = project.pipeline("numbers", "scaled", "total").run()
        assert states(result)["total"] == "reused"
        with pytest.raises(ArtifactMissingError, match=r"corrupted.*dropped"):
            result["total"]
        again = project.pipeline("numbers", "scaled", "total").run()
        assert states(again)["total"] == "ran" and again["total"] == 12
        assert project.calls() == ["total"]
        third = project.pipeline("numbers", "scaled", "total").run()
        assert states(third)["total"] == "reused" and third["total"] == 12

    def test_missing_object_is_a_miss(self, project, stored, damage):
        """A result whose object was deleted is recomputed, with a warning (an inline
        output's bytes go with its record: then the record is missing, a plain miss)."""
        project.run()
        damage_all(damage, "delete")
        if stored == "file":
            with pytest.warns(StepflowWarning, match="incomplete"):
                result = project.pipeline().run()
        else:
            result = project.pipeline().run()
        assert result.ok and result["total"] == 12 and len(project.calls()) == 6

    def test_pruned_by_another_process_is_recomputed(self, project, stored):
        """This process remembers the records it read; a prune by another process must
        still make the next run here compute again, not reuse what is gone."""
        project.run()
        project.run()  # the records are now remembered in this process
        home = os.environ["STEPFLOW_HOME"]
        subprocess.run(
            [sys.executable, "-m", "stepflow", "cache", "prune", "--all", "--home", home],
            check=True,
            capture_output=True,
        )
        if stored == "file":
            with pytest.warns(StepflowWarning, match="incomplete"):
                result, calls = project.run()
        else:  # the records' rows, with the bytes in them, are gone: plain misses
            result, calls = project.run()
        assert result["total"] == 12
        assert sorted(calls) == ["always", "label", "numbers", "parity", "scaled", "total"]
        _, calls = project.run()
        assert calls == ["always"]  # and the new results are reused again

    def test_truncated_object(self, project, stored, damage):
        """A truncated object (or inline output) fails the size check: a miss, recomputed."""
        project.run()
        damage_all(damage, "truncate")
        with pytest.warns(StepflowWarning, match="incomplete"):
            result = project.pipeline().run()
        assert result["total"] == 12 and len(project.calls()) == 6


class TestNeverAStaleAnswer:
    """Values that compare or print alike but can give other results are other keys."""

    def test_negative_zero_parameter(self, make_module, stepflow_home):
        """-0.0 after 0.0 runs again (copysign tells them apart); every NaN is one key."""
        mod = make_module(
            "signs",
            """
            import math
            from stepflow import step

            @step
            def sign(z: float = 1.0) -> float:
                return math.copysign(1, z)
            """,
        )
        pipeline = Pipeline("signs", [mod.sign])
        assert pipeline.run(params={"z": 0.0})["sign"] == 1.0
        negative = pipeline.run(params={"z": -0.0})
        assert states(negative) == {"sign": "ran"} and negative["sign"] == -1.0
        assert states(pipeline.run(params={"z": -0.0})) == {"sign": "reused"}
        pipeline.run(params={"z": float("nan")})
        assert states(pipeline.run(params={"z": -float("nan")})) == {"sign": "reused"}

    def test_array_global_changed_in_place_in_process(self, make_module, stepflow_home):
        """A module-level array changed in place between two runs of one process (a notebook)
        is a new key, although its repr is the same."""
        mod = make_module(
            "lookup",
            """
            import numpy as np
            from stepflow import step

            LOOKUP = np.zeros(5000)

            @step
            def looked_up() -> float:
                return float(LOOKUP.sum())
            """,
        )
        pipeline = Pipeline("lookup", [mod.looked_up])
        assert pipeline.run()["looked_up"] == 0.0
        before = repr(mod.LOOKUP)
        mod.LOOKUP[2500] = 1.0
        assert repr(mod.LOOKUP) == before  # the elided middle: a repr could not tell
        result = pipeline.run()
        assert states(result) == {"looked_up": "ran"} and result["looked_up"] == 1.0

    def test_hash_encoding_version_is_part_of_the_key(
        self, make_module, stepflow_home, monkeypatch
    ):
        """Results stored under another value encoding are never reused: a -0.0 result once
        sat under the key of 0.0."""
        from stepflow._planning import cachekey

        mod = make_module(
            "one", "from stepflow import step\n\n@step\ndef one() -> int:\n    return 1\n"
        )
        pipeline = Pipeline("one", [mod.one])
        pipeline.run()
        assert states(pipeline.run()) == {"one": "reused"}
        monkeypatch.setattr(cachekey, "HASH_ENCODING_VERSION", cachekey.HASH_ENCODING_VERSION + 1)
        assert states(pipeline.run()) == {"one": "ran"}


class TestMutationAndErrors:
    def test_mutating_step_does_not_leak(self, make_module, stepflow_home):
        """A step that changes its input in place does not change what others receive."""
        mod = make_module(
            "mutating",
            """
            from stepflow import step

            @step
            def data() -> list[int]:
                return [1, 2, 3]

            @step
            def clobber(data: list[int]) -> int:
                data.append(100)
                return len(data)

            @step
            def count(data: list[int]) -> int:
                return len(data)
            """,
        )
        with pytest.warns(StepflowWarning, match="modified its input 'data' in place"):
            result = Pipeline("p", [mod.data, mod.clobber, mod.count]).run()
        assert result["clobber"] == 4 and result["count"] == 3
        again = Pipeline("p", [mod.data, mod.count]).run()
        assert again["data"] == [1, 2, 3]

    def test_unserializable_output(self, make_module, stepflow_home):
        """An output no serializer can store fails its step, naming step, output and type."""
        mod = make_module(
            "unstorable",
            """
            import threading
            from stepflow import step

            @step
            def fine() -> int:
                return 1

            @step
            def lock(fine: int) -> object:
                return threading.Lock()
            """,
        )
        result = Pipeline("p", [mod.fine, mod.lock]).run()
        message = str(result.steps["lock"].error)
        assert "output 'lock' of step 'lock'" in message and "_thread.lock" in message
        assert result.steps["fine"].state is StepState.RAN
        assert Pipeline("p", [mod.fine]).run().steps["fine"].state is StepState.REUSED

    def test_failure_keeps_what_was_computed(self, make_module, stepflow_home):
        """After a failed run, a rerun reuses every step that had succeeded."""
        mod = make_module(
            "half_fails",
            """
            from stepflow import step

            @step
            def good() -> int:
                return 1

            @step
            def bad(good: int) -> int:
                raise RuntimeError("boom")
            """,
        )
        Pipeline("p", [mod.good, mod.bad]).run()
        result = Pipeline("p", [mod.good, mod.bad]).run()
        assert result.steps["good"].state is StepState.REUSED


class TestProcesses:
    def test_workers_share_the_cache(self, project):
        """Results made in worker processes are reused in-process, and the reverse."""
        project.run(workers=2)
        result, calls = project.run()
        assert calls == ["always"]
        project.scale = 7
        result, calls = project.run(workers=2)
        assert sorted(calls) == ["always", "scaled", "total"] and result["total"] == 42

    def test_fully_cached_rerun_imports_no_step_machinery(self, tmp_path, stepflow_home):
        """A rerun that reuses every step reads metadata only: the modules that run a step
        (invocation, tasks, step contexts, serializer libraries) are never imported."""
        (tmp_path / "flow.py").write_text(
            "from stepflow import step\n\n"
            "@step\ndef numbers() -> list:\n    return [1, 2, 3]\n\n"
            "@step\ndef total(numbers: list) -> int:\n    return sum(numbers)\n"
        )
        code = (
            "import sys\n"
            "import flow\n"
            "from stepflow import Pipeline\n"
            "result = Pipeline.from_module(flow).run()\n"
            "print(sorted(r.state.value for r in result.steps.values()))\n"
            "step_modules = ('stepflow._execution.invoke', 'stepflow._execution.task',\n"
            "                'stepflow._execution.context', 'cloudpickle', 'joblib')\n"
            "print(sorted(m for m in step_modules if m in sys.modules))\n"
        )
        env = dict(os.environ, STEPFLOW_HOME=str(stepflow_home))

        def run() -> list[str]:
            done = subprocess.run(
                [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
            )
            assert done.returncode == 0, done.stderr
            return done.stdout.splitlines()

        first = run()
        assert first[0] == "['ran', 'ran']"
        assert "stepflow._execution.invoke" in first[1]  # the check sees imports when they happen
        assert run() == ["['reused', 'reused']", "[]"]

    def test_fully_cached_rerun_outside_git_imports_no_socket_hashlib_or_subprocess(
        self, tmp_path, stepflow_home
    ):
        """Outside a git repository a fully cached rerun (built-in plugins only: an installed
        plugin may need them) imports none of the modules it has no use for: socket (the
        host name), hashlib (secret parameters), getpass (the user), subprocess (git)."""
        run = _one_step_run(
            tmp_path,
            stepflow_home,
            "",
            "unused = ('socket', 'hashlib', 'getpass', 'subprocess')\n"
            "print(sorted(m for m in unused if m in sys.modules))\n",
        )
        assert run()[0] == "['ran']"
        assert run() == ["['reused']", "[]"]

    def test_fully_cached_rerun_imports_nothing_only_a_running_step_needs(
        self, tmp_path, stepflow_home
    ):
        """A fully cached rerun on one worker imports none of what only a step that runs, a
        parallel run or a shared store needs: the key leases (``stepflow._storage.locks``,
        ``fcntl``), ``concurrent.futures`` and ``queue`` (a parallel run's threads), and
        ``base64`` (inline bytes in a shared store's documents). And the value classes it
        defines on its way are slotted classes, not attrs classes (attrs compiles each one's
        methods when it is defined, about a millisecond a class in every fresh process):
        only those listed here stay attrs classes (public or STYLE-listed ones, and the run
        configuration the CLI evolves)."""
        run = _one_step_run(
            tmp_path,
            stepflow_home,
            ", workers=1",
            "unused = ('stepflow._storage.locks', 'fcntl', 'concurrent.futures', 'queue',\n"
            "    'base64')\n"
            "print(sorted(m for m in unused if m in sys.modules))\n"
            "late = [m for m in sys.modules if m.startswith('stepflow') and m not in before]\n"
            "print(sorted(f'{m}.{n}' for m in late for n, c in vars(sys.modules[m]).items()\n"
            "    if isinstance(c, type) and c.__module__ == m\n"
            "    and hasattr(c, '__attrs_attrs__')))\n",
        )
        assert run()[0] == "['ran']"
        states, imported, classes = run()
        assert (states, imported) == ("['reused']", "[]")
        still_attrs = {
            "stepflow._config.Config",
            "stepflow._execution.backend.BackendContext",
            "stepflow._execution.result.RunInfo",
            "stepflow._execution.result.StepReport",
            "stepflow._planning.cachekey.CacheKey",
            "stepflow._storage.artifacts.ArtifactRef",
        }
        assert set(ast.literal_eval(classes)) - still_attrs == set()

    def test_helper_edited_between_processes(self, tmp_path, stepflow_home):
        """Runs in separate processes share code analysis through the home, and an edit to a
        helper module between them (same size, same modification time) still reruns exactly
        the steps that use it; a comment-only edit reruns nothing."""
        log = tmp_path / "calls.log"
        (tmp_path / "helpers.py").write_text(HELPERS)
        (tmp_path / "flow.py").write_text(FLOW.format(log=str(log), scale=2))
        env = dict(os.environ, STEPFLOW_HOME=str(stepflow_home))
        cmd = [sys.executable, "-m", "stepflow", "run", "flow.py"]

        def run() -> list[str]:
            log.write_text("")
            done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True)
            assert done.returncode == 0, done.stdout + done.stderr
            return sorted(log.read_text().split())

        assert run() == ["always", "label", "numbers", "parity", "scaled", "total"]
        assert any(p.name.startswith("src-") for p in (stepflow_home / "fingerprints").iterdir())
        assert run() == ["always"]
        helper = tmp_path / "helpers.py"
        stat = helper.stat()
        helper.write_text(HELPERS.replace("x * k", "x + k"))
        os.utime(helper, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        assert helper.stat().st_size == stat.st_size
        assert run() == ["always", "scaled", "total"]
        helper.write_text(HELPERS.replace("x * k", "x + k  # why"))
        assert run() == ["always"]
        helper.write_text(HELPERS)  # back to the first version: its results are still stored
        assert run() == ["always"]

    @pytest.mark.slow
    def test_single_flight_across_processes(self, tmp_path, stepflow_home):
        """Two runs that need the same missing key compute it once; the other reuses."""
        (tmp_path / "slow_flow.py").write_text(
            "import time\nfrom pathlib import Path\nfrom stepflow import step\n\n"
            "@step\ndef slow() -> int:\n"
            f"    with open({str(tmp_path / 'count')!r}, 'a') as fh:\n"
            "        fh.write('x')\n"
            "    time.sleep(1.5)\n    return 42\n"
        )
        env = dict(os.environ, STEPFLOW_HOME=str(stepflow_home))
        cmd = [sys.executable, "-m", "stepflow", "run", "slow_flow.py"]
        procs = [
            subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True)
            for _ in range(2)
        ]
        outs = [p.communicate(timeout=60)[0] for p in procs]
        assert [p.returncode for p in procs] == [0, 0], outs
        assert (tmp_path / "count").read_text() == "x"
        assert sorted("reused" in out for out in outs) == [False, True]

    @pytest.mark.slow
    def test_quick_results_are_committed_while_a_long_step_runs(self, tmp_path, stepflow_home):
        """A quick step's record is committed while the next, long step runs, so a run
        killed during the long step keeps it."""
        (tmp_path / "long_flow.py").write_text(
            "import time\nfrom stepflow import step\n\n"
            "@step\ndef quick() -> int:\n"
            f"    with open({str(tmp_path / 'count')!r}, 'a') as fh:\n"
            "        fh.write('x')\n"
            "    return 1\n\n"
            "@step\ndef long(quick: int) -> int:\n"
            f"    open({str(tmp_path / 'started')!r}, 'w').close()\n"
            "    time.sleep(60)\n    return quick\n"
        )
        env = dict(os.environ, STEPFLOW_HOME=str(stepflow_home))
        cmd = [sys.executable, "-m", "stepflow", "run", "long_flow.py"]
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while not (tmp_path / "started").exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            assert (tmp_path / "started").exists(), "the long step never started"
            time.sleep(0.5)  # well past the 50 ms window
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        rerun = subprocess.run(
            [*cmd, "--target", "quick"], cwd=tmp_path, env=env, capture_output=True, text=True
        )
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
        assert "1 reused" in rerun.stdout, rerun.stdout
        assert (tmp_path / "count").read_text() == "x"

    @pytest.mark.slow
    def test_kill_during_write_then_correct_rerun(self, tmp_path, stepflow_home):
        """kill -9 in the middle of storing a big output leaves a store the rerun reads right."""
        (tmp_path / "big_flow.py").write_text(
            "import numpy as np\nfrom stepflow import step\n\n"
            "@step\ndef big() -> np.ndarray:\n"
            "    return np.arange(60_000_000, dtype=np.float64)\n\n"
            "@step\ndef total(big: np.ndarray) -> float:\n    return float(big.sum())\n"
        )
        env = dict(os.environ, STEPFLOW_HOME=str(stepflow_home))
        cmd = [sys.executable, "-m", "stepflow", "run", "big_flow.py"]
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL)
        objects = stepflow_home / "objects"
        deadline = time.monotonic() + 60
        # Wait until a temporary object file is being written, then kill -9.
        while time.monotonic() < deadline:
            if any(p.name.startswith(".tmp-") for p in objects.rglob("*")):
                break
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        rerun = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True)
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
        assert "big" in rerun.stdout and "2 ran" in rerun.stdout
        expected = float(sum(range(60_000_000)))
        check = subprocess.run(
            [
                sys.executable,
                "-c",
                "import big_flow\nfrom stepflow import Pipeline\n"
                "print(Pipeline.from_module(big_flow).run()['total'])",
            ],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
        )
        assert float(check.stdout.strip()) == expected, check.stderr


def _one_step_run(tmp_path: Path, home: Path, run_args: str, report: str):
    """``run()``: a fresh process that runs a one-step pipeline with the built-in plugins only
    (``Pipeline.run(plugin_manager=pm<run_args>)``), outside any git repository, and prints
    the steps' states, then what ``report`` prints (``before``: the modules imported before
    the run); returns its printed lines."""
    (tmp_path / "flow.py").write_text(
        "from stepflow import step\n\n@step\ndef numbers() -> list:\n    return [1, 2]\n"
    )
    code = (
        "import sys\n"
        "import flow\n"
        "from stepflow import Pipeline\n"
        "from stepflow._pluginmanager import make_plugin_manager\n"
        "before = set(sys.modules)\n"
        "pm = make_plugin_manager(entrypoints=False)\n"
        f"result = Pipeline.from_module(flow).run(plugin_manager=pm{run_args})\n"
        "print(sorted(r.state.value for r in result.steps.values()))\n" + report
    )
    env = dict(os.environ, STEPFLOW_HOME=str(home))
    env["GIT_CEILING_DIRECTORIES"] = str(tmp_path.parent)
    env.pop("GIT_DIR", None)
    env.pop("GIT_WORK_TREE", None)

    def run() -> list[str]:
        done = subprocess.run(
            [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.splitlines()

    return run
