"""``stepflow cache ls|info|prune``: what the store holds, and making room.

With a shared store (an object store several homes use), the results are this home's index
plus the records every home published to the store, and pruning removes both the local
entry and the shared document of each result it drops. The listings are the read API's
(``stepflow._storage.read``); this module formats them, and prunes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import attrs

from stepflow._config import Config
from stepflow._execution.store import open_configured_store
from stepflow._humanize import human_age, human_size, human_time, iso_times
from stepflow._storage.datastore import Datastore
from stepflow._storage.index import CacheIndex, CacheRecord
from stepflow._storage.read import ReadAPI, all_cache_records, matching, referenced_objects
from stepflow._surfaces.table import Column, table
from stepflow.errors import UsageError

if TYPE_CHECKING:
    import pluggy

__all__ = [
    "PruneReport",
    "cache_info",
    "filter_hint",
    "find_record",
    "format_record",
    "list_records",
    "matching",
    "parse_size",
    "prune",
    "run_command",
]


def parse_size(text: str) -> int:
    """``"500M"``, ``"10G"``, ``"1.5GB"`` or a number of bytes."""
    from stepflow._humanize import parse_size as parse

    try:
        return parse(text)
    except ValueError:
        raise UsageError(f"--max-size {text!r}: give a size such as 500M or 10G") from None


def _open(config: Config) -> tuple[CacheIndex, Datastore]:
    store = open_configured_store(config)
    return CacheIndex(config.home / "index", store=store), store


def list_records(
    config: Config, *, pipeline: str | None = None, step: str | None = None
) -> list[CacheRecord]:
    """The stored results of ``pipeline`` and ``step``, oldest first."""
    with ReadAPI(config) as api:
        return api.cache_entries(pipeline=pipeline, step=step)


def filter_hint(records: list[CacheRecord], pipeline: str | None, step: str | None) -> str:
    """What ``--pipeline``/``--step`` could have named among ``records`` (all of them), when
    they matched none."""
    if not records:
        return ""
    pipelines = sorted({r.pipeline for r in records})
    if pipeline is not None and pipeline not in pipelines:
        return (
            f"no results of pipeline {pipeline!r}; pipelines with results: {', '.join(pipelines)}\n"
        )
    if step is None:
        return ""
    steps = sorted({r.step for r in records if pipeline is None or r.pipeline == pipeline})
    of = f" of pipeline {pipeline!r}" if pipeline is not None else ""
    return f"no results of step {step!r}{of}; steps with results: {', '.join(steps)}\n"


def cache_info(config: Config) -> dict[str, Any]:
    with ReadAPI(config) as api:
        return api.cache_summary()


def find_record(config: Config, key: str) -> tuple[CacheRecord, dict[str, bool]]:
    """The stored result whose cache key is ``key`` or starts with it, and which of its
    outputs' objects are still in the store.

    :raises UsageError: no result has such a key, or more than one does.
    """
    with ReadAPI(config) as api:
        entry = api.cache_entry(key)
    return entry.record, dict(entry.present)


def format_record(record: CacheRecord, present: dict[str, bool]) -> str:
    """One stored result: what made it, its outputs, and the parts of its key."""
    age = human_age(time.time() - record.created)
    lines = [
        f"key: {record.key}",
        f"pipeline: {record.pipeline}",
        f"step: {record.step}",
        f"run: {record.run_id}",
        f"created: {human_time(record.created)} ({age} ago)",
        f"size: {human_size(record.size)}",
        "outputs:",
    ]
    for out, ref in record.outputs.items():
        if ref.inline:
            where = f"inline in the cache index ({ref.name})"
            missing = "" if present.get(out, True) else "  DAMAGED (a rerun remakes it)"
        else:
            where = f"object {ref.name}"
            missing = (
                "" if present.get(out, True) else "  MISSING from the store (a rerun remakes it)"
            )
        lines.append(
            f"  {out}: {human_size(ref.size)}, {ref.serializer}, {where}, "
            f"content hash {ref.content_hash}{missing}"
        )
    # What `stepflow explain` compares, part by part.
    for part in ("code", "inputs", "params", "env"):
        values = record.components.get(part, {})
        if part == "code":
            values = {k: v for k, v in values.items() if k != "digest"}
        lines.append(f"{part}:" if values else f"{part}: (none)")
        for name, value in values.items():
            shown = record.param_values.get(name, value) if part == "params" else value
            lines.append(f"  {name}: {shown}")
    return "\n".join(lines) + "\n"


@attrs.frozen
class PruneReport:
    removed_results: int
    removed_objects: int
    freed_bytes: int
    kept_pinned: int
    dry_run: bool

    def text(self) -> str:
        verb = "would remove" if self.dry_run else "removed"
        pinned = f"; kept {self.kept_pinned} pinned" if self.kept_pinned else ""
        return (
            f"{verb} {self.removed_results} results and {self.removed_objects} objects "
            f"({human_size(self.freed_bytes)}){pinned}\n"
        )


def prune(
    config: Config,
    *,
    older_than: float | None = None,
    max_size: int | None = None,
    pipeline: str | None = None,
    pinned: Iterable[str] = (),
    dry_run: bool = False,
) -> PruneReport:
    """Remove results by age, pipeline or a size budget, then objects nothing refers to.

    ``pinned`` object names (what registered data sets and models need) are never removed,
    and neither are the results that hold them. With a shared store, the results are every
    home's (see ``all_cache_records``), and no object a kept shared record refers to is removed,
    including records another home published while this prune ran.
    """
    pinned = set(pinned)
    index, store = _open(config)
    try:
        records = sorted(all_cache_records(index), key=lambda r: r.created)
        now = time.time()

        def holds_pinned(record: CacheRecord) -> bool:
            return any(ref.name in pinned for ref in record.outputs.values())

        doomed: list[CacheRecord] = []
        kept_pinned = 0
        selective = older_than is not None or pipeline is not None
        for record in records:
            if older_than is not None and now - record.created < older_than:
                continue
            if pipeline is not None and record.pipeline != pipeline:
                continue
            if not selective:
                continue
            if holds_pinned(record):
                kept_pinned += 1
                continue
            doomed.append(record)
        if max_size is not None:
            remaining = [r for r in records if r not in doomed]
            total = sum(r.size for r in remaining)
            for record in remaining:  # oldest first
                if total <= max_size:
                    break
                if holds_pinned(record):
                    kept_pinned += 1
                    continue
                doomed.append(record)
                total -= record.size
        survivors = [r for r in records if r not in doomed]
        keep = referenced_objects(survivors) | pinned
        if not dry_run:
            # Records first, objects after: a crash in between leaves unreferenced objects
            # (swept next time), never a record that points at nothing.
            for record in doomed:
                index.delete(record.key)
            # Another home may have published results since they were listed: what the
            # store's records refer to now is kept too.
            keep |= referenced_objects(index.shared_records())
        objects = [n for n in store.names() if n not in keep]
        # Outputs kept inline go with their records.
        freed = sum(store.size(n) for n in objects) + sum(
            ref.size for r in doomed for ref in r.outputs.values() if ref.inline
        )
        if not dry_run:
            for name in objects:
                store.delete(name)
            # Stores that leave temporary files behind can clean them up; others have none.
            sweep = getattr(store, "sweep", None)
            if sweep is not None:
                sweep()
    finally:
        index.close()
    return PruneReport(len(doomed), len(objects), freed, kept_pinned, dry_run)


def record_dict(record: CacheRecord) -> dict[str, Any]:
    """A stored result as its ``--json`` form (times in ISO 8601); each output says whether
    it is kept ``inline`` in the index (its bytes are not shown)."""
    data = record.to_dict()
    for out in data["outputs"].values():
        out["inline"] = out.pop("data", None) is not None
    return iso_times(data, "created")


def format_records(records: list[CacheRecord]) -> str:
    if not records:
        return "no stored results\n"
    now = time.time()
    # Keys are shown as 12-character prefixes, which ``cache info`` takes.
    columns = [
        Column("key", min_width=14),
        Column("pipeline", min_width=16, gap=" "),
        Column("step", min_width=20, gap=" "),
        Column("age", ">", min_width=8, gap=" "),
        Column("size", ">", min_width=10, gap=" "),
        Column("run"),
    ]
    rows = [
        (r.key[:12], r.pipeline, r.step, human_age(now - r.created), human_size(r.size), r.run_id)
        for r in records
    ]
    return table(rows, columns, strip=False)


def run_command(args: argparse.Namespace, config: Config, pm: pluggy.PluginManager) -> int:
    """Run ``stepflow cache ls|info|prune``; returns the exit code."""
    if args.cache_command == "prune":
        return _prune(args, config, pm)
    with ReadAPI(config, pm=pm) as api:
        if args.cache_command == "ls":
            every = api.cache_entries()
            records = matching(every, pipeline=args.pipeline, step=args.step)
            if args.json:
                print(json.dumps([record_dict(r) for r in records], indent=2))
            else:
                sys.stdout.write(format_records(records))
                if not records and (args.pipeline or args.step):
                    sys.stdout.write(filter_hint(every, args.pipeline, args.step))
            return 0
        if args.key is not None:
            entry = api.cache_entry(args.key)
            present = dict(entry.present)
            if args.json:
                print(json.dumps({**record_dict(entry.record), "present": present}, indent=2))
            else:
                sys.stdout.write(format_record(entry.record, present))
            return 0
        info = api.cache_summary()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            shown = f"{value} ({human_size(value)})" if key.endswith("bytes") else value
            print(f"{key}: {shown}")
    return 0


def _prune(args: argparse.Namespace, config: Config, pm: pluggy.PluginManager) -> int:
    from stepflow._authoring.step import parse_duration
    from stepflow.errors import PipelineDefinitionError

    if not (args.older_than or args.max_size or args.pipeline or args.all):
        raise UsageError(
            "cache prune needs --older-than AGE, --max-size SIZE, --pipeline NAME or --all"
        )
    try:
        older = (
            0.0
            if args.all
            else (parse_duration(args.older_than, "--older-than") if args.older_than else None)
        )
    except PipelineDefinitionError as exc:
        raise UsageError(str(exc)) from None
    pinned: set[str] = set()
    for names in pm.hook.stepflow_cache_pinned(config=config):
        pinned.update(names or ())
    report = prune(
        config,
        older_than=older,
        max_size=parse_size(args.max_size) if args.max_size else None,
        pipeline=args.pipeline,
        pinned=pinned,
        dry_run=args.dry_run,
    )
    if args.json:
        print(json.dumps(attrs.asdict(report), indent=2))
    else:
        sys.stdout.write(report.text())
        if args.pipeline and not report.removed_results and not report.kept_pinned:
            # Most likely a misspelt name: say which pipelines have results.
            sys.stdout.write(filter_hint(list_records(config), args.pipeline, None))
    return 0
