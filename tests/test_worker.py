"""Worker processes: how steps reach them, nested runs, orphans, and what they print."""

from __future__ import annotations

import json
import os
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

def make_fixed(k):
    @step(name="fixed")
    def fixed(base: int) -> int:
        return base + k
    return fixed

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
        """Two factory-made steps with the same name and source but other closure values are
        not reused for each other when they run in workers; the same value is reused."""
        mod = make_module("factory_keys", FACTORY)
        first = Pipeline("p", [mod.base, mod.make_fixed(1)]).run(workers=2)
        other = Pipeline("p", [mod.base, mod.make_fixed(2)]).run(workers=2)
        same = Pipeline("p", [mod.base, mod.make_fixed(2)]).run(workers=2)
        assert first["fixed"] == 2
        assert other.steps["fixed"].state is StepState.RAN and other["fixed"] == 3
        assert same.steps["fixed"].state is StepState.REUSED and same["fixed"] == 3


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


UNGUARDED = """
from stepflow import Pipeline, step

@step(timeout=60)
def a() -> int:
    return 1

@step
def b(a: int) -> int:
    return a + 1

result = Pipeline("p", [a, b]).run(workers=2, home="home")
print("RESULT", result.summary())
for name, report in result.steps.items():
    if report.error:
        print("ERROR", name, report.error)
"""


