"""``stepflow runs list|show|compare|lineage`` and ``stepflow logs``: read the run records.

Parsers are built here with argparse only; the records and formatting load when a command
runs, so the CLI starts fast.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from stepflow._humanize import human_time, iso_time, iso_times

if TYPE_CHECKING:
    from stepflow._config import Config
    from stepflow._storage.records import RunRecords, RunRow, StepRow

__all__ = ["add_parsers", "run_command"]


def add_parsers(
    sub: argparse._SubParsersAction, add_common: Callable[[argparse.ArgumentParser], None]
) -> None:
    runs = sub.add_parser("runs", help="list, show and compare recorded runs")
    runs_sub = runs.add_subparsers(dest="runs_command", metavar="ACTION", required=True)

    ls = runs_sub.add_parser("list", help="list runs, newest first")
    ls.add_argument("--pipeline", help="only runs of this pipeline")
    ls.add_argument(
        "--state", choices=["running", "succeeded", "failed", "interrupted"], help="only these"
    )
    ls.add_argument("--since", metavar="WHEN", help="an age (7d, 12h, 30m) or a date (2026-11-20)")
    ls.add_argument("--limit", type=int, default=50, metavar="N", help="at most N runs (50)")
    ls.add_argument("--json", action="store_true", help="print JSON")
    add_common(ls)

    show = runs_sub.add_parser("show", help="a run's steps, parameters, metrics and source")
    show.add_argument("run", metavar="RUN", help="a run id, a unique prefix of it, last or last~N")
    show.add_argument("--json", action="store_true", help="print JSON")
    add_common(show)

    compare = runs_sub.add_parser(
        "compare", help="what differs between two runs: parameters, metrics, steps, source"
    )
    compare.add_argument("run_a", metavar="RUN")
    compare.add_argument("run_b", metavar="RUN")
    compare.add_argument("--json", action="store_true", help="print JSON")
    add_common(compare)

    lineage = runs_sub.add_parser(
        "lineage",
        help="which run and step made an artifact, and from which inputs",
        description="ARTIFACT is a content hash or object name (or a unique prefix of one), "
        "or RUN:OUTPUT for an output of a recorded run.",
    )
    lineage.add_argument("artifact", metavar="ARTIFACT")
    lineage.add_argument("--json", action="store_true", help="print JSON")
    add_common(lineage)

    from stepflow._surfaces import sourcecmd

    sourcecmd.add_parser(runs_sub, add_common)

    logs = sub.add_parser("logs", help="print what a run's steps wrote (stdout, stderr, logging)")
    logs.add_argument("run", metavar="RUN", help="a run id, a unique prefix of one, or 'last'")
    logs.add_argument("step", metavar="STEP", nargs="?", help="only this step")
    logs.add_argument("--stream", choices=["stdout", "stderr", "log"], help="only this stream")
    logs.add_argument("--json", action="store_true", help="print JSON")
    add_common(logs)


def open_existing(config: Config) -> RunRecords:
    """The home's run records; a clear error when nothing was ever recorded there."""
    from stepflow._storage.records import RunRecords
    from stepflow.errors import UsageError

    path = config.home / "runs.db"
    if not path.is_file():
        raise UsageError(
            f"no run records in {config.home} (no run has been recorded there yet); run a "
            f"pipeline first, or point --home / STEPFLOW_HOME at the right folder"
        )
    records = RunRecords(path)
    records.mark_abandoned()
    return records


def run_command(args: argparse.Namespace, config: Config) -> int:
    records = open_existing(config)
    try:
        if args.command == "logs":
            return _logs(records, args)
        action = {
            "list": _list,
            "show": _show,
            "compare": _compare,
            "lineage": _lineage,
        }[args.runs_command]
        return action(records, args)
    finally:
        records.close()


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


