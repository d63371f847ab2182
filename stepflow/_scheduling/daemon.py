"""``stepflow scheduler serve``: claim due ticks, and run each as ``stepflow run PUB --tick``.

Each pass, as of the clock's instant:

1. every active timed schedule's due fire times (:func:`~stepflow._scheduling.schedules.due_ticks`)
   are claimed by inserting their rows, with the schedule's cursor moved in the same
   transaction; a data trigger whose poll is due is looked at, and a change claims one tick;
2. ticks whose holder died (or released them on stopping) are resumed;
3. a queued tick is promoted when its schedule has no active tick;
4. every tick this daemon holds and has not started is run in a child process, which takes
   the tick over (``STEPFLOW_TICK_HOLDER``) and records its run in it.

The runs are child processes so that each imports its own published version, and a crashing
run cannot take the daemon down; on Linux each dies with the daemon (a parent-death signal),
so a daemon killed with ``kill -9`` leaves no run going on that the next daemon would repeat.
SIGTERM (or Ctrl-C) stops the daemon cleanly: it claims nothing more, interrupts its runs,
which give their ticks back, and exits 0; the next daemon resumes those ticks.

The clock is injectable: ``--now ISO`` starts it at that instant (it then advances in real
time), so tests and replays drive the calendar without waiting for it.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import attrs

from stepflow._scheduling.recurrence import format_instant
from stepflow._scheduling.schedules import DEFAULT_GRACE, due_ticks, observe, tick_key
from stepflow._scheduling.ticks import HOLDER_ENV
from stepflow._storage.scheduledb import ScheduleDB, ScheduleRow, TickRow, new_owner

if TYPE_CHECKING:
    from stepflow._config import Config

__all__ = ["Clock", "Scheduler"]


@attrs.define
class Clock:
    """Now, in UTC: the real time, shifted so that it read ``start`` when made."""

    offset: timedelta = timedelta(0)

    @classmethod
    def starting_at(cls, start: datetime | None) -> Clock:
        if start is None:
            return cls()
        return cls(start - datetime.now(UTC))

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset


class Scheduler:
    """One daemon on one home."""

    def __init__(
        self,
        config: Config,
        *,
        clock: Clock | None = None,
        grace: timedelta = DEFAULT_GRACE,
        interval: float = 5.0,
        say: Callable[[str], None] | None = None,
        child_args: tuple[str, ...] = (),
    ) -> None:
        self.config = config
        self.clock = clock or Clock()
        self.grace = grace
        self.interval = interval
        self.say = say or (lambda text: print(text, flush=True))
        self.owner = new_owner(uuid.uuid4().hex[:8])
        self.child_args = child_args
        #: (schedule id, tick) → the run's process
        self.children: dict[tuple[str, str], subprocess.Popen[bytes]] = {}
        self.stopping = False
        self.started = 0

    # --- one pass ------------------------------------------------------------------------

    def claim_due(self, db: ScheduleDB, now: datetime, *, poll_all: bool = False) -> None:
        for sched in db.schedules():
            if sched.paused:
                continue
            try:
                if sched.rule is not None:
                    self._claim_timed(db, sched, now)
                elif sched.trigger is not None:
                    poll = float(sched.trigger.get("poll", 60.0))
                    last = sched.last_poll
                    if poll_all or last is None or now.timestamp() >= last + poll:
                        self._poll(db, sched, now)
            except Exception as exc:
                # One schedule's trouble (a locked database, a store that does not answer)
                # must not stop the others; the next pass tries again.
                self.say(f"schedule {sched.name}: {type(exc).__name__}: {exc}")

    def _claim_timed(self, db: ScheduleDB, sched: ScheduleRow, now: datetime) -> None:
        due = due_ticks(sched, now, grace=self.grace)
        if due.missed:
            self.say(
                f"schedule {sched.name}: {due.missed} fire time(s) missed and skipped "
                f"(catch-up policy {sched.catchup})"
            )
        rows = []
        busy = bool(db.active_ticks(sched.id))
        for i, instant in enumerate(due.ticks):
            rows.append((tick_key(instant), instant.timestamp(), self._state(sched, busy, i)))
        made = db.claim(sched.id, rows, owner=self.owner, cursor=now.timestamp())
        self._report(sched, made)

    def _state(self, sched: ScheduleRow, busy: bool, index: int) -> str:
        if sched.overlap == "allow":
            return "claimed"
        if busy:
            return "skipped" if sched.overlap == "skip" else "queued"
        # Fire times caught up together run one after another, oldest first.
        return "claimed" if index == 0 else "queued"

    def _poll(self, db: ScheduleDB, sched: ScheduleRow, now: datetime) -> None:
        assert sched.trigger is not None
        try:
            seen = observe(sched.trigger, config=self.config)
        except Exception as exc:  # a store that does not answer must not stop the daemon
            self.say(f"schedule {sched.name}: could not look at its trigger: {exc}")
            return
        rows = []
        if seen is not None and seen != sched.last_seen:
            # Everything that changed since the last poll makes this one tick. Files can
            # change back to an earlier state, so a change's key also holds when it was seen;
            # the compare-and-set on last_seen keeps two daemons from both claiming it.
            key = seen if seen.startswith("dataset:") else f"{seen}:{tick_key(now)}"
            busy = bool(db.active_ticks(sched.id))
            rows.append((key, now.timestamp(), self._state(sched, busy, 0)))
        made = db.claim(
            sched.id,
            rows,
            owner=self.owner,
            last_seen=seen or "",
            last_poll=now.timestamp(),
            expect_seen=(sched.last_seen,),
        )
        self._report(sched, made)

    def _report(self, sched: ScheduleRow, made: list[TickRow]) -> None:
        for tick in made:
            self.say(f"schedule {sched.name}: tick {tick.tick} {tick.state}")
            if tick.state == "skipped":
                with ScheduleDB(self.config.home) as db:
                    db.finish_tick(
                        sched.id,
                        tick.tick,
                        owner=self.owner,
                        state="skipped",
                        detail="overlap: a run of this schedule was still running",
                    )

    def start_ready(self, db: ScheduleDB) -> None:
        for tick in db.resume_orphans(self.owner):
            self.say(f"tick {tick.tick}: resumed ({tick.detail})")
        schedules = {s.id: s for s in db.schedules()}
        for sid in schedules:
            db.promote_queued(sid, self.owner)
        for tick in db.ticks(states=("claimed",)):
            if tick.owner != self.owner or (tick.schedule_id, tick.tick) in self.children:
                continue
            sched = schedules.get(tick.schedule_id)
            if sched is None:  # deleted meanwhile
                db.finish_tick(
                    tick.schedule_id,
                    tick.tick,
                    owner=self.owner,
                    state="skipped",
                    detail="its schedule was deleted",
                )
                continue
            self._launch(sched, tick)

    def _launch(self, sched: ScheduleRow, tick: TickRow) -> None:
        command = [
            sys.executable,
            "-m",
            "stepflow",
            "run",
            sched.pipeline_ref,
            "--tick",
            f"{sched.name}@{tick.tick}",
            "--home",
            str(self.config.home),
            *self.child_args,
        ]
        env = {**os.environ, HOLDER_ENV: self.owner}
        child = subprocess.Popen(
            command, env=env, preexec_fn=functools.partial(_die_with_parent, os.getpid())
        )
        self.children[(tick.schedule_id, tick.tick)] = child
        self.started += 1
        self.say(f"schedule {sched.name}: tick {tick.tick} started (pid {child.pid})")

    def reap(self) -> None:
        for key, child in list(self.children.items()):
            code = child.poll()
            if code is None:
                continue
            del self.children[key]
            self.say(f"tick {key[1]}: its run exited with {code}")
            with ScheduleDB(self.config.home) as db:
                # A run that exited before taking its tick over (the published version could
                # not be loaded, a bad parameter) would otherwise be started again and again.
                db.finish_tick(
                    key[0],
                    key[1],
                    owner=self.owner,
                    state="failed",
                    detail=f"its run exited with {code} before it started",
                )

    # --- the loop ------------------------------------------------------------------------

    def run_once(self) -> int:
        """Claim what is due now, run it (and what it queued), and return when all is done."""
        with ScheduleDB(self.config.home) as db:
            self.claim_due(db, self.clock.now(), poll_all=True)
            while not self.stopping:
                self.start_ready(db)
                if not self.children:
                    break
                self._wait_children()
        return 0

    def serve(self) -> int:
        """Until stopped: a pass every ``interval`` seconds."""
        self.say(
            f"scheduler {self.owner} serving {self.config.home} "
            f"(now {format_instant(self.clock.now())})"
        )
        with ScheduleDB(self.config.home) as db:
            while not self.stopping:
                self.claim_due(db, self.clock.now())
                self.start_ready(db)
                self.reap()
                self._sleep(self.interval)
        return 0

    def _wait_children(self) -> None:
        while self.children and not self.stopping:
            self.reap()
            if self.children:
                time.sleep(0.1)

    def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < end:
            self.reap()
            time.sleep(min(0.1, max(0.0, end - time.monotonic())))

    def stop(self, *_: Any) -> None:
        self.stopping = True

    def shutdown(self) -> None:
        """Interrupt the runs (they give their ticks back), then give back what is held."""
        for child in self.children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in self.children.values():
            try:
                child.wait(timeout=60)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        self.children.clear()
        with ScheduleDB(self.config.home) as db:
            released = db.release(self.owner)
        if released:
            self.say(f"scheduler stopped; {released} claimed tick(s) left for the next daemon")
        else:
            self.say("scheduler stopped")


def _die_with_parent(parent: int) -> None:
    """In the child: get SIGTERM when the daemon dies, however it dies (Linux)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the daemon died before the signal was asked for
        os._exit(1)
