"""`--param token=env:VAR`: a secret read from the environment, never from the command line."""

from __future__ import annotations

import hashlib
import json

FLOW = """
import hashlib

from stepflow import Pipeline, Secret, step

@step
def call(token: Secret[str], label: str = "x") -> int:
    print("calling with", token)
    # Not the value itself: the run stores this file in its code snapshot.
    if hashlib.sha256(token.encode()).hexdigest()[:12] != "{digest}":
        raise ValueError("the step got the wrong token")
    if label != "env:API_TOKEN":
        raise ValueError("a plain parameter read the environment")
    return len(token)

pipe = Pipeline("secretdemo", [call])
""".replace("{digest}", hashlib.sha256(b"s3cr3t-value").hexdigest()[:12])


def test_a_secret_comes_from_an_environment_variable(stepflow_runner) -> None:
    stepflow_runner.makepyfile(flow=FLOW)
    env = {"API_TOKEN": "s3cr3t-value"}
    args = ("--param", "token=env:API_TOKEN", "--param", "label=env:API_TOKEN")
    out = stepflow_runner.run("run", "flow.py:pipe", *args, env=env)
    assert out.ret == 0, out.stdout + out.stderr
    runs = json.loads(stepflow_runner.run("runs", "list", "--json").stdout)
    assert runs[0]["params"]["token"] == "***"
    logs = stepflow_runner.run("logs", runs[0]["id"])
    assert "calling with" in logs.stdout
    for shown in (out, logs):
        assert "s3cr3t-value" not in shown.stdout + shown.stderr
    stored = b"".join(p.read_bytes() for p in stepflow_runner.home.rglob("*") if p.is_file())
    assert b"s3cr3t-value" not in stored


def test_a_missing_variable_is_a_clear_error(stepflow_runner) -> None:
    stepflow_runner.makepyfile(flow=FLOW)
    out = stepflow_runner.run("run", "flow.py:pipe", "--param", "token=env:NO_SUCH_TOKEN_VAR")
    assert out.ret == 2
    assert "parameter 'token'" in out.stderr
    assert "environment variable NO_SUCH_TOKEN_VAR" in out.stderr
    assert "Traceback" not in out.stderr