def _secs(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 60:
        return f"{value:.2f}s"
    minutes, seconds = divmod(value, 60)
    if minutes < 60:
        return f"{int(minutes)}m{seconds:02.0f}s"
    hours, minutes = divmod(minutes, 60)
    return f"{int(hours)}h{int(minutes):02d}m"


def _counts(counts: Mapping[str, int]) -> str:
    order = ("ran", "reused", "failed", "skipped")
    return ", ".join(f"{counts[k]} {k}" for k in order if counts.get(k)) or "no steps"


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _git(run: RunRow) -> str:
    if not run.git_commit:
        return "-"
    return run.git_commit[:10] + (" (dirty)" if run.git_dirty else "")


def _table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    for row in rows:
        cells = zip(row, widths, strict=True)
        lines.append("  ".join(str(c).ljust(w) for c, w in cells).rstrip())
    return "\n".join(lines) + "\n"


def _print_json(data: Any) -> int:
    print(json.dumps(data, indent=2, default=str))
    return 0


def _last_metrics(steps: Sequence[StepRow]) -> dict[str, float | None]:
    """``step.metric`` → the last value logged."""
    found: dict[str, float | None] = {}
    for step in steps:
        for metric in step.metrics:
            found[f"{step.name}.{metric.name}"] = metric.value
    return found


# --- runs list -----------------------------------------------------------------------------


def _list(records: RunRecords, args: argparse.Namespace) -> int:
    since = parse_since(args.since) if args.since else None
    runs = records.runs(pipeline=args.pipeline, state=args.state, since=since, limit=args.limit)
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
            _secs(r.duration),
            _counts(r.counts),
            _git(r),
        )
        for r in runs
    ]
    sys.stdout.write(_table(rows, ("RUN", "PIPELINE", "STATE", "STARTED", "TOOK", "STEPS", "GIT")))
    return 0


# --- runs show -----------------------------------------------------------------------------


def _show(records: RunRecords, args: argparse.Namespace) -> int:
    run = records.run(args.run)
    steps = records.steps(run.id)
    if args.json:
        data = _run_dict(run)
        data["steps"] = [_step_dict(s) for s in steps]
        return _print_json(data)
    out = [
        f"run {run.id}",
        f"  pipeline:  {run.pipeline}" + (f"  (target {run.target})" if run.target else ""),
        f"  state:     {run.state}  ({_counts(run.counts)})",
        f"  started:   {human_time(run.started)}   took {_secs(run.duration)}",
        f"  where:     {run.user or '?'}@{run.host or '?'}, python {run.python_version}, "
        f"stepflow {run.stepflow_version}",
        f"  git:       {_git(run)}",
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
            (s.name, s.state, _secs(s.duration) if s.duration else "", tries, s.backend or "", note)
        )
    text = _table(rows, ("STEP", "STATE", "TOOK", "TRIES", "BACKEND", "NOTE"))
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
        text += _table(mrows, ("STEP", "METRIC", "VALUE", "AT"))
    files = [(s.name, io) for s in steps for io in s.io if io.direction == "file"]
    if files:
        text += "\nfiles:\n" + _table(
            [(step, io.name, io.object or "", str(io.size)) for step, io in files],
            ("STEP", "FILE", "OBJECT", "BYTES"),
        )
    logged = [(s.name, k, v) for s in steps for k, v in s.params.items()]
    if logged:
        text += "\nlogged parameters:\n" + _table(logged, ("STEP", "NAME", "VALUE"))
    sys.stdout.write("\n".join(out) + "\n" + text)
    return 0


def _run_dict(run: RunRow) -> dict[str, Any]:
    return iso_times(run.to_dict(), "started", "finished")


def _step_dict(step: StepRow) -> dict[str, Any]:
    import attrs

    data = iso_times(attrs.asdict(step), "started", "finished")
    data.pop("logs", None)
    data["metrics"] = [{**m, "ts": iso_time(m["ts"])} for m in data["metrics"]]
    return data


# --- runs compare --------------------------------------------------------------------------


def compare_runs(records: RunRecords, a_ref: str, b_ref: str) -> dict[str, Any]:
    """What differs between two runs, as plain data."""
    a, b = records.run(a_ref), records.run(b_ref)
    a_steps = {s.name: s for s in records.steps(a.id)}
    b_steps = {s.name: s for s in records.steps(b.id)}
    pa, pb = a.display_params(), b.display_params()
    params = {k: [pa.get(k), pb.get(k)] for k in sorted({*pa, *pb}) if pa.get(k) != pb.get(k)}
    ma, mb = _last_metrics(list(a_steps.values())), _last_metrics(list(b_steps.values()))
    metrics = {k: [ma.get(k), mb.get(k)] for k in sorted({*ma, *mb})}
    steps = {}
    for name in [*a_steps, *(n for n in b_steps if n not in a_steps)]:
        sa, sb = a_steps.get(name), b_steps.get(name)
        if sa is None or sb is None:
            steps[name] = {"a": sa and sa.state, "b": sb and sb.state, "why": "only in one run"}
        elif sa.cache_key != sb.cache_key:
            steps[name] = {"a": sa.state, "b": sb.state, "why": "different cache key"}
        elif sa.state != sb.state and {sa.state, sb.state} != {"ran", "reused"}:
            # Ran in one and reused in the other with one key is the same result: not listed.
            steps[name] = {"a": sa.state, "b": sb.state, "why": "same cache key"}
    source: dict[str, Any] | None = None
    if a.source_files is not None and b.source_files is not None:
        from stepflow._storage.source import diff

        d = diff(a.source_files, b.source_files)
        source = {"added": d.added, "removed": d.removed, "changed": d.changed}
    return {
        "a": a.id,
        "b": b.id,
        "pipelines": [a.pipeline, b.pipeline],
        "params": params,
        "metrics": metrics,
        "steps": steps,
        "git": [_git(a), _git(b)],
        "source": source,
    }


