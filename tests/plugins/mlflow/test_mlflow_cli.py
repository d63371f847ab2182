"""The MLflow plugin through the ``stepflow`` command line, as a user runs it."""

from __future__ import annotations

import pytest

from stepflow.testing import StepflowRunner

pytestmark = pytest.mark.filterwarnings(
    "ignore:The ``noload`` loader strategy is deprecated:DeprecationWarning"
)

FLOW = """
import stepflow
from stepflow import Pipeline, Secret, step


@step
def scored(api_token: Secret[str], n: int = 3) -> int:
    for i in range(n):
        stepflow.context().log_metric("rows", float(i + 1), step=i)
    return n


scoring = Pipeline("scoring", [scored])
"""


@pytest.fixture
def runner(mlflow_store, stepflow_home):
    runner = StepflowRunner(mlflow_store.project, stepflow_home)
    runner.makepyfile(flow=FLOW)
    return runner


def test_run_is_mirrored(mlflow_store, runner):
    """``stepflow run`` mirrors the run; a secret given through the environment is masked
    and is in no file of the store; MLflow's own chatter stays out of the report."""
    secret = "env-secret-4f1d9a77"
    mlflow_store.configure(uri="sqlite:///tracking/mlflow.db")
    out = runner.run(
        "run",
        "flow.py:scoring",
        "--param",
        "api_token=env:API_TOKEN",
        "--param",
        "n=4",
        env={"API_TOKEN": secret},
    )
    assert out.ret == 0, out.stderr
    assert "1 ran" in out.stdout
    assert "mlflow" not in (out.stdout + out.stderr).lower()
    # The relative path is the project's: tracking/ was made there for the database.
    database = mlflow_store.project / "tracking" / "mlflow.db"
    assert database.is_file()
    mlflow_store.database = database
    mlflow_store.folder = database.parent
    mlflow_store.uri = f"sqlite:///{database}"
    run = mlflow_store.only_run("scoring")
    assert run.data.params == {"api_token": "***", "n": "4"}
    assert run.data.metrics == {"scored/rows": 4.0}
    assert mlflow_store.files_containing("scoring")
    assert mlflow_store.files_containing(secret) == []


def test_variable_overrides_the_uri(mlflow_store, runner):
    """``STEPFLOW_MLFLOW_TRACKING_URI`` sends runs elsewhere without editing the project."""
    (mlflow_store.project / "pyproject.toml").write_text("[tool.stepflow]\n")
    out = runner.run(
        "run",
        "flow.py:scoring",
        "--param",
        "api_token=x",
        env={"STEPFLOW_MLFLOW_TRACKING_URI": mlflow_store.uri},
    )
    assert out.ret == 0, out.stderr
    assert mlflow_store.only_run("scoring").data.tags["stepflow.pipeline"] == "scoring"


def test_bad_table_is_a_usage_error(mlflow_store, runner):
    """A mistake in the table stops ``stepflow run`` with exit code 2, before any step."""
    mlflow_store.configure('experimnt = "typo"\n')
    out = runner.run("run", "flow.py:scoring", "--param", "api_token=x")
    assert out.ret == 2
    assert "[tool.stepflow.mlflow]: unknown key 'experimnt'" in out.stderr
    assert "ran" not in out.stdout


def test_listed_by_stepflow_plugins(mlflow_store, runner):
    """``stepflow plugins`` shows the plugin, its distribution and the hooks it uses."""
    out = runner.run("plugins")
    assert out.ret == 0
    out.fnmatch_lines(
        [
            "mlflow (stepflow-mlflow *)",
            "  hooks: stepflow_configure, stepflow_run_finish, stepflow_run_start, "
            "stepflow_step_finish, stepflow_unconfigure",
        ]
    )


def test_unreachable_server_is_a_warning(mlflow_store, runner):
    """MLflow down: ``stepflow run`` succeeds (exit 0) and says so once, naming the URI."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mlflow_store.configure(uri=f"http://127.0.0.1:{port}")
    out = runner.run("run", "flow.py:scoring", "--param", "api_token=x")
    assert out.ret == 0, out.stderr
    assert "1 ran" in out.stdout
    warning = (
        f"stepflow-mlflow:0: MlflowTrackingWarning: MLflow tracking at http://127.0.0.1:{port}"
    )
    assert out.stderr.count(warning) == 1, out.stderr
