"""Options and preflight: every problem is found before any step runs, and says the fix."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from ssh_testing import _free_port

QUICK = """
from stepflow import step

@step(backend="gpu")
def quick() -> int:
    return 1
"""


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"gpu": [0]}, "unknown option 'gpu' (did you mean 'gpus'?)"),
        ({"gpus": "0,1"}, "option gpus = '0,1' must be a list of device ids"),
        ({"gpus": [0, 0]}, "names a device twice"),
        ({"host_key_policy": "no"}, 'must be "strict" or "accept-new"'),
        ({"connect_timeout": 0}, "option connect_timeout = 0 must be a number of seconds"),
        ({"host": "-oProxyCommand=x"}, "option host = '-oProxyCommand=x' must name a host"),
        ({"ssh_options": {"Proxy Command": "x"}}, "is not an ssh option name"),
    ],
)
def test_bad_options_are_usage_errors(project, stepflow_runner, options, message):
    project(QUICK, **options)
    out = stepflow_runner.run("run", "flow.py")
    assert out.ret == 2, out.stdout + out.stderr
    assert message in out.stderr
    assert "[tool.stepflow.backends.gpu]" in out.stderr


def test_an_unreachable_host_fails_the_check(project, stepflow_runner):
    """Nothing listens on the port: exit 2 before any step, naming the host and port."""
    port = _free_port()
    project(QUICK, port=port, connect_timeout=3)
    out = stepflow_runner.run("run", "flow.py")
    assert out.ret == 2, out.stdout + out.stderr
    assert f"host '127.0.0.1' port {port}" in out.stderr
    assert "sshd runs there" in out.stderr


def test_a_missing_python_is_named(project, stepflow_runner):
    project(QUICK, python="/nonexistent/python3")
    out = stepflow_runner.run("run", "flow.py")
    assert out.ret == 2, out.stdout + out.stderr
    assert "there is no Python '/nonexistent/python3'" in out.stderr
    assert 'set python = "/path/to/python3"' in out.stderr


def _python_without_stepflow() -> str | None:
    import sys

    for candidate in ("/usr/bin/python3", shutil.which("python3")):
        if not candidate or not os.path.exists(candidate):
            continue
        probe = subprocess.run(
            [candidate, "-c", "import sys, importlib.util as u; "
             "print(sys.version_info[:2], u.find_spec('stepflow') is None)"],
            capture_output=True, text=True, env={}, cwd="/",
        )  # fmt: skip
        if probe.stdout.strip() == f"{tuple(sys.version_info[:2])} True":
            return candidate
    return None


def test_a_host_python_without_stepflow_suggests_bootstrap(project, stepflow_runner, need):
    python = _python_without_stepflow()
    if python is None:
        need("no Python of this version without stepflow on this machine")
    project(QUICK, python=python)
    out = stepflow_runner.run("run", "flow.py")
    assert out.ret == 2, out.stdout + out.stderr
    assert "has no stepflow" in out.stderr
    assert "bootstrap = true" in out.stderr


@pytest.mark.parametrize(
    ("decorator", "message"),
    [
        ('env={"image": "python:3.11"}', "declares env 'image'"),
        ('env={"requirements": ["six"]}', "set bootstrap = true"),
        ('resources={"cpus": 2}', "asks for cpus"),
    ],
)
def test_what_the_host_cannot_honour_is_refused(project, stepflow_runner, decorator, message):
    """A step's env or resources the backend cannot honour never runs silently."""
    project(
        f"""
        from stepflow import step

        @step(backend="gpu", {decorator})
        def quick() -> int:
            print("IT RAN")
            return 1
        """
    )
    out = stepflow_runner.run("run", "flow.py")
    text = out.stdout + out.stderr
    assert out.ret != 0, text
    assert message in text
    assert "IT RAN" not in text
