"""The plugin system as a third party uses it, end to end through the ``stepflow`` command.

``tests/resources/plugins/stepflow-echo`` is a plugin package written the way a user would
write one. It is installed for real with pip into a temporary folder, and every run below
finds it through its ``stepflow`` entry point (``importlib.metadata``), with that folder on
``PYTHONPATH``.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# Every test here needs the pip-installed package (seconds to build) and runs `stepflow` in
# fresh processes; together they take longer than the fast loop should wait for.
pytestmark = pytest.mark.slow

ECHO_SOURCE = Path(__file__).parent / "resources" / "plugins" / "stepflow-echo"
HOW_TO = Path(__file__).parents[1] / "docs" / "how-to" / "write-a-plugin.md"

WHERE = """
import os
from stepflow import step

@step(backend="gpu")
def where() -> int:
    print("BACKEND", os.environ.get("STEPFLOW_ECHO_BACKEND"), "PID", os.getpid(),
          "PARENT", os.getppid(), "TAG", os.environ.get("STEPFLOW_ECHO_TAG"))
    return 41

@step
def after(where: int) -> int:
    print("AFTER", os.environ.get("STEPFLOW_ECHO_BACKEND"))
    return where + 1
"""

GPU_ECHO = """
[tool.stepflow.backends.gpu]
plugin = "echo"
log = "echo.log"
"""

TWO_LOCAL = """
from stepflow import step

@step
def first() -> int:
    return 1

@step
def second(first: int) -> int:
    return first + 1
"""
WHO = """
def _who():
    import os
    print("WHO", os.environ.get("STEPFLOW_ECHO_BACKEND"))
    return 1
"""

RECORDER = """
import stepflow


@stepflow.hookimpl
def stepflow_step_finish(run, report):
    with open("finished.txt", "a") as fh:
        fh.write(f"{report.name} {report.state} {report.backend}\\n")


@stepflow.hookimpl
def stepflow_run_finish(run, result):
    with open("finished.txt", "a") as fh:
        fh.write(f"run {run.pipeline} ok={result.ok}\\n")
"""


def _builds_without_isolation() -> bool:
    """True when this environment's setuptools can build a wheel offline, by itself."""
    try:
        version = importlib.metadata.version("setuptools")
    except importlib.metadata.PackageNotFoundError:
        return False
    major, minor = (int(part) for part in version.split(".")[:2])
    # setuptools has bdist_wheel built in since 70.1; before that it needs `wheel`.
    return (major, minor) >= (70, 1) or importlib.util.find_spec("wheel") is not None


@pytest.fixture(scope="session")
def echo_site(tmp_path_factory):
    """The stepflow-echo package pip-installed into a folder of its own (a ``--target``)."""
    base = tmp_path_factory.mktemp("echo")
    # pip builds in the source tree (build/, *.egg-info); keep that out of the repository.
    source = shutil.copytree(
        ECHO_SOURCE, base / "src", ignore=shutil.ignore_patterns("build", "*.egg-info")
    )
    site = base / "site"
    argv = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    argv += ["--no-deps", "--target", str(site)]
    if _builds_without_isolation():
        argv += ["--no-build-isolation", "--no-index"]
    proc = subprocess.run(
        [*argv, str(source)], capture_output=True, text=True, timeout=300, check=False
    )
    if proc.returncode != 0:
        message = f"cannot pip-install the example plugin:\n{proc.stdout}\n{proc.stderr}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return site


