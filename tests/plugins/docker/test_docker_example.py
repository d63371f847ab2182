"""The house-prices example trains in a container when a run chooses the backend."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "house_prices"


def test_training_step_runs_in_a_container(docker_client, project):
    """``--backend model=container`` trains in the container; the other steps, and a run
    without ``--backend``, stay local (and do not reuse the container's result)."""
    shutil.copytree(EXAMPLE, project.path / "house_prices")
    project.backend("container", requirements="house_prices/requirements-docker.txt")
    target = "house_prices/pipeline.py:training"
    inside = project.run("run", target, "--backend", "model=container")
    assert inside.returncode == 0, inside.stdout + inside.stderr
    for step in ("houses", "prepared", "model", "evaluation", "registered_model"):
        assert re.search(rf"{step} \.+ ran", inside.stdout), inside.stdout
    models = project.run("models", "list", "--json")
    assert models.returncode == 0 and "HousePrices" in models.stdout
    local = project.run("run", target)
    assert local.returncode == 0, local.stdout + local.stderr
    assert re.search(r"model \.+ ran", local.stdout), local.stdout  # another environment
    assert re.search(r"prepared \.+ reused", local.stdout), local.stdout
