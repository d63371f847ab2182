"""Which ticks are due at an instant: the catch-up policies, with the instant given."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import attrs
import pytest

from stepflow._scheduling.export import ExportRefused, export_cron, export_systemd, on_calendar
from stepflow._scheduling.recurrence import CronRule, Recurrence
from stepflow._scheduling.schedules import due_ticks
from stepflow._storage.scheduledb import ScheduleRow


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def row(rule_of, *, cursor: str, catchup: str = "none", max_catchup: int = 10, **kw) -> ScheduleRow:
    fields = dict(
        id="s",
        name="twice_daily",
        pipeline="batch_scoring",
        version=None,
        rule=rule_of.to_dict(),
        trigger=None,
        params={},
        catchup=catchup,
        max_catchup=max_catchup,
        overlap="skip",
        paused=False,
        created=0.0,
        cursor=utc(cursor).timestamp(),
        last_seen=None,
        last_poll=None,
        description=None,
    )
    fields.update(kw)
    return ScheduleRow(**fields)


SEED = Recurrence(
    frequency="day", hours=[1, 13], minutes=[30], time_zone="UTC", start="2026-03-01T00:00"
)


class TestCatchup:
    def test_on_time(self):
        """At 01:31 the 01:30 tick is due, whatever the policy."""
        for policy in ("none", "latest", "all"):
            due = due_ticks(
                row(SEED, cursor="2026-03-28T00:00", catchup=policy), utc("2026-03-28T01:31")
            )
            assert due.ticks == (utc("2026-03-28T01:30"),), policy

    def test_nothing_before_the_cursor(self):
        due = due_ticks(row(SEED, cursor="2026-03-28T01:31"), utc("2026-03-28T02:00"))
        assert due.ticks == () and due.missed == 0

    def test_none_skips_missed(self):
        """Two days without a daemon: with none, only a fire time within the grace runs."""
        due = due_ticks(row(SEED, cursor="2026-03-26T00:00"), utc("2026-03-28T13:35"))
        assert due.ticks == (utc("2026-03-28T13:30"),)
        assert due.missed == 5
        late = due_ticks(
            row(SEED, cursor="2026-03-26T00:00"),
            utc("2026-03-28T14:00"),
            grace=timedelta(minutes=10),
        )
        assert late.ticks == () and late.missed == 6

    def test_latest(self):
        due = due_ticks(
            row(SEED, cursor="2026-03-26T00:00", catchup="latest"), utc("2026-03-28T14:00")
        )
        assert due.ticks == (utc("2026-03-28T13:30"),) and due.missed == 5

    def test_all_bounded_by_max_catchup(self):
        due = due_ticks(
            row(SEED, cursor="2026-03-26T00:00", catchup="all", max_catchup=3),
            utc("2026-03-28T14:00"),
        )
        assert due.ticks == (
            utc("2026-03-27T13:30"),
            utc("2026-03-28T01:30"),
            utc("2026-03-28T13:30"),
        )
        assert due.missed == 3


class TestExport:
    def test_cron_line(self, tmp_path):
        text = export_cron(
            row(SEED, cursor="2026-03-01T00:00"),
            home=tmp_path / "home",
            workdir=tmp_path,
            python="/venv/bin/python",
        )
        lines = text.splitlines()
        assert "CRON_TZ=UTC" in lines
        assert lines[-1] == (
            f"30 1,13 * * * cd {tmp_path} && /venv/bin/python -m stepflow run batch_scoring "
            f"--tick twice_daily --home {tmp_path / 'home'}"
        )

    def test_systemd_units(self, tmp_path):
        london = attrs.evolve(SEED, time_zone="Europe/London")
        files = export_systemd(
            row(london, cursor="2026-03-01T00:00", catchup="latest"),
            home=Path("/h"),
            workdir=tmp_path,
            python="/py",
        )
        timer = files["stepflow-twice_daily.timer"]
        assert "OnCalendar=*-*-* 01,13:30:00 Europe/London" in timer
        assert "Persistent=true" in timer
        service = files["stepflow-twice_daily.service"]
        assert "ExecStart=/py -m stepflow run batch_scoring --tick twice_daily --home /h" in service
        assert "Type=oneshot" in service

    @pytest.mark.parametrize(
        ("rule", "calendar"),
        [
            (
                Recurrence(frequency="minute", interval=15, start="2026-03-01T00:00"),
                "*-*-* *:00/15:00 UTC",
            ),
            (
                Recurrence(
                    frequency="week", week_days="mon,fri", hours=[9], start="2026-03-01T00:00"
                ),
                "Mon,Fri *-*-* 09:00:00 UTC",
            ),
            (
                CronRule("0 6 * * 1-5", time_zone="America/New_York"),
                "Mon..Fri *-*-* 06:00:00 America/New_York",
            ),
            (
                Recurrence(frequency="month", interval=3, start="2026-01-15T08:00"),
                "*-01/3-15 08:00:00 UTC",
            ),
        ],
    )
    def test_on_calendar(self, rule, calendar):
        assert on_calendar(rule) == calendar

    @pytest.mark.parametrize(
        ("rule", "reason"),
        [
            (
                Recurrence(frequency="minute", interval=7, start="2026-03-01T00:00"),
                "every 7 minutes counted from the start cannot be written in cron*restarts at "
                "each hour*",
            ),
            (
                Recurrence(frequency="day", interval=2, hours=[6], start="2026-03-01T00:00"),
                "every 2 days cannot be written in cron*",
            ),
            (
                Recurrence(frequency="hour", interval=5, start="2026-03-01T00:00"),
                "every 5 hours*restarts at each day*",
            ),
        ],
    )
    def test_refused_with_reason(self, rule, reason, tmp_path):
        import fnmatch

        with pytest.raises(ExportRefused) as info:
            export_cron(row(rule, cursor="2026-03-01T00:00"), home=tmp_path)
        assert fnmatch.fnmatch(str(info.value), reason), str(info.value)

    def test_both_day_fields_refused_for_systemd(self):
        with pytest.raises(ExportRefused, match="cron ORs and systemd ANDs"):
            on_calendar(CronRule("0 6 1 * mon"))

    def test_data_trigger_refused(self, tmp_path):
        sched = row(
            SEED,
            cursor="2026-03-01T00:00",
            rule=None,
            trigger={"kind": "dataset", "name": "x", "poll": 60},
        )
        with pytest.raises(ExportRefused, match="a timer cannot watch data"):
            export_cron(sched, home=tmp_path)