@pytest.fixture
def env(echo_site):
    """The environment for ``stepflow_runner.run``: the installed plugin importable."""
    paths = [str(echo_site), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {"PYTHONPATH": os.pathsep.join(paths)}


def _pyproject(runner, text):
    (runner.path / "pyproject.toml").write_text(text)


def _printed(stdout, tag):
    """The words of the line the step printed starting with ``tag``."""
    return next(line.split() for line in stdout.splitlines() if line.startswith(tag))


def _doc_file(name):
    """The fenced block right after ``<!-- file: NAME -->`` in the how-to."""
    lines = HOW_TO.read_text().splitlines()
    start = lines.index(f"<!-- file: {name} -->") + 1
    assert lines[start].startswith("```"), f"no code block after the {name} mark"
    end = lines.index("```", start + 1)
    return "\n".join(lines[start + 1 : end]) + "\n"


def test_install_is_real(echo_site):
    """pip installed a distribution whose metadata declares the ``stepflow`` entry point."""
    dists = list(importlib.metadata.distributions(path=[str(echo_site)]))
    assert [d.metadata["Name"] for d in dists] == ["stepflow-echo"]
    eps = dists[0].entry_points.select(group="stepflow")
    assert [(ep.name, ep.value) for ep in eps] == [("echo", "stepflow_echo")]


class TestListing:
    def test_plugins_text(self, stepflow_runner, env):
        """``stepflow plugins`` shows the installed plugin, its distribution and its backend."""
        out = stepflow_runner.run("plugins", env=env)
        assert out.ret == 0, out.stderr
        out.fnmatch_lines(
            [
                "stepflow._plugins.backends",
                "  backends: local, process",
                "echo (stepflow-echo 0.1.0)",
                "  backends: echo",
                "  hooks: stepflow_addoption, stepflow_backend_types, stepflow_configure, "
                "stepflow_unconfigure",
            ]
        )

    def test_plugins_json(self, stepflow_runner, env):
        """``stepflow plugins --json`` has a row for the entry point, named by it."""
        out = stepflow_runner.run("plugins", "--json", env=env)
        assert out.ret == 0, out.stderr
        echo = next(row for row in json.loads(out.stdout) if row["name"] == "echo")
        assert echo["module"] == "stepflow_echo"
        assert echo["distribution"] == "stepflow-echo 0.1.0"
        assert echo["backends"] == ["echo"]
        assert "stepflow_configure" in echo["hooks"]

    def test_not_installed_not_listed(self, stepflow_runner):
        """Without the plugin on the path there is no ``echo`` row: discovery is real."""
        out = stepflow_runner.run("plugins", "--json")
        assert out.ret == 0, out.stderr
        assert "echo" not in [row["name"] for row in json.loads(out.stdout)]

    def test_blocked_not_listed(self, stepflow_runner, env):
        """``-p no:echo`` blocks the plugin by its entry-point name."""
        out = stepflow_runner.run("plugins", "--json", "-p", "no:echo", env=env)
        assert out.ret == 0, out.stderr
        assert "echo" not in [row["name"] for row in json.loads(out.stdout)]


class TestEchoBackend:
    def test_configured_backend_runs_step(self, stepflow_runner, env):
        """``[tool.stepflow.backends.gpu] plugin = "echo"`` runs the step in the echo worker."""
        stepflow_runner.makepyfile(flow=WHERE)
        _pyproject(stepflow_runner, GPU_ECHO)
        out = stepflow_runner.run("run", "flow.py", env=env)
        assert out.ret == 0, out.stderr
        out.fnmatch_lines(["where *ran*", "AFTER None", "after *ran*", "*2 ran in*"])
        _, backend, _, pid, _, parent, _, _ = _printed(out.stdout, "BACKEND")
        assert backend == "gpu"
        assert pid != parent  # a child of the stepflow process, not stepflow itself
        # the backend's option `log` arrived in self.options and names a file in the project
        (line,) = (stepflow_runner.path / "echo.log").read_text().splitlines()
        name, run_id, step, attempt, status = line.split()
        assert (name, step, attempt, status) == ("gpu", "where", "attempt=1", "ok")
        assert f"run {run_id}:" in out.stdout

    def test_backend_flag_selects_kind(self, stepflow_runner, env):
        """``--backend STEP=echo`` uses the bare kind name as a backend, no config needed."""
        stepflow_runner.makepyfile(flow=TWO_LOCAL.replace("return 1", "return _who()") + WHO)
        out = stepflow_runner.run("run", "flow.py", "--backend", "first=echo", env=env)
        assert out.ret == 0, out.stderr
        assert _printed(out.stdout, "WHO") == ["WHO", "echo"]
        assert not (stepflow_runner.path / "echo.log").exists()  # no options, no log

    def test_step_error_travels_back(self, stepflow_runner, env):
        """A step that raises in the echo worker fails with its own exception and traceback."""
        stepflow_runner.makepyfile(
            flow="""
            from stepflow import step

            @step(backend="echo")
            def broken() -> int:
                raise ValueError("bad input 7")
            """
        )
        out = stepflow_runner.run("run", "flow.py", env=env)
        assert out.ret == 1
        out.fnmatch_lines(["broken *failed*", "*ValueError: bad input 7*", "*1 failed in*"])
        assert 'raise ValueError("bad input 7")' in out.stdout

    def test_timeout_kills_worker(self, stepflow_runner, env):
        """A step past its timeout is killed by the echo backend and reported as timed out."""
        stepflow_runner.makepyfile(
            flow="""
            import os, time
            from stepflow import step

            # Long enough for the worker to start and write pid.txt on a loaded machine.
            @step(backend="gpu", timeout=4)
            def stuck() -> int:
                with open("pid.txt", "w") as fh:
                    fh.write(str(os.getpid()))
                time.sleep(60)
                return 1
            """
        )
        _pyproject(stepflow_runner, GPU_ECHO)
        out = stepflow_runner.run("run", "flow.py", env=env, timeout=30)
        assert out.ret == 1
        out.fnmatch_lines(["stuck *failed*", "*ran past its timeout of 4s on backend 'gpu'*"])
        assert (stepflow_runner.path / "echo.log").read_text().split()[-1] == "timeout"
        pid = int((stepflow_runner.path / "pid.txt").read_text())
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)

    def test_environment_in_cache_key(self, stepflow_runner, env):
        """``environment()`` is part of the key: another interpreter reruns, the same reuses."""
        stepflow_runner.makepyfile(flow=WHERE)
        _pyproject(stepflow_runner, GPU_ECHO)
        log = stepflow_runner.path / "echo.log"
        assert stepflow_runner.run("run", "flow.py", env=env).ret == 0
        again = stepflow_runner.run("run", "flow.py", env=env)
        assert again.ret == 0, again.stderr
        again.fnmatch_lines(["where *reused*", "*2 reused in*"])
        assert len(log.read_text().splitlines()) == 1
        # Another path to the same interpreter. A wrapper script, not a symlink: a symlink to a
        # venv's python placed outside the venv loses the venv (no pyvenv.cfg beside it), and
        # then cannot import stepflow.
        python = stepflow_runner.path / "python-wrapper"
        python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
        python.chmod(0o755)
        _pyproject(stepflow_runner, GPU_ECHO + f'python = "{python}"\n')
        moved = stepflow_runner.run("run", "flow.py", env=env)
        assert moved.ret == 0, moved.stderr
        moved.fnmatch_lines(["where *ran*", "after *reused*"])  # same value: early cutoff
        assert len(log.read_text().splitlines()) == 2

    def test_bad_option_stops_before_any_step(self, stepflow_runner, env):
        """An option ``check()`` refuses is exit 2 naming the backend; nothing runs."""
        stepflow_runner.makepyfile(flow=WHERE)
        _pyproject(stepflow_runner, GPU_ECHO + 'python = "/nonexistent/python3"\n')
        out = stepflow_runner.run("run", "flow.py", env=env)
        assert out.ret == 2
        assert "backend 'gpu': python = '/nonexistent/python3' does not exist" in out.stderr
        assert not (stepflow_runner.path / "echo.log").exists()

    def test_parallel_workers(self, stepflow_runner, env):
        """With ``--workers 2`` the backend serves two steps at once, each in its own process."""
        stepflow_runner.makepyfile(
            flow="""
            import os
            from stepflow import step

            @step(backend="gpu")
            def left() -> int:
                return os.getpid()

            @step(backend="gpu")
            def right() -> int:
                return os.getpid()

            @step
            def both(left: int, right: int) -> None:
                print("DISTINCT", left != right, os.getpid() not in (left, right))
            """
        )
        _pyproject(stepflow_runner, GPU_ECHO)
        out = stepflow_runner.run("run", "flow.py", "--workers", "2", env=env)
        assert out.ret == 0, out.stderr
        assert _printed(out.stdout + out.stderr, "DISTINCT") == ["DISTINCT", "True", "True"]
        log = (stepflow_runner.path / "echo.log").read_text().splitlines()
        steps = sorted(line.split()[2] for line in log)
        assert steps == ["left", "right"]


