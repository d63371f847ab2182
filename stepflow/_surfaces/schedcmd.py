"""``stepflow publish``, ``published``, ``schedule`` and ``scheduler``: the commands of
publishing and scheduling (DESIGN §9), and the published-name and ``--tick`` parts of
``stepflow run``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pluggy

    from stepflow._config import Config
    from stepflow._scheduling.publishing import PublishedPipeline
    from stepflow._surfaces.cli import AddCommon

__all__ = ["ADDS", "published_target", "run_command"]


def _add_publish(
    sub: argparse._SubParsersAction[Any], add_common: AddCommon
) -> argparse.ArgumentParser:
    publish = sub.add_parser(
        "publish",
        help="publish a pipeline as a named, numbered version",
        description="Store a version of TARGET under NAME: the project's code snapshot, the "
        "target, its parameters' defaults, the backends' configuration and the Python and "
        "package versions. Prints NAME@VERSION; identical content returns the existing "
        "version. `stepflow run NAME[@VERSION]` runs it from its snapshot.",
    )
    publish.add_argument("target", metavar="TARGET", help="module:pipeline or file.py:pipeline")
    publish.add_argument("--name", required=True, help="the published name")
    publish.add_argument("--description", help="what this version is")
    add_common(publish, with_json=True)
    return publish


def _add_published(
    sub: argparse._SubParsersAction[Any], add_common: AddCommon
) -> argparse.ArgumentParser:
    published = sub.add_parser("published", help="list and show published pipelines")
    pub_sub = published.add_subparsers(dest="published_command", metavar="ACTION", required=True)
    pub_list = pub_sub.add_parser("list", help="the latest version of each published pipeline")
    add_common(pub_list, with_json=True)
    pub_show = pub_sub.add_parser("show", help="one published pipeline and its versions")
    pub_show.add_argument("name", metavar="NAME")
    # dest: the top-level --version (print stepflow's version) owns args.version
    pub_show.add_argument(
        "--version",
        dest="pub_version",
        type=int,
        metavar="V",
        help="this version (default: latest)",
    )
    add_common(pub_show, with_json=True)
    return published


def _add_schedule(
    sub: argparse._SubParsersAction[Any], add_common: AddCommon
) -> argparse.ArgumentParser:
    schedule = sub.add_parser("schedule", help="create, show and manage schedules")
    sched_sub = schedule.add_subparsers(dest="schedule_command", metavar="ACTION", required=True)
    create = sched_sub.add_parser(
        "create",
        help="schedule a published pipeline",
        description="Schedule a published pipeline: a recurrence (like Azure ML's "
        "ScheduleRecurrence), a cron expression, or a data trigger. Nothing is stored when an "
        "option is wrong.",
    )
    create.add_argument("name", metavar="NAME")
    create.add_argument(
        "--pipeline",
        required=True,
        metavar="PUB[@V]",
        help="the published pipeline (its latest version at each run, or version V)",
    )
    create.add_argument("--frequency", metavar="minute|hour|day|week|month")
    create.add_argument("--interval", type=int, metavar="N", help="every N periods (default 1)")
    create.add_argument("--hours", metavar="H,H", help="hours of the day, e.g. 1,13")
    create.add_argument("--minutes", metavar="M,M", help="minutes past the hour, e.g. 30")
    create.add_argument("--week-days", metavar="DAYS", help="e.g. mon,fri (frequency week)")
    create.add_argument("--time-zone", metavar="ZONE", help="IANA zone (default UTC)")
    create.add_argument("--start", metavar="ISO-TIME", help="nothing fires before it")
    create.add_argument("--cron", metavar="EXPR", help='a cron expression, e.g. "30 1,13 * * *"')
    create.add_argument(
        "--param",
        dest="params",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a parameter of every run (repeatable); {tick} and {schedule} in a value become "
        "the tick's UTC fire time (20260329T0100Z) and the schedule's name",
    )
    create.add_argument(
        "--catchup",
        default="none",
        metavar="none|latest|all",
        help="missed fire times: none run (default), the latest, or all (up to --max-catchup)",
    )
    create.add_argument(
        "--max-catchup", type=int, default=10, metavar="N", help="at most N with --catchup all"
    )
    create.add_argument(
        "--overlap",
        default="skip",
        metavar="skip|queue|allow",
        help="a tick due while the schedule's run still runs: skip it (default), queue it, "
        "or allow it to run at once",
    )
    create.add_argument("--on-dataset", metavar="NAME", help="run on each new version")
    create.add_argument("--on-change", metavar="PATH", help="run when files under PATH change")
    create.add_argument("--poll", type=float, metavar="SECONDS", help="data trigger poll (60)")
    create.add_argument("--description", help="what the schedule is for")
    add_common(create, with_json=True)
    sched_list = sched_sub.add_parser("list", help="every schedule")
    add_common(sched_list, with_json=True)
    show = sched_sub.add_parser(
        "show", help="a schedule: its next fire times (local and UTC) and last runs"
    )
    show.add_argument("name", metavar="NAME")
    show.add_argument("--after", metavar="ISO-TIME", help="fire times after this (default now)")
    show.add_argument("--count", type=int, default=5, metavar="N")
    add_common(show, with_json=True)
    for action, text in (
        ("pause", "stop claiming ticks"),
        ("resume", "claim ticks again, from now on"),
        ("delete", "remove a schedule (its ticks stay as history)"),
    ):
        parser = sched_sub.add_parser(action, help=text)
        parser.add_argument("name", metavar="NAME")
        add_common(parser)
    export = sched_sub.add_parser(
        "export",
        help="a crontab line, or a systemd service and timer, that runs the schedule",
        description="Write what runs the schedule without a daemon: each firing calls "
        "`stepflow run PUB --tick NAME`, which claims the same tick row the daemon would.",
    )
    export.add_argument("name", metavar="NAME")
    export.add_argument("--format", required=True, choices=["cron", "systemd"])
    export.add_argument("-o", "--output", metavar="DIR", help="write the systemd files into DIR")
    add_common(export)
    return schedule


def _add_scheduler(
    sub: argparse._SubParsersAction[Any], add_common: AddCommon
) -> argparse.ArgumentParser:
    scheduler = sub.add_parser("scheduler", help="the scheduling daemon")
    daemon_sub = scheduler.add_subparsers(dest="scheduler_command", metavar="ACTION", required=True)
    serve = daemon_sub.add_parser(
        "serve",
        help="run due ticks until stopped (SIGTERM stops cleanly)",
        description="Claim each due tick (a unique row), then run it as `stepflow run PUB "
        "--tick`; two daemons never run a tick twice, and a tick whose daemon died is resumed.",
    )
    serve.add_argument("--once", action="store_true", help="run what is due, then exit")
    serve.add_argument("--now", metavar="ISO-TIME", help="evaluate as of this instant")
    serve.add_argument(
        "--interval", type=float, default=5.0, metavar="SECONDS", help="between passes (5)"
    )
    serve.add_argument(
        "--grace",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="how late a fire time still runs with --catchup none (600)",
    )
    add_common(serve)
    return scheduler


#: each command's parser-adding function; each returns the command's parser (the caller sets
#: its handler, :func:`run_command`)
ADDS: dict[str, Callable[[argparse._SubParsersAction[Any], AddCommon], argparse.ArgumentParser]] = {
    "publish": _add_publish,
    "published": _add_published,
    "schedule": _add_schedule,
    "scheduler": _add_scheduler,
}


def run_command(args: argparse.Namespace, config: Config, pm: pluggy.PluginManager) -> int:
    if args.command == "publish":
        return _publish(args, config, pm)
    if args.command == "published":
        return _published(args, config)
    if args.command == "scheduler":
        return _serve(args, config)
    return {
        "create": _create,
        "list": _list,
        "show": _show,
        "pause": _pause,
        "resume": _pause,
        "delete": _delete,
        "export": _export,
    }[args.schedule_command](args, config)


# --- publish ------------------------------------------------------------------------------


def _publish(args: argparse.Namespace, config: Config, pm: pluggy.PluginManager) -> int:
    from stepflow._scheduling.publishing import check_published_name, publish
    from stepflow._surfaces.cli import _load

    check_published_name(args.name)
    pipeline, targets = _load(args.target)
    if targets:
        from stepflow.errors import UsageError

        raise UsageError(
            f"TARGET {args.target!r} names a step; publish a pipeline (module:pipeline), or "
            f"a module alone for all its steps"
        )
    found, new = publish(
        pipeline,
        name=args.name,
        description=args.description,
        target=args.target,
        config=config,
        pm=pm,
    )
    if args.json:
        print(json.dumps({**found.to_dict(), "new": new}, indent=2))
        return 0
    print(found.ref)
    if not new:
        print(
            f"stepflow: the content is that of {found.ref} already; no new version",
            file=sys.stderr,
        )
    return 0


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _published(args: argparse.Namespace, config: Config) -> int:
    from stepflow._scheduling.publishing import PublishedPipeline, get_published
    from stepflow._storage.scheduledb import ScheduleDB
    from stepflow._surfaces.table import table

    if args.published_command == "list":
        with ScheduleDB(config.home) as db:
            rows = [PublishedPipeline.from_row(r) for r in db.published_list()]
        if args.json:
            print(json.dumps([r.to_dict() for r in rows], indent=2))
            return 0
        if not rows:
            print("no published pipelines; publish one with `stepflow publish TARGET --name NAME`")
            return 0
        data = [
            (f"{r.name}", f"v{r.version}", r.target, _when(r.created), r.description or "-")
            for r in rows
        ]
        sys.stdout.write(table(data, ["name", "latest", "target", "created", "description"]))
        return 0
    from stepflow._scheduling.publishing import split_ref

    name, version = split_ref(args.name)
    found = get_published(name, args.pub_version or version, config=config)
    with ScheduleDB(config.home) as db:
        versions = [PublishedPipeline.from_row(r) for r in db.published_versions(name)]
    if args.json:
        print(json.dumps({**found.to_dict(), "versions": [v.version for v in versions]}, indent=2))
        return 0
    _print_version(found, versions)
    return 0


def _print_version(found: PublishedPipeline, versions: list[PublishedPipeline]) -> None:
    print(f"{found.ref}  ({len(versions)} version{'s' * (len(versions) != 1)})")
    print(f"  target:      {found.target}")
    print(f"  snapshot:    {found.snapshot}")
    print(f"  created:     {_when(found.created)}")
    if found.description:
        print(f"  description: {found.description}")
    print(f"  python:      {found.python}  stepflow {found.stepflow}")
    if found.packages:
        packages = ", ".join(f"{k} {v}" for k, v in sorted(found.packages.items()))
        print(f"  packages:    {packages}")
    if found.params:
        print("  parameters:")
        for name, defaults in found.params.items():
            shown = ", ".join(f"{step}={value!r}" for step, value in defaults.items()) or "-"
            print(f"    {name}: {shown}")
    print(
        f"  backends:    default {found.default_backend}"
        + (f"; {', '.join(sorted(found.backends))}" if found.backends else "")
    )


# --- run NAME[@V] and --tick ----------------------------------------------------------------


def published_target(
    text: str | None, config: Config, pm: pluggy.PluginManager | None = None
) -> tuple[PublishedPipeline, str] | None:
    """``(version, target to load)`` when ``text`` names a published pipeline: ``NAME@V``
    always, a bare ``NAME`` when it is published (a module of that name otherwise)."""
    from stepflow._authoring.loader import looks_like_path
    from stepflow._scheduling.publishing import prepare_published
    from stepflow._storage.scheduledb import DB_NAME, ScheduleDB

    if not text or ":" in text or looks_like_path(text):
        return None
    if "@" not in text:
        if not (config.home / DB_NAME).is_file():
            return None
        with ScheduleDB(config.home) as db:
            if not db.published_versions(text):
                return None
    return prepare_published(text, config=config, pm=pm)


def run_published(
    args: argparse.Namespace, config: Config, pm: pluggy.PluginManager, run: Callable[..., int]
) -> int:
    """``stepflow run`` for a published name, a ``--tick``, or both: loads the version from
    its snapshot, claims the tick, runs, and records the tick's outcome."""
    import attrs

    from stepflow.errors import UsageError

    found = published_target(args.target, config, pm)
    if found is None and args.tick:
        raise UsageError(
            f"--tick runs a published pipeline; {args.target!r} is not one (`stepflow "
            f"published list`)"
        )
    target = args.target
    if found is not None:
        version, target = found
        code = Path(target.rpartition(":")[0] or target)
        rootdir = config.home / "published" / "code" / version.snapshot
        config = attrs.evolve(
            config,
            rootdir=rootdir if rootdir.is_dir() else code.parent,
            backends=dict(version.backends),
            default_backend=version.default_backend,
        )
    session = None
    if args.tick:
        from stepflow._scheduling.ticks import acquire_tick

        session = acquire_tick(args.tick, pipeline_ref=args.target, config=config)
        if session.reason is not None:
            print(f"stepflow: {session.reason}; nothing to run", file=sys.stderr)
            return 0
        args.params = [f"{k}={v}" for k, v in session.params().items()] + list(args.params)
        config = attrs.evolve(config, options={**config.options, "run_tags": session.tags})
    try:
        code, result = run(args, config, pm, target)
    except BaseException:
        if session is not None:
            session.release(config=config)
        raise
    if session is not None:
        if result is None or result.interrupted:
            session.release(config=config, run_id=None if result is None else result.run_id)
        else:
            session.finish(
                "succeeded" if result.ok else "failed", run_id=result.run_id, config=config
            )
    return code


