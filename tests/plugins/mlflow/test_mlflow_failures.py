"""MLflow that cannot be reached or written never fails a run: one warning naming the URI."""

from __future__ import annotations

import socket
import warnings

import pytest

from stepflow import Pipeline

pytestmark = pytest.mark.filterwarnings(
    "ignore:The ``noload`` loader strategy is deprecated:DeprecationWarning"
)

FLOW = """
import stepflow
from stepflow import step


@step
def first() -> int:
    stepflow.context().log_metric("score", 1.0)
    return 1


@step
def second(first: int) -> int:
    stepflow.context().log_metric("score", 2.0)
    return first + 1


@step
def third(second: int) -> int:
    return second + 1
"""


def _closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def flow(mlflow_store, make_module):
    mod = make_module("mlflow_fail_flow", FLOW)
    return Pipeline("resilient", [mod.first, mod.second, mod.third])


def _tracking_warnings(record):
    from stepflow_mlflow import MlflowTrackingWarning

    return [str(w.message) for w in record if issubclass(w.category, MlflowTrackingWarning)]


def test_unreachable_server(mlflow_store, flow):
    """A tracking server that does not answer: the run succeeds, with one warning that names
    the URI."""
    uri = f"http://127.0.0.1:{_closed_port()}"
    mlflow_store.configure(uri=uri)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        result = flow.run()
    assert result.ok and result["third"] == 3
    (message,) = _tracking_warnings(record)
    assert uri in message and result.run_id in message
    assert "the run goes on" in message


def test_password_in_the_uri_is_not_shown(mlflow_store, flow):
    """A password in the tracking URI is masked in the warning."""
    port = _closed_port()
    mlflow_store.configure(uri=f"http://robot:hunter2@127.0.0.1:{port}")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert flow.run().ok
    (message,) = _tracking_warnings(record)
    assert f"http://robot:***@127.0.0.1:{port}" in message
    assert "hunter2" not in message


def test_store_that_cannot_be_created(mlflow_store, flow):
    """A SQLite store under a path that is a file: a warning naming the URI, no failure."""
    blocker = mlflow_store.folder / "not-a-folder"
    blocker.write_text("a file where a folder should be")
    uri = f"sqlite:///{blocker}/mlflow.db"
    mlflow_store.configure(uri=uri)
    with pytest.warns(Warning) as record:
        result = flow.run()
    assert result.ok
    (message,) = _tracking_warnings(record)
    assert uri in message


def test_store_broken_in_the_middle_of_a_run(mlflow_store, make_module):
    """The store breaks after the run started: the run finishes every step, and the mirror
    stops with one warning instead of one per step."""
    # The second step overwrites the database the run is being mirrored to.
    breaking = FLOW.replace(
        'stepflow.context().log_metric("score", 2.0)',
        f'open({str(mlflow_store.database)!r}, "wb").write(b"no longer a database" * 100)',
    )
    mod = make_module("mlflow_breaking_flow", breaking)
    mlflow_store.configure()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        result = Pipeline("breaking", [mod.first, mod.second, mod.third]).run()
    assert result.ok and result["third"] == 3
    # One warning, whichever MLflow request met the broken store first (they run in the
    # mirror's own thread, beside the steps).
    (message,) = _tracking_warnings(record)
    assert mlflow_store.uri in message and "file is not a database" in message


def test_warnings_as_errors_do_not_fail_the_run(mlflow_store, flow, capsys):
    """Where warnings are errors (``-W error``, this suite), the tracking warning would be
    raised inside the run; it is printed to stderr instead, and the run succeeds."""
    uri = f"http://127.0.0.1:{_closed_port()}"
    mlflow_store.configure(uri=uri)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = flow.run()
    assert result.ok
    err = capsys.readouterr().err
    assert f"stepflow-mlflow: warning: MLflow tracking at {uri} failed" in err


def test_run_that_never_ends_is_marked_failed(mlflow_store):
    """If stepflow itself dies between a run's start and its end (no ``run_finish``), the
    plugin's unconfigure ends the MLflow run as failed instead of leaving it running."""
    import stepflow_mlflow

    from stepflow import RunInfo
    from stepflow._config import load_config

    mlflow_store.configure()
    config = load_config()
    info = RunInfo(
        run_id="20261201-000000-abcdef",
        pipeline="crashing",
        steps=("a",),
        params={"n": 1},
        workers=1,
        fail_fast=False,
    )
    stepflow_mlflow.stepflow_configure(config=config)
    stepflow_mlflow.stepflow_run_start(run=info)
    stepflow_mlflow.stepflow_unconfigure(config=config)
    run = mlflow_store.only_run("crashing")
    assert run.info.status == "FAILED"
    assert run.data.tags["stepflow.state"] == "crashed"
    assert run.data.params == {"n": "1"}


def test_overlapping_runs_in_one_process(mlflow_store, make_module):
    """Two ``Pipeline.run`` calls in two threads of one process overlap: the first to end
    unconfigures the plugin for itself only, and both runs are mirrored whole."""
    import threading

    mod = make_module(
        "mlflow_overlap",
        """
import threading
from stepflow import step

BOTH_STARTED = threading.Barrier(2, timeout=120)

@step(cache=False)
def waits(label: str = "a") -> str:
    BOTH_STARTED.wait()
    return label
""",
    )
    mlflow_store.configure()
    pipe = Pipeline("overlap", [mod.waits])
    results = {}

    def run(label):
        results[label] = pipe.run({"label": label})

    threads = [threading.Thread(target=run, args=(label,)) for label in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert results["a"].ok and results["b"].ok
    runs = mlflow_store.runs("overlap")
    assert sorted(r.data.params["label"] for r in runs) == ["a", "b"]
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert {r.data.tags["stepflow.state"] for r in runs} == {"ok"}
