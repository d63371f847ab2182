"""Schedules of published pipelines, kept in the home's SQLite.

>>> import stepflow
>>> rule = stepflow.Recurrence(frequency="day", interval=1, hours=[1, 13], minutes=[30],
...                            time_zone="Europe/London")
>>> rule.describe()
'every day at hours 1,13 minutes 30 (Europe/London)'

``stepflow.schedules.create("twice_daily", pipeline="batch_scoring", recurrence=rule)`` stores a
schedule; ``stepflow scheduler serve`` runs its ticks (or export it to cron or systemd with
``stepflow schedule export``).
"""

from __future__ import annotations

import builtins
import os
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from stepflow._config import config_or_load
from stepflow._scheduling.recurrence import CronRule, Recurrence
from stepflow._scheduling.schedules import ScheduleInfo, create_schedule, make_trigger
from stepflow._scheduling.schedules import schedule_info as _info
from stepflow._storage.scheduledb import ScheduleDB, ScheduleRow
from stepflow.errors import UsageError

if TYPE_CHECKING:
    from stepflow._config import Config

__all__ = [
    "CronRule",
    "Recurrence",
    "ScheduleInfo",
    "create",
    "delete",
    "get",
    "list",
    "pause",
    "resume",
]

_Home = str | os.PathLike[str] | None


def create(
    name: str,
    *,
    pipeline: str,
    recurrence: Recurrence | None = None,
    cron: str | None = None,
    time_zone: str = "UTC",
    params: Mapping[str, Any] | None = None,
    catchup: str = "none",
    max_catchup: int = 10,
    overlap: str = "skip",
    on_dataset: str | None = None,
    on_change: str | None = None,
    poll: float | None = None,
    description: str | None = None,
    home: _Home = None,
    config: Config | None = None,
) -> ScheduleInfo:
    """Schedule published pipeline ``pipeline`` (``NAME`` for its latest version at each run,
    ``NAME@V`` for one version).

    Give one of ``recurrence``, ``cron`` (with ``time_zone``), ``on_dataset`` or
    ``on_change``. Nothing is stored when anything is wrong.

    :raises UsageError: what is wrong, named.
    """
    if recurrence is not None and cron is not None:
        raise UsageError("give recurrence= or cron=, not both")
    rule: Recurrence | CronRule | None = recurrence
    if cron is not None:
        rule = CronRule(cron, time_zone=time_zone)
    if rule is not None and not isinstance(rule, Recurrence | CronRule):
        raise UsageError(f"recurrence must be a stepflow.Recurrence, got {type(rule).__name__}")
    conf = config_or_load(home, config)
    create_schedule(
        name,
        pipeline=pipeline,
        rule=rule,
        trigger=make_trigger(on_dataset, on_change, poll),
        params=params,
        catchup=catchup,
        max_catchup=max_catchup,
        overlap=overlap,
        description=description,
        config=conf,
    )
    return _info(name, config=conf)


def get(
    name: str,
    *,
    after: datetime | str | None = None,
    count: int = 5,
    home: _Home = None,
    config: Config | None = None,
) -> ScheduleInfo:
    """A schedule, its next ``count`` fire times after ``after`` (default now) and its last
    ticks."""
    return _info(name, config=config_or_load(home, config), after=after, count=count)


def list(*, home: _Home = None, config: Config | None = None) -> builtins.list[ScheduleRow]:
    with ScheduleDB(config_or_load(home, config).home) as db:
        return db.schedules()


def pause(name: str, *, home: _Home = None, config: Config | None = None) -> ScheduleRow:
    """Stop claiming ticks; fire times while paused are not run later."""
    with ScheduleDB(config_or_load(home, config).home) as db:
        return db.set_paused(name, True)


def resume(name: str, *, home: _Home = None, config: Config | None = None) -> ScheduleRow:
    """Claim ticks again, from now on."""
    import time

    with ScheduleDB(config_or_load(home, config).home) as db:
        return db.set_paused(name, False, cursor=time.time())


def delete(name: str, *, home: _Home = None, config: Config | None = None) -> ScheduleRow:
    with ScheduleDB(config_or_load(home, config).home) as db:
        return db.delete_schedule(name)