# --- schedules ----------------------------------------------------------------------------


def _create(args: argparse.Namespace, config: Config) -> int:
    from stepflow._scheduling.schedules import (
        create_schedule,
        make_rule,
        make_trigger,
        schedule_info,
    )
    from stepflow._surfaces.cli import _split_pairs

    rule = make_rule(
        frequency=args.frequency,
        interval=args.interval,
        hours=args.hours,
        minutes=args.minutes,
        week_days=args.week_days,
        time_zone=args.time_zone,
        start=args.start,
        cron=args.cron,
    )
    trigger = make_trigger(args.on_dataset, args.on_change, args.poll)
    create_schedule(
        args.name,
        pipeline=args.pipeline,
        rule=rule,
        trigger=trigger,
        params=_split_pairs(args.params, "--param"),
        catchup=args.catchup,
        max_catchup=args.max_catchup,
        overlap=args.overlap,
        description=args.description,
        config=config,
    )
    info = schedule_info(args.name, config=config)
    if args.json:
        print(json.dumps(info.to_dict(), indent=2))
    else:
        print(f"schedule {args.name}: {info.to_dict()['describe']}, runs {info.row.pipeline_ref}")
        _print_next(info)
    return 0


def _print_next(info: Any) -> None:
    data = info.to_dict()
    if data["next"]:
        print("next fire times:")
        for entry in data["next"]:
            print(f"  {entry['local']}  ({entry['utc']})")


