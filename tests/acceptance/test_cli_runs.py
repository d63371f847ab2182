"""``stepflow runs``, ``stepflow logs`` and ``stepflow run --resume``, black-box."""

from __future__ import annotations

import datetime
import json

import pytest

FLOW = """
import logging
import os
import stepflow
from stepflow import Param, Pipeline, Secret, step

@step
def data(n: int = 4) -> list[int]:
    print(f"loading {n} rows")
    return list(range(n))

@step
def model(data: list[int], scale: float = 1.0, api_key: Secret[str] = "k-default") -> float:
    logging.getLogger("train").warning("training on %d rows", len(data))
    value = sum(data) * scale
    stepflow.context().log_metric("score", value)
    return value

@step
def publish(model: float) -> str:
    if os.environ.get("PUBLISH_FAILS") == "1":
        raise RuntimeError("the publishing service is down")
    return f"published {model}"

pipe = Pipeline("runsdemo", [data, model, publish])
"""


@pytest.fixture
def project(stepflow_runner):
    stepflow_runner.makepyfile(flow=FLOW)
    return stepflow_runner


@pytest.fixture(scope="module")
def ran_once(tmp_path_factory):
    """A project and home of their own with one run of ``flow.py:pipe``, made once for the
    bad-input cases, which all start from that state (each exits 2 and changes nothing)."""
    from stepflow.testing import StepflowRunner

    runner = StepflowRunner(
        tmp_path_factory.mktemp("project"), tmp_path_factory.mktemp("stepflow-home")
    )
    runner.makepyfile(flow=FLOW)
    assert runner.run("run", "flow.py:pipe").ret == 0
    return runner


def assert_iso_utc(value: object) -> None:
    """``--json`` times are ISO 8601 strings with an explicit UTC offset, not epoch floats."""
    assert isinstance(value, str), value
    assert datetime.datetime.fromisoformat(value).utcoffset() == datetime.timedelta(0), value


def _runs(project) -> list[dict]:
    out = project.run("runs", "list", "--json")
    assert out.ret == 0, out.stderr
    return json.loads(out.stdout)


def test_runs_list_show_and_filters(project) -> None:
    assert project.run("run", "flow.py:pipe").ret == 0
    failed = project.run("run", "flow.py:pipe", "--param", "n=5", env={"PUBLISH_FAILS": "1"})
    assert failed.ret == 1
    runs = _runs(project)
    assert [r["state"] for r in runs] == ["failed", "succeeded"]
    assert_iso_utc(runs[0]["started"])
    assert_iso_utc(runs[0]["finished"])
    assert runs[0]["params"] == {"n": 5, "scale": 1.0, "api_key": "***"}
    assert runs[0]["target"] == "flow.py:pipe"
    out = project.run("runs", "list", "--state", "failed")
    out.fnmatch_lines(["RUN*PIPELINE*STATE*", f"{runs[0]['id']}*runsdemo*failed*"])
    assert runs[1]["id"] not in out.stdout
    assert json.loads(project.run("runs", "list", "--since", "1h", "--json").stdout)
    assert project.run("runs", "list", "--pipeline", "other", "--json").stdout.strip() == "[]"
    show = project.run("runs", "show", runs[0]["id"][:18])
    assert show.ret == 0, show.stderr
    show.fnmatch_lines(
        [
            f"run {runs[0]['id']}",
            "*state:*failed*(2 ran, 1 failed)*",
            "*api_key = '***'*",
            "*n = 5*",
            "STEP*STATE*",
            "data*ran*",
            "publish*failed*RuntimeError: the publishing service is down*",
            "metrics:",
            "model*score*10*",
        ]
    )
    data = json.loads(project.run("runs", "show", "last", "--json").stdout)
    assert [s["state"] for s in data["steps"]] == ["ran", "ran", "failed"]
    assert_iso_utc(data["started"])
    assert_iso_utc(data["steps"][0]["started"])
    assert_iso_utc(data["steps"][0]["finished"])
    (metric,) = data["steps"][1]["metrics"]
    assert_iso_utc(metric["ts"])


