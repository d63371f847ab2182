"""Schedules: making them (checked before anything is stored), and deciding which ticks are
due at an instant.

Catch-up (``catchup``), for the fire times since a schedule was last looked at:

``none`` (default)
    only fire times at most ``grace`` old (the daemon's ``--grace``, 10 minutes by default)
    run; older ones were missed (no daemon was up) and are skipped.
``latest``
    the most recent fire time runs, however old; older ones are skipped.
``all``
    every fire time runs, oldest first, but at most ``max_catchup`` (default 10): the most
    recent ones.

Overlap (``overlap``), when a tick comes due while a run of the same schedule is active:
``skip`` (default) records the tick as skipped; ``queue`` runs it when the active run ends;
``allow`` runs it at once. Fire times caught up together run one after another, oldest first,
unless ``allow``.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import attrs

from stepflow._scheduling.recurrence import (
    CronRule,
    Recurrence,
    Rule,
    fire_times,
    format_instant,
    parse_instant,
    rule_from_dict,
)
from stepflow._storage.scheduledb import ScheduleDB, ScheduleRow
from stepflow.errors import UsageError

if TYPE_CHECKING:
    from stepflow._config import Config

__all__ = [
    "CATCHUP",
    "OVERLAP",
    "Due",
    "ScheduleInfo",
    "create_schedule",
    "due_ticks",
    "parse_tick",
    "schedule_info",
    "tick_key",
]

CATCHUP = ("none", "latest", "all")
OVERLAP = ("skip", "queue", "allow")
DEFAULT_GRACE = timedelta(minutes=10)
#: fire times further back than this are never looked at (a schedule left paused for years)
_HORIZON = timedelta(days=400)
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


def tick_key(instant: datetime) -> str:
    """The key of a timed tick: its fire time in UTC."""
    return format_instant(instant)


def parse_tick(text: str) -> tuple[str, str | None]:
    """``SCHEDULE`` or ``SCHEDULE@KEY`` (``--tick``)."""
    name, sep, key = text.partition("@")
    if not _NAME_RE.match(name) or (sep and not key):
        raise UsageError(
            f"--tick {text!r}: write --tick SCHEDULE (the tick due now) or "
            f"--tick SCHEDULE@2026-03-29T01:00:00Z"
        )
    return name, key or None


def _check_policy(name: str, value: str, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise UsageError(f"{name} {value!r} is not one of {', '.join(allowed)}")
    return value


def make_trigger(
    on_dataset: str | None, on_change: str | None, poll: float | None
) -> dict[str, Any] | None:
    if on_dataset and on_change:
        raise UsageError("give one data trigger: --on-dataset NAME or --on-change PATH")
    if poll is not None and not (on_dataset or on_change):
        raise UsageError("--poll goes with a data trigger (--on-dataset or --on-change)")
    if poll is not None and poll <= 0:
        raise UsageError(f"--poll must be a number of seconds above 0, got {poll}")
    if on_dataset:
        from stepflow._storage.registry_records import check_name

        check_name("--on-dataset: data set", on_dataset)
        return {"kind": "dataset", "name": on_dataset, "poll": poll or 60.0}
    if on_change:
        from stepflow._storage.watch import is_url

        # A local path is kept absolute: the daemon may run from another folder.
        path = on_change if is_url(on_change) else os.path.abspath(on_change)
        return {"kind": "change", "path": path, "poll": poll or 60.0}
    return None


def create_schedule(
    name: str,
    *,
    pipeline: str,
    rule: Rule | None = None,
    trigger: Mapping[str, Any] | None = None,
    params: Mapping[str, Any] | None = None,
    catchup: str = "none",
    max_catchup: int = 10,
    overlap: str = "skip",
    description: str | None = None,
    config: Config,
    now: datetime | None = None,
) -> ScheduleRow:
    """Check everything, then store the schedule (nothing is stored on a bad input).

    :raises UsageError: a bad name, an unknown pipeline or version, a parameter the pipeline
        does not take, no rule and no trigger (or both), bad policies.
    """
    from stepflow._scheduling.publishing import get_published, split_ref

    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise UsageError(
            f"schedule name {name!r} is not valid; use letters, digits, '_', '-' and '.'"
        )
    _check_policy("--catchup", catchup, CATCHUP)
    _check_policy("--overlap", overlap, OVERLAP)
    if isinstance(max_catchup, bool) or not isinstance(max_catchup, int) or max_catchup < 1:
        raise UsageError(f"--max-catchup must be a whole number >= 1, got {max_catchup!r}")
    if (rule is None) == (trigger is None):
        raise UsageError(
            "a schedule needs a time rule (--frequency ... or --cron ...) or a data trigger "
            "(--on-dataset NAME or --on-change PATH), and only one of them"
        )
    pub_name, version = split_ref(pipeline)
    found = get_published(pub_name, version, config=config)
    params = {str(k): v for k, v in (params or {}).items()}
    unknown = sorted(set(params) - set(found.params))
    if unknown:
        known = ", ".join(sorted(found.params)) or "none"
        raise UsageError(
            f"--param {unknown[0]}: published pipeline {found.ref} has no parameter "
            f"{unknown[0]!r}; its parameters: {known}"
        )
    now = now or datetime.now(UTC)
    rule_dict = None
    cursor = now
    if rule is not None:
        rule = rule.anchored(now)
        rule_dict = rule.to_dict()
        start = rule.start_utc
        # Fire times before the start never run; from the start on they are due.
        cursor = start - timedelta(microseconds=1) if start is not None else now
    last_seen = None
    if trigger is not None:
        trigger = dict(trigger)
        last_seen = observe(trigger, config=config)
    row = ScheduleRow(
        id=uuid.uuid4().hex[:16],
        name=name,
        pipeline=pub_name,
        version=version,
        rule=rule_dict,
        trigger=trigger,
        params={k: str(v) for k, v in params.items()},
        catchup=catchup,
        max_catchup=max_catchup,
        overlap=overlap,
        paused=False,
        created=now.timestamp(),
        cursor=cursor.timestamp(),
        last_seen=last_seen,
        last_poll=now.timestamp(),
        description=description,
    )
    with ScheduleDB(config.home) as db:
        db.add_schedule(row)
    return row


def observe(trigger: Mapping[str, Any], *, config: Config) -> str | None:
    """What a data trigger sees now: ``dataset:NAME@vN`` or ``change:<digest>`` (``None``:
    nothing there yet)."""
    if trigger["kind"] == "dataset":
        from stepflow._execution.store import open_configured_store
        from stepflow._storage.registry import Registry
        from stepflow.errors import NotRegisteredError

        store = open_configured_store(config)
        try:
            latest = Registry(store).dataset(trigger["name"])
        except NotRegisteredError:
            return None
        finally:
            store.close()
        return f"dataset:{latest.name}@v{latest.version}"
    from stepflow._storage.watch import fingerprint

    seen = fingerprint(trigger["path"], options=config.store_options)
    return None if seen.digest is None else f"change:{seen.digest}"


@attrs.frozen
class Due:
    """What an evaluation of one schedule found."""

    #: fire times to claim, oldest first
    ticks: tuple[datetime, ...]
    #: how many fire times since the cursor were skipped by the catch-up policy
    missed: int


def due_ticks(schedule: ScheduleRow, now: datetime, *, grace: timedelta = DEFAULT_GRACE) -> Due:
    """The fire times of a timed schedule in ``(cursor, now]`` that its catch-up policy runs."""
    assert schedule.rule is not None
    rule = rule_from_dict(dict(schedule.rule))
    cursor = datetime.fromtimestamp(schedule.cursor, UTC)
    if now <= cursor:
        return Due((), 0)
    floor = max(cursor, now - _HORIZON)
    keep = collections.deque(maxlen=schedule.max_catchup)
    on_time = []
    total = 0
    for instant in fire_times(rule, floor):
        if instant > now:
            break
        total += 1
        keep.append(instant)
        if now - instant <= grace:
            on_time.append(instant)
    if schedule.catchup == "all":
        chosen = tuple(keep)
    elif schedule.catchup == "latest":
        chosen = tuple(keep)[-1:]
    else:
        chosen = tuple(on_time)
    return Due(chosen, total - len(chosen))


def latest_fire_time(rule: Rule, now: datetime, *, since: datetime) -> datetime | None:
    """The last fire time at or before ``now`` and after ``since``."""
    found = None
    for instant in fire_times(rule, max(since, now - _HORIZON)):
        if instant > now:
            break
        found = instant
    return found


@attrs.frozen
class ScheduleInfo:
    """A schedule as ``schedule show`` and ``schedule list`` present it."""

    row: ScheduleRow
    rule: Rule | None
    next_fire_times: tuple[datetime, ...]
    ticks: tuple[Any, ...]

    def to_dict(self) -> dict[str, Any]:
        row = self.row
        tz = self.rule.tz if self.rule is not None else None
        return {
            "name": row.name,
            "pipeline": row.pipeline_ref,
            "rule": None if row.rule is None else dict(row.rule),
            "trigger": None if row.trigger is None else dict(row.trigger),
            "describe": describe(row),
            "params": dict(row.params),
            "catchup": row.catchup,
            "max_catchup": row.max_catchup,
            "overlap": row.overlap,
            "paused": row.paused,
            "created": format_instant(datetime.fromtimestamp(row.created, UTC)),
            "description": row.description,
            "next": [
                {"local": format_instant(t, tz), "utc": format_instant(t)}
                for t in self.next_fire_times
            ],
            "last_runs": [
                {
                    "tick": t.tick,
                    "fire_time": format_instant(datetime.fromtimestamp(t.fire_time, UTC)),
                    "state": t.state,
                    "run_id": t.run_id,
                    "attempts": t.attempts,
                    "detail": t.detail,
                }
                for t in self.ticks
            ],
        }


def describe(row: ScheduleRow) -> str:
    if row.rule is not None:
        return rule_from_dict(dict(row.rule)).describe()
    trigger = row.trigger or {}
    what = (
        f"data set {trigger.get('name')}"
        if trigger.get("kind") == "dataset"
        else f"changes in {trigger.get('path')}"
    )
    return f"on {what} (polled every {trigger.get('poll', 60):g}s)"


def schedule_info(
    name: str,
    *,
    config: Config,
    after: datetime | str | None = None,
    count: int = 5,
    runs: int = 5,
    db: ScheduleDB | None = None,
) -> ScheduleInfo:
    """What ``stepflow schedule show`` says of schedule ``name``; ``db``: read it from this
    open database (a read-only one, say) instead of opening the home's."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise UsageError(f"--count must be a whole number >= 0, got {count!r}")
    with contextlib.nullcontext(db) if db is not None else ScheduleDB(config.home) as opened:
        row = opened.schedule(name)
        ticks = tuple(opened.ticks(row.id, limit=runs))
    rule = None if row.rule is None else rule_from_dict(dict(row.rule))
    upcoming: tuple[datetime, ...] = ()
    if rule is not None:
        start = datetime.now(UTC) if after is None else parse_instant(after, what="--after")
        upcoming = tuple(rule.fire_times(start, count))
    return ScheduleInfo(row, rule, upcoming, ticks)