class TestBackendSelectionErrors:
    def test_unconfigured_backend(self, stepflow_runner, env):
        """An unknown backend name is exit 2 naming step, backend and kinds, before any step."""
        stepflow_runner.makepyfile(
            flow="""
            from stepflow import step

            @step
            def early() -> int:
                open("early-ran", "w").close()
                return 1

            @step(backend="gpu")
            def where(early: int) -> int:
                return early
            """
        )
        out = stepflow_runner.run("run", "flow.py", env=env)
        assert out.ret == 2
        assert "no backend named 'gpu' (used by step 'where')" in out.stderr
        # First-party plugins (plugins/editable.txt) add their kinds to the list.
        installed = out.stderr.split("backend kinds installed: ", 1)[1].split(".")[0]
        assert {"echo", "local", "process"} <= set(installed.split(", ")), out.stderr
        assert "[tool.stepflow.backends.gpu]" in out.stderr
        assert not (stepflow_runner.path / "early-ran").exists()
        assert " ran" not in out.stdout

    def test_unknown_flag_backend(self, stepflow_runner, env):
        """``--backend STEP=NAME`` with a name nothing provides is exit 2 as well."""
        stepflow_runner.makepyfile(flow=TWO_LOCAL)
        out = stepflow_runner.run("run", "flow.py", "--backend", "second=ecco", env=env)
        assert out.ret == 2
        assert "no backend named 'ecco' (used by step 'second')" in out.stderr
        assert "echo, local, process" in out.stderr

    def test_blocked_plugin_kind_unknown(self, stepflow_runner, env):
        """``-p no:echo`` removes the kind: the configured backend now names a missing plugin."""
        stepflow_runner.makepyfile(flow=WHERE)
        _pyproject(stepflow_runner, GPU_ECHO)
        out = stepflow_runner.run("run", "flow.py", "-p", "no:echo", env=env)
        assert out.ret == 2
        assert "backend 'gpu' (used by step 'where') needs plugin 'echo'" in out.stderr
        assert "installed kinds: local, process" in out.stderr
        assert not (stepflow_runner.path / "echo.log").exists()

    def test_blocked_by_config(self, stepflow_runner, env):
        """``plugins = ["no:echo"]`` in ``[tool.stepflow]`` blocks it like ``-p no:echo``."""
        stepflow_runner.makepyfile(flow=WHERE)
        _pyproject(stepflow_runner, '[tool.stepflow]\nplugins = ["no:echo"]\n' + GPU_ECHO)
        out = stepflow_runner.run("run", "flow.py", env=env)
        assert out.ret == 2
        assert "needs plugin 'echo'" in out.stderr