def _list(args: argparse.Namespace, config: Config) -> int:
    from stepflow._scheduling.schedules import schedule_info
    from stepflow._storage.scheduledb import ScheduleDB
    from stepflow._surfaces.table import table

    with ScheduleDB(config.home) as db:
        names = [s.name for s in db.schedules()]
    infos = [schedule_info(n, config=config, count=1, runs=1) for n in names]
    if args.json:
        print(json.dumps([i.to_dict() for i in infos], indent=2))
        return 0
    if not infos:
        print("no schedules; make one with `stepflow schedule create NAME --pipeline PUB ...`")
        return 0
    rows = []
    for info in infos:
        data = info.to_dict()
        last = data["last_runs"][0] if data["last_runs"] else None
        rows.append(
            (
                data["name"],
                data["pipeline"],
                data["describe"],
                "paused" if data["paused"] else "active",
                data["next"][0]["utc"] if data["next"] else "-",
                f"{last['tick']} {last['state']}" if last else "-",
            )
        )
    sys.stdout.write(table(rows, ["name", "pipeline", "when", "state", "next", "last"]))
    return 0


def _show(args: argparse.Namespace, config: Config) -> int:
    from stepflow._scheduling.schedules import schedule_info

    info = schedule_info(args.name, config=config, after=args.after, count=args.count)
    data = info.to_dict()
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    state = "paused" if data["paused"] else "active"
    print(f"schedule {data['name']} ({state}): {data['describe']}")
    print(f"  pipeline: {data['pipeline']}")
    if data["params"]:
        print(f"  params:   {', '.join(f'{k}={v}' for k, v in data['params'].items())}")
    print(f"  catch-up: {data['catchup']} (max {data['max_catchup']}), overlap: {data['overlap']}")
    _print_next(info)
    if data["last_runs"]:
        print("last runs:")
        for tick in data["last_runs"]:
            run = f" run {tick['run_id']}" if tick["run_id"] else ""
            print(f"  {tick['tick']}  {tick['state']}{run}")
    return 0