def _runs(folder) -> list[dict]:
    out = subprocess.run(
        [sys.executable, "-m", "stepflow", "runs", "list", "--json"],
        cwd=folder,
        env={**os.environ, "STEPFLOW_HOME": str(folder / "home")},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(out.stdout)


class TestRunAtImportTime:
    def test_imported_module_that_runs_at_import_is_refused_in_the_worker(self, tmp_path):
        """A module that starts a run when imported, loaded by reference in a worker, does not
        start a second run there: the step fails with a NestedRunError naming the fix, and
        only the one run is recorded, none left running."""
        (tmp_path / "unguarded.py").write_text(UNGUARDED)
        out = subprocess.run(
            [sys.executable, "-c", "import unguarded"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        assert "RESULT 1 failed, 1 skipped" in out.stdout
        assert 'if __name__ == "__main__":' in out.stdout
        assert "a run was started while a worker process imported" in out.stdout
        runs = _runs(tmp_path)
        assert [r["state"] for r in runs] == ["failed"]

    def test_script_that_runs_at_import_runs_once(self, tmp_path):
        """``python script.py`` with the run outside ``if __name__ == "__main__":``: its steps
        travel by value, no worker imports the script, and exactly one run happens."""
        (tmp_path / "unguarded.py").write_text(UNGUARDED)
        out = subprocess.run(
            [sys.executable, "unguarded.py"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        assert "RESULT 2 ran" in out.stdout
        assert [r["state"] for r in _runs(tmp_path)] == ["succeeded"]


SLOW = """
import os
import subprocess
import sys
import time
from pathlib import Path
from stepflow import step

def _work(name):
    # A child process of the step too: it must die with the run as well.
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    # The worker's parent too: the fork server that forked it, which must die with the run.
    Path(f"{name}.pids").write_text(f"{os.getpid()} {child.pid} {os.getppid()}")
    time.sleep(600)
    return 1

@step(timeout=900)
def one() -> int:
    return _work("one")

@step
def two() -> int:
    return _work("two")
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            # A zombie has finished; only its exit status is left for a parent to read.
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


@pytest.fixture
def slow_run(tmp_path, stepflow_home, wait_for):
    """Start ``stepflow run slow.py``; yields (process, pids of the steps and their children).

    Whatever happens in the test, every process it started is killed afterwards."""
    import signal

    (tmp_path / "slow.py").write_text(SLOW)
    started: list[subprocess.Popen] = []
    pids: list[int] = []

    def start(*args: str, names: tuple[str, ...] = ("one", "two")) -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, "-m", "stepflow", "run", "slow.py", *args],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append(proc)
        files = [tmp_path / f"{n}.pids" for n in names]
        wait_for(lambda: all(f.exists() and f.read_text() for f in files), what="steps to start")
        for f in files:
            pids.extend(int(p) for p in f.read_text().split())
        return proc

    yield start, pids
    # The steps first: an orphaned worker keeps the run's output pipes open.
    for pid in pids:
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            pass


class TestNoOrphans:
    @pytest.mark.parametrize(
        ("args", "names"), [(("--workers", "2"), ("one", "two")), ((), ("one",))]
    )
    def test_kill_9_of_the_run_kills_its_workers(self, slow_run, args, names, wait_for):
        """After ``kill -9`` of ``stepflow run`` no worker (parallel, or the one a step with
        a timeout uses), no process a step started and no fork server goes on computing."""
        start, pids = slow_run
        proc = start(*args, names=names)
        proc.kill()
        proc.wait()
        wait_for(lambda: not any(_alive(p) for p in pids), what=f"processes {pids} to die")

    def test_sigterm_cancels_like_ctrl_c(self, slow_run, stepflow_home, tmp_path, wait_for):
        """``kill -TERM`` of ``stepflow run --workers 2`` stops the workers and their
        children, prints the report, records the run ``interrupted`` and exits with 130."""
        start, pids = slow_run
        proc = start("--workers", "2")
        proc.terminate()
        proc.wait(timeout=120)
        wait_for(lambda: not any(_alive(p) for p in pids), what=f"processes {pids} to die")
        stdout, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 130, stderr
        assert "step 'one' was interrupted" in stdout
        assert "(interrupted)" in stdout
        out = subprocess.run(
            [sys.executable, "-m", "stepflow", "runs", "list", "--json"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert [r["state"] for r in json.loads(out.stdout)] == ["interrupted"]


def test_a_step_that_cannot_travel_fails_with_the_reason(make_module, stepflow_home):
    """A factory-made step that uses something unpicklable fails with a message that says
    why it could not reach the worker and what to do; the run itself goes on."""
    mod = make_module(
        "unpicklable_steps",
        """
        import threading
        from stepflow import step

        def make():
            lock = threading.Lock()

            @step(name="locked")
            def locked() -> int:
                with lock:
                    return 1
            return locked

        locked = make()

        @step
        def fine() -> int:
            return 2
        """,
    )
    result = Pipeline("p", [mod.locked, mod.fine]).run(workers=2)
    assert result.steps["fine"].state is StepState.RAN
    error = str(result.steps["locked"].error)
    assert "cannot be imported by name in a worker process" in error
    assert "Define it at the top level of a module" in error


INLINE = """
import os
from stepflow import step

@step
def small() -> int:
    return os.getpid()

@step
def big() -> bytes:
    return b"x" * 100_000

@step
def both(small: int, big: bytes) -> tuple:
    return small, len(big), os.getpid()
"""


class TestInlineOutputs:
    def test_small_outputs_come_back_inside_the_result(self, make_module, stepflow_home):
        """A worker keeps an output under 32 KiB in memory and sends its bytes back in its
        result; the run commits them inside the index record. Only the large output is an
        object file, and a consumer in another worker gets the small one inside its task."""
        from stepflow._storage.index import CacheIndex

        mod = make_module("inline_flow", INLINE)
        pipe = Pipeline("inline", [mod.small, mod.big, mod.both])
        result = pipe.run(workers=2)
        assert result.ok, result.summary()
        small_pid, size, both_pid = result["both"]
        assert size == 100_000 and os.getpid() not in (small_pid, both_pid)
        index = CacheIndex(stepflow_home / "index")
        refs = {s: index.last("inline", s).outputs[s] for s in ("small", "big", "both")}
        assert {s: r.inline for s, r in refs.items()} == {"small": True, "big": False, "both": True}
        objects = [p for p in (stepflow_home / "objects").rglob("*") if p.is_file()]
        assert [p.parent.name + p.name for p in objects] == [refs["big"].name]
        again = pipe.run(workers=2)
        assert again.count(StepState.REUSED) == 3 and again["both"] == result["both"]
