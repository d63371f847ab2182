"""``stepflow runs list|show|compare|lineage`` and ``stepflow logs``: show the run records.

The queries are the read API's (``stepflow._storage.read``); this module only formats what it
returns. Parsers are built here with argparse only; the records load when a command runs, so
the CLI starts fast.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from stepflow._humanize import human_duration, human_time, iso_time, iso_times
from stepflow._surfaces.table import table

if TYPE_CHECKING:
    from stepflow._config import Config
    from stepflow._storage.read import ReadAPI
    from stepflow._storage.records import RunRecords, RunRow, StepRow
    from stepflow._surfaces.cli import AddCommon

__all__ = ["add_logs", "add_runs", "run_command"]


def add_runs(sub: argparse._SubParsersAction, add_common: AddCommon) -> argparse.ArgumentParser:
    """``stepflow runs``'s parser and its actions'; returns it."""
    runs = sub.add_parser("runs", help="list, show and compare recorded runs")
    runs_sub = runs.add_subparsers(dest="runs_command", metavar="ACTION", required=True)

    ls = runs_sub.add_parser("list", help="list runs, newest first")
    ls.add_argument("--pipeline", help="only runs of this pipeline")
    ls.add_argument(
        "--state", choices=["running", "succeeded", "failed", "interrupted"], help="only these"
    )
    ls.add_argument("--since", metavar="WHEN", help="an age (7d, 12h, 30m) or a date (2026-11-20)")
    ls.add_argument("--limit", type=int, default=50, metavar="N", help="at most N runs (50)")
    add_common(ls, with_json=True)

    show = runs_sub.add_parser("show", help="a run's steps, parameters, metrics and source")
    show.add_argument("run", metavar="RUN", help="a run id, a unique prefix of it, last or last~N")
    add_common(show, with_json=True)

    compare = runs_sub.add_parser(
        "compare", help="what differs between two runs: parameters, metrics, steps, source"
    )
    compare.add_argument("run_a", metavar="RUN")
    compare.add_argument("run_b", metavar="RUN")
    add_common(compare, with_json=True)

    lineage = runs_sub.add_parser(
        "lineage",
        help="which run and step made an artifact, and from which inputs",
        description="ARTIFACT is a content hash or object name (or a unique prefix of one), "
        "or RUN:OUTPUT for an output of a recorded run.",
    )
    lineage.add_argument("artifact", metavar="ARTIFACT")
    add_common(lineage, with_json=True)

    from stepflow._surfaces import sourcecmd

    sourcecmd.add_parser(runs_sub, add_common)
    return runs


def add_logs(sub: argparse._SubParsersAction, add_common: AddCommon) -> argparse.ArgumentParser:
    """``stepflow logs``'s parser; returns it."""
    logs = sub.add_parser("logs", help="print what a run's steps wrote (stdout, stderr, logging)")
    logs.add_argument("run", metavar="RUN", help="a run id, a unique prefix of one, or 'last'")
    logs.add_argument("step", metavar="STEP", nargs="?", help="only this step")
    logs.add_argument("--stream", choices=["stdout", "stderr", "log"], help="only this stream")
    add_common(logs, with_json=True)
    return logs


def open_existing(config: Config) -> RunRecords:
    """The home's run records, opened read-only; a clear error when nothing was ever
    recorded there."""
    from stepflow._storage.read import open_run_records

    return open_run_records(config)


def run_command(args: argparse.Namespace, config: Config) -> int:
    from stepflow._storage.read import ReadAPI

    with ReadAPI(config) as api:
        if args.command == "logs":
            return _logs(api, args)
        action = {
            "list": _list,
            "show": _show,
            "compare": _compare,
            "lineage": _lineage,
        }[args.runs_command]
        return action(api, args)


# --- helpers -------------------------------------------------------------------------------


def parse_since(text: str, now: float | None = None) -> float:
    """``7d``/``12h``/``30m``/``45s`` ago, or an ISO date or date-time (local time)."""
    from stepflow._authoring.step import parse_duration
    from stepflow.errors import PipelineDefinitionError, UsageError

    now = time.time() if now is None else now
    try:
        return datetime.datetime.fromisoformat(text).timestamp()
    except ValueError:
        pass
    try:
        return now - parse_duration(text, "--since")
    except PipelineDefinitionError:
        raise UsageError(
            f"--since {text!r}: give an age such as 7d, 12h or 30m, or a date such as 2026-11-20"
        ) from None