def _pause(args: argparse.Namespace, config: Config) -> int:
    import time

    from stepflow._storage.scheduledb import ScheduleDB

    with ScheduleDB(config.home) as db:
        if args.schedule_command == "pause":
            db.set_paused(args.name, True)
        else:
            db.set_paused(args.name, False, cursor=time.time())
    print(f"schedule {args.name} {args.schedule_command}d")
    return 0


def _delete(args: argparse.Namespace, config: Config) -> int:
    from stepflow._storage.scheduledb import ScheduleDB

    with ScheduleDB(config.home) as db:
        db.delete_schedule(args.name)
    print(f"schedule {args.name} deleted")
    return 0


def _export(args: argparse.Namespace, config: Config) -> int:
    from stepflow._scheduling.export import export_cron, export_systemd, write_files
    from stepflow._storage.scheduledb import ScheduleDB

    with ScheduleDB(config.home) as db:
        row = db.schedule(args.name)
    home = config.home.resolve()
    if args.format == "cron":
        sys.stdout.write(export_cron(row, home=home))
        return 0
    files = export_systemd(row, home=home)
    if args.output:
        for path in write_files(files, Path(args.output)):
            print(path)
        return 0
    for name, text in files.items():
        sys.stdout.write(f"# --- {name} ---\n{text}")
    return 0


# --- the daemon ---------------------------------------------------------------------------


def _serve(args: argparse.Namespace, config: Config) -> int:
    import signal
    import threading
    from datetime import timedelta

    from stepflow._scheduling.daemon import Clock, Scheduler
    from stepflow._scheduling.recurrence import parse_instant
    from stepflow.errors import UsageError

    if args.interval <= 0:
        raise UsageError(f"--interval must be above 0 seconds, got {args.interval}")
    if args.grace < 0:
        raise UsageError(f"--grace must be 0 seconds or more, got {args.grace}")
    now = None if args.now is None else parse_instant(args.now, what="--now")
    child_args: list[str] = []
    for plugin in config.plugins:
        child_args += ["-p", plugin]
    scheduler = Scheduler(
        config,
        clock=Clock.starting_at(now),
        grace=timedelta(seconds=args.grace),
        interval=args.interval,
        child_args=tuple(child_args),
    )
    previous = {}
    if threading.current_thread() is threading.main_thread():
        # Stop at the next safe point instead of raising in the middle of a claim.
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, scheduler.stop)
    try:
        return scheduler.run_once() if args.once else scheduler.serve()
    finally:
        scheduler.shutdown()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
