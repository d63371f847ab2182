"""``stepflow schedule export NAME --format cron|systemd``: a schedule without a daemon.

Both formats call ``stepflow run PUB --tick NAME``, which claims the tick due at that moment
(the latest fire time by the schedule's own calendar), the same row the daemon would claim:
a timer and a daemon firing together, or a cron that fires twice in a repeated hour, run the
tick once.

A recurrence is written as cron fields or as a systemd ``OnCalendar=`` only when they fire
at the same times; otherwise export is refused with the reason (cron's ``*/N`` restarts at
each hour, day or month, so "every 7 minutes" or "every 2 days" counted from a start cannot be
written). A data trigger needs the daemon to poll, and is refused too.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from stepflow._scheduling.recurrence import WEEK_DAYS, CronRule, Recurrence, rule_from_dict
from stepflow._storage.scheduledb import ScheduleRow
from stepflow.errors import UsageError

__all__ = ["ExportRefused", "cron_fields", "export_cron", "export_systemd", "on_calendar"]

_SYSTEMD_DAYS = ("Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


class ExportRefused(UsageError):
    """The schedule cannot be written in the format asked for; the message says why."""


def _start_wall(rule: Recurrence) -> datetime:
    start = rule.start_utc
    assert start is not None, "stored recurrences always have a start"
    return start.astimezone(rule.tz).replace(tzinfo=None)


def _every(rule: Recurrence, period: int, unit: str, start_value: int) -> str:
    """``*`` or ``*/N`` for an interval, when it lines up with cron's restart at each period."""
    n = rule.interval
    if n == 1:
        return "*"
    if period % n or start_value % n:
        restart = {"minute": "hour", "hour": "day"}[unit]
        raise ExportRefused(
            f"every {n} {unit}s counted from the start cannot be written in cron or systemd: "
            f"their */{n} restarts at each {restart} (an interval dividing {period}, with a "
            f"start on a multiple of it, can); run `stepflow scheduler serve` instead"
        )
    return f"*/{n}"


def cron_fields(rule: Recurrence) -> tuple[str, str, str, str, str]:
    """``minute hour day-of-month month day-of-week`` firing when the recurrence does.

    :raises ExportRefused: no cron expression does.
    """
    start = _start_wall(rule)
    minutes = ",".join(map(str, rule.minutes or ((0,) if rule.hours else (start.minute,))))
    if rule.frequency == "minute":
        return (_every(rule, 60, "minute", start.minute), "*", "*", "*", "*")
    if rule.frequency == "hour":
        return (minutes, _every(rule, 24, "hour", start.hour), "*", "*", "*")
    if rule.interval != 1:
        raise ExportRefused(
            f"every {rule.interval} {rule.frequency}s cannot be written in cron or systemd: "
            f"their day and week fields cannot count {rule.frequency}s from a start; run "
            f"`stepflow scheduler serve` instead"
            if rule.frequency != "month"
            else _month_reason(rule)
        )
    hours = ",".join(map(str, rule.hours or (start.hour,)))
    if rule.frequency == "day":
        return (minutes, hours, "*", "*", "*")
    if rule.frequency == "week":
        days = rule.week_days or (WEEK_DAYS[start.weekday()],)
        numbers = ",".join(str((WEEK_DAYS.index(d) + 1) % 7) for d in days)
        return (minutes, hours, "*", "*", numbers)
    return (str(start.minute), str(start.hour), str(start.day), "*", "*")


def _month_reason(rule: Recurrence) -> str:
    return (
        f"every {rule.interval} months cannot be written in cron or systemd unless "
        f"{rule.interval} divides 12 and the start is in January or a month that many after"
    )


def _month_fields(rule: Recurrence) -> tuple[str, str, str, str, str]:
    start = _start_wall(rule)
    n = rule.interval
    if 12 % n or (start.month - 1) % n:
        raise ExportRefused(_month_reason(rule) + "; run `stepflow scheduler serve` instead")
    return (str(start.minute), str(start.hour), str(start.day), f"*/{n}", "*")


def _fields(rule: Recurrence | CronRule) -> tuple[str, ...]:
    if isinstance(rule, CronRule):
        return tuple(rule.expr.split())
    if rule.frequency == "month" and rule.interval != 1:
        return _month_fields(rule)
    return cron_fields(rule)


def _command(row: ScheduleRow, home: Path, python: str) -> str:
    return shlex.join(
        [python, "-m", "stepflow", "run", row.pipeline_ref, "--tick", row.name, "--home", str(home)]
    )


def _rule(row: ScheduleRow) -> Recurrence | CronRule:
    if row.rule is None:
        trigger = row.trigger or {}
        raise ExportRefused(
            f"schedule {row.name!r} runs on a data trigger ({trigger.get('kind')}); a timer "
            f"cannot watch data: run `stepflow scheduler serve`, which polls it"
        )
    return rule_from_dict(dict(row.rule))


