"""Single-flight leases: exclusive across processes and threads, released when the holder dies."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from stepflow._storage import locks
from stepflow._storage.locks import LEASE_FILE, key_lock

KEY = "0123456789abcdef0123456789abcdef"
OTHER = "fedcba9876543210fedcba9876543210"

#: holds the lease on argv[2] in home argv[1] for argv[3] seconds, says when it has it, and
#: writes ``<home>.done`` just before letting go
HOLDER = """
import sys, time
from pathlib import Path
from stepflow._storage.locks import key_lock
with key_lock(Path(sys.argv[1]), sys.argv[2]) as waited:
    print("held", waited, flush=True)
    time.sleep(float(sys.argv[3]))
    Path(sys.argv[1] + ".done").write_text("done")
"""


@contextlib.contextmanager
def holder(home: Path, key: str, seconds: float) -> Iterator[subprocess.Popen[str]]:
    """Another process holding ``key``'s lease; killed at the end of the block at the latest."""
    with subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(home), key, str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "held False"
            yield proc
        finally:
            proc.kill()


def test_uncontended_lease_does_not_wait(tmp_path):
    with key_lock(tmp_path, KEY) as waited:
        assert waited is False
        assert (tmp_path / LEASE_FILE).is_file()
    # Released: taking it again does not wait either.
    with key_lock(tmp_path, KEY) as waited:
        assert waited is False


def test_lease_file_is_owner_only(tmp_path):
    home = tmp_path / "home"
    with key_lock(home, KEY):
        pass
    assert (home / LEASE_FILE).stat().st_mode & 0o077 == 0
    assert home.stat().st_mode & 0o077 == 0


def test_another_process_holding_the_key_is_waited_for(tmp_path):
    with holder(tmp_path, KEY, 0.5), key_lock(tmp_path, KEY) as waited:
        assert waited is True
        # The holder finished its work before we got the lease.
        assert Path(f"{tmp_path}.done").read_text() == "done"


def test_other_keys_are_not_blocked(tmp_path):
    with holder(tmp_path, KEY, 30), key_lock(tmp_path, OTHER) as waited:
        assert waited is False


def test_a_killed_holder_releases_the_lease(tmp_path):
    """kill -9 of the holder: the waiter gets the lease, no deadlock."""
    got = threading.Event()

    def wait_for_it() -> None:
        with key_lock(tmp_path, KEY) as waited:
            assert waited is True
            got.set()

    with holder(tmp_path, KEY, 300) as proc:
        waiter = threading.Thread(target=wait_for_it, daemon=True)
        waiter.start()
        # Still held: the waiter must be blocked.
        assert not got.wait(0.3)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert got.wait(30), "the lease of a killed holder was never released"
    waiter.join(5)


def test_threads_of_one_process_exclude_each_other(tmp_path):
    """Record locks belong to the process, so threads need (and get) their own exclusion."""
    inside = 0
    most = 0
    waits: list[bool] = []
    guard = threading.Lock()

    def work() -> None:
        nonlocal inside, most
        with key_lock(tmp_path, KEY) as waited:
            with guard:
                inside += 1
                most = max(most, inside)
                waits.append(waited)
            time.sleep(0.02)
            with guard:
                inside -= 1

    threads = [threading.Thread(target=work) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert most == 1
    assert len(waits) == 6 and waits.count(True) >= 1
    assert locks._queues == {}  # nothing left behind once every thread is done


def test_a_deleted_home_gets_a_new_lease_file(tmp_path):
    """``rm -rf .stepflow`` between runs: this process and a new one lock the same file."""
    home = tmp_path / "home"
    with key_lock(home, KEY):
        pass
    shutil.rmtree(home)
    with holder(home, KEY, 0.5), key_lock(home, KEY) as waited:
        assert waited is True
        assert Path(f"{home}.done").read_text() == "done"


def test_descriptors_do_not_pile_up(tmp_path):
    """A process that runs in many homes (a test suite) keeps only a few lease files open."""
    before = len(os.listdir("/dev/fd"))
    for i in range(40):
        with key_lock(tmp_path / f"home{i}", KEY):
            pass
    assert len(os.listdir("/dev/fd")) - before <= locks._IDLE_MAX + 1


#: prints whether the lease on argv[2] in home argv[1] is free right now (without waiting)
PROBE = """
import fcntl, os, sys
from stepflow._storage.locks import LEASE_FILE, _offset
fd = os.open(os.path.join(sys.argv[1], LEASE_FILE), os.O_RDWR)
try:
    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, _offset(sys.argv[2]))
    print("free")
except OSError:
    print("held")
"""


def probe(home: Path, key: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(home), key], capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def test_another_spelling_of_the_home_does_not_drop_held_leases(tmp_path):
    """Closing any descriptor of a file drops every record lock the process holds on it, so
    a second path to the same lease file must not open (and later close) a second one."""
    home = tmp_path / "home"
    (home / "sub").mkdir(parents=True)
    with key_lock(home, KEY):
        assert probe(home, KEY) == "held"
        with key_lock(home / "sub" / "..", OTHER):
            assert probe(home, OTHER) == "held"
        # Many other homes meanwhile: idle descriptors are closed, never one in use.
        for i in range(10):
            with key_lock(tmp_path / f"other{i}", OTHER):
                pass
        assert probe(home, KEY) == "held"
        assert probe(home, OTHER) == "free"
    assert probe(home, KEY) == "free"


class TestKeyLease:
    """The two-step lease the parallel run loop takes: try without waiting, wait elsewhere."""

    def test_try_take_never_waits_for_another_thread(self, tmp_path):
        lease = locks.KeyLease(tmp_path, KEY)
        assert lease.try_take() is True
        other = locks.KeyLease(tmp_path, KEY)
        assert other.try_take() is False  # held here: refused at once, nothing taken
        assert locks.KeyLease(tmp_path, OTHER).try_take() is True
        lease.give_back()
        assert other.try_take() is True
        other.give_back()
        other.give_back()  # not held any more: nothing to do

    def test_try_take_never_waits_for_another_process(self, tmp_path):
        with holder(tmp_path, KEY, 60):
            lease = locks.KeyLease(tmp_path, KEY)
            assert lease.try_take() is False
        # The holder was killed: free again, and nothing of the refused try is left.
        assert lease.try_take() is True
        lease.give_back()
        with key_lock(tmp_path, KEY) as waited:
            assert waited is False

    def test_take_waits_and_another_thread_gives_back(self, tmp_path):
        """A lease taken in one thread is given back from another (the loop resumes a step
        on whichever dispatch thread is free)."""
        first = locks.KeyLease(tmp_path, KEY)
        assert first.try_take()
        second = locks.KeyLease(tmp_path, KEY)
        waited: list[bool] = []
        waiter = threading.Thread(target=lambda: waited.append(second.take()))
        waiter.start()
        time.sleep(0.2)
        assert waited == []  # still waiting
        threading.Thread(target=first.give_back).start()
        waiter.join(timeout=30)
        assert waited == [True]
        threading.Thread(target=second.give_back).start()
        deadline = time.monotonic() + 30
        while not (free := locks.KeyLease(tmp_path, KEY)).try_take():
            assert time.monotonic() < deadline, "the lease was not given back"
            time.sleep(0.01)
        free.give_back()