def make_rule(
    *,
    frequency: str | None,
    interval: int | None,
    hours: str | Sequence[int] | None,
    minutes: str | Sequence[int] | None,
    week_days: str | Sequence[str] | None,
    time_zone: str | None,
    start: str | None,
    cron: str | None,
) -> Rule | None:
    """The rule the command-line options describe, or ``None`` for none.

    :raises UsageError: both kinds at once, or recurrence options without ``--frequency``.
    """
    recurrence_opts = {
        "--interval": interval,
        "--hours": hours,
        "--minutes": minutes,
        "--week-days": week_days,
    }
    given = [k for k, v in recurrence_opts.items() if v is not None]
    if cron is not None:
        if frequency is not None or given:
            which = ", ".join(["--frequency"] * (frequency is not None) + given)
            raise UsageError(f"--cron cannot be combined with {which}; give one or the other")
        return CronRule(cron, time_zone=time_zone or "UTC", start=start)
    if frequency is None:
        if time_zone is not None and not given and start is None:
            raise UsageError("--time-zone goes with --frequency or --cron")
        if given or start is not None:
            raise UsageError(f"{(given or ['--start'])[0]} needs --frequency (or use --cron)")
        return None
    return Recurrence(
        frequency=frequency,
        interval=1 if interval is None else interval,
        hours=hours,
        minutes=minutes,
        week_days=week_days,
        time_zone=time_zone or "UTC",
        start=start,
    )
