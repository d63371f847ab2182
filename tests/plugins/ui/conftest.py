"""Fixtures of the web UI's tests: a home with real runs (a secret parameter among them) and
a Starlette test client of the UI over it."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

#: the value of the runs' ``Secret`` parameter: no page or API answer may contain it
SECRET = "hunter2-very-secret-value"

PIPELINE = """
import time
from pathlib import Path
import stepflow
from stepflow import Pipeline, Secret, step

@step
def raw(n: int = 4) -> list[int]:
    print("making", n, "numbers")
    return list(range(n))

@step
def features(raw: list[int]) -> list[int]:
    for i, x in enumerate(raw):
        stepflow.context().log_metric("loss", 1.0 / (i + 1))
    return [x * 2 for x in raw]

@step
def model(features: list[int], token: Secret[str], fail: bool = False) -> int:
    print("using token", token)
    if fail:
        raise ValueError("bad token " + token)
    return sum(features)

@step
def report(model: int, token: Secret[str], wait_for: str = "") -> str:
    # A run that waits until a file appears: the tests watch it while it goes, its first
    # lines (the token among them) printed already.
    print("report starts", flush=True)
    print("report uses", token, flush=True)
    while wait_for and not Path(wait_for).exists():
        time.sleep(0.05)
    print("report halfway", flush=True)
    while wait_for and not Path(wait_for + ".2").exists():
        time.sleep(0.05)
    print("report written")
    return f"total {model}"

pipe = Pipeline("numbers", [raw, features, model, report])
"""


@pytest.fixture
def ui_secret() -> str:
    """The value of the runs' ``Secret`` parameter (no page or answer may contain it)."""
    return SECRET


@pytest.fixture
def ui_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project folder holding ``numbers.py``; the working directory while the test runs."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "numbers_pipeline.py").write_text(textwrap.dedent(PIPELINE))
    monkeypatch.chdir(project)
    monkeypatch.syspath_prepend(str(project))
    return project


@pytest.fixture
def ui_home(ui_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A home with three runs of ``numbers``: all ran, partly reused, and one that failed."""
    import importlib
    import sys

    home = tmp_path / "home"
    monkeypatch.setenv("STEPFLOW_HOME", str(home))
    sys.modules.pop("numbers_pipeline", None)
    module = importlib.import_module("numbers_pipeline")
    try:
        first = module.pipe.run(params={"token": SECRET}, home=home)
        assert first.ok, first.summary()
        second = module.pipe.run(params={"token": SECRET, "wait_for": ""}, home=home)
        assert second.ok
        third = module.pipe.run(params={"token": SECRET, "fail": True, "n": 5}, home=home)
        assert not third.ok
    finally:
        sys.modules.pop("numbers_pipeline", None)
    # The runs' code snapshots are stored by background threads: the pages show them.
    import threading

    for thread in threading.enumerate():
        if thread.name == "stepflow-source":
            thread.join()
    return home


@pytest.fixture
def ui_client(ui_home: Path) -> Any:
    from starlette.testclient import TestClient
    from stepflow_ui.app import make_app

    from stepflow._config import load_config

    app = make_app(load_config(home=ui_home), poll=0.05, stream_for=5.0)
    with TestClient(app, base_url="http://127.0.0.1:8765") as client:
        yield client
