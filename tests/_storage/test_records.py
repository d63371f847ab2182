"""Run records in SQLite: schema, versions, concurrency, abandoned runs, lookups."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from stepflow._storage.records import (
    SCHEMA_VERSION,
    MetricRow,
    RunRecords,
    RunRow,
    StepIO,
    StepRow,
    encode_params,
)
from stepflow.errors import StorageError, UsageError


@pytest.fixture
def records(tmp_path: Path) -> RunRecords:
    recs = RunRecords(tmp_path / "runs.db")
    yield recs
    recs.close()


def _run(run_id: str, **kw: object) -> RunRow:
    fields = {"pipeline": "p", "state": "running", "started": time.time()}
    fields.update(kw)
    return RunRow(id=run_id, **fields)  # type: ignore[arg-type]


def test_new_database_is_wal_with_current_schema(records: RunRecords, tmp_path: Path) -> None:
    assert records.schema_version == SCHEMA_VERSION
    mode = sqlite3.connect(tmp_path / "runs.db").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    assert (tmp_path / "runs.db").stat().st_mode & 0o077 == 0


def test_newer_schema_is_refused_not_misread(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(UsageError, match="newer stepflow"):
        RunRecords(path)


def test_a_version_1_database_is_migrated_and_keeps_its_rows(tmp_path: Path) -> None:
    """Records written by the first schema are upgraded in place; lineage still finds them."""
    from stepflow._storage.records import _MIGRATIONS

    path = tmp_path / "runs.db"
    db = sqlite3.connect(path)
    db.executescript(_MIGRATIONS[0])
    db.execute("PRAGMA user_version = 1")
    db.execute("INSERT INTO runs (id, pipeline, state, started) VALUES ('r1', 'p', 'ok', 1.0)")
    db.execute(
        "INSERT INTO step_io VALUES ('r1', 'make', 'out', 'frame', 'ab12.parquet', 'ab12', 9)"
    )
    db.commit()
    db.close()
    recs = RunRecords(path)
    try:
        assert recs.schema_version == SCHEMA_VERSION == 4
        # runs recorded before plans were kept have none; the UI draws them from their steps
        assert recs.plan("r1") is None
        indexes = {
            r[0] for r in recs._db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")
        }
        assert not indexes & {"step_io_hash", "step_io_object"}
        assert "runs_running" in indexes
        assert [(run, step, io.object) for run, step, io in recs.producers("ab1")] == [
            ("r1", "make", "ab12.parquet")
        ]
    finally:
        recs.close()


def test_finish_run_writes_the_last_steps_in_the_same_transaction(records: RunRecords) -> None:
    records.start_run(_run("r1"))
    records.write_steps("r1", [StepRow(name="a", state="ran")])
    last = StepRow(name="b", state="reused", io=(StepIO("out", "b", "cd.npy", "cd", 9),))
    records.finish_run("r1", state="succeeded", counts={"ran": 1, "reused": 1}, steps=[last])
    assert [(s.name, s.state) for s in records.steps("r1")] == [("a", "ran"), ("b", "reused")]
    assert records.run("r1").state == "succeeded"
    assert [(r, s) for r, s, _ in records.producers("cd")] == [("r1", "b")]


def test_finish_run_with_a_bad_state_writes_none_of_its_steps(records: RunRecords) -> None:
    records.start_run(_run("r1"))
    with pytest.raises(ValueError, match="unknown run state"):
        records.finish_run("r1", state="done", counts={}, steps=[StepRow(name="a", state="ran")])
    assert records.steps("r1") == []
    assert records.run("r1").state == "running"


def test_the_check_for_abandoned_runs_reads_only_runs_marked_running(
    records: RunRecords,
) -> None:
    """Every run start makes this check: it must not scan every run ever recorded."""
    import socket

    host = socket.gethostname()
    with records._transaction() as db:
        db.executemany(
            "INSERT INTO runs (id, pipeline, state, started, host, pid) VALUES (?,?,?,?,?,?)",
            [(f"old-{i:04d}", "p", "succeeded", float(i), host, 1) for i in range(500)],
        )
    records.start_run(_run("dead", host=host, pid=2**22 + 12345))
    records.start_run(_run("alive", host=host))
    plan = records._db.execute(
        "EXPLAIN QUERY PLAN SELECT id, pid FROM runs WHERE state = 'running' AND host = ?",
        (host,),
    ).fetchall()
    assert any("runs_running" in row[3] for row in plan), plan
    assert records.mark_abandoned() == ["dead"]
    assert records.run("dead").state == "interrupted"
    assert records.run("alive").state == "running"
    assert records.mark_abandoned() == []


def test_a_run_is_recorded_under_the_host_name_socket_gives(records: RunRecords) -> None:
    """``host_name`` avoids importing socket, and must agree with it: other readers (the
    UI, the scheduler, plugins) compare hosts through ``socket.gethostname()``."""
    import socket

    from stepflow._storage.records import host_name

    assert host_name() == socket.gethostname()
    records.start_run(_run("r1", host=None))
    assert records.run("r1").host == socket.gethostname()


def test_last_outputs_of_a_step_with_a_given_key(records: RunRecords) -> None:
    """What a step made when it last ran, and succeeded, with the same cache key."""
    out = "out"
    for run_id, started, state, key, content in [
        ("r1", 1.0, "ran", "k1", "aa"),
        ("r2", 2.0, "ran", "k1", "bb"),  # the latest with k1
        ("r3", 3.0, "failed", "k1", None),  # failed: made nothing to assume
        ("r4", 4.0, "ran", "k2", "cc"),  # another key
    ]:
        records.start_run(_run(run_id, started=started))
        io = () if content is None else (StepIO(out, "rows", f"{content}.pickle", content, 1),)
        records.write_steps(run_id, [StepRow(name="load", state=state, cache_key=key, io=io)])
    assert records.last_outputs("p", "load", "k1") == ("r2", {"rows": "bb"})
    assert records.last_outputs("p", "load", "k2") == ("r4", {"rows": "cc"})
    assert records.last_outputs("p", "load", "k3") is None
    assert records.last_outputs("other", "load", "k1") is None
    assert records.last_outputs("p", "other", "k1") is None


def test_reopening_keeps_data_and_does_not_migrate_again(tmp_path: Path) -> None:
    first = RunRecords(tmp_path / "runs.db")
    first.start_run(_run("r1"))
    first.close()
    again = RunRecords(tmp_path / "runs.db")
    assert [r.id for r in again.runs()] == ["r1"]
    again.close()


def test_run_and_steps_round_trip(records: RunRecords) -> None:
    records.start_run(
        _run(
            "20261123-000000-aaaaaa",
            params=encode_params({"n": 3, "token": "s3cret"}, {"token"}),
            secret_params=("token",),
            targets=("b",),
        )
    )
    step = StepRow(
        name="b",
        state="ran",
        started=1.0,
        finished=2.0,
        duration=1.0,
        attempts=2,
        backend="local",
        cache_key="k" * 32,
        io=(StepIO("in", "a", "ab.cloudpickle", "ab", 5), StepIO("out", "b", "cd.npy", "cd", 9)),
        metrics=(MetricRow("loss", 0.5, 1, 3.0), MetricRow("loss", 0.25, 2, 4.0)),
        logs=((1, "stdout", "first try\n"), (2, "stdout", "second try\n")),
        params={"alpha": "0.1"},
    )
    records.write_steps("20261123-000000-aaaaaa", [step])
    records.finish_run(
        "20261123-000000-aaaaaa",
        state="succeeded",
        counts={"ran": 1},
        source={"content_hash": "h", "files": {"a.py": "x"}, "git_commit": "c", "git_dirty": 0},
    )
    run = records.run("20261123")
    assert run.state == "succeeded" and run.finished is not None
    assert run.display_params() == {"n": 3, "token": "***"}
    assert run.targets == ("b",)
    assert run.source_files == {"a.py": "x"} and run.git_dirty is False
    (got,) = records.steps(run.id)
    assert got.io == step.io
    assert [m.value for m in got.metrics] == [0.5, 0.25]
    assert got.params == {"alpha": "0.1"}
    assert records.logs(run.id, "b") == [
        ("b", 1, "stdout", "first try\n"),
        ("b", 2, "stdout", "second try\n"),
    ]
    assert [(r, s) for r, s, _ in records.producers("cd")] == [(run.id, "b")]


def test_writing_a_step_again_replaces_it(records: RunRecords) -> None:
    records.start_run(_run("r1"))
    row = StepRow(name="s", state="failed", logs=((1, "stderr", "x"),))
    records.write_steps("r1", [row])
    records.write_steps(
        "r1", [StepRow(name="s", state="ran", logs=((2, "stdout", "y"),))], replace=True
    )
    (step,) = records.steps("r1")
    assert step.state == "ran"
    assert records.logs("r1") == [("s", 2, "stdout", "y")]


def test_secret_values_are_not_encoded() -> None:
    encoded = encode_params({"path": Path("/x"), "n": 2, "key": "hunter2"}, ["key"])
    assert encoded == {"path": {"text": "/x"}, "n": {"json": 2}}


def test_run_lookup_errors(records: RunRecords) -> None:
    records.start_run(_run("20261123-000001-aaaaaa", started=1.0))
    records.start_run(_run("20261123-000002-bbbbbb", started=2.0))
    assert records.run("last").id == "20261123-000002-bbbbbb"
    with pytest.raises(UsageError, match="ambiguous"):
        records.run("20261123")
    with pytest.raises(UsageError, match="no run 'nope'"):
        records.run("nope")
    with pytest.raises(UsageError, match="no run 'last-failed'"):
        records.run("last-failed")


def test_filters(records: RunRecords) -> None:
    records.start_run(_run("a", pipeline="x", started=10.0))
    records.start_run(_run("b", pipeline="y", started=20.0))
    records.finish_run("b", state="failed", counts={})
    assert [r.id for r in records.runs()] == ["b", "a"]
    assert [r.id for r in records.runs(pipeline="x")] == ["a"]
    assert [r.id for r in records.runs(state="failed")] == ["b"]
    assert [r.id for r in records.runs(since=15.0)] == ["b"]
    assert [r.id for r in records.runs(limit=1)] == ["b"]
    with pytest.raises(ValueError, match="unknown run state"):
        records.finish_run("a", state="done", counts={})


def test_abandoned_run_is_marked_interrupted(records: RunRecords) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    records.start_run(_run("dead", pid=proc.pid))
    records.start_run(_run("alive"))  # this process: still running
    assert records.mark_abandoned() == ["dead"]
    states = {r.id: r.state for r in records.runs()}
    assert states == {"dead": "interrupted", "alive": "running"}


WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from stepflow._storage.records import RunRecords, RunRow, StepRow
    recs = RunRecords(Path(sys.argv[1]))
    for i in range(40):
        rid = f"{sys.argv[2]}-{i}"
        recs.start_run(RunRow(id=rid, pipeline="p", state="running", started=time.time()))
        recs.write_steps(rid, [StepRow(name=f"s{j}", state="ran") for j in range(5)])
        recs.finish_run(rid, state="succeeded", counts={"ran": 5})
    recs.close()
    """
)


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), f"w{n}"]) for n in range(3)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    recs = RunRecords(path)
    runs = recs.runs()
    assert len(runs) == 120
    assert {r.state for r in runs} == {"succeeded"}
    assert all(len(recs.steps(r.id)) == 5 for r in runs[:10])
    recs.close()