class TestOptionHooks:
    def test_option_reaches_configure_and_worker(self, stepflow_runner, env):
        """``--echo-tag`` added by ``stepflow_addoption`` is read in ``stepflow_configure``."""
        stepflow_runner.makepyfile(flow=WHERE)
        _pyproject(stepflow_runner, GPU_ECHO)
        out = stepflow_runner.run("run", "flow.py", "--echo-tag", "blue-7", env=env)
        assert out.ret == 0, out.stderr
        assert _printed(out.stdout, "BACKEND")[-2:] == ["TAG", "blue-7"]

    def test_option_in_help(self, stepflow_runner, env):
        """The plugin's option is in ``stepflow run --help``, and only when it is installed."""
        out = stepflow_runner.run("run", "--help", env=env)
        assert out.ret == 0, out.stderr
        assert "--echo-tag TAG" in out.stdout
        assert "--echo-tag" not in stepflow_runner.run("run", "--help").stdout

    def test_configure_rejects_value(self, stepflow_runner, env):
        """A ``UsageError`` raised in ``stepflow_configure`` is exit 2 with its message."""
        stepflow_runner.makepyfile(flow=WHERE)
        _pyproject(stepflow_runner, GPU_ECHO)
        out = stepflow_runner.run("run", "flow.py", "--echo-tag", "a b", env=env)
        assert out.ret == 2
        assert "--echo-tag 'a b': use letters" in out.stderr
        assert not (stepflow_runner.path / "echo.log").exists()

    def test_option_only_on_run(self, stepflow_runner, env):
        """The option was added for ``run`` only: ``show`` rejects it as a usage error."""
        stepflow_runner.makepyfile(flow=WHERE)
        out = stepflow_runner.run("show", "flow.py", "--echo-tag", "x", env=env)
        assert out.ret == 2
        assert "unrecognized arguments: --echo-tag" in out.stderr


