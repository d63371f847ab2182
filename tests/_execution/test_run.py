"""The run loop: states, failures, skipping, retries, timeouts, workers, lazy outputs."""

from __future__ import annotations

import os

import pytest

from stepflow import Pipeline, StepState
from stepflow.errors import BackendUnavailableError, StepFailedError, StepTimeoutError

FLAKY = """
import os
from pathlib import Path
from stepflow import step

@step(retries=2, retry_delay=0.01)
def flaky(counter_file: str = "") -> int:
    path = Path(counter_file)
    n = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(n))
    if n < 3:
        raise ConnectionError(f"attempt {n} failed")
    return n

@step(retries=1, retry_delay=0.01)
def always_fails() -> int:
    raise RuntimeError("nope")
"""

BRANCHES = """
import os
from stepflow import step

@step
def root() -> int:
    return 1

@step
def bad(root: int) -> int:
    raise ValueError("bad branch")

@step
def after_bad(bad: int) -> int:
    return bad

@step
def good(root: int) -> int:
    return root + 1

@step
def pid_of_step(root: int) -> int:
    return os.getpid()
"""


class TestStates:
    def test_all_ran(self, resource_module, stepflow_home):
        """A successful run marks every step ``ran`` and exposes outputs by name."""
        result = resource_module("diamond").diamond.run(params={"n": 3})
        assert result.ok and {r.state for r in result.steps.values()} == {StepState.RAN}
        assert result["joined"] == "sum=6.0 [0,2]"
        assert result["lo"] == 0 and set(result) >= {"source", "left", "lo", "hi", "joined"}
        assert result.summary().startswith("4 ran in ")

    def test_failure_skips_dependants_only(self, make_module, stepflow_home):
        """A failing step skips what depends on it; independent branches still run."""
        mod = make_module("branches_a", BRANCHES)
        result = Pipeline("p", [mod.root, mod.bad, mod.after_bad, mod.good]).run()
        states = {n: r.state.value for n, r in result.steps.items()}
        assert states == {"root": "ran", "bad": "failed", "after_bad": "skipped", "good": "ran"}
        assert "upstream step 'bad' failed" in result.steps["after_bad"].reason
        error = result.steps["bad"].error
        assert isinstance(error, StepFailedError) and error.exc_type == "ValueError"
        assert "bad branch" in str(error) and not result.ok and result.failed == ["bad"]
        assert result.summary().startswith("2 ran, 1 failed, 1 skipped in ")

    def test_traceback_cut_to_user_code(self, make_module, stepflow_home):
        """The traceback starts in the user's function; the full one keeps stepflow's frames."""
        mod = make_module("branches_b", BRANCHES)
        result = Pipeline("p", [mod.root, mod.bad]).run()
        error = result.steps["bad"].error
        assert 'branches_b.py", line' in error.traceback and "in bad" in error.traceback
        assert "stepflow" not in error.traceback.replace("branches_b", "")
        assert "invoke.py" in error.full_traceback

    def test_fail_fast(self, make_module, stepflow_home):
        """``fail_fast`` stops dispatching after the first failure."""
        mod = make_module("branches_c", BRANCHES)
        result = Pipeline("p", [mod.root, mod.bad, mod.good]).run(fail_fast=True)
        assert result.steps["good"].state is StepState.SKIPPED
        assert "stopped early" in result.steps["good"].reason

    def test_missing_output_message(self, make_module, stepflow_home):
        """Asking for an output a failed step did not make says why."""
        mod = make_module("branches_d", BRANCHES)
        result = Pipeline("p", [mod.root, mod.bad]).run()
        with pytest.raises(KeyError, match="step 'bad' failed"):
            result["bad"]
        with pytest.raises(KeyError, match="available: root"):
            result["nothing"]
        with pytest.raises(StepFailedError, match="bad branch"):
            result.raise_for_failures()

    def test_targets(self, resource_module, stepflow_home):
        """Only the target's ancestors run."""
        result = resource_module("diamond").diamond.run(targets=["right"])
        assert list(result.steps) == ["source", "right"] and result["hi"] == 3

    def test_step_output_mismatch(self, stepflow_home):
        """A step returning the wrong shape for its outputs fails with a clear message."""
        from typing import Annotated

        from stepflow import step

        @step
        def two() -> tuple[Annotated[int, "a"], Annotated[int, "b"]]:
            return 1  # type: ignore[return-value]

        result = Pipeline("p", [two]).run()
        assert "declares 2 outputs (a, b) but returned a int" in str(result.steps["two"].error)


