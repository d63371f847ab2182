"""``stepflow runs source``: the exact code of a past run, listed or written into a folder."""

from __future__ import annotations

import json

import pytest

FLOW = """
from stepflow import step

@step
def answer() -> int:
    return {value}
"""


def run_ids(runner) -> list[str]:
    listed = runner.run("runs", "list", "--json")
    assert listed.ret == 0, listed.stderr
    return [r["id"] for r in json.loads(listed.stdout)]


def edit_and_run_twice(runner) -> str:
    """Run, edit the pipeline file, run again; returns the first run's id."""
    runner.makepyfile(flow=FLOW.format(value=1))
    assert runner.run("run", "flow.py").ret == 0
    runner.makepyfile(flow=FLOW.format(value=2))
    second = runner.run("run", "flow.py")
    assert second.ret == 0, second.stderr
    ids = run_ids(runner)
    assert len(ids) == 2
    return ids[-1]


def test_restores_the_first_version_after_an_edit(stepflow_runner, tmp_path_factory):
    first = edit_and_run_twice(stepflow_runner)
    dest = tmp_path_factory.mktemp("restored") / "code"
    restored = stepflow_runner.run("runs", "source", first, "--to", str(dest))
    assert restored.ret == 0, restored.stderr
    assert "return 1" in (dest / "flow.py").read_text()
    assert "return 2" in (stepflow_runner.path / "flow.py").read_text()

    listed = stepflow_runner.run("runs", "source", first, "--json")
    assert listed.ret == 0, listed.stderr
    data = json.loads(listed.stdout)
    assert data["stored"] is True and data["run"] == first
    entry = next(f for f in data["files"] if f["path"] == "flow.py")
    assert entry["size"] == (dest / "flow.py").stat().st_size and entry["left_out"] is None
    table = stepflow_runner.run("runs", "source", first)
    table.fnmatch_lines(["run * snapshot *", "path *size *hash", "flow.py *B *"])


def test_refuses_a_folder_that_is_not_empty_unless_forced(stepflow_runner, tmp_path_factory):
    first = edit_and_run_twice(stepflow_runner)
    dest = tmp_path_factory.mktemp("busy")
    (dest / "mine.txt").write_text("keep me")
    refused = stepflow_runner.run("runs", "source", first, "--to", str(dest))
    assert refused.ret != 0
    assert "is not empty" in refused.stderr and "--force" in refused.stderr
    assert not (dest / "flow.py").exists()
    forced = stepflow_runner.run("runs", "source", first, "--to", str(dest), "--force")
    assert forced.ret == 0, forced.stderr
    assert "return 1" in (dest / "flow.py").read_text()
    assert (dest / "mine.txt").read_text() == "keep me"


def test_a_missing_file_names_the_file_and_the_run(stepflow_runner, tmp_path_factory):
    first = edit_and_run_twice(stepflow_runner)
    for doc in (stepflow_runner.home / "refs" / "source" / "files").rglob("*"):
        if doc.is_file() and b"return 1" in doc.read_bytes():
            doc.unlink()
    dest = tmp_path_factory.mktemp("partial") / "code"
    failed = stepflow_runner.run("runs", "source", first, "--to", str(dest))
    assert failed.ret != 0
    assert first in failed.stderr and "'flow.py'" in failed.stderr
    assert "missing" in failed.stderr and "Traceback" not in failed.stderr


@pytest.mark.slow
def test_restores_from_an_s3_store(stepflow_runner, s3_server, tmp_path_factory):
    (stepflow_runner.path / "pyproject.toml").write_text(s3_server.pyproject())
    first = edit_and_run_twice(stepflow_runner)
    assert len(s3_server.fs().find(f"{s3_server.bucket}/stepflow/refs/source/snapshots")) == 2
    assert not (stepflow_runner.home / "refs" / "source").exists()
    dest = tmp_path_factory.mktemp("from-s3") / "code"
    restored = stepflow_runner.run("runs", "source", first, "--to", str(dest))
    assert restored.ret == 0, restored.stderr
    assert "return 1" in (dest / "flow.py").read_text()
    assert "[tool.stepflow]" in (dest / "pyproject.toml").read_text()