def _counts(counts: Mapping[str, int]) -> str:
    order = ("ran", "reused", "failed", "skipped")
    return ", ".join(f"{counts[k]} {k}" for k in order if counts.get(k)) or "no steps"


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _print_json(data: Any) -> int:
    print(json.dumps(data, indent=2, default=str))
    return 0


# --- runs list -----------------------------------------------------------------------------


def _list(api: ReadAPI, args: argparse.Namespace) -> int:
    from stepflow._storage.read import git_label

    since = parse_since(args.since) if args.since else None
    runs = api.runs(pipeline=args.pipeline, state=args.state, since=since, limit=args.limit)
    if args.json:
        return _print_json([_run_dict(r) for r in runs])
    if not runs:
        print("no runs match")
        return 0
    rows = [
        (
            r.id,
            r.pipeline,
            r.state,
            human_time(r.started),
            human_duration(r.duration),
            _counts(r.counts),
            git_label(r),
        )
        for r in runs
    ]
    sys.stdout.write(table(rows, ("RUN", "PIPELINE", "STATE", "STARTED", "TOOK", "STEPS", "GIT")))
    return 0


# --- runs show -----------------------------------------------------------------------------


def _show(api: ReadAPI, args: argparse.Namespace) -> int:
    from stepflow._storage.read import git_label

    run = api.run(args.run)
    steps = api.steps(run)
    if args.json:
        data = _run_dict(run)
        data["steps"] = [_step_dict(s) for s in steps]
        return _print_json(data)
    out = [
        f"run {run.id}",
        f"  pipeline:  {run.pipeline}" + (f"  (target {run.target})" if run.target else ""),
        f"  state:     {run.state}  ({_counts(run.counts)})",
        f"  started:   {human_time(run.started)}   took {human_duration(run.duration)}",
        f"  where:     {run.user or '?'}@{run.host or '?'}, python {run.python_version}, "
        f"stepflow {run.stepflow_version}",
        f"  git:       {git_label(run)}",
        f"  source:    {run.source_hash[:16] if run.source_hash else '-'}"
        + (f" ({_plural(len(run.source_files), 'file')})" if run.source_files else ""),
    ]
    if run.resumed_from:
        out.append(f"  resumed:   from run {run.resumed_from}")
    if run.targets:
        out.append(f"  targets:   {', '.join(run.targets)}")
    params = run.display_params()
    if params:
        out.append("  params:")
        out += [f"    {k} = {v!r}" for k, v in sorted(params.items())]
    if run.tags:
        out.append("  tags:")
        out += [f"    {k} = {v}" for k, v in sorted(run.tags.items())]
    out.append("")
    rows = []
    for s in steps:
        note = f"from run {s.reused_from}" if s.reused_from else (s.reason or "")
        if s.error:
            note = s.error.splitlines()[0][:80]
        tries = str(s.attempts) if s.attempts > 1 else ""
        rows.append(
            (
                s.name,
                s.state,
                human_duration(s.duration) if s.duration else "",
                tries,
                s.backend or "",
                note,
            )
        )
    text = table(rows, ("STEP", "STATE", "TOOK", "TRIES", "BACKEND", "NOTE"))
    metrics = [(s.name, m) for s in steps for m in s.metrics]
    if metrics:
        text += "\nmetrics:\n"
        mrows = [
            (
                step,
                m.name,
                "nan" if m.value is None else f"{m.value:g}",
                "" if m.counter is None else str(m.counter),
            )
            for step, m in metrics
        ]
        text += table(mrows, ("STEP", "METRIC", "VALUE", "AT"))
    files = [(s.name, io) for s in steps for io in s.io if io.direction == "file"]
    if files:
        text += "\nfiles:\n" + table(
            [(step, io.name, io.object or "", str(io.size)) for step, io in files],
            ("STEP", "FILE", "OBJECT", "BYTES"),
        )
    logged = [(s.name, k, v) for s in steps for k, v in s.params.items()]
    if logged:
        text += "\nlogged parameters:\n" + table(logged, ("STEP", "NAME", "VALUE"))
    sys.stdout.write("\n".join(out) + "\n" + text)
    return 0