def export_cron(
    row: ScheduleRow, *, home: Path, workdir: Path | None = None, python: str | None = None
) -> str:
    """A crontab fragment: the zone (``CRON_TZ``, honoured by cronie and systemd-cron; set
    the system zone elsewhere) and one line."""
    rule = _rule(row)
    fields = " ".join(_fields(rule))
    workdir = workdir or Path.cwd()
    command = f"cd {shlex.quote(str(workdir))} && {_command(row, home, python or sys.executable)}"
    lines = [
        f"# stepflow schedule {row.name}: {rule.describe()}, runs {row.pipeline_ref}",
        "# each firing claims its tick: a tick the daemon or another timer ran is not run again",
        f"CRON_TZ={rule.time_zone}",
        f"{fields} {command}",
    ]
    return "\n".join(lines) + "\n"


def on_calendar(rule: Recurrence | CronRule) -> str:
    """A systemd ``OnCalendar=`` value firing when the rule does.

    :raises ExportRefused: none does.
    """
    minute, hour, dom, month, dow = _fields(rule)
    if dom != "*" and dow != "*":
        raise ExportRefused(
            f"cron {' '.join((minute, hour, dom, month, dow))!r} restricts both the day of the "
            f"month and the day of the week, which cron ORs and systemd ANDs; export it with "
            f"--format cron, or split it into two schedules"
        )
    days = "" if dow == "*" else _systemd_days(dow) + " "
    date = f"*-{_systemd_field(month, 'month', 1)}-{_systemd_field(dom, 'day', 1)}"
    time = f"{_systemd_field(hour, 'hour', 0)}:{_systemd_field(minute, 'minute', 0)}:00"
    return f"{days}{date} {time} {rule.time_zone}"


def _systemd_field(text: str, what: str, first: int) -> str:
    parts = []
    for part in text.split(","):
        if part == "*":
            parts.append("*")
        elif part.startswith("*/") and part[2:].isdigit():
            parts.append(f"{first:02d}/{part[2:]}")
        elif part.isdigit():
            parts.append(f"{int(part):02d}")
        elif "-" in part and "/" not in part and all(p.isdigit() for p in part.split("-")):
            low, high = part.split("-")
            parts.append(f"{int(low):02d}..{int(high):02d}")
        else:
            raise ExportRefused(
                f"the cron {what} field {text!r} has no systemd OnCalendar equivalent "
                f"here; export it with --format cron"
            )
    return ",".join(parts)


def _systemd_days(text: str) -> str:
    names = {d: i for i, d in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))}
    out = []
    for part in text.lower().split(","):
        ends = part.split("-")
        try:
            numbers = [int(e) if e.isdigit() else names[e[:3]] for e in ends]
        except KeyError:
            raise ExportRefused(
                f"the cron day-of-week field {text!r} has no systemd equivalent here; export "
                f"it with --format cron"
            ) from None
        if len(numbers) == 1:
            out.append(_SYSTEMD_DAYS[numbers[0]])
        elif len(numbers) == 2:
            out.append(f"{_SYSTEMD_DAYS[numbers[0]]}..{_SYSTEMD_DAYS[numbers[1]]}")
        else:
            raise ExportRefused(f"the cron day-of-week field {text!r} is not understood here")
    return ",".join(out)


def export_systemd(
    row: ScheduleRow, *, home: Path, workdir: Path | None = None, python: str | None = None
) -> dict[str, str]:
    """``{file name: content}``: a oneshot ``.service`` and its ``.timer``."""
    rule = _rule(row)
    calendar = on_calendar(rule)
    unit = f"stepflow-{row.name}"
    workdir = workdir or Path.cwd()
    service = "\n".join(
        [
            "[Unit]",
            f"Description=stepflow schedule {row.name} (runs {row.pipeline_ref})",
            "",
            "[Service]",
            "Type=oneshot",
            f"WorkingDirectory={workdir}",
            f"ExecStart={_command(row, home, python or sys.executable)}",
            "",
        ]
    )
    timer = "\n".join(
        [
            "[Unit]",
            f"Description=stepflow schedule {row.name}: {rule.describe()}",
            "",
            "[Timer]",
            f"OnCalendar={calendar}",
            # A timer that missed its time (the machine was off) fires at the next boot;
            # the run then claims the latest fire time, as --catchup latest would.
            f"Persistent={'false' if row.catchup == 'none' else 'true'}",
            f"Unit={unit}.service",
            "",
            "[Install]",
            "WantedBy=timers.target",
            "",
        ]
    )
    return {f"{unit}.service": service, f"{unit}.timer": timer}


def write_files(files: dict[str, str], folder: Path) -> Sequence[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in files.items():
        path = folder / name
        path.write_text(text, encoding="utf-8")
        os.chmod(path, 0o644)
        written.append(path)
    return written
