"""``examples/notebook/pipeline.ipynb`` executed by ``jupyter nbconvert --execute``: steps
defined in notebook cells run with two workers, and ``Pipeline`` and ``RunResult`` render as
the graph with each step's state."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).parent.parent / "examples" / "notebook" / "pipeline.ipynb"
_NODE = re.compile(r'data-step="([^"]+)" data-state="([^"]*)"')


@pytest.mark.slow
def test_the_example_notebook_runs_and_draws_states(tmp_path, need):
    for module in ("nbconvert", "ipykernel", "nbformat"):
        if importlib.util.find_spec(module) is None:
            need(f"{module} is not installed: pip install -e '.[test]'")
    import nbformat

    root = str(Path(__file__).parent.parent)
    env = {
        **os.environ,
        "STEPFLOW_HOME": str(tmp_path / "home"),
        "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "nbconvert",
            "--to",
            "notebook",
            "--execute",
            "--ExecutePreprocessor.timeout=300",
            "--output-dir",
            str(tmp_path),
            str(NOTEBOOK),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    executed = nbformat.read(tmp_path / "pipeline.ipynb", as_version=4)
    drawn = []
    for cell in executed.cells:
        for output in cell.get("outputs", []):
            assert output["output_type"] != "error", output
            data = output.get("data", {})
            if "image/svg+xml" in data:
                assert data["image/svg+xml"].startswith("<svg")
                drawn.append(dict(_NODE.findall(data["text/html"])))
    steps = ["numbers", "squares", "cubes", "total"]
    assert drawn == [
        dict.fromkeys(steps, ""),  # the pipeline, before any run: no states
        dict.fromkeys(steps, "ran"),
        dict.fromkeys(steps, "reused"),
        dict.fromkeys(steps, "ran"),  # n changed: everything depends on it
    ]
    printed = [o["text"] for c in executed.cells for o in c.get("outputs", []) if "text" in o]
    assert "280\n" in printed

    from stepflow._config import load_config
    from stepflow._storage.read import ReadAPI

    with ReadAPI(load_config(home=tmp_path / "home"), read_only=True) as api:
        runs = api.runs()
        assert [r.workers for r in runs] == [2, 2, 2]
        assert [r.state for r in runs] == ["succeeded"] * 3
