"""The calendar of schedules: recurrences, cron, zones and the DST policy (DESIGN §9).

Every instant here is given, never read from the wall clock: the calendar is a pure function
of the rule and the instant asked about, which is what the daemon's ``--now`` relies on.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

import stepflow
from stepflow._scheduling.recurrence import CronRule, Recurrence, to_utc, zone
from stepflow.errors import UsageError


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def seed_rule(tz: str, *, cron: bool = False) -> Recurrence | CronRule:
    """The seed's schedule: 01:30 and 13:30 every day."""
    if cron:
        return CronRule("30 1,13 * * *", time_zone=tz, start="2026-01-01T00:00")
    return Recurrence(
        frequency="Day",
        interval=1,
        hours=[1, 13],
        minutes=[30],
        time_zone=tz,
        start="2026-01-01T00:00",
    )


# (zone, day before the transition at noon UTC, the next four fire times in UTC)
TRANSITIONS = [
    # London springs forward on 29 March at 01:00 GMT: 01:30 does not exist and fires at
    # the first instant after the gap, 02:00 BST = 01:00 UTC. 13:30 BST = 12:30 UTC.
    (
        "Europe/London",
        "2026-03-28T12:00",
        ["2026-03-28T13:30", "2026-03-29T01:00", "2026-03-29T12:30", "2026-03-30T00:30"],
    ),
    # London falls back on 25 October at 02:00 BST: 01:30 happens twice and fires once, at
    # the first (BST, 00:30 UTC); the second 01:30 (GMT, 01:30 UTC) does not fire.
    (
        "Europe/London",
        "2026-10-24T12:00",
        ["2026-10-24T12:30", "2026-10-25T00:30", "2026-10-25T13:30", "2026-10-26T01:30"],
    ),
    # New York springs forward on 8 March at 02:00 EST: 01:30 is before the gap (EST), 13:30
    # is after it (EDT).
    (
        "America/New_York",
        "2026-03-07T12:00",
        ["2026-03-07T18:30", "2026-03-08T06:30", "2026-03-08T17:30", "2026-03-09T05:30"],
    ),
    # New York falls back on 1 November at 02:00 EDT: 01:30 happens twice and fires once, at
    # the first (EDT, 05:30 UTC); 13:30 is EST (18:30 UTC).
    (
        "America/New_York",
        "2026-10-31T12:00",
        ["2026-10-31T17:30", "2026-11-01T05:30", "2026-11-01T18:30", "2026-11-02T06:30"],
    ),
]


class TestSeedScheduleAcrossDST:
    @pytest.mark.parametrize("cron", [False, True], ids=["recurrence", "cron"])
    @pytest.mark.parametrize(("tz", "after", "expected"), TRANSITIONS)
    def test_fire_times(self, tz, after, expected, cron):
        """01:30 and 13:30 across both 2026 transitions of London and New York: a skipped
        time fires after the gap, a repeated one once, at its first occurrence."""
        rule = seed_rule(tz, cron=cron)
        assert rule.fire_times(utc(after), count=4) == [utc(t) for t in expected]

    @pytest.mark.parametrize("tz", ["Europe/London", "America/New_York"])
    def test_two_a_day_all_year(self, tz):
        """Every day of 2026 has exactly two fire times, DST days included."""
        rule = seed_rule(tz)
        times = rule.fire_times(utc("2026-01-01T00:00"), count=730)
        days = {}
        for t in times:
            days.setdefault(t.astimezone(zone(tz)).date(), []).append(t)
        assert len(days) == 365
        assert all(len(v) == 2 for v in days.values())
        assert times == sorted(set(times))

    def test_start_in_another_zone_offset(self):
        """A start with an offset is an instant; nothing fires before it."""
        rule = Recurrence(
            frequency="day",
            hours=[1, 13],
            minutes=[30],
            time_zone="Europe/London",
            start="2026-06-01T12:00:00+00:00",
        )
        assert rule.fire_times(utc("2026-01-01T00:00"), count=2) == [
            utc("2026-06-01T12:30"),
            utc("2026-06-02T00:30"),
        ]


class TestPolicy:
    def test_gap_goes_to_its_end(self):
        """A nonexistent local time fires at the transition instant."""
        london = zone("Europe/London")
        assert to_utc(datetime(2026, 3, 29, 1, 0), london) == utc("2026-03-29T01:00")
        assert to_utc(datetime(2026, 3, 29, 1, 59), london) == utc("2026-03-29T01:00")
        assert to_utc(datetime(2026, 3, 29, 2, 0), london) == utc("2026-03-29T01:00")

    def test_repeated_goes_to_first(self):
        new_york = zone("America/New_York")
        assert to_utc(datetime(2026, 11, 1, 1, 30), new_york) == utc("2026-11-01T05:30")

    def test_minutes_in_a_gap_fire_once(self):
        """Every 20 minutes through London's skipped hour: the three skipped wall times all
        land on 01:00 UTC and fire once."""
        rule = Recurrence(
            frequency="minute", interval=20, time_zone="Europe/London", start="2026-03-29T00:00"
        )
        times = rule.fire_times(utc("2026-03-29T00:30"), count=4)
        assert times == [
            utc("2026-03-29T00:40"),
            utc("2026-03-29T01:00"),
            utc("2026-03-29T01:20"),
            utc("2026-03-29T01:40"),
        ]

    def test_hourly_through_fall_back_fires_each_wall_time_once(self):
        rule = Recurrence(
            frequency="hour", minutes=[30], time_zone="Europe/London", start="2026-10-24T00:00"
        )
        times = rule.fire_times(utc("2026-10-24T23:00"), count=4)
        # 00:30 BST, 01:30 BST (first), then 02:30 GMT: the second 01:30 GMT is not a fire.
        assert times == [
            utc("2026-10-24T23:30"),
            utc("2026-10-25T00:30"),
            utc("2026-10-25T02:30"),
            utc("2026-10-25T03:30"),
        ]