class TestLocalPluginModules:
    def test_dash_p_module(self, stepflow_runner):
        """``-p recorder`` loads a module from the project folder; its hooks see every step."""
        stepflow_runner.makepyfile(flow=TWO_LOCAL, recorder=RECORDER)
        out = stepflow_runner.run("run", "flow.py", "-p", "recorder")
        assert out.ret == 0, out.stderr
        lines = (stepflow_runner.path / "finished.txt").read_text().splitlines()
        assert lines == ["first ran local", "second ran local", "run flow ok=True"]

    def test_dash_p_listed(self, stepflow_runner):
        """``stepflow plugins -p recorder`` lists the module and the hooks it implements."""
        stepflow_runner.makepyfile(recorder=RECORDER)
        out = stepflow_runner.run("plugins", "-p", "recorder")
        assert out.ret == 0, out.stderr
        out.fnmatch_lines(["recorder", "  hooks: stepflow_run_finish, stepflow_step_finish"])

    def test_config_plugins(self, stepflow_runner, env):
        """``[tool.stepflow] plugins`` loads the module without ``-p``, next to entry points."""
        stepflow_runner.makepyfile(flow=WHERE, recorder=RECORDER)
        _pyproject(stepflow_runner, '[tool.stepflow]\nplugins = ["recorder"]\n' + GPU_ECHO)
        out = stepflow_runner.run("run", "flow.py", env=env)
        assert out.ret == 0, out.stderr
        lines = (stepflow_runner.path / "finished.txt").read_text().splitlines()
        assert lines == ["where ran gpu", "after ran local", "run flow ok=True"]

    def test_config_plugin_blocked_from_command_line(self, stepflow_runner):
        """``-p no:recorder`` wins over ``[tool.stepflow] plugins = ["recorder"]``."""
        stepflow_runner.makepyfile(flow=TWO_LOCAL, recorder=RECORDER)
        _pyproject(stepflow_runner, '[tool.stepflow]\nplugins = ["recorder"]\n')
        out = stepflow_runner.run("run", "flow.py", "-p", "no:recorder")
        assert out.ret == 0, out.stderr
        assert not (stepflow_runner.path / "finished.txt").exists()

    def test_missing_module(self, stepflow_runner):
        """A ``-p`` module that does not exist is exit 2 naming it."""
        stepflow_runner.makepyfile(flow=TWO_LOCAL)
        out = stepflow_runner.run("run", "flow.py", "-p", "recordr")
        assert out.ret == 2
        assert "plugin 'recordr' could not be imported" in out.stderr

    def test_misspelled_hook(self, stepflow_runner):
        """A hookimpl whose name matches no hook is exit 2 naming the hook, before any step."""
        stepflow_runner.makepyfile(
            flow=TWO_LOCAL,
            typo="""
            import stepflow

            @stepflow.hookimpl
            def stepflow_stp_finish(run, report):
                pass
            """,
        )
        out = stepflow_runner.run("run", "flow.py", "-p", "typo")
        assert out.ret == 2
        assert "stepflow_stp_finish" in out.stderr
        assert "typo" in out.stderr
        assert " ran" not in out.stdout


class TestHowTo:
    @pytest.mark.parametrize("name", ["pyproject.toml", "stepflow_echo/__init__.py"])
    def test_quotes_the_tested_package(self, name):
        """The how-to shows the package these tests install, byte for byte."""
        assert _doc_file(f"stepflow-echo/{name}") == (ECHO_SOURCE / name).read_text()

    def test_quotes_the_tested_recorder(self):
        """The how-to's local plugin is the one ``TestLocalPluginModules`` runs."""
        assert _doc_file("recorder.py") == RECORDER.lstrip("\n")

    def test_example_tests_pass(self, tmp_path, env):
        """The how-to's test file passes under pytest with the plugin installed."""
        test_file = tmp_path / "test_echo.py"
        test_file.write_text(_doc_file("stepflow-echo/tests/test_echo.py"))
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test_file.name],
            cwd=tmp_path,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "2 passed" in proc.stdout


