"""Group commit: the records of quick steps share one index transaction.

A step's result becomes visible to other runs when its record is committed to the index,
and its single-flight lease is released only after that, so a run waiting for the key finds
the result when it gets the lease. A transaction of its own cost each step about 0.1 ms on
a first run, a fifth of the budget, so records of quick steps wait for each other and go
in together:

- a record whose step took ``window`` seconds or more is committed at once, with any that
  wait (a long step's cost dwarfs a commit's, and its result should not wait on others);
- otherwise it waits until ``window`` seconds after the first waiting record was added,
  then all of them are committed, either when the next step ends or by a timer, whichever
  comes first, so a long step that starts meanwhile delays nothing;
- everything waiting is committed when the run ends, fails or is interrupted.

An index that publishes its records to a shared object store commits each at once: there a
step's upload costs far more than a commit, and a record should be shared while the store
is known to answer.

What this gives up: a process killed with ``kill -9`` loses the records still waiting,
at most ``window`` seconds of quick steps' work, which the next run computes again (their
objects are in the store; the index never points at a missing one). A run waiting for one
of their keys waits that much longer.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from stepflow._storage.index import CacheIndex, CacheRecord
from stepflow._storage.locks import Lease

__all__ = ["WINDOW_S", "GroupCommit"]

#: how long a quick step's record may wait for others
WINDOW_S = 0.05


class GroupCommit:
    """Commits cache records to ``index`` in groups and releases their leases after."""

    def __init__(self, index: CacheIndex, home: Path, *, window: float = WINDOW_S) -> None:
        self.index = index
        self.home = home
        self.window = 0.0 if index.shared else window
        self._lock = threading.Lock()
        self._records: list[CacheRecord] = []
        self._leases: list[Lease] = []
        #: when the first waiting record was added (``time.monotonic``)
        self._since = 0.0
        self._timer: threading.Timer | None = None

    def lease(self, key: str) -> Lease:
        """Take the single-flight lease on ``key`` (hand it to ``add`` or ``release`` it)."""
        return Lease(self.home, key)

    def add(self, record: CacheRecord, lease: Lease | None, *, elapsed: float) -> None:
        """Commit ``record`` now or soon; ``lease`` is released once it is committed."""
        now = time.monotonic()
        with self._lock:
            if not self._records:
                self._since = now
            self._records.append(record)
            if lease is not None:
                self._leases.append(lease)
            if elapsed < self.window and now - self._since < self.window:
                if self._timer is None:
                    self._timer = threading.Timer(self.window, self._on_timer)
                    self._timer.daemon = True
                    self._timer.start()
                return
        self.flush()

    def flush(self) -> None:
        """Commit every waiting record, then release their leases (also when the commit
        fails: the error propagates, and nobody is left waiting on a lease)."""
        # The lock is held through the commit, so that a flush also waits for a commit the
        # timer has begun: when ``close`` returns, everything is in the index.
        with self._lock:
            timer, self._timer = self._timer, None
            if timer is not None:
                timer.cancel()
            records, self._records = self._records, []
            leases, self._leases = self._leases, []
            try:
                if records:
                    self.index.put_many(records)
            finally:
                for lease in leases:
                    lease.release()

    def _on_timer(self) -> None:
        with self._lock:
            if self._timer is not threading.current_thread():
                return  # flushed (and replaced) meanwhile
            self._timer = None
            try:
                self.index.put_many(self._records)
            except Exception:
                # No one to report to in this thread: the records stay, and the run's
                # next flush tries again and raises where the run can report it.
                return
            leases, self._leases = self._leases, []
            self._records = []
            for lease in leases:
                lease.release()

    def close(self) -> None:
        self.flush()