def test_logs_per_step_and_stream(project) -> None:
    assert project.run("run", "flow.py:pipe").ret == 0
    out = project.run("logs", "last")
    out.fnmatch_lines(
        ["----- data: stdout -----", "loading 4 rows", "----- model: log -----", "*training on 4*"]
    )
    only = project.run("logs", "last", "model", "--stream", "log", "--json")
    (entry,) = json.loads(only.stdout)
    assert entry["step"] == "model" and "training on 4 rows" in entry["text"]
    bad = project.run("logs", "last", "nosuch")
    assert bad.ret == 2
    assert "has no step 'nosuch'" in bad.stderr


def test_compare_two_runs(project) -> None:
    project.run("run", "flow.py:pipe")
    project.run("run", "flow.py:pipe", "--param", "scale=2")
    b, a = (r["id"] for r in _runs(project))
    out = project.run("runs", "compare", a, b)
    assert out.ret == 0, out.stderr
    out.fnmatch_lines(
        [
            "parameters:",
            "  scale: 1.0 -> 2.0",
            "metrics (last value):",
            "  model.score: 6 -> 12  (+6)",
            "steps that differ:",
            "  model: ran -> ran (different cache key)",
            "  publish: ran -> ran (different cache key)",
            "source: the same",
        ]
    )
    assert "  data:" not in out.stdout  # reused: same key
    data = json.loads(project.run("runs", "compare", a, b, "--json").stdout)
    assert data["params"] == {"scale": [1.0, 2.0]}


def test_lineage_of_an_output(project) -> None:
    project.run("run", "flow.py:pipe")
    project.run("run", "flow.py:pipe")
    first, second = (r["id"] for r in reversed(_runs(project)))
    out = project.run("runs", "lineage", f"{second}:publish")
    assert out.ret == 0, out.stderr
    out.fnmatch_lines(
        [
            f"publish * made by step publish in run {first}; also in 1 later run",
            "  <- input model:",
            f"     model * made by step model in run {first}*",
            "       <- input data:",
            f"          data * made by step data in run {first}*",
        ]
    )
    node = json.loads(project.run("runs", "lineage", f"{first}:publish", "--json").stdout)
    (model,) = node["inputs"]
    assert model["step"] == "model" and model["inputs"][0]["step"] == "data"
    by_hash = project.run("runs", "lineage", node["content_hash"][:12], "--json")
    assert json.loads(by_hash.stdout)["run"] == first


def test_resume_reruns_only_what_failed(project) -> None:
    failed = project.run("run", "flow.py:pipe", "--param", "n=6", env={"PUBLISH_FAILS": "1"})
    assert failed.ret == 1
    run_id = _runs(project)[0]["id"]
    # The secret was the default, never recorded: resuming asks for it.
    missing = project.run("run", "--resume", run_id)
    assert missing.ret == 2
    assert "secret parameter(s) api_key" in missing.stderr
    assert "--param api_key=..." in missing.stderr
    resumed = project.run("run", "--resume", run_id, "--param", "api_key=k-default")
    assert resumed.ret == 0, resumed.stdout + resumed.stderr
    resumed.fnmatch_lines(
        [
            f"resuming run {run_id} (failed) of pipeline runsdemo",
            "data*reused*",
            "model*reused*",
            "publish*ran*",
            "*1 ran, 2 reused*",
        ]
    )
    newest = _runs(project)[0]
    assert newest["resumed_from"] == run_id
    assert newest["params"]["n"] == 6  # the recorded value, not the default