def test_a_locked_database_is_a_storage_error_and_releases_its_lock(
    records: RunRecords, tmp_path: Path
) -> None:
    records.start_run(_run("r1"))
    records._db.execute("PRAGMA busy_timeout = 50")  # not the half minute a run waits
    other = sqlite3.connect(str(tmp_path / "runs.db"), isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StorageError, match="locked") as caught:
            records.write_steps("r1", [StepRow(name="a", state="ran")])
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert caught.value.path == str(tmp_path / "runs.db")
    # The failed BEGIN left neither the records' own lock held nor a transaction open.
    records.write_steps("r1", [StepRow(name="a", state="ran")])
    assert [s.name for s in records.steps("r1")] == ["a"]


def test_a_full_disk_at_commit_is_a_storage_error_and_rolled_back(
    records: RunRecords, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    records.start_run(_run("r1"))
    real = records._db

    class FullAtCommit:
        """The connection, except that COMMIT finds the disk full."""

        def __getattr__(self, name: str) -> object:
            return getattr(real, name)

        def execute(self, sql: str, *args: object) -> object:
            if sql == "COMMIT":
                raise sqlite3.OperationalError("database or disk is full")
            return real.execute(sql, *args)

    monkeypatch.setattr(records, "_db", FullAtCommit())
    with pytest.raises(StorageError, match="the disk is full"):
        records.write_steps("r1", [StepRow(name="a", state="ran")])
    assert not real.in_transaction
    monkeypatch.setattr(records, "_db", real)
    records.write_steps("r1", [StepRow(name="b", state="ran")])
    assert [s.name for s in records.steps("r1")] == ["b"]


def test_a_shared_handle_in_use_is_not_closed_by_opening_other_homes(tmp_path) -> None:
    """Opening more homes than are kept open retires the oldest handle, but one still held
    (a run in progress, its snapshot thread) stays usable until its holder closes it."""
    held = RunRecords.shared(tmp_path / "held" / "runs.db")
    others = [RunRecords.shared(tmp_path / f"other{i}" / "runs.db") for i in range(6)]
    for other in others:
        other.close()
    assert held.runs() == []  # would raise "Cannot operate on a closed database"
    held.close()
    with pytest.raises(sqlite3.ProgrammingError):
        held.runs()  # retired and no longer held: really closed
