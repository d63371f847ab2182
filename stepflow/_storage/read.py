"""The read side of a stepflow home: run history, step logs, metrics, lineage, run
comparison, cache listings and the registries, as plain values.

Every surface that shows recorded state (the CLI's ``runs``/``logs``/``cache``/``datasets``/
``models`` commands, the web UI) asks :class:`ReadAPI` and only formats what it returns:
frozen attrs records (:class:`~stepflow._storage.records.RunRow`,
:class:`~stepflow._storage.index.CacheRecord`, ...), dicts and lists. Nothing here prints.

The run records are opened read-only (nothing is created or migrated), so a reader never
takes a writer's lock; the one write left is marking runs whose process died as
``interrupted``, done only when this host has runs still recorded as ``running``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from stepflow.errors import UsageError

if TYPE_CHECKING:
    import pluggy

    from stepflow._config import Config
    from stepflow._storage.datastore import Datastore
    from stepflow._storage.index import CacheIndex, CacheRecord
    from stepflow._storage.records import MetricRow, RunRecords, RunRow, StepIO, StepRow
    from stepflow._storage.registry import DatasetVersion, ModelVersion, Registry

__all__ = [
    "CacheEntry",
    "LogEntry",
    "ReadAPI",
    "all_cache_records",
    "git_label",
    "matching",
    "open_run_records",
    "referenced_objects",
]


@attrs.frozen
class LogEntry:
    """What one attempt of a step wrote to one stream."""

    step: str
    attempt: int
    #: ``"stdout"``, ``"stderr"`` or ``"log"``
    stream: str
    text: str


@attrs.frozen
class CacheEntry:
    """A stored result, and which of its outputs' objects are still in the store."""

    record: CacheRecord
    #: output name → whether its object is in the store (for an output kept inline in
    #: the record: whether its bytes still match their digest)
    present: Mapping[str, bool]


# --- opening -------------------------------------------------------------------------------


def open_run_records(config: Config, *, mark_abandoned: bool = True) -> RunRecords:
    """The home's run records, opened read-only; a clear error when nothing was ever
    recorded there.

    Runs of this host whose process died are marked ``interrupted`` first, as every reader
    of the records expects.
    """
    import sqlite3

    from stepflow._storage.records import RunRecords, host_name

    path = config.home / "runs.db"
    if not path.is_file():
        raise UsageError(
            f"no run records in {config.home} (no run has been recorded there yet); run a "
            f"pipeline first, or point --home / STEPFLOW_HOME at the right folder"
        )
    records = RunRecords.read_only(path)
    host = host_name()
    if mark_abandoned and any(r.host == host for r in records.runs(state="running")):
        # Only a writer can mark them; it is opened for that alone, so a home with nothing
        # running is never written to by a reader.
        try:
            writer = RunRecords(path)
            writer.mark_abandoned()
        except (OSError, sqlite3.Error):
            # A home this user cannot write to is shown as recorded. The failed writer is
            # left to the garbage collector: a transaction that failed to begin leaves its
            # lock held, and closing would wait for it.
            return records
        writer.close()
    return records


def all_cache_records(index: CacheIndex) -> list[CacheRecord]:
    """This home's records, then those only the shared store has (other homes' results)."""
    records = {r.key: r for r in index.records()}
    for record in index.shared_records():
        records.setdefault(record.key, record)
    return list(records.values())


def referenced_objects(records: Iterable[CacheRecord]) -> set[str]:
    """The object names the outputs of ``records`` refer to (not those kept inline in a
    record: they read no object)."""
    return {ref.name for r in records for ref in r.outputs.values() if ref.data is None}


def matching(
    records: Iterable[CacheRecord], *, pipeline: str | None = None, step: str | None = None
) -> list[CacheRecord]:
    """The records of ``pipeline`` and ``step`` (``None``: any)."""
    return [
        r
        for r in records
        if (pipeline is None or r.pipeline == pipeline) and (step is None or r.step == step)
    ]


def git_label(run: RunRow) -> str:
    """A run's commit as listings show it: ``0123456789 (dirty)``, or ``-`` for none."""
    if not run.git_commit:
        return "-"
    return run.git_commit[:10] + (" (dirty)" if run.git_dirty else "")


