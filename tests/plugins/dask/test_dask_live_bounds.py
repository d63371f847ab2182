"""The bounds and the masking of what a Dask worker sends of a running step's output
(``stepflow_dask._live``), look by look, and the run's side turning the events into its live
area. The transport itself (``Worker.log_event`` through a real scheduler) is tested in
``test_dask_live.py``; here the worker's ``log_event`` is a recorder, so that each look's
event can be checked exactly."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from stepflow.backends import Task

pytestmark = pytest.mark.usefixtures("need_dask")

SECRET = "dask-secret-7"


class Recorder:
    """Stands in for the Dask worker: keeps the events the follower logs."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def log_event(self, topic: str, msg: dict[str, Any]) -> None:
        self.events.append((topic, msg))

    def texts(self, stream: str = "stdout") -> list[str]:
        return [m[stream] for _, m in self.events if stream in m]


def _task(**params: Any) -> Task:
    return Task(
        run_id="r1",
        step="s",
        attempt=1,
        ref="flow:s",
        inputs={},
        params={"token": SECRET, **params},
        store_uri="/nowhere",
        secret_params=("token",),
    )


def _follower(folder: Path) -> tuple[Any, Recorder]:
    from stepflow_dask._live import _Follow

    worker = Recorder()
    followed = _Follow("stepflow-r1-s-1", "topic", worker, folder, (SECRET,))  # type: ignore[arg-type]
    return followed, worker


def _write(folder: Path, text: str, stream: str = "stdout") -> None:
    with open(folder / stream, "a", encoding="utf-8") as fh:
        fh.write(text)


def test_a_secret_split_across_two_looks_is_masked_before_it_is_sent(tmp_path):
    followed, worker = _follower(tmp_path)
    _write(tmp_path, "line one\nvalue " + SECRET[:5])
    followed.look()
    _write(tmp_path, SECRET[5:] + " done\n")
    _write(tmp_path, "to stderr\n", "stderr")
    followed.look()
    _write(tmp_path, "no line end")
    followed.look()
    followed.look(final=True)
    assert worker.texts() == ["line one\n", "value *** done\n", "no line end"]
    assert worker.texts("stderr") == ["to stderr\n"]
    assert [m["seq"] for _, m in worker.events] == [1, 2, 3]
    assert all(m["stepflow-live"] == "stepflow-r1-s-1" for _, m in worker.events)
    assert all(SECRET[:5] not in repr(m) for _, m in worker.events)


def test_a_look_with_more_than_a_chunk_sends_the_newest_lines_and_says_what_it_left_out(tmp_path):
    from stepflow_dask._live import CHUNK

    followed, worker = _follower(tmp_path)
    lines = [f"line {i:06d} {SECRET}\n" for i in range(20_000)]
    _write(tmp_path, "".join(lines))
    followed.look()
    (text,) = worker.texts()
    head, _, rest = text.partition("\n")
    assert len(rest) <= CHUNK and rest.endswith("line 019999 ***\n")
    # whole lines only, every secret masked before the cut
    assert rest.startswith("line ") and SECRET not in rest and "dask-" not in rest
    left = sum(len(line.replace(SECRET, "***")) for line in lines) - len(rest)
    assert head == f"[stepflow: {left:,} characters of stdout not shown live]"


def test_the_live_view_of_a_stream_stops_after_its_limit(tmp_path, monkeypatch):
    from stepflow_dask import _live

    monkeypatch.setattr(_live, "LIMIT", 3 * _live.CHUNK)
    followed, worker = _follower(tmp_path)
    line = "y" * 99 + "\n"
    for _ in range(5):
        _write(tmp_path, line * (_live.CHUNK // 100))
        followed.look()
    _write(tmp_path, "stderr goes on\n", "stderr")
    followed.look()
    texts = worker.texts()
    # 16,300 characters a look: the fourth reaches the limit, the fifth sends nothing
    assert len(texts) == 4
    assert texts[-1].endswith(
        f"[stepflow: the live view of stdout stops after {3 * _live.CHUNK:,} characters; "
        f"the step's log is recorded when it ends]\n"
    )
    assert sum(len(t) for t in texts[:-1]) + texts[-1].index("\n[stepflow") == 3 * _live.CHUNK
    assert worker.texts("stderr") == ["stderr goes on\n"]


def test_the_run_publishes_the_events_of_its_attempts_in_order(tmp_path, wait_for):
    """The relay hands each event's text to ``publish_output``: it lands in the run's live
    area (masked again there); an event out of order, an event of an attempt no longer in
    flight and the scheduler's own events of the topic are dropped."""
    from stepflow_dask._live import LiveRelay

    from stepflow._execution import live

    class Attempt:
        task = _task()

    attempts: dict[str, Any] = {"stepflow-r1-s-1": Attempt()}
    relay = LiveRelay(attempts, threading.Lock())
    with live.attempt(tmp_path, "r1", "s", 1, secrets=(SECRET,)) as attempt:
        relay((1.0, {"action": "add-client", "client": "c"}))
        relay((1.0, {"stepflow-live": "stepflow-r1-s-1", "seq": 1, "stdout": "one\n"}))
        relay((1.0, {"stepflow-live": "stepflow-r1-s-1", "seq": 3, "stdout": "three\n"}))
        relay((1.0, {"stepflow-live": "stepflow-r1-s-1", "seq": 2, "stdout": "two\n"}))
        relay((1.0, {"stepflow-live": "stepflow-r1-s-1", "seq": 4, "stderr": SECRET + "\n"}))
        relay((1.0, {"stepflow-live": "stepflow-r1-s-9", "seq": 1, "stdout": "other\n"}))
        wait_for(lambda: attempt.folder is not None and (attempt.folder / "stderr").exists())
        folder = attempt.folder
        assert (folder / "stdout").read_text() == "one\nthree\n"
        assert (folder / "stderr").read_text() == "***\n"
        del attempts["stepflow-r1-s-1"]
        relay((1.0, {"stepflow-live": "stepflow-r1-s-1", "seq": 5, "stdout": "late\n"}))
    assert (folder / "stdout").read_text() == "one\nthree\n"
    assert relay.seen == {}
    live.run_ended(tmp_path, "r1")