class TestRetries:
    def test_retry_until_success(self, make_module, tmp_path, stepflow_home):
        """Retries rerun a failed attempt until it succeeds."""
        mod = make_module("flaky_a", FLAKY)
        counter = tmp_path / "count"
        result = Pipeline("p", [mod.flaky]).run(params={"counter_file": str(counter)})
        report = result.steps["flaky"]
        assert report.state is StepState.RAN and report.attempts == 3 and result["flaky"] == 3

    def test_retries_exhausted(self, make_module, stepflow_home):
        """After the last retry the step fails, reporting the attempts."""
        mod = make_module("flaky_b", FLAKY)
        result = Pipeline("p", [mod.always_fails]).run()
        report = result.steps["always_fails"]
        assert report.state is StepState.FAILED and report.attempts == 2

    def test_retry_hook_called(self, make_module, tmp_path, stepflow_home):
        """Each retry is announced through ``stepflow_step_retry`` with its delay."""
        from stepflow import hookimpl
        from stepflow._config import load_config
        from stepflow._pluginmanager import make_plugin_manager

        seen = []

        class Recorder:
            @hookimpl
            def stepflow_step_retry(self, run, report, delay):
                seen.append((report.name, report.attempts, delay))

        mod = make_module("flaky_c", FLAKY)
        pm = make_plugin_manager()
        pm.register(Recorder())
        Pipeline("p", [mod.flaky]).run(
            params={"counter_file": str(tmp_path / "c")}, config=load_config(), plugin_manager=pm
        )
        assert seen == [("flaky", 1, 0.01), ("flaky", 2, 0.02)]


class TestWorkers:
    def test_parallel_runs_in_worker_processes(self, make_module, stepflow_home):
        """``workers > 1`` runs steps in other processes, and results come back."""
        mod = make_module("branches_e", BRANCHES)
        result = Pipeline("p", [mod.root, mod.good, mod.pid_of_step]).run(workers=2)
        assert result.ok and result["good"] == 2
        assert result["pid_of_step"] != os.getpid()

    def test_sequential_runs_in_process(self, make_module, stepflow_home):
        """``workers=1`` calls steps in this process, without serialization."""
        mod = make_module("branches_f", BRANCHES)
        result = Pipeline("p", [mod.root, mod.pid_of_step]).run()
        assert result["pid_of_step"] == os.getpid()

    def test_parallel_failure_skips_and_continues(self, make_module, stepflow_home):
        """Failure handling is the same with workers."""
        mod = make_module("branches_g", BRANCHES)
        result = Pipeline("p", [mod.root, mod.bad, mod.after_bad, mod.good]).run(workers=3)
        states = {n: r.state.value for n, r in result.steps.items()}
        assert states == {"root": "ran", "bad": "failed", "after_bad": "skipped", "good": "ran"}
        assert "bad branch" in result.steps["bad"].error.traceback

    def test_process_backend_sequential(self, make_module, stepflow_home):
        """The ``process`` backend runs a step in a worker even when sequential."""
        mod = make_module("branches_h", BRANCHES)
        result = Pipeline("p", [mod.root, mod.pid_of_step]).run(backends={"pid_of_step": "process"})
        assert result["pid_of_step"] != os.getpid()
        assert result.steps["pid_of_step"].backend == "process"

    def test_worker_crash_is_a_failure(self, make_module, stepflow_home):
        """A worker that dies (os._exit) fails the step with a clear message."""
        mod = make_module(
            "crashing",
            """
            import os
            from stepflow import step

            @step
            def crash() -> int:
                os._exit(3)
            """,
        )
        result = Pipeline("p", [mod.crash]).run(workers=2)
        error = result.steps["crash"].error
        assert "exited with code 3" in str(error)

    def test_unknown_backend_before_running(self, make_module, tmp_path, stepflow_home):
        """An unknown backend is reported before any step runs."""
        mod = make_module(
            "unknown_backend",
            f"""
            from pathlib import Path
            from stepflow import step

            @step
            def first() -> int:
                Path({str(tmp_path / "ran")!r}).write_text("ran")
                return 1

            @step(backend="gpu-box")
            def second(first: int) -> int:
                return first
            """,
        )
        with pytest.raises(BackendUnavailableError) as info:
            Pipeline("p", [mod.first, mod.second]).run()
        assert "'gpu-box'" in str(info.value) and "'second'" in str(info.value)
        assert "[tool.stepflow.backends.gpu-box]" in str(info.value)
        assert not (tmp_path / "ran").exists()