HELLO = """
import stepflow


def greet(args, config, pm):
    print(f"HELLO {args.name} home={config.home.name}")
    return 4


@stepflow.hookimpl
def stepflow_add_commands(subparsers):
    hello = subparsers.add_parser("hello", help="greet someone")
    hello.add_argument("--name", default="world")
    hello.set_defaults(handler=greet)
"""


def _entry_point_site(root, name, module, source):
    """A distribution with a ``stepflow`` entry point, as pip would leave it (no pip needed)."""
    site = root / "site"
    info = site / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[stepflow]\nhello = {module}\n")
    (site / f"{module}.py").write_text(source)
    return {
        "PYTHONPATH": os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])])
    }


class TestCommands:
    """``stepflow_add_commands``: a third party adds a sub-command, as the built-ins do."""

    def test_command_from_module(self, stepflow_runner):
        (stepflow_runner.path / "hello_plugin.py").write_text(HELLO)
        out = stepflow_runner.run("hello", "--name", "ada", "-p", "hello_plugin")
        assert out.ret == 4, out.stderr
        assert "HELLO ada home=" in out.stdout
        listed = stepflow_runner.run("plugins", "--json", "-p", "hello_plugin")
        rows = {row["name"]: row for row in json.loads(listed.stdout)}
        assert rows["hello_plugin"]["commands"] == ["hello"]
        assert "run" in rows["stepflow.commands"]["commands"]

    def test_command_from_entry_point(self, stepflow_runner, tmp_path):
        env = _entry_point_site(tmp_path, "stepflow-hello", "stepflow_hello", HELLO)
        out = stepflow_runner.run("hello", env=env)
        assert out.ret == 4, out.stderr
        assert "HELLO world" in out.stdout
        helped = stepflow_runner.run("hello", "--help", env=env)
        assert helped.ret == 0 and "--name" in helped.stdout and "--home" in helped.stdout
        # plugins loaded (-p given): the top-level help lists the plugin's command too
        full = stepflow_runner.run("-p", "no:nothing", "--help", env=env)
        assert "greet someone" in full.stdout
        # the plain --help stays on its fast path, without plugins, and says where they are
        fast = stepflow_runner.run("--help", env=env)
        assert "greet someone" not in fast.stdout and "stepflow plugins" in fast.stdout
        assert "run a pipeline" in fast.stdout
        blocked = stepflow_runner.run("hello", "-p", "no:hello", env=env)
        assert blocked.ret == 2 and "invalid choice: 'hello'" in blocked.stderr

    def test_two_plugins_same_command(self, stepflow_runner, tmp_path):
        env = _entry_point_site(tmp_path, "stepflow-hello", "stepflow_hello", HELLO)
        (stepflow_runner.path / "hello_plugin.py").write_text(HELLO)
        out = stepflow_runner.run("hello", "-p", "hello_plugin", env=env)
        assert out.ret == 2
        assert "'hello'" in out.stderr and "'hello_plugin'" in out.stderr
        assert "-p no:NAME" in out.stderr

    def test_command_shadowing_a_builtin(self, stepflow_runner):
        (stepflow_runner.path / "shadow.py").write_text(HELLO.replace('"hello"', '"run"'))
        out = stepflow_runner.run("plugins", "-p", "shadow")
        assert out.ret == 2
        assert "'stepflow.commands' and 'shadow'" in out.stderr

    def test_command_without_handler(self, stepflow_runner):
        (stepflow_runner.path / "nohandler.py").write_text(
            HELLO.replace("    hello.set_defaults(handler=greet)\n", "")
        )
        out = stepflow_runner.run("hello", "-p", "nohandler")
        assert out.ret == 2
        assert "plugin 'nohandler': command 'hello' has no handler" in out.stderr
