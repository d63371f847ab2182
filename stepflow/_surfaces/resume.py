"""``stepflow run --resume RUN`` and ``--last-failed``: run a recorded run again.

The new run gets the recorded run's target, parameters and step selection; everything that
succeeded before is reused through the cache as usual, so only what failed (and what depends
on it) runs. Secret parameters are never recorded, so they must be given again. If the
project's source changed since the recorded run, the files are named (a fix is the usual
reason to resume), and the changed steps run again because their cache keys changed.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from stepflow.errors import UsageError

if TYPE_CHECKING:
    from stepflow._config import Config
    from stepflow._pipeline import Pipeline
    from stepflow._storage.records import RunRow

__all__ = ["check_resumed", "prepare_resume"]


def prepare_resume(args: argparse.Namespace, config: Config) -> argparse.Namespace:
    """Fill ``args`` in from the recorded run: target, targets, parameters."""
    from stepflow._surfaces.runscmd import open_existing

    records = open_existing(config)
    try:
        if args.last_failed:
            run = _last_failed(records, args.target)
        else:
            run = records.run(args.resume)
    finally:
        records.close()
    if run.state == "running":
        raise UsageError(
            f"run {run.id} is still running (process {run.pid} on {run.host}); wait for it or "
            f"stop it before resuming"
        )
    target = args.target or run.target
    if target is None:
        raise UsageError(
            f"run {run.id} was started from Python, so its TARGET is not recorded; give it: "
            f"stepflow run TARGET --resume {run.id}"
        )
    resumed = argparse.Namespace(**vars(args))
    resumed.target = target
    resumed.targets = list(args.targets) or list(run.targets)
    resumed.resumed_params = {}
    resumed.resumed_run = run
    resumed.resume_from = run.id
    return resumed


def _last_failed(records: Any, target: str | None) -> RunRow:
    pipeline_name = None
    if target is not None:
        from stepflow._surfaces.target import load_target

        pipeline_name = load_target(target)[0].name
    found = records.runs(pipeline=pipeline_name, state="failed", limit=1)
    if not found:
        of = f" of pipeline {pipeline_name!r}" if pipeline_name else ""
        raise UsageError(f"no failed run{of} is recorded; see `stepflow runs list`")
    return found[0]


def check_resumed(
    args: argparse.Namespace, pipeline: Pipeline, given: Mapping[str, Any]
) -> dict[str, Any]:
    """The parameters of the resumed run: recorded values, then ``--param`` overrides."""
    from stepflow._authoring.parse import check_value, parse_value

    run: RunRow = args.resumed_run
    if run.pipeline != pipeline.name:
        raise UsageError(
            f"run {run.id} ran pipeline {run.pipeline!r}, but {args.target!r} is pipeline "
            f"{pipeline.name!r}; give the target of that run"
        )
    params: dict[str, Any] = {}
    dropped = []
    for name, encoded in run.params.items():
        spec = pipeline.params.get(name)
        if spec is None:
            dropped.append(name)
            continue
        if "json" in encoded:
            params[name] = check_value(name, encoded["json"], spec.annotation)
        else:
            params[name] = parse_value(name, encoded["text"], spec.annotation)
    params.update(given)
    missing = [n for n in run.secret_params if n in pipeline.params and n not in given]
    if missing:
        flags = " ".join(f"--param {n}=..." for n in missing)
        raise UsageError(
            f"run {run.id} had secret parameter(s) {', '.join(missing)}, which are never "
            f"recorded; give them again: {flags}"
        )
    print(f"resuming run {run.id} ({run.state}) of pipeline {run.pipeline}")
    if dropped:
        print(f"  parameters no longer in the pipeline, left out: {', '.join(dropped)}")
    _say_source_changes(run, args)
    return params


def _say_source_changes(run: RunRow, args: argparse.Namespace) -> None:
    if run.source_files is None:
        return
    from stepflow._config import load_config
    from stepflow._storage.source import diff, snapshot

    config = load_config(home=getattr(args, "home", None))
    try:
        now = snapshot(config.rootdir, home=config.home)
    except OSError:
        return
    change = diff(run.source_files, now.files)
    if change.added or change.removed or change.changed:
        print(f"  source changed since that run: {change.text()}")
