"""``stepflow run PUB --tick SCHEDULE[@KEY]``: run one tick of a schedule, claiming its row.

The same claim serves the daemon and the exported cron and systemd timers: whoever inserts
the tick's row runs it; anyone else finds it there and does nothing. A run the daemon starts
gets the tick handed over (the daemon's owner string in ``STEPFLOW_TICK_HOLDER``); a timer
inserts the row itself. A tick whose holder died is taken over (resumed), never inserted
again.

Parameters of the schedule may name the tick: ``{tick}`` becomes its fire time in UTC
(``20260329T0100Z``, usable in file names) and ``{schedule}`` the schedule's name.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import attrs

from stepflow._scheduling.recurrence import format_instant, parse_instant, rule_from_dict
from stepflow._scheduling.schedules import latest_fire_time, parse_tick, tick_key
from stepflow._storage.scheduledb import ScheduleDB, ScheduleRow, new_owner, owner_alive
from stepflow.errors import UsageError

if TYPE_CHECKING:
    from stepflow._config import Config

__all__ = ["HOLDER_ENV", "TickSession", "acquire_tick", "expand"]

#: the daemon hands the tick it claimed to the run it starts through this variable
HOLDER_ENV = "STEPFLOW_TICK_HOLDER"
_TERMINAL = ("succeeded", "failed", "skipped")


@attrs.define
class TickSession:
    """A tick held by this process, or why there is nothing to run (``reason``)."""

    schedule: ScheduleRow
    key: str
    owner: str
    fire_time: float = 0.0
    attempt: int = 0
    #: set when this process must not run the tick (already run, held elsewhere, skipped)
    reason: str | None = None

    @property
    def tags(self) -> dict[str, str]:
        tags = {
            "schedule": self.schedule.name,
            "tick": self.key,
            "tick_attempt": str(self.attempt),
        }
        kind, _, seen = self.key.partition(":")
        if kind == "dataset":
            tags["dataset"] = seen
        elif kind == "change":
            tags["change"] = seen.partition(":")[0]  # the files' fingerprint
        return tags

    def params(self) -> dict[str, str]:
        return {k: expand(v, self) for k, v in self.schedule.params.items()}

    def finish(self, state: str, *, run_id: str | None, config: Config) -> None:
        with ScheduleDB(config.home) as db:
            db.finish_tick(self.schedule.id, self.key, owner=self.owner, state=state, run_id=run_id)

    def release(self, *, config: Config, run_id: str | None = None) -> None:
        """Give the tick up unfinished (the run was interrupted): the next daemon resumes it."""
        with ScheduleDB(config.home) as db:
            db.finish_tick(
                self.schedule.id,
                self.key,
                owner=self.owner,
                state="claimed",
                run_id=run_id,
                detail="interrupted; resumed by the next daemon",
            )
            db.release(self.owner)


def expand(value: str, session: TickSession) -> str:
    """``{tick}`` and ``{schedule}`` in a parameter value; other braces are left alone."""
    stamp = datetime.fromtimestamp(session.fire_time, UTC).strftime("%Y%m%dT%H%MZ")
    return value.replace("{tick}", stamp).replace("{schedule}", session.schedule.name)


def acquire_tick(
    text: str,
    *,
    pipeline_ref: str,
    config: Config,
    now: datetime | None = None,
    wait: Callable[[float], None] = time.sleep,
) -> TickSession:
    """Claim (or take over) the tick ``text`` names for this process.

    :raises UsageError: an unknown schedule, a pipeline other than the schedule's, a key
        that is not one of the schedule's fire times.
    """
    from stepflow._scheduling.publishing import split_ref

    name, key = parse_tick(text)
    owner = new_owner(uuid.uuid4().hex[:8])
    with ScheduleDB(config.home) as db:
        sched = db.schedule(name)
        pub, version = split_ref(pipeline_ref)
        if pub != sched.pipeline or (version is not None and version != sched.version):
            raise UsageError(
                f"--tick {text!r}: schedule {name!r} runs {sched.pipeline_ref}, not "
                f"{pipeline_ref}; run `stepflow run {sched.pipeline_ref} --tick {text}`"
            )
        key, fire = _resolve_key(sched, key, now or datetime.now(UTC))
        if key is None:
            return TickSession(sched, "", owner, reason=fire_reason(sched, now))
        session = TickSession(sched, key, owner, fire_time=fire)
        holder = os.environ.get(HOLDER_ENV)
        if holder:
            if not db.take_over(sched.id, key, owner=owner, expect=holder):
                session.reason = f"tick {key} of schedule {name!r} is held by another process"
                return session
        elif sched.paused:
            session.reason = f"schedule {name!r} is paused (`stepflow schedule resume {name}`)"
            return session
        elif not _claim_here(db, sched, session, wait):
            return session
        if not db.start_tick(sched.id, key, owner=owner):
            session.reason = f"tick {key} of schedule {name!r} was taken over meanwhile"
            return session
        session.attempt = db.tick(sched.id, key).attempts
    return session


def fire_reason(sched: ScheduleRow, now: datetime | None) -> str:
    rule = rule_from_dict(dict(sched.rule or {}))
    upcoming = rule.fire_times(now or datetime.now(UTC), 1)
    first = f" (the first: {format_instant(upcoming[0])})" if upcoming else ""
    return f"no fire time of schedule {sched.name!r} is due yet{first}"


def _resolve_key(sched: ScheduleRow, key: str | None, now: datetime) -> tuple[str | None, float]:
    """The tick's key and fire time (the latest fire time at or before ``now`` without a
    key)."""
    if sched.rule is None:
        if key is None:
            raise UsageError(
                f"schedule {sched.name!r} runs on a data trigger; its ticks come from "
                f"`stepflow scheduler serve`, or give --tick {sched.name}@KEY"
            )
        return key, now.timestamp()
    rule = rule_from_dict(dict(sched.rule))
    start = rule.start_utc
    since = (start or datetime.fromtimestamp(sched.created, UTC)) - timedelta(microseconds=1)
    if key is None:
        found = latest_fire_time(rule, now, since=since)
        if found is None:
            return None, 0.0
        return tick_key(found), found.timestamp()
    instant = parse_instant(key, what="--tick time")
    nearest = rule.fire_times(instant - timedelta(microseconds=1), 1)
    if not nearest or nearest[0] != instant or instant <= since:
        after = rule.fire_times(instant, 2)
        hint = ", ".join(format_instant(t) for t in after)
        raise UsageError(
            f"--tick {sched.name}@{key}: {format_instant(instant)} is not a fire time of "
            f"schedule {sched.name!r} ({rule.describe()}); the next ones: {hint}"
        )
    return tick_key(instant), instant.timestamp()


def _claim_here(db: ScheduleDB, sched: ScheduleRow, session: TickSession, wait: Callable) -> bool:
    """Insert the tick's row, or take it over when its holder is gone; ``False`` (with the
    reason set) when there is nothing for this process to run."""
    key = session.key
    existing = db.find_tick(sched.id, key)
    if existing is None:
        active = [t for t in db.active_ticks(sched.id) if t.tick != key]
        state = "claimed"
        if active and sched.overlap == "skip":
            state = "skipped"
        elif active and sched.overlap == "queue":
            while db.active_ticks(sched.id):
                wait(1.0)
        made = db.claim(sched.id, [(key, session.fire_time, state)], owner=session.owner)
        if made and state == "skipped":
            db.finish_tick(
                sched.id,
                key,
                owner=session.owner,
                state="skipped",
                detail=f"overlap: tick {active[0].tick} was still running",
            )
            session.reason = f"tick {key} skipped: tick {active[0].tick} is still running"
            return False
        if made:
            return True
        existing = db.find_tick(sched.id, key)
        assert existing is not None
    if existing.state in _TERMINAL:
        run = f" (run {existing.run_id})" if existing.run_id else ""
        session.reason = f"tick {key} of schedule {sched.name!r} has {existing.state} already{run}"
        return False
    if existing.state != "queued" and owner_alive(existing.owner):
        session.reason = f"tick {key} of schedule {sched.name!r} is being run by {existing.owner}"
        return False
    if not db.take_over(sched.id, key, owner=session.owner, expect=existing.owner):
        session.reason = f"tick {key} of schedule {sched.name!r} was taken by another process"
        return False
    return True
