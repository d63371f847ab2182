"""Worker processes: how steps reach them, nested runs, orphans, and what they print."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from stepflow import Pipeline, StepState

FACTORY = """
from stepflow import step

def make_base():
    @step(name="base")
    def base() -> int:
        return 1
    return base

def make(k):
    @step(name=f"s{k}")
    def s(base: int) -> int:
        return base + k
    return s

base = make_base()
made = [make(k) for k in range(6)]

def make_slow():
    @step(name="slow", timeout=60)
    def slow(s5: int) -> int:
        return s5 * 2
    return slow

slow = make_slow()

same_name = []
for k in (10, 20):
    @step(name=f"loop{k}")
    def looped(base: int, k: int = k) -> int:
        return base + k
    same_name.append(looped)
"""


class TestStepsByValue:
    @pytest.mark.parametrize("workers", [1, 2])
    def test_factory_and_loop_steps_run_in_workers(self, make_module, stepflow_home, workers):
        """Steps made in a function or a loop, found by no module-level name, still run in
        worker processes (``workers=2``, or ``timeout=`` with one worker), closures intact."""
        mod = make_module("factory_steps", FACTORY)
        steps = [mod.base, *mod.made, mod.slow, *mod.same_name]
        result = Pipeline("p", steps).run(workers=workers)
        assert result.ok, {n: str(r.error) for n, r in result.steps.items() if r.error}
        assert [result[f"s{k}"] for k in range(6)] == [1, 2, 3, 4, 5, 6]
        assert result["slow"] == 12
        assert (result["loop10"], result["loop20"]) == (11, 21)

    def test_closure_values_stay_in_the_key(self, make_module, stepflow_home):
        """Two factory-made steps of the same source but other closure values are not reused
        for each other when they run in workers."""
        mod = make_module("factory_keys", FACTORY)
        first = Pipeline("p", [mod.base, mod.made[0]]).run(workers=2)
        again = Pipeline("p", [mod.base, mod.make(3)]).run(workers=2)
        assert first["s0"] == 1
        assert again.steps["s3"].state is StepState.RAN and again["s3"] == 4


def test_main_script_steps_run_in_workers_without_rerunning_it(tmp_path):
    """Steps of ``python script.py`` travel by value: the worker does not run the script's
    top-level code again (its side effect happens once), and the run succeeds."""
    script = tmp_path / "script.py"
    script.write_text(
        textwrap.dedent(
            """
            from pathlib import Path
            from stepflow import Pipeline, step

            with open("imports.txt", "a") as fh:
                fh.write("imported\\n")

            OFFSET = 10

            @step
            def one() -> int:
                return OFFSET

            @step(timeout=60)
            def two(one: int) -> int:
                return one + 1

            if __name__ == "__main__":
                result = Pipeline("p", [one, two]).run(workers=2, home="home")
                print("RESULT", result["two"], result.summary())
            """
        )
    )
    out = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "RESULT 11 2 ran" in out.stdout
    assert (tmp_path / "imports.txt").read_text() == "imported\n"