def _compare(records: RunRecords, args: argparse.Namespace) -> int:
    data = compare_runs(records, args.run_a, args.run_b)
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


def lineage(records: RunRecords, artifact: str, *, depth: int = 50) -> dict[str, Any]:
    """Who made ``artifact`` (hash, object name, prefix, or ``RUN:OUTPUT``), recursively."""
    from stepflow.errors import UsageError

    if ":" in artifact:
        run_ref, output = artifact.split(":", 1)
        run = records.run(run_ref)
        for step in records.steps(run.id):
            for io in step.io:
                if io.direction == "out" and io.name == output and io.content_hash:
                    return lineage(records, io.content_hash, depth=depth)
        raise UsageError(f"run {run.id} recorded no output named {output!r}")
    matches = list(records.producers(artifact))
    hashes = {io.content_hash for _, _, io in matches}
    if not matches:
        raise UsageError(
            f"no recorded run produced an artifact {artifact!r}; give a content hash or object "
            f"name from `stepflow runs show RUN --json`, or RUN:OUTPUT"
        )
    if len(hashes) > 1:
        listed = ", ".join(sorted(h or "" for h in hashes))
        raise UsageError(f"{artifact!r} matches several artifacts ({listed}); give more of it")
    return _lineage_node(records, matches, depth)


def _lineage_node(
    records: RunRecords, matches: list[tuple[str, str, Any]], depth: int
) -> dict[str, Any]:
    # The earliest run whose step actually ran made it; later ones reused or re-made it.
    made = None
    for run_id, step_name, io in matches:
        step = next((s for s in records.steps(run_id) if s.name == step_name), None)
        if step is not None and step.state == "ran":
            made = (run_id, step, io)
            break
    if made is None:
        run_id, step_name, io = matches[0]
        step = next(s for s in records.steps(run_id) if s.name == step_name)
        made = (run_id, step, io)
    run_id, step, io = made
    node: dict[str, Any] = {
        "content_hash": io.content_hash,
        "object": io.object,
        "output": io.name,
        "size": io.size,
        "run": run_id,
        "step": step.name,
        "state": step.state,
        "used_by_runs": sorted({m[0] for m in matches} - {run_id}),
        "inputs": [],
    }
    for inp in step.io:
        if inp.direction != "in":
            continue
        child: dict[str, Any] = {
            "input": inp.name,
            "content_hash": inp.content_hash,
            "object": inp.object,
        }
        found = list(records.producers(inp.content_hash)) if inp.content_hash else []
        if found and depth > 0:
            child.update(_lineage_node(records, found, depth - 1))
        child["input"] = inp.name
        node["inputs"].append(child)
    return node


def _lineage(records: RunRecords, args: argparse.Namespace) -> int:
    node = lineage(records, args.artifact)
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


def _logs(records: RunRecords, args: argparse.Namespace) -> int:
    from stepflow.errors import UsageError

    run = records.run(args.run)
    if args.step is not None:
        names = {s.name for s in records.steps(run.id)}
        if args.step not in names:
            raise UsageError(
                f"run {run.id} has no step {args.step!r}; steps: {', '.join(sorted(names))}"
            )
    entries = [e for e in records.logs(run.id, args.step) if not args.stream or e[2] == args.stream]
    if args.json:
        return _print_json(
            [{"step": s, "attempt": a, "stream": st, "text": t} for s, a, st, t in entries]
        )
    if not entries:
        where = f"step {args.step!r} of run {run.id}" if args.step else f"run {run.id}"
        print(f"no output was captured for {where}")
        return 0
    for step, attempt, stream, text in entries:
        tries = f", attempt {attempt}" if attempt > 1 else ""
        print(f"----- {step}{tries}: {stream} -----")
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0