class TestRecurrence:
    def test_public_name_and_azure_spelling(self):
        """``stepflow.Recurrence`` takes Azure ML's arguments, capitalised frequency too."""
        rule = stepflow.Recurrence(
            frequency="Week",
            week_days=["Monday", "fri"],
            hours=[9],
            time_zone="UTC",
            start="2026-03-02T00:00",
        )
        assert rule.week_days == ("mon", "fri")
        assert rule.fire_times(utc("2026-03-02T00:00"), count=3) == [
            utc("2026-03-02T09:00"),
            utc("2026-03-06T09:00"),
            utc("2026-03-09T09:00"),
        ]

    def test_interval_counts_from_start(self):
        rule = Recurrence(
            frequency="day", interval=2, hours=[6], time_zone="UTC", start="2026-03-01T00:00"
        )
        assert rule.fire_times(utc("2026-03-01T00:00"), count=3) == [
            utc("2026-03-01T06:00"),
            utc("2026-03-03T06:00"),
            utc("2026-03-05T06:00"),
        ]

    def test_round_trip(self):
        from stepflow._scheduling.recurrence import rule_from_dict

        rule = seed_rule("Europe/London")
        assert rule_from_dict(rule.to_dict()).fire_times(utc("2026-03-28T12:00"), 4) == (
            rule.fire_times(utc("2026-03-28T12:00"), 4)
        )

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"frequency": "day", "hours": [25]}, "hours: 25 is out of range*0 to 23"),
            ({"frequency": "day", "minutes": [60]}, "minutes: 60 is out of range*"),
            ({"frequency": "fortnight"}, "frequency 'fortnight' is not one of*"),
            ({"frequency": "day", "interval": 0}, "interval must be*at least 1*"),
            ({"frequency": "hour", "hours": [1]}, "hours need frequency day or week*"),
            ({"frequency": "month", "minutes": [1]}, "minutes need frequency hour, day*"),
            ({"frequency": "day", "week_days": ["mon"]}, "week_days need frequency week*"),
            ({"frequency": "week", "week_days": ["funday"]}, "week_days: 'funday' is not*"),
            ({"frequency": "day", "time_zone": "Mars/Olympus"}, "unknown time zone*"),
            ({"frequency": "day", "start": "tomorrow"}, "start 'tomorrow' is not an ISO*"),
        ],
    )
    def test_bad_options(self, kwargs, message):
        """Each bad option is named, with what would be right."""
        import fnmatch

        with pytest.raises(UsageError) as info:
            Recurrence(**kwargs)
        assert fnmatch.fnmatch(str(info.value), message), str(info.value)


class TestCron:
    @pytest.mark.parametrize(
        ("expr", "message"),
        [
            ("30 1,13 * *", "*has 4 fields*"),
            ("61 * * * *", "*Bad minute*"),
            ("30 25 * * *", "*Bad hour*"),
            ("* * * * mnday", "*Bad day-of-week*"),
        ],
    )
    def test_typos(self, expr, message):
        import fnmatch

        with pytest.raises(UsageError) as info:
            CronRule(expr)
        assert fnmatch.fnmatch(str(info.value), message), str(info.value)


@pytest.mark.parametrize(("frequency", "interval"), [("minute", 7), ("hour", 5), ("minute", 1)])
def test_far_from_start_same_as_rrule(frequency, interval):
    """Far from its start, a minute or hour recurrence gives what dateutil's rrule counted
    from the start gives (stepflow starts rrule closer, to stay fast)."""
    from dateutil import rrule

    rule = Recurrence(
        frequency=frequency,
        interval=interval,
        minutes=[10] if frequency == "hour" else (),
        start="2026-01-01T00:03",
    )
    freq = rrule.MINUTELY if frequency == "minute" else rrule.HOURLY
    expected = rrule.rrule(
        freq,
        dtstart=datetime(2026, 1, 1, 0, 3),
        interval=interval,
        byminute=[10] if frequency == "hour" else None,
        bysecond=0,
    )
    after = datetime(2026, 2, 17, 5, 41)
    want = []
    for wall in expected.xafter(after):
        want.append(wall.replace(tzinfo=UTC))
        if len(want) == 5:
            break
    assert rule.fire_times(after.replace(tzinfo=UTC), count=5) == want
