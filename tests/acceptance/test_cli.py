"""The ``stepflow`` command line, black-box through ``stepflow_runner``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

FLOW = """
from typing import Annotated
from stepflow import Param, Pipeline, step

@step
def numbers(n: int = 3) -> list[int]:
    return list(range(n))

@step
def total(numbers: list[int]) -> int:
    return sum(numbers)

@step
def stats(numbers: list[int]) -> tuple[Annotated[int, "lo"], Annotated[int, "hi"]]:
    return min(numbers), max(numbers)

@step
def report(total: int, lo: int, hi: int, label: Param[str] = "sum") -> str:
    print(f"REPORT {label}={total} [{lo},{hi}]")
    return f"{label}={total}"

pipe = Pipeline("demo", [numbers, total, stats, report])
"""

FAILING = """
from stepflow import Pipeline, step

def helper(x):
    raise ValueError(f"cannot use {x}")

@step
def root() -> int:
    return 1

@step
def bad(root: int) -> int:
    return helper(root)

@step
def after_bad(bad: int) -> int:
    return bad

@step
def good(root: int) -> int:
    return root

pipe = Pipeline("failing", [root, bad, after_bad, good])
"""


class TestRun:
    def test_report_and_summary(self, stepflow_runner):
        """A run prints a line per step and the pytest-like summary; exit code 0."""
        stepflow_runner.makepyfile(flow=FLOW)
        out = stepflow_runner.run("run", "flow.py:pipe")
        assert out.ret == 0, out.stderr
        out.fnmatch_lines(
            [
                "*stepflow run demo*",
                "run *: 4 steps",
                "numbers *ran*",
                "total *ran*",
                "stats *ran*",
                "REPORT sum=3 [[]0,2[]]",
                "report *ran*",
                "*= 4 ran in *s =*",
            ]
        )

    def test_params_parsed_by_type(self, stepflow_runner):
        """``--param`` values are parsed by the parameter's annotation."""
        stepflow_runner.makepyfile(flow=FLOW)
        out = stepflow_runner.run("run", "flow.py:pipe", "--param", "n=5", "--param", "label=s")
        assert out.ret == 0, out.stderr
        out.fnmatch_lines(["REPORT s=10 [[]0,4[]]"])

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (["--param", "n=ten"], "parameter 'n' expects int, got 'ten'*"),
            (["--param", "lable=x"], "unknown parameter 'lable'; did you mean 'label'?"),
            (["--param", "n"], "*NAME=VALUE*"),
            (["--target", "nope"], "unknown step or output 'nope'*"),
            (["--backend", "total=gpu"], "*no backend named 'gpu'*"),
        ],
    )
    def test_usage_errors_exit_2(self, stepflow_runner, args, message):
        """Bad flags are usage errors: exit 2, a message on stderr, nothing runs."""
        stepflow_runner.makepyfile(flow=FLOW)
        out = stepflow_runner.run("run", "flow.py:pipe", *args)
        assert out.ret == 2
        out.fnmatch_lines([f"stepflow: error: {message}"], stream="stderr")
        assert "REPORT" not in out.stdout

    def test_target(self, stepflow_runner):
        """``--target`` runs only what the step needs."""
        stepflow_runner.makepyfile(flow=FLOW)
        out = stepflow_runner.run("run", "flow.py:pipe", "--target", "total")
        assert out.ret == 0
        out.fnmatch_lines(["numbers *ran*", "total *ran*", "*2 ran in*"])
        assert "stats" not in out.stdout

    def test_failure_report(self, stepflow_runner):
        """A failure exits 1, skips dependants, and shows the traceback cut to user code."""
        stepflow_runner.makepyfile(flow=FAILING)
        out = stepflow_runner.run("run", "flow.py:pipe")
        assert out.ret == 1
        out.fnmatch_lines(
            [
                "root *ran*",
                "bad *failed*ValueError: cannot use 1",
                "after_bad *skipped*(upstream step 'bad' failed)",
                "good *ran*",
                "*FAILURES*",
                "*_ bad _*",
                "Traceback (most recent call last):",
                '  File "*flow.py", line *, in bad',
                '  File "*flow.py", line *, in helper',
                "ValueError: cannot use 1",
                "*= 2 ran, 1 failed, 1 skipped in *",
            ]
        )
        assert "stepflow/_execution" not in out.stdout

    def test_full_trace(self, stepflow_runner):
        """``--full-trace`` keeps stepflow's frames."""
        stepflow_runner.makepyfile(flow=FAILING)
        out = stepflow_runner.run("run", "flow.py:pipe", "--full-trace")
        assert "invoke.py" in out.stdout

    def test_exitfirst(self, stepflow_runner):
        """``-x`` stops at the first failure."""
        stepflow_runner.makepyfile(flow=FAILING)
        out = stepflow_runner.run("run", "flow.py:pipe", "-x")
        assert out.ret == 1
        out.fnmatch_lines(["good *skipped*(the run stopped early)"])

    def test_workers(self, stepflow_runner):
        """``--workers`` runs steps in worker processes with the same report."""
        stepflow_runner.makepyfile(flow=FAILING)
        out = stepflow_runner.run("run", "flow.py:pipe", "--workers", "2")
        assert out.ret == 1
        out.fnmatch_lines(["run *: 4 steps, 2 workers", "*2 ran, 1 failed, 1 skipped in*"])
        assert "in helper" in out.stdout

    def test_backend_override(self, stepflow_runner):
        """``--backend STEP=process`` moves one step into a worker process."""
        stepflow_runner.makepyfile(
            flow="""
            import os
            from stepflow import step

            @step
            def where() -> int:
                print("PID", os.getpid(), "PARENT", os.getppid())
                return 0
            """
        )
        out = stepflow_runner.run("run", "flow.py", "--backend", "where=process")
        assert out.ret == 0, out.stderr
        line = next(x for x in out.stderr.splitlines() if x.startswith("PID"))
        _, pid, _, parent = line.split()
        assert pid != parent  # printed from a worker, whose parent is the CLI process

    @pytest.mark.parametrize(
        "target", ["flow.py", "flow", "flow:pipe", "flow.py:pipe", "flow.py:total"]
    )
    def test_target_forms(self, stepflow_runner, target):
        """Files and modules, with or without an attribute, all load."""
        stepflow_runner.makepyfile(flow=FLOW)
        out = stepflow_runner.run("run", target)
        assert out.ret == 0, out.stderr
        out.fnmatch_lines(["*ran in*"])

    def test_module_in_package(self, stepflow_runner):
        """``package.module:pipeline`` imports through the package."""
        stepflow_runner.makepyfile(**{"pkg/__init__": "", "pkg/flows": FLOW})
        out = stepflow_runner.run("run", "pkg.flows:pipe")
        assert out.ret == 0, out.stderr
        out.fnmatch_lines(["*4 ran in*"])

    @pytest.mark.parametrize(
        ("target", "message"),
        [
            ("missing.py:pipe", "*no module or file named 'missing.py'*"),
            ("flow.py:nope", "*has no attribute 'nope'; pipelines in it: pipe*"),
            ("no.such.module:pipe", "*no module or file named 'no.such.module'*"),
        ],
    )
    def test_bad_targets(self, stepflow_runner, target, message):
        """Targets that name nothing are usage errors with a hint."""
        stepflow_runner.makepyfile(flow=FLOW)
        out = stepflow_runner.run("run", target)
        assert out.ret == 2
        out.fnmatch_lines([message], stream="stderr")

    def test_definition_error_exit_2(self, stepflow_runner):
        """A pipeline that cannot be built is exit 2 with the definition error."""
        stepflow_runner.makepyfile(
            flow="""
            from stepflow import Pipeline, step

            @step
            def houses() -> int:
                return 1

            @step
            def count(housse: int) -> int:
                return housse

            pipe = Pipeline("p", [houses, count])
            """
        )
        out = stepflow_runner.run("run", "flow.py:pipe")
        assert out.ret == 2
        out.fnmatch_lines(
            ["stepflow: error: step 'count' parameter 'housse' *", "did you mean 'houses'?"],
            stream="stderr",
        )

    def test_import_error_in_user_code(self, stepflow_runner):
        """A module that raises on import shows its traceback and exits 2."""
        stepflow_runner.makepyfile(flow="import json\nx = json.loads('{')\n")
        out = stepflow_runner.run("run", "flow.py")
        assert out.ret == 2
        out.fnmatch_lines(
            ["*importing 'flow.py' raised JSONDecodeError*", "*flow.py*line 2*"], stream="stderr"
        )

    @pytest.mark.parametrize(
        "command",
        [("run", "flow.py:pipe"), ("show", "flow.py:pipe"), ("explain", "flow.py:pipe", "one")],
    )
    def test_syntax_error_in_user_file(self, stepflow_runner, command):
        """A SyntaxError shows the user's file, line and caret, and none of the loader."""
        stepflow_runner.makepyfile(
            flow="""
            from stepflow import Pipeline, step

            @step
            def one() -> int:
                return 1 +

            pipe = Pipeline("p", [one])
            """
        )
        out = stepflow_runner.run(*command)
        assert out.ret == 2, out.stderr
        out.fnmatch_lines(
            [
                "stepflow: error: importing 'flow.py:pipe' raised SyntaxError:",
                '  File "*flow.py", line 5',
                "    return 1 +",
                "*^",
                "SyntaxError: *",
            ],
            stream="stderr",
        )
        assert "importlib" not in out.stderr
        assert "stepflow/_" not in out.stderr and "Traceback" not in out.stderr

    def test_import_error_in_user_module(self, stepflow_runner):
        """An ImportError in a module target shows the user's frames and the message only."""
        stepflow_runner.makepyfile(
            **{
                "pkg/__init__": "",
                "pkg/flows": "from stepflow import step\nimport pkg.helpers\n",
                "pkg/helpers": "from json import no_such_name\n",
            }
        )
        out = stepflow_runner.run("run", "pkg.flows:pipe")
        assert out.ret == 2, out.stderr
        out.fnmatch_lines(
            [
                "stepflow: error: importing 'pkg.flows:pipe' raised ImportError:",
                "Traceback (most recent call last):",
                '  File "*flows.py", line 2, in <module>',
                "    import pkg.helpers",
                '  File "*helpers.py", line 1, in <module>',
                "ImportError: cannot import name 'no_such_name' from 'json'*",
            ],
            stream="stderr",
        )
        assert "importlib" not in out.stderr and "stepflow/_" not in out.stderr

    def test_missing_module_imported_by_user_code(self, stepflow_runner):
        """A module the user's code imports is missing: that error, not "no such target"."""
        stepflow_runner.makepyfile(
            **{"p/__init__": "", "p/flows": "import p.nothing_here\n"},
            broken="raise ImportError('the broken package cannot start')\n",
        )
        (stepflow_runner.path / "q").mkdir()
        (stepflow_runner.path / "q" / "__init__.py").write_text("import broken\n")
        (stepflow_runner.path / "q" / "flows.py").write_text("")
        for target, error in [
            ("p.flows", "No module named 'p.nothing_here'"),
            ("q.flows:pipe", "ImportError: the broken package cannot start"),
        ]:
            out = stepflow_runner.run("show", target)
            assert out.ret == 2, out.stderr
            assert "no module or file named" not in out.stderr
            assert error in out.stderr and "importlib" not in out.stderr

    def test_import_error_full_trace(self, stepflow_runner):
        """``run --full-trace`` keeps the loader's frames of an import error too."""
        stepflow_runner.makepyfile(flow="import no_such_module_anywhere\n")
        out = stepflow_runner.run("run", "--full-trace", "flow.py")
        assert out.ret == 2
        assert "importlib" in out.stderr and "flow.py" in out.stderr

    def test_interrupt(self, stepflow_runner):
        """Ctrl-C stops the run, prints the summary and exits 130."""
        stepflow_runner.makepyfile(
            flow="""
            import time
            from pathlib import Path
            from stepflow import step

            @step
            def first() -> int:
                return 1

            @step
            def slow(first: int) -> int:
                Path("started").write_text("yes")
                time.sleep(60)
                return first

            @step
            def last(slow: int) -> int:
                return slow
            """
        )
        env = dict(os.environ, STEPFLOW_HOME=str(stepflow_runner.home))
        proc = subprocess.Popen(
            [sys.executable, "-m", "stepflow", "run", "flow.py"],
            cwd=stepflow_runner.path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        started = stepflow_runner.path / "started"
        deadline = time.monotonic() + 30
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
        assert proc.returncode == 130, stderr
        assert "slow" in stdout and "interrupted" in stdout
        assert "last" in stdout and "skipped" in stdout
        assert "1 ran, 1 failed, 1 skipped (interrupted) in" in stdout


class TestWorkerOutput:
    FLOW = """
        import subprocess
        import time
        from stepflow import Secret, step

        @step(timeout=60)  # in a worker process also when the run is sequential
        def talk(token: Secret[str] = "hunter2") -> int:
            print("python says hi")
            subprocess.run(["echo", "child says hi"], check=True)
            subprocess.run(["sh", "-c", "echo child err hunter2 >&2"], check=True)
            return 1

        @step(timeout=2)
        def hang(talk: int, token: Secret[str] = "hunter2") -> int:
            print("before the hang", token, end="")
            subprocess.run(["echo", "child before hang"], check=True)
            time.sleep(120)
            return 2
        """

    @pytest.mark.parametrize("args", [("--workers", "2"), ()])
    def test_child_processes_and_timed_out_steps_keep_their_output(self, stepflow_runner, args):
        """In a worker process (``--workers``, or a step with a timeout), what a step's child
        processes print reaches ``stepflow logs``, and a step killed by its timeout keeps what
        it printed before (a partial line too), secrets masked."""
        stepflow_runner.makepyfile(flow=self.FLOW)
        outcome = stepflow_runner.run("run", "flow.py", "--capture", "quiet", *args)
        assert outcome.ret == 1, outcome.stderr
        logs = stepflow_runner.run("logs", "last", "--json")
        assert logs.ret == 0, logs.stderr
        text = logs.stdout
        assert "python says hi" in text and "child says hi" in text
        assert "child err ***" in text
        assert "before the hang ***" in text and "child before hang" in text
        assert "hunter2" not in text

    INLINE = """
        import ctypes
        import subprocess
        from stepflow import Secret, step

        @step
        def talk(token: Secret[str] = "hunter2") -> int:
            print("python says hi")
            subprocess.run(["echo", "child says hi"], check=True)
            subprocess.run(["sh", "-c", "echo child err hunter2 >&2"], check=True)
            ctypes.CDLL(None).puts(b"libc says hi")
            return 1

        @step
        def after(talk: int) -> int:
            print("after says hi")
            return talk + 1
        """

    def test_steps_in_the_run_process_keep_child_output(self, stepflow_runner):
        """A step run in the ``stepflow`` process itself (one worker, no timeout) is captured
        at the descriptor level too: its child processes and C code reach ``stepflow logs``,
        not the report, and the report's lines stay whole."""
        stepflow_runner.makepyfile(flow=self.INLINE)
        outcome = stepflow_runner.run("run", "flow.py", "--capture", "quiet")
        assert outcome.ret == 0, outcome.stderr
        assert "says hi" not in outcome.stdout + outcome.stderr
        outcome.fnmatch_lines(["talk *ran*", "after *ran*", "*2 ran in*"])
        logs = stepflow_runner.run("logs", "last", "--json")
        assert logs.ret == 0, logs.stderr
        by_step: dict[str, str] = {}
        for entry in json.loads(logs.stdout):
            by_step[entry["step"]] = by_step.get(entry["step"], "") + entry["text"]
        for said in ("python says hi", "child says hi", "child err ***", "libc says hi"):
            assert said in by_step["talk"]
        assert "hunter2" not in logs.stdout
        assert by_step["after"] == "after says hi\n"

    def test_steps_in_the_run_process_echo_child_output_with_tee(self, stepflow_runner):
        """``--capture tee`` shows a child process's output live as well as logging it."""
        stepflow_runner.makepyfile(flow=self.INLINE)
        outcome = stepflow_runner.run("run", "flow.py", "--capture", "tee")
        assert outcome.ret == 0, outcome.stderr
        assert "child says hi" in outcome.stdout
        assert "child err ***" in outcome.stderr
        assert "hunter2" not in outcome.stdout + outcome.stderr


class TestShow:
    def test_text(self, stepflow_runner):
        """The text view lists parameters and steps with their inputs and outputs."""
        stepflow_runner.makepyfile(flow=FLOW)
        out = stepflow_runner.run("show", "flow.py:pipe")
        assert out.ret == 0
        out.fnmatch_lines(
            [
                "pipeline demo: 4 steps",
                "parameters:",
                "  n: int = 3 *[[]numbers[]]",
                "  label: str = 'sum' *[[]report[]]",
                "steps:",
                "  numbers($n) -> numbers: list[[]int[]]",
                "  stats(numbers) -> lo: int, hi: int",
                "  report(total, lo<-stats, hi<-stats, $label) -> report: str",
            ]
        )

    def test_json(self, stepflow_runner):
        """``--format json`` is machine-readable and complete."""
        stepflow_runner.makepyfile(flow=FLOW)
        out = stepflow_runner.run("show", "flow.py:pipe", "--format", "json")
        data = json.loads(out.stdout)
        assert data["pipeline"] == "demo"
        assert [s["name"] for s in data["steps"]] == ["numbers", "total", "stats", "report"]
        assert {"from": "stats", "to": "report", "output": "lo"} in data["edges"]
        assert {p["name"] for p in data["params"]} == {"n", "label"}

    def test_dot_and_mermaid(self, stepflow_runner):
        """Graphviz and Mermaid views draw the edges."""
        stepflow_runner.makepyfile(flow=FLOW)
        dot = stepflow_runner.run("show", "flow.py:pipe", "--format", "dot").stdout
        assert dot.startswith('digraph "demo" {') and '"stats" -> "report" [label="lo"];' in dot
        mermaid = stepflow_runner.run("show", "flow.py:pipe", "--format", "mermaid").stdout
        assert mermaid.startswith("flowchart LR") and '  n2["stats"]' in mermaid
        assert '  n2 -->|"hi"| n3' in mermaid


class TestMisc:
    def test_help_lists_commands(self, stepflow_runner):
        """``stepflow --help`` lists the commands."""
        out = stepflow_runner.run("--help")
        assert out.ret == 0
        for command in ("run", "show", "plugins"):
            assert command in out.stdout

    def test_help_imports_no_traceback_module(self):
        """``stepflow --help`` must start fast: the traceback module (only for ``--full-trace``
        on a pipeline that fails to import) is not loaded for it."""
        code = (
            "import sys\n"
            "from stepflow._surfaces.cli import main\n"
            "try:\n"
            "    main(['--help'])\n"
            "except SystemExit:\n"
            "    pass\n"
            "print('traceback' in sys.modules, file=sys.stderr)\n"
        )
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert "usage: stepflow" in done.stdout
        assert done.stderr.strip() == "False"

    def test_version(self, stepflow_runner):
        """``--version`` prints the installed version."""
        out = stepflow_runner.run("--version")
        assert out.ret == 0 and out.stdout.startswith("stepflow ")

    def test_plugins_lists_builtins(self, stepflow_runner):
        """``stepflow plugins --json`` shows the built-in backends as a plugin."""
        out = stepflow_runner.run("plugins", "--json")
        rows = json.loads(out.stdout)
        local = next(r for r in rows if r["name"] == "stepflow._plugins.backends")
        assert local["backends"] == ["local", "process"]
