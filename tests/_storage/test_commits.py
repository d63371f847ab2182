"""Group commit: quick steps' records share a transaction; leases wait for the commit."""

from __future__ import annotations

import threading
import time

import diskcache
import pytest

from stepflow._storage.artifacts import ArtifactRef
from stepflow._storage.commits import GroupCommit
from stepflow._storage.index import CacheIndex, CacheRecord
from stepflow._storage.locks import Lease, key_lock

WINDOW = 0.2


def record(n: int) -> CacheRecord:
    key = f"{n:02x}" + "0" * 30
    ref = ArtifactRef(f"{'e' * 32}.pickle", "e" * 32, "pickle", 10, "f" * 32)
    return CacheRecord(
        key=key,
        step=f"s{n}",
        pipeline="p",
        run_id="run-1",
        created=time.time(),
        outputs={f"s{n}": ref},
    )


@pytest.fixture
def home(tmp_path):
    return tmp_path / "home"


@pytest.fixture
def commits(home):
    group = GroupCommit(CacheIndex(home / "index"), home, window=WINDOW)
    yield group
    group.close()


@pytest.fixture
def committed(home, commits):
    """Whether a record is in the index as another process would read it (own connection)."""
    other = diskcache.Cache(str(home / "index"))

    def check(rec: CacheRecord) -> bool:
        return other.get(f"result:{rec.key}") is not None

    yield check
    other.close()


def test_a_quick_record_waits_and_flush_commits_it(commits, committed):
    rec = record(1)
    lease = commits.lease(rec.key)
    commits.add(rec, lease, elapsed=0.0)
    assert not committed(rec)
    commits.flush()
    assert committed(rec)


def test_a_slow_step_is_committed_at_once_with_those_waiting(commits, committed):
    quick, slow = record(1), record(2)
    commits.add(quick, None, elapsed=0.0)
    commits.add(slow, None, elapsed=WINDOW)
    assert committed(quick) and committed(slow)


def test_the_timer_commits_while_a_long_step_runs(commits, committed):
    """Nothing else ends for ``window`` seconds: the records still go in, and their leases
    are released."""
    rec = record(1)
    commits.add(rec, commits.lease(rec.key), elapsed=0.0)
    deadline = time.monotonic() + 30
    while not committed(rec) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert committed(rec)
    with key_lock(commits.home, rec.key) as waited:
        assert waited is False


def test_the_lease_is_held_until_the_record_is_committed(home, commits, committed):
    """Single flight: a waiter that gets the lease finds the result in the index."""
    rec = record(1)
    commits.add(rec, commits.lease(rec.key), elapsed=0.0)
    seen: list[tuple[bool, bool]] = []

    def wait_for_lease() -> None:
        lease = Lease(home, rec.key)
        seen.append((lease.waited, committed(rec)))
        lease.release()

    waiter = threading.Thread(target=wait_for_lease)
    waiter.start()
    waiter.join(30)
    assert seen == [(True, True)]


def test_a_failed_commit_raises_and_releases_the_leases(home, tmp_path):
    class BrokenIndex(CacheIndex):
        def put_many(self, records: list[CacheRecord]) -> None:
            raise OSError("disk full")

    group = GroupCommit(BrokenIndex(tmp_path / "index"), home, window=WINDOW)
    rec = record(1)
    group.add(rec, group.lease(rec.key), elapsed=0.0)
    with pytest.raises(OSError, match="disk full"):
        group.flush()
    with key_lock(home, rec.key) as waited:
        assert waited is False
    group.flush()  # nothing left waiting


def test_a_failed_timer_commit_is_retried_by_the_next_flush(home, tmp_path):
    class FlakyIndex(CacheIndex):
        failures = 1
        committed: list[str] = []

        def put_many(self, records: list[CacheRecord]) -> None:
            if self.failures:
                self.failures -= 1
                raise OSError("locked")
            self.committed.extend(r.key for r in records)

    index = FlakyIndex(tmp_path / "index")
    group = GroupCommit(index, home, window=0.01)
    rec = record(1)
    group.add(rec, group.lease(rec.key), elapsed=0.0)
    deadline = time.monotonic() + 30
    while index.failures and time.monotonic() < deadline:
        time.sleep(0.01)
    assert index.failures == 0 and index.committed == []
    # The timer puts the records back after its failure; a flush then commits them once.
    while not index.committed and time.monotonic() < deadline:
        group.flush()
        time.sleep(0.01)
    assert index.committed == [rec.key]
    with key_lock(home, rec.key) as waited:
        assert waited is False