def _run_dict(run: RunRow) -> dict[str, Any]:
    return iso_times(run.to_dict(), "started", "finished")


def _step_dict(step: StepRow) -> dict[str, Any]:
    data = iso_times(step.to_dict(), "started", "finished")
    data.pop("logs", None)
    data["metrics"] = [{**m, "ts": iso_time(m["ts"])} for m in data["metrics"]]
    return data


# --- runs compare --------------------------------------------------------------------------


def _compare(api: ReadAPI, args: argparse.Namespace) -> int:
    data = api.compare(args.run_a, args.run_b)
    if args.json:
        return _print_json(data)
    out = [
        f"A = {data['a']}  ({data['pipelines'][0]})",
        f"B = {data['b']}  ({data['pipelines'][1]})",
    ]
    out.append("")
    if data["params"]:
        out.append("parameters:")
        out += [f"  {k}: {a!r} -> {b!r}" for k, (a, b) in data["params"].items()]
    else:
        out.append("parameters: the same")
    if data["metrics"]:
        out.append("metrics (last value):")
        for k, (a, b) in data["metrics"].items():
            delta = ""
            if isinstance(a, float) and isinstance(b, float):
                delta = f"  ({b - a:+g})"
            fa = "-" if a is None else f"{a:g}"
            fb = "-" if b is None else f"{b:g}"
            out.append(f"  {k}: {fa} -> {fb}{delta}")
    if data["steps"]:
        out.append("steps that differ:")
        for name, d in data["steps"].items():
            out.append(f"  {name}: {d['a'] or '-'} -> {d['b'] or '-'} ({d['why']})")
    else:
        out.append("steps: the same results (the same cache keys)")
    git_a, git_b = data["git"]
    out.append(f"git: {git_a} -> {git_b}" if git_a != git_b else f"git: {git_a}")
    source = data["source"]
    if source is None:
        out.append("source: not recorded for both runs")
    elif any(source.values()):
        for what in ("changed", "added", "removed"):
            if source[what]:
                out.append(f"source {what}: {', '.join(source[what])}")
    else:
        out.append("source: the same")
    print("\n".join(out))
    return 0


# --- runs lineage --------------------------------------------------------------------------


def _lineage(api: ReadAPI, args: argparse.Namespace) -> int:
    node = api.lineage(args.artifact)
    if args.json:
        return _print_json(node)
    lines: list[str] = []

    def render(n: dict[str, Any], indent: str) -> None:
        what = f"{n.get('output', n.get('input'))} {str(n.get('content_hash'))[:16]}"
        if "run" in n:
            reused = len(n["used_by_runs"])
            extra = f"; also in {reused} later run{'s' if reused != 1 else ''}" if reused else ""
            lines.append(f"{indent}{what}  made by step {n['step']} in run {n['run']}{extra}")
        elif str(n.get("object")).startswith(("dataset:", "model:")):
            kind, _, label = str(n["object"]).partition(":")
            lines.append(f"{indent}{what}  registered {kind} {label}")
        else:
            lines.append(f"{indent}{what}  (producer not recorded)")
        for child in n.get("inputs", []):
            lines.append(f"{indent}  <- input {child['input']}:")
            render(child, indent + "     ")

    render(node, "")
    print("\n".join(lines))
    return 0


# --- logs ----------------------------------------------------------------------------------


def _logs(api: ReadAPI, args: argparse.Namespace) -> int:
    run = api.run(args.run)
    entries = api.step_log(run, args.step, stream=args.stream)
    if args.json:
        return _print_json(
            [
                {"step": e.step, "attempt": e.attempt, "stream": e.stream, "text": e.text}
                for e in entries
            ]
        )
    if not entries:
        where = f"step {args.step!r} of run {run.id}" if args.step else f"run {run.id}"
        print(f"no output was captured for {where}")
        return 0
    for entry in entries:
        tries = f", attempt {entry.attempt}" if entry.attempt > 1 else ""
        print(f"----- {entry.step}{tries}: {entry.stream} -----")
        sys.stdout.write(entry.text if entry.text.endswith("\n") else entry.text + "\n")
    return 0
