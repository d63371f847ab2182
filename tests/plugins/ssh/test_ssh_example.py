"""The house-prices example with its training step on the SSH host (its README's section)."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
from ssh_testing import toml_tables

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "house_prices"


@pytest.mark.slow
def test_local_preparation_feeds_a_remote_training_step(
    sshd, stepflow_runner, remote_workdir, need
):
    if importlib.util.find_spec("sklearn") is None:
        need("scikit-learn is not installed (pip install -e '.[test]')")
    root = stepflow_runner.path
    shutil.copytree(EXAMPLE, root / "house_prices", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "pyproject.toml").write_text(
        toml_tables({"tool.stepflow.backends.gpu-box": sshd.options(remote_workdir)})
    )
    target = "house_prices/pipeline.py:training"
    out = stepflow_runner.run("run", target, "--backend", "model=gpu-box", timeout=300)
    assert out.ret == 0, out.stdout + out.stderr
    out.fnmatch_lines(["*5 ran in*"])
    # The model was fitted on the host, from the uploaded code and the uploaded train split.
    (code,) = [p for p in (remote_workdir / "code").iterdir() if not p.name.startswith(".")]
    assert (code / "house_prices" / "pipeline.py").is_file()
    assert list((remote_workdir / "store" / "objects").rglob("*.*"))
    # ... and it came back: the local registry holds it.
    models = stepflow_runner.run("models", "list")
    assert "HousePrices" in models.stdout, models.stdout + models.stderr
    again = stepflow_runner.run("run", target, "--backend", "model=gpu-box", timeout=300)
    assert again.ret == 0, again.stdout + again.stderr
    assert "model ......................... reused" in again.stdout