@pytest.mark.slow
class TestTimeouts:
    def test_timeout_kills_runaway_step(self, make_module, tmp_path, stepflow_home):
        """A step past its timeout is killed, reported, and its dependants skipped."""
        mod = make_module(
            "slow_steps",
            """
            import time
            from stepflow import step

            @step(timeout=0.5)
            def stuck() -> int:
                while True:
                    time.sleep(0.05)

            @step
            def after(stuck: int) -> int:
                return stuck

            @step
            def quick() -> int:
                return 1
            """,
        )
        result = Pipeline("p", [mod.stuck, mod.after, mod.quick]).run()
        error = result.steps["stuck"].error
        assert isinstance(error, StepTimeoutError) and "timeout of 0.5s" in str(error)
        assert result.steps["after"].state is StepState.SKIPPED
        assert result.steps["quick"].state is StepState.RAN

    def test_timeout_kills_child_processes(self, make_module, tmp_path, stepflow_home):
        """The whole process group goes: a subprocess the step started does not survive."""
        pid_file = tmp_path / "child.pid"
        mod = make_module(
            "spawning",
            f"""
            import subprocess, sys, time
            from pathlib import Path
            from stepflow import step

            @step(timeout=1)
            def spawner() -> int:
                child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
                Path({str(pid_file)!r}).write_text(str(child.pid))
                time.sleep(60)
                return 0
            """,
        )
        result = Pipeline("p", [mod.spawner]).run()
        assert isinstance(result.steps["spawner"].error, StepTimeoutError)
        pid = int(pid_file.read_text())
        import time

        for _ in range(50):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            pytest.fail(f"child process {pid} of the timed-out step is still alive")

    def test_timeout_then_retry_succeeds(self, make_module, tmp_path, stepflow_home):
        """A timed-out attempt is retried like any failure."""
        marker = tmp_path / "first"
        mod = make_module(
            "slow_then_fast",
            f"""
            import time
            from pathlib import Path
            from stepflow import step

            @step(timeout=1, retries=1, retry_delay=0)
            def sometimes_slow() -> int:
                marker = Path({str(marker)!r})
                if not marker.exists():
                    marker.write_text("x")
                    time.sleep(30)
                return 7
            """,
        )
        result = Pipeline("p", [mod.sometimes_slow]).run()
        assert result["sometimes_slow"] == 7 and result.steps["sometimes_slow"].attempts == 2


STALE_BACKEND = """
import attrs
import stepflow
from stepflow.worker import execute_task

class Stale(stepflow.Backend):
    \"\"\"Runs tasks in process, but answers the first attempt of a step with a result that
    claims to be of another attempt, or of another run, as a late answer would.\"\"\"

    kind = "stale"

    def execute(self, task, *, timeout):
        result = execute_task(task)
        if task.attempt == 1:
            return attrs.evolve(result, **{change})
        return result

@stepflow.hookimpl
def stepflow_backend_types():
    return {{"stale": Stale}}
"""

