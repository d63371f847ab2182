"""The schedule database: one row per tick, claimed once, resumed when its holder died."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest

from stepflow._storage.scheduledb import ScheduleDB, ScheduleRow, new_owner, owner_alive
from stepflow.errors import UsageError


@pytest.fixture
def db(tmp_path):
    with ScheduleDB(tmp_path / "home") as db:
        db.add_schedule(
            ScheduleRow(
                id="s1",
                name="nightly",
                pipeline="p",
                version=None,
                rule={"kind": "cron"},
                trigger=None,
                params={},
                catchup="none",
                max_catchup=10,
                overlap="skip",
                paused=False,
                created=0.0,
                cursor=0.0,
                last_seen=None,
                last_poll=None,
                description=None,
            )
        )
        yield db


def dead_owner() -> str:
    """The owner string of a process that has exited."""
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    import socket

    return f"{socket.gethostname()}:{proc.stdout.strip()}:gone"


def test_a_tick_is_claimed_once(db):
    """The second claim of the same tick inserts nothing; the cursor moves with the claim."""
    made = db.claim("s1", [("2026-03-29T01:00:00Z", 1.0, "claimed")], owner="a", cursor=5.0)
    assert [t.tick for t in made] == ["2026-03-29T01:00:00Z"]
    assert db.claim("s1", [("2026-03-29T01:00:00Z", 1.0, "claimed")], owner="b") == []
    assert db.tick("s1", "2026-03-29T01:00:00Z").owner == "a"
    assert db.schedule("nightly").cursor == 5.0


def test_concurrent_claims_one_winner(tmp_path, db):
    """Eight threads with their own connections race for the same ten ticks: each tick is
    won by exactly one of them."""
    keys = [(f"t{i}", float(i), "claimed") for i in range(10)]
    won: dict[str, list[str]] = {}
    barrier = threading.Barrier(8)

    def claim(name):
        with ScheduleDB(tmp_path / "home") as mine:
            barrier.wait()
            won[name] = [t.tick for t in mine.claim("s1", keys, owner=name)]

    threads = [threading.Thread(target=claim, args=(f"o{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    claimed = [k for ticks in won.values() for k in ticks]
    assert sorted(claimed) == sorted(k for k, _, _ in keys)


def test_dead_holder_is_resumed_not_recreated(db):
    """A claim whose holder exited is taken over: the same row, its attempts kept."""
    gone = dead_owner()
    assert not owner_alive(gone)
    db.claim("s1", [("k", 1.0, "claimed")], owner=gone)
    with db.transaction() as tx:
        tx.execute("UPDATE ticks SET state = 'running', attempts = 1")
    me = new_owner("me")
    assert owner_alive(me)
    resumed = db.resume_orphans(me)
    assert [(t.tick, t.owner, t.state, t.attempts) for t in resumed] == [("k", me, "claimed", 1)]
    assert "was gone" in resumed[0].detail
    assert len(db.ticks("s1")) == 1
    assert db.start_tick("s1", "k", owner=me)
    assert db.tick("s1", "k").attempts == 2
    # A live holder's tick is left alone.
    assert db.resume_orphans(new_owner("other")) == []


def test_gives_up_after_max_attempts(db):
    gone = dead_owner()
    db.claim("s1", [("k", 1.0, "running")], owner=gone)
    with db.transaction() as tx:
        tx.execute("UPDATE ticks SET attempts = 3")
    assert db.resume_orphans(new_owner("me")) == []
    tick = db.tick("s1", "k")
    assert tick.state == "failed"
    assert "gave up after 3 attempts" in tick.detail


def test_released_ticks_are_resumed(db):
    """A daemon that stops gives its ticks back; the next takes them."""
    me = new_owner("a")
    db.claim("s1", [("k", 1.0, "claimed")], owner=me)
    assert db.release(me) == 1
    assert db.tick("s1", "k").owner is None
    assert [t.tick for t in db.resume_orphans(new_owner("b"))] == ["k"]


def test_take_over_needs_the_expected_holder(db):
    db.claim("s1", [("k", 1.0, "claimed")], owner="daemon")
    assert not db.take_over("s1", "k", owner="child", expect="someone-else")
    assert db.take_over("s1", "k", owner="child", expect="daemon")
    assert db.tick("s1", "k").owner == "child"


def test_queued_promoted_when_idle(db):
    live = new_owner("x")
    db.claim("s1", [("a", 1.0, "claimed"), ("b", 2.0, "queued"), ("c", 3.0, "queued")], owner=live)
    assert db.promote_queued("s1", live) is None  # "a" is still active
    db.finish_tick("s1", "a", owner=live, state="succeeded", run_id="r1")
    assert db.promote_queued("s1", live).tick == "b"


def test_published_versions(db):
    row, new = db.publish("p", "h1", {"target": "f.py:p"}, None)
    assert (row.version, new) == (1, True)
    assert db.publish("p", "h1", {"target": "f.py:p"}, "again")[0].version == 1
    assert db.publish("p", "h2", {"target": "f.py:p"}, None)[0].version == 2
    assert db.published("p").version == 2
    with pytest.raises(UsageError, match="has no version 7; versions: 1, 2"):
        db.published("p", 7)
    with pytest.raises(UsageError, match="no pipeline named 'q' is published; published pipe"):
        db.published("q")


def test_unknown_and_duplicate_schedule(db):
    with pytest.raises(UsageError, match="no schedule named 'x'; schedules: nightly"):
        db.schedule("x")
    with pytest.raises(UsageError, match="exists already"):
        db.add_schedule(db.schedule("nightly"))


def _files(folder):
    """Every file under ``folder`` with its size and modification time."""
    return {
        p.relative_to(folder): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
    }


class TestReadOnly:
    """``ScheduleDB(home, read_only=True)``: for a reader that only shows (``stepflow ui``)."""

    def test_a_home_without_schedules_reads_empty_and_stays_so(self, tmp_path):
        home = tmp_path / "home"
        home.mkdir(mode=0o700)
        with ScheduleDB(home, read_only=True) as db:
            assert db.schedules() == [] and db.published_list() == []
        assert list(home.iterdir()) == []

    def test_reads_what_a_closed_writer_left_without_touching_a_file(self, db, tmp_path):
        db.publish("p", "h1", {"target": "f.py:p"}, None)
        db.close()
        home = tmp_path / "home"
        before = _files(home)
        assert not (home / "schedules.db-wal").exists()  # no writer has it open
        with ScheduleDB(home, read_only=True) as reader:
            assert [s.name for s in reader.schedules()] == ["nightly"]
            assert reader.published("p").version == 1
        assert _files(home) == before

    def test_sees_what_an_open_writer_committed(self, db, tmp_path):
        db.publish("p", "h1", {"target": "f.py:p"}, None)  # the writer stays open
        with ScheduleDB(tmp_path / "home", read_only=True) as reader:
            assert reader.published("p").content_hash == "h1"
            db.publish("p", "h2", {"target": "f.py:p"}, None)
            assert reader.published("p").version == 2

    def test_writes_are_refused_with_a_clear_error(self, db, tmp_path):
        with (
            ScheduleDB(tmp_path / "home", read_only=True) as reader,
            pytest.raises(UsageError, match="open read-only here"),
        ):
            reader.set_paused("nightly", True)
        assert db.schedule("nightly").paused is False

    def test_a_newer_schema_is_refused(self, db, tmp_path):
        with db.transaction() as tx:
            tx.execute("PRAGMA user_version = 99")
        with pytest.raises(UsageError, match="newer stepflow"):
            ScheduleDB(tmp_path / "home", read_only=True)
