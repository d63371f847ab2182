"""``stepflow cache ls|info|prune``: what the store holds, and making room.

With a shared store (an object store several homes use), the results are this home's index
plus the records every home published to the store, and pruning removes both the local
entry and the shared document of each result it drops.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import attrs

from stepflow._config import Config
from stepflow._humanize import human_size, human_time, iso_times
from stepflow._storage.datastore import Datastore
from stepflow._storage.index import CacheIndex, CacheRecord
from stepflow._storage.stores import open_datastore
from stepflow.errors import UsageError

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
]

_SIZE_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """``"500M"``, ``"10G"``, ``"1.5GB"`` or a number of bytes."""
    raw = text.strip().upper().removesuffix("IB").removesuffix("B")
    number, unit = raw, ""
    if raw and raw[-1] in _SIZE_UNITS:
        number, unit = raw[:-1], raw[-1]
    try:
        value = float(number) * _SIZE_UNITS[unit]
    except ValueError:
        raise UsageError(f"--max-size {text!r}: give a size such as 500M or 10G") from None
    return int(value)


def _open(config: Config) -> tuple[CacheIndex, Datastore]:
    store = open_datastore(config.store, home=config.home, options=config.store_options)
    return CacheIndex(config.home / "index", store=store), store


def _all_records(index: CacheIndex) -> list[CacheRecord]:
    """This home's records, then those only the shared store has (other homes' results)."""
    records = {r.key: r for r in index.records()}
    for record in index.shared_records():
        records.setdefault(record.key, record)
    return list(records.values())


def _referenced(records: Iterable[CacheRecord]) -> set[str]:
    return {ref.name for r in records for ref in r.outputs.values()}


def list_records(
    config: Config, *, pipeline: str | None = None, step: str | None = None
) -> list[CacheRecord]:
    index, _ = _open(config)
    try:
        records = matching(_all_records(index), pipeline=pipeline, step=step)
    finally:
        index.close()
    return sorted(records, key=lambda r: r.created)


def matching(
    records: Iterable[CacheRecord], *, pipeline: str | None = None, step: str | None = None
) -> list[CacheRecord]:
    """The records of ``pipeline`` and ``step`` (``None``: any)."""
    return [
        r
        for r in records
        if (pipeline is None or r.pipeline == pipeline) and (step is None or r.step == step)
    ]


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
    index, store = _open(config)
    try:
        records = _all_records(index)
    finally:
        index.close()
    referenced = _referenced(records)
    names = list(store.names())
    sizes = {n: store.size(n) for n in names}
    return {
        "home": str(config.home),
        "store": store.uri,
        "shared": store.shared,
        "results": len(records),
        "objects": len(names),
        "bytes": sum(sizes.values()),
        "unreferenced_objects": sum(1 for n in names if n not in referenced),
        "pipelines": sorted({r.pipeline for r in records}),
    }


def find_record(config: Config, key: str) -> tuple[CacheRecord, dict[str, bool]]:
    """The stored result whose cache key is ``key`` or starts with it, and which of its
    outputs' objects are still in the store.

    :raises UsageError: no result has such a key, or more than one does.
    """
    wanted = key.strip().lower()
    if len(wanted) < 4 or any(c not in "0123456789abcdef" for c in wanted):
        raise UsageError(
            f"cache key {key!r}: give a key, or the first 4 or more of its hex digits, as "
            f"`stepflow cache ls` shows them"
        )
    index, store = _open(config)
    try:
        found = [r for r in _all_records(index) if r.key.startswith(wanted)]
        if len(found) == 1:
            record = found[0]
            return record, {out: store.exists(ref.name) for out, ref in record.outputs.items()}
    finally:
        index.close()
    if not found:
        raise UsageError(
            f"no stored result has a cache key starting with {wanted!r} in {config.home}; "
            f"`stepflow cache ls` lists them"
        )
    keys = ", ".join(f"{r.key[:12]} ({r.pipeline}:{r.step})" for r in found[:10])
    raise UsageError(f"cache key {wanted!r} is ambiguous ({keys}); give more of it")


def format_record(record: CacheRecord, present: dict[str, bool]) -> str:
    """One stored result: what made it, its outputs, and the parts of its key."""
    age = _age(time.time() - record.created)
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
        missing = "" if present.get(out, True) else "  MISSING from the store (a rerun remakes it)"
        lines.append(
            f"  {out}: {human_size(ref.size)}, {ref.serializer}, object {ref.name}, "
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
    home's (see ``_all_records``), and no object a kept shared record refers to is removed,
    including records another home published while this prune ran.
    """
    pinned = set(pinned)
    index, store = _open(config)
    try:
        records = sorted(_all_records(index), key=lambda r: r.created)
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
        keep = _referenced(survivors) | pinned
        if not dry_run:
            # Records first, objects after: a crash in between leaves unreferenced objects
            # (swept next time), never a record that points at nothing.
            for record in doomed:
                index.delete(record.key)
            # Another home may have published results since they were listed: what the
            # store's records refer to now is kept too.
            keep |= _referenced(index.shared_records())
        objects = [n for n in store.names() if n not in keep]
        freed = sum(store.size(n) for n in objects)
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
    """A stored result as its ``--json`` form (times in ISO 8601)."""
    return iso_times(record.to_dict(), "created")


def format_records(records: list[CacheRecord]) -> str:
    if not records:
        return "no stored results\n"
    now = time.time()
    # Names are never cut: a cut name cannot be told from a shorter real one, so the columns
    # widen to the longest. Keys are shown as 12-character prefixes, which ``cache info`` takes.
    pipe_w = max(16, *(len(r.pipeline) for r in records))
    step_w = max(20, *(len(r.step) for r in records))
    lines = [f"{'key':<14} {'pipeline':<{pipe_w}} {'step':<{step_w}} {'age':>8} {'size':>10}  run"]
    for r in records:
        lines.append(
            f"{r.key[:12]:<14} {r.pipeline:<{pipe_w}} {r.step:<{step_w}} "
            f"{_age(now - r.created):>8} {human_size(r.size):>10}  {r.run_id}"
        )
    return "\n".join(lines) + "\n"


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"
