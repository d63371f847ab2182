"""When a schedule fires: a recurrence like Azure ML's ``ScheduleRecurrence``, or a cron
expression, in a time zone.

The calendar is never computed by hand: a recurrence is a python-dateutil ``rrule``, a cron
expression is iterated by ``cronsim``, and local times become instants through ``zoneinfo``
(with the ``tzdata`` package where the system has no zone database). Both produce *wall
times* (naive local datetimes); :func:`to_utc` then applies the daylight-saving policy:

- a local time that does not exist (clocks spring forward over it) fires at the first instant
  after the gap: 01:30 on 29 March 2026 in Europe/London fires at 02:00 BST (01:00 UTC);
- a local time that occurs twice (clocks fall back) fires once, at its first occurrence:
  01:30 on 25 October 2026 in Europe/London fires at 01:30 BST (00:30 UTC), not again at
  01:30 GMT.

Several wall times landing on the same instant (every minute of a skipped hour) fire once.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import attrs

from stepflow.errors import UsageError

if TYPE_CHECKING:
    from zoneinfo import ZoneInfo

__all__ = [
    "CronRule",
    "Recurrence",
    "Rule",
    "fire_times",
    "format_instant",
    "parse_instant",
    "rule_from_dict",
    "to_utc",
    "zone",
]

FREQUENCIES = ("minute", "hour", "day", "week", "month")
WEEK_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_DAY_NAMES = {
    **{d: i for i, d in enumerate(WEEK_DAYS)},
    **{
        name: i
        for i, name in enumerate(
            ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
        )
    },
}
# Wall times are looked up from a little before the instant asked about: a local time can map
# to an instant up to a DST shift earlier or later (no zone shifts by more than two hours).
_MARGIN = timedelta(hours=3)


def zone(name: str) -> ZoneInfo:
    """The ``zoneinfo`` zone ``name``.

    :raises UsageError: no such zone (the message says where names come from).
    """
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    if not isinstance(name, str) or not name.strip():
        raise UsageError("time zone must be a name such as 'Europe/London' or 'UTC'")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise UsageError(
            f"unknown time zone {name!r}: use an IANA name such as 'Europe/London', "
            f"'America/New_York' or 'UTC'"
        ) from None


def parse_instant(text: str | datetime, tz: str = "UTC", *, what: str = "time") -> datetime:
    """An aware UTC datetime from ISO 8601 text (or a datetime); a time without an offset is
    read in zone ``tz`` (with the DST policy of :func:`to_utc`).

    :raises UsageError: the text is not an ISO 8601 time.
    """
    if isinstance(text, datetime):
        value = text
    else:
        raw = str(text).strip()
        try:
            value = datetime.fromisoformat(raw[:-1] + "+00:00" if raw.endswith("Z") else raw)
        except ValueError:
            raise UsageError(
                f"{what} {text!r} is not an ISO 8601 time; write e.g. 2026-03-29T01:30 or "
                f"2026-03-29T01:30:00+01:00"
            ) from None
    if value.tzinfo is None:
        return to_utc(value, zone(tz))
    return value.astimezone(UTC)


def format_instant(instant: datetime, tz: ZoneInfo | None = None) -> str:
    """ISO 8601: UTC as ``...Z``, a zone with its offset."""
    if tz is None:
        return instant.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return instant.astimezone(tz).isoformat(timespec="seconds")


def to_utc(wall: datetime, tz: ZoneInfo) -> datetime:
    """The instant a local wall time fires at, by the DST policy of this module."""
    wall = wall.replace(tzinfo=None)
    first = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)
    second = wall.replace(tzinfo=tz, fold=1).astimezone(UTC)
    if first == second:
        return first
    early, late = min(first, second), max(first, second)
    if early.astimezone(tz).replace(tzinfo=None) == wall:
        return early  # it occurs twice: its first occurrence
    return _transition(tz, early, late)  # it does not exist: the end of the gap


def _transition(tz: ZoneInfo, early: datetime, late: datetime) -> datetime:
    """The instant between ``early`` and ``late`` where ``tz``'s offset changes, found by
    asking zoneinfo (bisection over whole seconds: transitions fall on whole seconds)."""
    lo, hi = int(early.timestamp()), int(late.timestamp())
    before = datetime.fromtimestamp(lo, tz).utcoffset()
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, tz).utcoffset() == before:
            lo = mid
        else:
            hi = mid
    return datetime.fromtimestamp(hi, UTC)


def _int_list(
    name: str, values: Sequence[int] | int | str | None, low: int, high: int
) -> tuple[int, ...]:
    if values is None:
        return ()
    if isinstance(values, str):
        parts = [p.strip() for p in values.split(",") if p.strip()]
    elif isinstance(values, int):
        parts = [values]  # type: ignore[list-item]
    else:
        parts = list(values)
    out = []
    for part in parts:
        try:
            if isinstance(part, bool) or (isinstance(part, float) and not part.is_integer()):
                raise ValueError
            number = int(part)
        except (TypeError, ValueError):
            raise UsageError(
                f"{name}: {part!r} is not a whole number; give numbers from {low} to {high}"
            ) from None
        if not low <= number <= high:
            raise UsageError(f"{name}: {number} is out of range; give numbers from {low} to {high}")
        out.append(number)
    return tuple(sorted(set(out)))


def _week_days(values: Sequence[str] | str | None) -> tuple[str, ...]:
    if values is None:
        return ()
    parts = values.split(",") if isinstance(values, str) else list(values)
    out = []
    for part in parts:
        key = str(part).strip().lower()
        if key not in _DAY_NAMES:
            raise UsageError(
                f"week_days: {part!r} is not a day; use {', '.join(WEEK_DAYS)} (or full names)"
            )
        out.append(WEEK_DAYS[_DAY_NAMES[key]])
    return tuple(sorted(set(out), key=WEEK_DAYS.index))


def _frequency(value: str) -> str:
    key = str(value).strip().lower()
    if key not in FREQUENCIES:
        raise UsageError(f"frequency {value!r} is not one of {', '.join(FREQUENCIES)}")
    return key


def _interval(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"interval must be a whole number of at least 1, got {value!r}")
    return value


def _start(value: datetime | str | None) -> datetime | None:
    """A start as the user gave it: an aware instant, or a naive local wall time."""
    if value is None or isinstance(value, datetime):
        return value
    raw = str(value).strip()
    try:
        return datetime.fromisoformat(raw[:-1] + "+00:00" if raw.endswith("Z") else raw)
    except ValueError:
        raise UsageError(
            f"start {value!r} is not an ISO 8601 time; write e.g. 2026-03-28T00:00 (in the "
            f"schedule's zone) or 2026-03-28T00:00:00Z"
        ) from None


@attrs.frozen
class Recurrence:
    """When a schedule fires, as Azure ML's ``ScheduleRecurrence`` says it.

    >>> import stepflow
    >>> r = stepflow.Recurrence(frequency="day", interval=1, hours=[1, 13], minutes=[30],
    ...                         time_zone="Europe/London", start="2026-03-28T00:00")
    >>> [t.isoformat() for t in r.fire_times("2026-03-28T12:00Z", count=3)]
    ['2026-03-28T13:30:00+00:00', '2026-03-29T01:00:00+00:00', '2026-03-29T12:30:00+00:00']

    :param frequency: ``minute``, ``hour``, ``day``, ``week`` or ``month`` (Azure's
        capitalised names work too).
    :param interval: fire every ``interval`` periods, counted from ``start``.
    :param hours: hours of the day (0-23), with frequency ``day`` or ``week``.
    :param minutes: minutes past the hour (0-59), with frequency ``hour``, ``day`` or
        ``week``; 0 when ``hours`` are given without minutes.
    :param week_days: ``mon`` ... ``sun``, with frequency ``week``.
    :param time_zone: an IANA zone name; times are local wall-clock times there.
    :param start: ISO text or a datetime: nothing fires before it, and intervals count from
        it. Without an offset it is a local time in ``time_zone``. Default: when the schedule
        is created.
    :raises UsageError: an option out of range or not allowed with the frequency.
    """

    frequency: str = attrs.field(converter=_frequency)
    interval: int = attrs.field(default=1, validator=lambda i, a, v: _interval(v))
    hours: tuple[int, ...] = attrs.field(
        default=(), converter=lambda v: _int_list("hours", v, 0, 23)
    )
    minutes: tuple[int, ...] = attrs.field(
        default=(), converter=lambda v: _int_list("minutes", v, 0, 59)
    )
    week_days: tuple[str, ...] = attrs.field(default=(), converter=_week_days)
    time_zone: str = "UTC"
    start: datetime | None = attrs.field(default=None, converter=_start)

    def __attrs_post_init__(self) -> None:
        zone(self.time_zone)
        # Azure's rules for which options go with which frequency.
        if self.hours and self.frequency not in ("day", "week"):
            raise UsageError(
                f"hours need frequency day or week (got {self.frequency}); with frequency "
                f"hour, give minutes past each hour"
            )
        if self.minutes and self.frequency not in ("hour", "day", "week"):
            raise UsageError(f"minutes need frequency hour, day or week (got {self.frequency})")
        if self.week_days and self.frequency != "week":
            raise UsageError(f"week_days need frequency week (got {self.frequency})")

    kind = "recurrence"

    @property
    def tz(self) -> ZoneInfo:
        return zone(self.time_zone)

    def anchored(self, at: datetime) -> Recurrence:
        """This recurrence with ``start`` set (to ``at``, when it has none)."""
        if self.start is not None:
            return self
        return attrs.evolve(self, start=at.astimezone(UTC).replace(second=0, microsecond=0))

    @property
    def start_utc(self) -> datetime | None:
        if self.start is None:
            return None
        return parse_instant(self.start, self.time_zone)

    def _rrule(self, after_wall: datetime) -> Any:
        from dateutil import rrule

        start = self.start_utc
        if start is not None:
            dtstart = start.astimezone(self.tz).replace(tzinfo=None, second=0, microsecond=0)
        else:
            dtstart = after_wall.replace(second=0, microsecond=0)
        minutes = self.minutes or ((0,) if self.hours else None)
        if self.frequency in ("minute", "hour") and after_wall > dtstart:
            # rrule walks from dtstart to the instant asked about: a year of minutes is half
            # a million steps. Moving dtstart forward by whole intervals keeps the same
            # occurrences (the defaults it lends, its minute and second, do not change).
            step = timedelta(**{f"{self.frequency}s": self.interval})
            dtstart += ((after_wall - dtstart) // step) * step
        return rrule.rrule(
            {
                "minute": rrule.MINUTELY,
                "hour": rrule.HOURLY,
                "day": rrule.DAILY,
                "week": rrule.WEEKLY,
                "month": rrule.MONTHLY,
            }[self.frequency],
            dtstart=dtstart,
            interval=self.interval,
            byhour=self.hours or None,
            byminute=minutes,
            bysecond=0,
            byweekday=[WEEK_DAYS.index(d) for d in self.week_days] or None,
        )

    def wall_times(self, after_wall: datetime) -> Iterator[datetime]:
        """Local wall times after ``after_wall`` (naive), in order."""
        return self._rrule(after_wall).xafter(after_wall, inc=False)

    def fire_times(self, after: datetime | str, count: int = 5) -> list[datetime]:
        """The next ``count`` fire times strictly after ``after``, as UTC datetimes."""
        return list(_take(fire_times(self, parse_instant(after, what="after")), count))

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "frequency": self.frequency,
            "interval": self.interval,
            "hours": list(self.hours),
            "minutes": list(self.minutes),
            "week_days": list(self.week_days),
            "time_zone": self.time_zone,
            "start": None if self.start_utc is None else format_instant(self.start_utc),
        }

    def describe(self) -> str:
        every = self.frequency if self.interval == 1 else f"{self.interval} {self.frequency}s"
        parts = [f"every {every}"]
        if self.week_days:
            parts.append(f"on {','.join(self.week_days)}")
        if self.hours:
            parts.append(f"at hours {','.join(map(str, self.hours))}")
        if self.minutes or self.hours:
            parts.append(f"minutes {','.join(map(str, self.minutes or (0,)))}")
        parts.append(f"({self.time_zone})")
        return " ".join(parts)


@attrs.frozen
class CronRule:
    """A five-field cron expression (``minute hour day-of-month month day-of-week``) read
    by ``cronsim``, in local time of ``time_zone``.

    :raises UsageError: the expression does not parse (the message says which field).
    """

    expr: str
    time_zone: str = "UTC"
    start: datetime | None = attrs.field(default=None, converter=_start)

    def __attrs_post_init__(self) -> None:
        from cronsim import CronSim, CronSimError

        zone(self.time_zone)
        fields = self.expr.split()
        if len(fields) != 5:
            raise UsageError(
                f"cron expression {self.expr!r} has {len(fields)} fields; write five: minute "
                f"hour day-of-month month day-of-week, e.g. '30 1,13 * * *'"
            )
        try:
            CronSim(self.expr, datetime(2026, 1, 1))
        except CronSimError as exc:
            raise UsageError(
                f"cron expression {self.expr!r}: {exc}; fields are minute (0-59) hour (0-23) "
                f"day-of-month (1-31) month (1-12) day-of-week (0-7 or mon-sun)"
            ) from None

    kind = "cron"

    @property
    def tz(self) -> ZoneInfo:
        return zone(self.time_zone)

    @property
    def start_utc(self) -> datetime | None:
        if self.start is None:
            return None
        return parse_instant(self.start, self.time_zone)

    def anchored(self, at: datetime) -> CronRule:
        return self

    def wall_times(self, after_wall: datetime) -> Iterator[datetime]:
        from cronsim import CronSim

        return iter(CronSim(self.expr, after_wall))

    def fire_times(self, after: datetime | str, count: int = 5) -> list[datetime]:
        return list(_take(fire_times(self, parse_instant(after, what="after")), count))

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "cron": self.expr,
            "time_zone": self.time_zone,
            "start": None if self.start_utc is None else format_instant(self.start_utc),
        }

    def describe(self) -> str:
        return f"cron {self.expr!r} ({self.time_zone})"


Rule = Recurrence | CronRule


def rule_from_dict(data: dict[str, Any]) -> Rule:
    """A rule back from :meth:`Recurrence.to_dict` or :meth:`CronRule.to_dict`."""
    if data.get("kind") == "cron":
        return CronRule(data["cron"], time_zone=data["time_zone"], start=data.get("start"))
    return Recurrence(
        frequency=data["frequency"],
        interval=data["interval"],
        hours=data["hours"],
        minutes=data["minutes"],
        week_days=data["week_days"],
        time_zone=data["time_zone"],
        start=data.get("start"),
    )


def fire_times(rule: Rule, after: datetime) -> Iterator[datetime]:
    """Every fire time strictly after instant ``after``, in order (an endless iterator)."""
    tz = rule.tz
    start = rule.start_utc
    floor = after if start is None or start <= after else start - timedelta(microseconds=1)
    wall_from = floor.astimezone(tz).replace(tzinfo=None) - _MARGIN
    last = None
    for wall in rule.wall_times(wall_from):
        instant = to_utc(wall, tz)
        if instant <= floor or instant == last:
            continue
        last = instant
        yield instant


def _take(it: Iterator[datetime], count: int) -> Iterator[datetime]:
    if count < 0:
        raise UsageError(f"count must be 0 or more, got {count}")
    for _, value in zip(range(count), it, strict=False):
        yield value
