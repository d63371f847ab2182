"""The home's live area: its layout, hostile step names, and readers that ignore dead runs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from stepflow._storage import live


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _publish(home: Path, run: str, step: str, attempt: int = 1, text: str = "") -> Path:
    live.make_run_dir(home, run)
    folder = live.make_step_dir(home, run, step, attempt)
    if text:
        (folder / "stdout").write_text(text)
    return folder


HOSTILE = ["../escape", "a/b", ".", "..", "", "owner", "name", "1", ".hidden", "ü ß", "x" * 400]


@pytest.mark.parametrize("name", HOSTILE)
def test_any_step_name_gets_a_folder_inside_its_run(tmp_path, name):
    """A step name never climbs out of the run's folder nor lands on its ``owner`` file."""
    folder = _publish(tmp_path, "run1", name, text="hello\n")
    run = live.run_dir(tmp_path, "run1").resolve()
    assert folder.resolve().parent.parent == run
    assert folder.parent.name not in (live.OWNER, ".", "..", "")
    assert len(folder.parent.name) <= 120
    assert live.live_steps(tmp_path, "run1") == {name: 1}
    assert live.live_log(tmp_path, "run1", name) == [(1, "stdout", "hello\n")]


def test_names_that_differ_get_different_folders():
    names = [*HOSTILE, "a.2fb", "a_b", "a-b", "x" * 401, "X" * 400]
    safe = {live.step_dir(Path("/h"), "r", n) for n in names}
    assert len(safe) == len(names)


def test_steps_in_flight_and_their_log_attempt_by_attempt(tmp_path):
    _publish(tmp_path, "r", "train", 1, "epoch 1\n")
    second = _publish(tmp_path, "r", "train", 2, "epoch 1 again\n")
    (second / "stderr").write_text("warning\n")
    _publish(tmp_path, "r", "prepare", 1)
    assert live.live_steps(tmp_path, "r") == {"train": 2, "prepare": 1}
    assert live.live_log(tmp_path, "r", "train") == [
        (1, "stdout", "epoch 1\n"),
        (2, "stdout", "epoch 1 again\n"),
        (2, "stderr", "warning\n"),
    ]
    assert live.live_log(tmp_path, "r", "prepare") == []
    assert live.live_log(tmp_path, "r", "other") is None
    assert live.live_log(tmp_path, "no-such-run", "train") is None
    live.remove_steps(tmp_path, "r", ["train"])
    assert live.live_steps(tmp_path, "r") == {"prepare": 1}
    live.remove_run(tmp_path, "r")
    assert not (tmp_path / live.LIVE_DIR).exists()


def test_the_owner_file_names_this_host_and_process(tmp_path):
    folder = live.make_run_dir(tmp_path, "r")
    assert (folder / live.OWNER).read_text().split() == [socket.gethostname(), str(os.getpid())]
    assert oct(folder.stat().st_mode & 0o777) == oct(0o700)
    assert oct((folder / live.OWNER).stat().st_mode & 0o777) == oct(0o600)


def test_a_dead_runs_leftovers_are_ignored_and_swept(tmp_path):
    """A run killed outright leaves its folder: readers ignore it (its pid is gone, as the
    run records check), and the next publishing run removes it."""
    _publish(tmp_path, "dead", "step", text="half a line")
    (live.run_dir(tmp_path, "dead") / live.OWNER).write_text(
        f"{socket.gethostname()} {_dead_pid()}\n"
    )
    _publish(tmp_path, "alive", "step", text="going\n")
    # another host's run: cannot be told, so kept (and shown)
    _publish(tmp_path, "remote", "step")
    (live.run_dir(tmp_path, "remote") / live.OWNER).write_text("other-host 1\n")
    assert live.live_steps(tmp_path, "dead") == {}
    assert live.live_log(tmp_path, "dead", "step") is None
    assert live.live_steps(tmp_path, "alive") == {"step": 1}
    assert live.owner_alive(live.run_dir(tmp_path, "remote")) is None
    removed = live.sweep(tmp_path, keep="alive")
    assert removed == [live.run_dir(tmp_path, "dead").name]
    assert sorted(p.name for p in (tmp_path / live.LIVE_DIR).iterdir()) == ["alive", "remote"]


def test_a_run_folder_without_owner_shows_nothing(tmp_path):
    """A folder being made (no owner file yet) is neither shown nor swept."""
    live.make_step_dir(tmp_path, "r", "step", 1)
    assert live.live_steps(tmp_path, "r") == {}
    assert live.sweep(tmp_path, keep="other") == []


def test_the_read_api_sees_steps_in_flight_and_their_changes(tmp_path):
    """A running run's change token moves when a step starts or stops being in flight, with
    no new record (a page following the run redraws its graph)."""
    import time

    from stepflow._config import load_config
    from stepflow._storage.read import ReadAPI
    from stepflow._storage.records import RunRecords, RunRow

    records = RunRecords(tmp_path / "runs.db")
    records.start_run(RunRow(id="r1", pipeline="p", state="running", started=time.time()))
    records.close()
    with ReadAPI(load_config(home=tmp_path), read_only=True) as api:
        before = api.changes("r1")
        _publish(tmp_path, "r1", "train", text="epoch 1\n")
        running = api.changes("r1")
        assert running != before
        assert api.live_steps("r1") == {"train": 1}
        assert [(e.attempt, e.stream, e.text) for e in api.live_log("r1", "train")] == [
            (1, "stdout", "epoch 1\n")
        ]
        live.remove_steps(tmp_path, "r1", ["train"])
        assert api.changes("r1") == before
        assert api.live_log("r1", "train") is None
