"""The README's promises: CI runs exactly its test command."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parents[1]


def _console_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```console\n(.+?)\n```", text, flags=re.S)


def test_first_two_commands_are_setup_commands():
    """The README opens with the example command, then the test command."""
    first, second = _console_commands()[:2]
    assert "stepflow run examples/house_prices/pipeline.py:batch_scoring" in first
    assert first.startswith("python3 -m venv .venv") and second.startswith("python3 -m venv")
    assert second.endswith("python -m pytest")


def test_ci_runs_the_readme_test_command():
    """`.ci/run` contains the README's second command verbatim."""
    second = _console_commands()[1]
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert second in ci_lines