def test_last_failed_and_source_changes(project) -> None:
    project.run("run", "flow.py:pipe", "--param", "api_key=x", env={"PUBLISH_FAILS": "1"})
    # The fix: publish no longer looks at the variable.
    fixed = FLOW.replace('os.environ.get("PUBLISH_FAILS") == "1"', "False")
    project.makepyfile(flow=fixed)
    out = project.run("run", "--last-failed", "--param", "api_key=x", env={"PUBLISH_FAILS": "1"})
    assert out.ret == 0, out.stdout + out.stderr
    out.fnmatch_lines(["resuming run *", "  source changed since that run: changed: flow.py", "*"])
    none_left = project.run("run", "flow.py:pipe", "--last-failed", "--param", "api_key=x")
    # The failed run is still recorded as failed, so --last-failed finds it again (and all
    # of it is reused now).
    assert none_left.ret == 0
    none_left.fnmatch_lines(["*3 reused*"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("runs", "show", "nope"), "no run 'nope'"),
        (("runs", "list", "--since", "yesterday"), "--since 'yesterday'"),
        (("runs", "lineage", "ffffffff"), "no recorded run produced an artifact"),
        (("run", "--resume", "nope"), "no run 'nope'"),
        (("run",), "needs a TARGET"),
    ],
)
def test_bad_input_is_a_usage_error(ran_once, args, message) -> None:
    out = ran_once.run(*args)
    assert out.ret == 2
    assert message in out.stderr


def test_no_records_yet(stepflow_runner) -> None:
    out = stepflow_runner.run("runs", "list")
    assert out.ret == 2
    assert "no run records in" in out.stderr
    assert not (stepflow_runner.home / "runs.db").exists()


def test_run_started_from_python_needs_its_target(project, stepflow_home) -> None:
    import subprocess
    import sys

    code = (
        "import sys; sys.path.insert(0, '.'); import flow, os; "
        "os.environ['PUBLISH_FAILS'] = '1'; flow.pipe.run()"
    )
    subprocess.run([sys.executable, "-c", code], cwd=project.path, check=True)
    run_id = _runs(project)[0]["id"]
    out = project.run("run", "--resume", run_id, "--param", "api_key=k")
    assert out.ret == 2
    assert "was started from Python" in out.stderr
    ok = project.run("run", "flow.py:pipe", "--resume", run_id, "--param", "api_key=k")
    assert ok.ret == 0, ok.stderr


def test_color_flag_and_environment(project) -> None:
    """Colour follows --color, then NO_COLOR, then FORCE_COLOR (output here is a pipe)."""
    green = "\x1b[32m"
    unset = {"NO_COLOR": "", "FORCE_COLOR": ""}  # empty counts as unset

    def run(*flags: str, **env: str) -> str:
        out = project.run("run", "flow.py:pipe", *flags, env={**unset, **env})
        assert out.ret == 0, out.stderr
        return out.stdout

    assert green not in run()
    assert green in run(FORCE_COLOR="1")
    assert green not in run(FORCE_COLOR="1", NO_COLOR="1")
    assert green in run("--color", "yes", FORCE_COLOR="1", NO_COLOR="1")
    assert "\x1b[" not in run("--color", "no", FORCE_COLOR="1")


ORDER_FLOW = """
import os
from stepflow import Pipeline, step

@step
def zeta() -> int:
    return 1

@step
def beta(zeta: int) -> int:
    return zeta + 1

@step
def alpha(beta: int) -> int:
    if os.environ.get("ALPHA_FAILS") == "1":
        raise RuntimeError("alpha is down")
    return beta + 1

@step
def aardvark(alpha: int) -> int:
    return alpha

pipe = Pipeline("order", [zeta, beta, alpha, aardvark])
"""


def test_runs_show_lists_steps_in_run_order(stepflow_runner) -> None:
    """Steps are listed as they ran (not by name); a skipped step comes after what ran."""
    stepflow_runner.makepyfile(order=ORDER_FLOW)
    assert stepflow_runner.run("run", "order.py:pipe").ret == 0
    failed = stepflow_runner.run(
        "run", "order.py:pipe", "--regenerate", "alpha", env={"ALPHA_FAILS": "1"}
    )
    assert failed.ret == 1
    data = json.loads(stepflow_runner.run("runs", "show", "last", "--json").stdout)
    assert [(s["name"], s["state"]) for s in data["steps"]] == [
        ("zeta", "reused"),
        ("beta", "reused"),
        ("alpha", "failed"),
        ("aardvark", "skipped"),
    ]
    shown = stepflow_runner.run("runs", "show", "last")
    shown.fnmatch_lines(["STEP*", "zeta*reused*", "beta*reused*", "alpha*failed*", "aardvark*"])