FLOW_ON_STALE = """
from stepflow import step

@step(backend="stale", retries={retries}, retry_delay=0)
def made() -> int:
    return 41

@step
def used(made: int) -> int:
    return made + 1
"""


class TestLateResults:
    """DESIGN.md section 7: a result of another attempt is never committed."""

    @pytest.mark.parametrize(
        "change, said",
        [
            ("{'attempt': 2}", "the result of attempt 2 of step 'made'"),
            ("{'run_id': 'another-run'}", "of run another-run"),
            ("{'step': 'other'}", "of step 'other'"),
        ],
    )
    def test_a_result_of_another_attempt_is_rejected(
        self, make_module, stepflow_home, change, said
    ):
        make_module("stale_backend", STALE_BACKEND.format(change=change))
        mod = make_module("on_stale", FLOW_ON_STALE.format(retries=0))
        pipe = Pipeline("p", [mod.made, mod.used])
        result = pipe.run(plugins=["stale_backend"])
        error = result.steps["made"].error
        assert result.steps["made"].state is StepState.FAILED
        assert said in str(error) and "rejected and nothing was stored" in str(error)
        assert result.steps["used"].state is StepState.SKIPPED
        # Nothing was committed: the next run computes the step again (and is rejected again).
        again = pipe.run(plugins=["stale_backend"])
        assert again.steps["made"].state is StepState.FAILED

    def test_the_next_attempt_is_committed(self, make_module, stepflow_home):
        make_module("stale_backend", STALE_BACKEND.format(change="{'attempt': 5}"))
        mod = make_module("on_stale", FLOW_ON_STALE.format(retries=1))
        pipe = Pipeline("p", [mod.made, mod.used])
        result = pipe.run(plugins=["stale_backend"])
        assert result["used"] == 42 and result.steps["made"].attempts == 2
        again = pipe.run(plugins=["stale_backend"])
        assert again.steps["made"].state is StepState.REUSED


def test_steps_of_a_script_run_in_workers(tmp_path):
    """Steps defined in a script run as ``python script.py`` work with worker processes."""
    import subprocess
    import sys

    script = tmp_path / "script.py"
    script.write_text(
        "from stepflow import Pipeline, step\n\n"
        "@step\ndef one() -> int:\n    return 1\n\n"
        "@step\ndef two(one: int) -> int:\n    return one + 1\n\n"
        'if __name__ == "__main__":\n'
        '    result = Pipeline("p", [one, two]).run(workers=2, home="home")\n'
        '    print("RESULT", result["two"], result.summary())\n'
    )
    out = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "RESULT 2 2 ran" in out.stdout


class TestBookkeepingFaults:
    """A record that cannot be written after a step succeeded never fails the step."""

    @pytest.mark.parametrize("workers", [1, 2])
    def test_an_index_that_cannot_be_written_keeps_the_steps_ran(
        self, make_module, stepflow_home, monkeypatch, workers
    ):
        from stepflow._storage.index import CacheIndex
        from stepflow.errors import StorageError, StorageWarning

        def full(self, *args, **kwargs):
            raise StorageError(
                "could not write it: the disk is full",
                path=str(self.path),
                what="the cache-index entry",
                reason="the disk is full",
            )

        monkeypatch.setattr(CacheIndex, "put", full)
        monkeypatch.setattr(CacheIndex, "touch_many", full)
        mod = make_module("bookkeeping_flow", BRANCHES)
        with pytest.warns(StorageWarning, match="the disk is full"):
            result = Pipeline("p", [mod.root, mod.good]).run(workers=workers)
        assert result.ok and result["good"] == 2
        assert [r.state for r in result.steps.values()] == [StepState.RAN, StepState.RAN]
        # Two cache-index entries and the latest-result pointers, each named with its path.
        assert len(result.storage_errors) == 3
        assert {e.path for e in result.storage_errors} == {
            str(stepflow_home / "index" / "cache.db")
        }