def _last_metrics(steps: Sequence[StepRow]) -> dict[str, float | None]:
    """``step.metric`` → the last value logged."""
    found: dict[str, float | None] = {}
    for step in steps:
        for metric in step.metrics:
            found[f"{step.name}.{metric.name}"] = metric.value
    return found


# --- the API -------------------------------------------------------------------------------


class ReadAPI:
    """Queries over one home's records, cache and registries; each part opens on first use.

    ``pm`` is the plugin manager whose datastore plugins open a non-local store (the CLI's;
    without one, the built-in plugins and those the configuration names). Close it, or use
    it as a context manager.
    """

    def __init__(
        self,
        config: Config,
        *,
        pm: pluggy.PluginManager | None = None,
        read_only: bool = False,
    ) -> None:
        self.config = config
        self._pm = pm
        #: never write to the run records, not even to mark runs whose process died
        #: (the web UI: a reader that only shows)
        self.read_only = read_only
        self._records: RunRecords | None = None
        self._store: Datastore | None = None

    def close(self) -> None:
        if self._records is not None:
            self._records.close()
            self._records = None
        if self._store is not None:
            self._store.close()
            self._store = None

    def __enter__(self) -> ReadAPI:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @property
    def records(self) -> RunRecords:
        """The run records, opened read-only; :class:`UsageError` when there are none."""
        if self._records is None:
            self._records = open_run_records(self.config, mark_abandoned=not self.read_only)
        return self._records

    # --- runs ---------------------------------------------------------------------------

    def runs(
        self,
        *,
        pipeline: str | None = None,
        state: str | None = None,
        since: float | None = None,
        limit: int | None = 50,
    ) -> list[RunRow]:
        """Runs, newest first, of ``pipeline`` in ``state`` started at or after ``since``."""
        return self.records.runs(pipeline=pipeline, state=state, since=since, limit=limit)

    def run_page(
        self,
        *,
        pipeline: str | None = None,
        state: str | None = None,
        schedule: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[RunRow], int]:
        """One page of runs, newest first, of ``pipeline`` in ``state`` started by
        ``schedule`` (runs tagged ``schedule``), and how many match in all. Listed runs
        carry no source manifest (``source_files`` is ``None``)."""
        tags = {"schedule": schedule} if schedule is not None else None
        return self.records.run_page(
            pipeline=pipeline, state=state, tags=tags, limit=limit, offset=offset
        )

    def pipelines(self) -> list[str]:
        """The pipelines that have recorded runs."""
        return self.records.pipelines()

    def schedules_seen(self) -> list[str]:
        """The schedules that started recorded runs (the runs' ``schedule`` tag)."""
        return self.records.tag_values("schedule")

    def changes(self, run: str | None = None) -> tuple[Any, ...]:
        """A token that changes when any run (or run id ``run``) starts, records a step or
        finishes, and, for a running ``run``, when a step starts or stops being in flight
        (``live_steps``): poll it, and query again only when it changed."""
        token = self.records.changes(run)
        if run is not None and token and token[0] == "running":
            from stepflow._storage.live import live_steps

            token = (*token, tuple(sorted(live_steps(self.config.home, run).items())))
        return token

    def run_graph(self, run: str | RunRow) -> dict[str, Any]:
        """The run's graph as planned, with each step's state: ``{"steps": [{"name", "state",
        "duration", "reused_from", ...}], "edges": [[producer, consumer], ...]}``.

        A step not recorded yet is ``running`` while the run's process publishes it in the
        home's live area (it has been in flight for a moment: ``live_steps``), ``pending``
        otherwise while the run goes on, and ``skipped`` in a run that ended without it. A
        run recorded before plans were kept is drawn from its recorded steps, joined by the
        names of their inputs and outputs.
        """
        found = self.run(run)
        rows = {s["name"]: s for s in self.records.step_summaries(found.id)}
        in_flight = self.live_steps(found) if found.state == "running" else {}
        plan = self.records.plan(found.id)
        if plan is None:
            full = self.records.steps(found.id)
            makers = {io.name: s.name for s in full for io in s.io if io.direction == "out"}
            edges = {
                (makers[io.name], s.name): None
                for s in full
                for io in s.io
                if io.direction == "in" and makers.get(io.name) not in (None, s.name)
            }
            plan = {"steps": list(rows), "edges": [list(e) for e in edges]}
        planned = set(plan["steps"])
        steps = []
        for name in [*plan["steps"], *(n for n in rows if n not in planned)]:
            row = rows.get(name)
            if row is not None:
                steps.append(row)
                continue
            if found.state != "running":
                state = "skipped"
            elif name in in_flight:
                state = "running"
            else:
                state = "pending"
            steps.append({"name": name, "state": state})
        return {"run": found.id, "steps": steps, "edges": plan["edges"]}

    def step(self, run: str | RunRow, name: str) -> StepRow:
        """One recorded step of a run, with its inputs, outputs and metrics.

        :raises UsageError: the run has not recorded a step ``name`` (yet).
        """
        found = self.run(run)
        row = self.records.step(found.id, name)
        if row is not None:
            return row
        names = ", ".join(s["name"] for s in self.records.step_summaries(found.id))
        raise UsageError(
            f"run {found.id} has recorded no step {name!r}; steps: {names or 'none recorded yet'}"
        )

    def metric_history(
        self, pipeline: str, step: str, name: str, *, limit: int = 50
    ) -> list[tuple[str, float, float | None]]:
        """``(run id, run start, last value)`` of a step's metric over the last ``limit``
        runs of ``pipeline`` that logged it, oldest first."""
        return self.records.metric_history(pipeline, step, name, limit=limit)

    def source_files(self, run: str | RunRow) -> list[dict[str, Any]]:
        """The files of the run's code snapshot, by path: ``path``, ``hash``, ``size``,
        ``kind`` and whether the store holds its bytes (``stored``)."""
        from stepflow._storage.source.store import snapshot_manifest

        found = self.run(run)
        if found.source_hash is None:
            return []
        manifest = snapshot_manifest(found.source_hash, self._datastore())
        if manifest is None:
            files = found.source_files or {}
            return [
                {"path": p, "hash": h, "size": None, "kind": "file", "stored": False}
                for p, h in sorted(files.items())
            ]
        return [
            {
                "path": f.path,
                "hash": f.hash,
                "size": f.size,
                "kind": f.kind,
                "stored": f.left_out is None and f.kind == "file",
            }
            for f in manifest.files
        ]

    def source_file(self, run: str | RunRow, path: str) -> bytes:
        """The bytes of one file of the run's code snapshot, checked against its hash.

        :raises UsageError: the run has no snapshot, or no such stored file.
        :raises SnapshotError: the stored file is damaged.
        """
        from stepflow._storage.source.store import _fetch, snapshot_manifest

        found = self.run(run)
        manifest = (
            snapshot_manifest(found.source_hash, self._datastore()) if found.source_hash else None
        )
        if manifest is None:
            raise UsageError(f"run {found.id} has no stored code snapshot")
        for entry in manifest.files:
            if entry.path == path and entry.kind == "file" and entry.left_out is None:
                return _fetch(self._datastore(), entry)
        raise UsageError(f"the code snapshot of run {found.id} stores no file {path!r}")

    def run(self, ref: str | RunRow) -> RunRow:
        """A run by id, unique id prefix, ``last``, ``last~N`` or ``last-failed``.

        :raises UsageError: no such run, or the prefix is ambiguous.
        """
        if not isinstance(ref, str):
            return ref
        return self.records.run(ref)

    def steps(self, run: str | RunRow) -> list[StepRow]:
        """The run's steps in run order, with their inputs, outputs and metrics."""
        return self.records.steps(self.run(run).id)

    def step_log(
        self, run: str | RunRow, step: str | None = None, *, stream: str | None = None
    ) -> list[LogEntry]:
        """What the run's steps (or ``step``) wrote, in the order it was recorded.

        :raises UsageError: the run has no step ``step``.
        """
        found = self.run(run)
        if step is not None:
            names = {s.name for s in self.records.steps(found.id)}
            if step not in names:
                raise UsageError(
                    f"run {found.id} has no step {step!r}; steps: {', '.join(sorted(names))}"
                )
        return [
            LogEntry(*entry)
            for entry in self.records.logs(found.id, step)
            # A fan-out step's items write streams ``item N stdout``: ``stdout`` takes them too.
            if stream is None or entry[2] == stream or entry[2].endswith(f" {stream}")
        ]

    def live_steps(self, run: str | RunRow) -> dict[str, int]:
        """The steps of a running run in flight now, each with its latest attempt, as the
        run's process publishes them (``stepflow._storage.live``); empty for a run that
        ended or whose process died."""
        from stepflow._storage.live import live_steps

        found = self.run(run)
        if found.state != "running":
            return {}
        return live_steps(self.config.home, found.id)

    def live_log(self, run: str | RunRow, step: str) -> list[LogEntry] | None:
        """What step ``step`` has printed so far while it runs (secrets masked by the run),
        attempt by attempt; ``None`` when it is not in flight (its log is then recorded, or
        it has not started, or it is too young to be published)."""
        from stepflow._storage.live import live_log

        found = self.run(run)
        if found.state != "running":
            return None
        entries = live_log(self.config.home, found.id, step)
        if entries is None:
            return None
        return [LogEntry(step, attempt, stream, text) for attempt, stream, text in entries]

    def metrics(self, run: str | RunRow, step: str | None = None) -> dict[str, list[MetricRow]]:
        """Step name → its metrics in the order they were logged (only ``step``'s if given)."""
        found = self.records.metrics(self.run(run).id)
        if step is None:
            return found
        return {step: found[step]} if step in found else {}

    def compare(self, a_ref: str | RunRow, b_ref: str | RunRow) -> dict[str, Any]:
        """What differs between two runs: parameters, last metric values, steps, git and
        source files."""
        a, b = self.run(a_ref), self.run(b_ref)
        a_steps = {s.name: s for s in self.records.steps(a.id)}
        b_steps = {s.name: s for s in self.records.steps(b.id)}
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
                # Ran in one and reused in the other with one key is the same result.
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
            "git": [git_label(a), git_label(b)],
            "source": source,
        }

    def lineage(self, artifact: str, *, depth: int = 50) -> dict[str, Any]:
        """Who made ``artifact`` (a content hash, object name, unique prefix of one, or
        ``RUN:OUTPUT``) and from which inputs, recursively to ``depth``.

        :raises UsageError: nothing recorded made it, or the prefix names several artifacts.
        """
        records = self.records
        if ":" in artifact:
            run_ref, output = artifact.split(":", 1)
            run = records.run(run_ref)
            for step in records.steps(run.id):
                for io in step.io:
                    if io.direction == "out" and io.name == output and io.content_hash:
                        return self.lineage(io.content_hash, depth=depth)
            raise UsageError(f"run {run.id} recorded no output named {output!r}")
        matches = list(records.producers(artifact))
        hashes = {io.content_hash for _, _, io in matches}
        if not matches:
            raise UsageError(
                f"no recorded run produced an artifact {artifact!r}; give a content hash or "
                f"object name from `stepflow runs show RUN --json`, or RUN:OUTPUT"
            )
        if len(hashes) > 1:
            listed = ", ".join(sorted(h or "" for h in hashes))
            raise UsageError(f"{artifact!r} matches several artifacts ({listed}); give more of it")
        return self._lineage_node(matches, depth)

    def _lineage_node(self, matches: list[tuple[str, str, StepIO]], depth: int) -> dict[str, Any]:
        records = self.records
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
                child.update(self._lineage_node(found, depth - 1))
            child["input"] = inp.name
            node["inputs"].append(child)
        return node

    # --- cache --------------------------------------------------------------------------

    def _datastore(self) -> Datastore:
        from stepflow._pluginmanager import datastore_kinds
        from stepflow._storage.kept import kept_in_home
        from stepflow._storage.stores import open_datastore

        if self._store is None:
            config = self.config
            self._store = open_datastore(
                config.store,
                home=config.home,
                options=config.store_options,
                kinds=datastore_kinds(
                    self._pm, plugins=config.plugins, keep=kept_in_home(config.home)
                ),
            )
        return self._store

    def _all_cache_records(self) -> list[CacheRecord]:
        from stepflow._storage.index import CacheIndex

        index = CacheIndex(self.config.home / "index", store=self._datastore())
        try:
            return all_cache_records(index)
        finally:
            index.close()

    def cache_entries(
        self, *, pipeline: str | None = None, step: str | None = None
    ) -> list[CacheRecord]:
        """The stored results (this home's and the shared store's), oldest first, of
        ``pipeline`` and ``step`` (``None``: any)."""
        records = self._all_cache_records()
        return sorted(matching(records, pipeline=pipeline, step=step), key=lambda r: r.created)

    def cache_record(self, key: str) -> CacheRecord | None:
        """The stored result of exactly cache key ``key`` (what went into the key, its
        outputs), or ``None`` when none is stored (any more)."""
        from stepflow._sentinels import MISSING
        from stepflow._storage.index import CacheIndex

        index = CacheIndex(self.config.home / "index", store=self._datastore())
        try:
            found = index.get(key)
        finally:
            index.close()
        return None if found is MISSING else found

    def cache_entry(self, key_prefix: str) -> CacheEntry:
        """The stored result whose cache key is ``key_prefix`` or starts with it.

        :raises UsageError: not a hex key of 4 or more digits, no result has such a key, or
            more than one does.
        """
        wanted = key_prefix.strip().lower()
        if len(wanted) < 4 or any(c not in "0123456789abcdef" for c in wanted):
            raise UsageError(
                f"cache key {key_prefix!r}: give a key, or the first 4 or more of its hex "
                f"digits, as `stepflow cache ls` shows them"
            )
        found = [r for r in self._all_cache_records() if r.key.startswith(wanted)]
        if len(found) == 1:
            record = found[0]
            from stepflow._storage.artifacts import inline_intact

            store = self._datastore()
            present = {
                out: inline_intact(ref) if ref.inline else store.exists(ref.name)
                for out, ref in record.outputs.items()
            }
            return CacheEntry(record, present)
        if not found:
            raise UsageError(
                f"no stored result has a cache key starting with {wanted!r} in "
                f"{self.config.home}; `stepflow cache ls` lists them"
            )
        keys = ", ".join(f"{r.key[:12]} ({r.pipeline}:{r.step})" for r in found[:10])
        raise UsageError(f"cache key {wanted!r} is ambiguous ({keys}); give more of it")

    def cache_summary(self) -> dict[str, Any]:
        """The home, its store, and how many results, objects and bytes it holds (``bytes``
        counts the objects and the outputs kept inline in the records, ``inline_bytes``
        the latter)."""
        records = self._all_cache_records()
        store = self._datastore()
        referenced = referenced_objects(records)
        names = list(store.names())
        sizes = {n: store.size(n) for n in names}
        inline = [ref.size for r in records for ref in r.outputs.values() if ref.inline]
        return {
            "home": str(self.config.home),
            "store": store.uri,
            "shared": store.shared,
            "results": len(records),
            "objects": len(names),
            "bytes": sum(sizes.values()) + sum(inline),
            "unreferenced_objects": sum(1 for n in names if n not in referenced),
            "inline_outputs": len(inline),
            "inline_bytes": sum(inline),
            "pipelines": sorted({r.pipeline for r in records}),
        }

    # --- registries ---------------------------------------------------------------------

    def _registry(self) -> Registry:
        from stepflow._storage.registry import Registry

        return Registry(self._datastore())

    def datasets(self) -> list[DatasetVersion]:
        """The latest version of every registered data set, by name."""
        return list(self._registry().datasets())

    def dataset_versions(self, name: str) -> list[DatasetVersion]:
        """Every version of a data set, oldest first.

        :raises NotRegisteredError: no such data set.
        """
        return list(self._registry().dataset_versions(name))

    def dataset(self, name: str, version: int | None = None) -> DatasetVersion:
        """A data set's version (the latest when ``version`` is ``None``).

        :raises NotRegisteredError: no such data set or version.
        """
        return self._registry().dataset(name, version)

    def models(self) -> list[ModelVersion]:
        """The latest version of every registered model, by name."""
        return list(self._registry().models())

    def model_versions(self, name: str) -> list[ModelVersion]:
        """Every version of a model, oldest first, each with the aliases pointing at it.

        :raises NotRegisteredError: no such model.
        """
        return list(self._registry().model_versions(name))

    def model(
        self, name: str, version: int | None = None, alias: str | None = None
    ) -> ModelVersion:
        """A model's version: by ``version``, by ``alias``, or the latest.

        :raises NotRegisteredError: no such model, version or alias.
        """
        return self._registry().model(name, version, alias)

    def model_aliases(self, name: str) -> dict[str, int]:
        """Alias → version of a model."""
        return dict(self._registry().aliases(name))
