"""``while_busy`` against a real SQLite lock held by another connection."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from stepflow._storage.sqlitebusy import while_busy


@pytest.fixture
def locked_db(tmp_path):
    """A database another connection holds exclusively until ``release`` is set."""
    path = tmp_path / "x.db"
    holder = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    holder.execute("CREATE TABLE t (v)")
    holder.execute("BEGIN EXCLUSIVE")
    release = threading.Event()

    def hold() -> None:
        release.wait()
        holder.execute("COMMIT")

    thread = threading.Thread(target=hold)
    thread.start()
    yield path, release
    release.set()
    thread.join()
    holder.close()


def _reader(path):
    # timeout=0: no busy handler, so SQLite answers "database is locked" at once, as it
    # does for the statements the busy timeout does not cover.
    db = sqlite3.connect(str(path), timeout=0, isolation_level=None)
    return lambda: db.execute("SELECT count(*) FROM t").fetchone()[0]


def test_retries_until_the_lock_is_released(locked_db):
    path, release = locked_db
    read = _reader(path)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        read()
    threading.Timer(0.2, release.set).start()
    assert while_busy(read, seconds=30) == 0


def test_gives_up_after_its_time_with_the_last_error(locked_db):
    path, _ = locked_db
    # The holder keeps its lock until teardown: only giving up ends this call.
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        while_busy(_reader(path), seconds=0.1)


def test_other_errors_are_not_retried(tmp_path):
    calls = []

    def broken() -> None:
        calls.append(1)
        raise sqlite3.OperationalError("no such table: t")

    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        while_busy(broken)
    assert calls == [1]
