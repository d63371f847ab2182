"""What the pages and the JSON API show, as plain JSON-ready values, from the read API.

The JSON API answers exactly these dicts and the pages format them, so what one shows the
other shows too, secrets masked in one place: run parameters come from
``RunRow.display_params`` (secret values were never recorded), and step logs, errors and
tracebacks were masked by the run before they were recorded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from stepflow._humanize import iso_time

if TYPE_CHECKING:
    from stepflow._storage.read import ReadAPI
    from stepflow._storage.records import RunRow, StepRow

__all__ = [
    "compare",
    "dataset",
    "datasets",
    "lineage",
    "model",
    "models",
    "published",
    "run",
    "runs",
    "step",
    "step_log",
]

#: the run states a listing can be filtered by
RUN_STATES = ("running", "succeeded", "failed", "interrupted")


def run_summary(row: RunRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "pipeline": row.pipeline,
        "state": row.state,
        "started": iso_time(row.started),
        "finished": iso_time(row.finished),
        "duration": row.duration,
        "counts": dict(row.counts),
        "target": row.target,
        "targets": list(row.targets),
        "schedule": row.tags.get("schedule"),
        "git_commit": row.git_commit,
        "git_dirty": row.git_dirty,
        "user": row.user,
        "host": row.host,
        "_ts": row.started,
    }


def runs(
    api: ReadAPI,
    *,
    pipeline: str | None = None,
    state: str | None = None,
    schedule: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> dict[str, Any]:
    rows, total = api.run_page(
        pipeline=pipeline, state=state, schedule=schedule, limit=limit, offset=offset
    )
    return {
        "runs": [run_summary(r) for r in rows],
        "total": total,
        "limit": limit,
        "offset": offset,
        "filters": {"pipeline": pipeline, "state": state, "schedule": schedule},
        "pipelines": api.pipelines(),
        "schedules": api.schedules_seen(),
        "states": list(RUN_STATES),
    }


def run(api: ReadAPI, ref: str) -> dict[str, Any]:
    row = api.run(ref)
    graph = api.run_graph(row)
    for s in graph["steps"]:
        s["started"] = iso_time(s.get("started"))
        s["finished"] = iso_time(s.get("finished"))
    data = run_summary(row)
    data.update(
        {
            "params": row.display_params(),
            "secret_params": list(row.secret_params),
            "tags": dict(row.tags),
            "workers": row.workers,
            "stepflow_version": row.stepflow_version,
            "python_version": row.python_version,
            "resumed_from": row.resumed_from,
            "source_hash": row.source_hash,
            "steps": graph["steps"],
            "edges": graph["edges"],
        }
    )
    return data


def _io(api: ReadAPI, step: StepRow) -> list[dict[str, Any]]:
    found = []
    for io in step.io:
        entry = {
            "direction": io.direction,
            "name": io.name,
            "object": io.object,
            "content_hash": io.content_hash,
            "size": io.size,
        }
        found.append(entry)
    return found


def step(api: ReadAPI, ref: str, name: str) -> dict[str, Any]:
    row = api.run(ref)
    graph = api.run_graph(row)
    planned = next((s for s in graph["steps"] if s["name"] == name), None)
    if planned is None:
        from stepflow.errors import UsageError

        names = ", ".join(s["name"] for s in graph["steps"])
        raise UsageError(f"run {row.id} has no step {name!r}; steps: {names}")
    upstream = [a for a, b in graph["edges"] if b == name]
    downstream = [b for a, b in graph["edges"] if a == name]
    base: dict[str, Any] = {
        "run": row.id,
        "pipeline": row.pipeline,
        "run_state": row.state,
        "name": name,
        "state": planned["state"],
        "upstream": upstream,
        "downstream": downstream,
    }
    if planned["state"] in ("running", "pending") or "attempts" not in planned:
        base.update({"recorded": False, "io": [], "metrics": {}, "cache_key": None})
        return base
    recorded = api.step(row, name)
    metrics: dict[str, list[dict[str, Any]]] = {}
    for m in recorded.metrics:
        metrics.setdefault(m.name, []).append(
            {"value": m.value, "step": m.counter, "ts": iso_time(m.ts)}
        )
    history = {
        metric: [
            {"run": run_id, "started": iso_time(ts), "value": value, "_ts": ts}
            for run_id, ts, value in api.metric_history(row.pipeline, name, metric)
        ]
        for metric in metrics
    }
    key_parts = None
    if recorded.cache_key:
        record = api.cache_record(recorded.cache_key)
        if record is not None:
            key_parts = {k: dict(v) for k, v in record.components.items()}
    base.update(
        {
            "recorded": True,
            "started": iso_time(recorded.started),
            "finished": iso_time(recorded.finished),
            "duration": recorded.duration,
            "attempts": recorded.attempts,
            "backend": recorded.backend,
            "cache_key": recorded.cache_key,
            "cache_key_parts": key_parts,
            "reused_from": recorded.reused_from,
            "reason": recorded.reason,
            "error_type": recorded.error_type,
            "error": recorded.error,
            "traceback": recorded.traceback,
            "logged_params": dict(recorded.params),
            "tags": dict(recorded.tags),
            "io": _io(api, recorded),
            "metrics": metrics,
            "metric_history": history,
        }
    )
    return base


def step_log(api: ReadAPI, ref: str, name: str) -> list[dict[str, Any]]:
    return [
        {"attempt": e.attempt, "stream": e.stream, "text": e.text} for e in api.step_log(ref, name)
    ]


def live_log(api: ReadAPI, ref: str, name: str) -> list[dict[str, Any]] | None:
    """What a step in flight has printed so far (secrets masked by its run), ``None`` when
    the run does not publish it (not started, too young to be shown, or over)."""
    entries = api.live_log(ref, name)
    if entries is None:
        return None
    return [{"attempt": e.attempt, "stream": e.stream, "text": e.text} for e in entries]


def any_log(api: ReadAPI, ref: str, name: str, step: dict[str, Any]) -> list[dict[str, Any]]:
    """The step's recorded log, or while it runs what it has printed so far."""
    if step["recorded"]:
        return step_log(api, ref, name)
    if step["state"] == "running":
        return live_log(api, ref, name) or []
    return []


def compare(api: ReadAPI, a: str, b: str) -> dict[str, Any]:
    return api.compare(a, b)


def lineage(api: ReadAPI, artifact: str) -> dict[str, Any]:
    return api.lineage(artifact)


def _version(v: Any) -> dict[str, Any]:
    data = attrs.asdict(v, recurse=False)
    data.pop("new", None)
    objects = data.pop("objects", None)
    obj = data.pop("object", None)
    data["objects"] = sorted(objects) if objects is not None else ([obj.name] if obj else [])
    data["created"] = iso_time(data.get("created"))
    for key in ("source", "metrics", "tags"):
        if key in data:
            data[key] = dict(data[key])
    if "aliases" in data:
        data["aliases"] = list(data["aliases"])
    return data


def datasets(api: ReadAPI) -> list[dict[str, Any]]:
    return [_version(v) for v in api.datasets()]


def dataset(api: ReadAPI, name: str) -> dict[str, Any]:
    return {"name": name, "versions": [_version(v) for v in api.dataset_versions(name)]}


def models(api: ReadAPI) -> list[dict[str, Any]]:
    return [_version(v) for v in api.models()]


def model(api: ReadAPI, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "versions": [_version(v) for v in api.model_versions(name)],
        "aliases": api.model_aliases(name),
    }


def published(api: ReadAPI) -> dict[str, Any]:
    """Published pipelines (each version) and schedules (with their next fire times and last
    runs) of the home, once stepflow has publishing (``stepflow._storage.scheduledb``); empty
    lists, with ``available`` false, before that.

    A schedule's parameter value is shown only when the published version has a plain
    default for it, or when it is an ``env:VAR`` reference; any other is ``***``.
    """
    try:
        from stepflow._scheduling.schedules import schedule_info
        from stepflow._storage.scheduledb import DB_NAME, ScheduleDB
    except ImportError:
        return {"available": False, "published": [], "schedules": []}
    config = api.config
    if not (config.home / DB_NAME).is_file():
        return {"available": True, "published": [], "schedules": []}
    # Read-only, as the run records: the UI writes nothing to the home.
    with ScheduleDB(config.home, read_only=True) as db:
        rows = list(db.published_list())
        versions = {(r.name, r.version): r for r in rows}
        infos = [schedule_info(s.name, config=config, db=db).to_dict() for s in db.schedules()]
    found = []
    for r in rows:
        spec = r.spec
        found.append(
            {
                "name": r.name,
                "version": r.version,
                "ref": f"{r.name}@{r.version}",
                "target": spec.get("target"),
                "created": iso_time(r.created),
                "description": r.description,
                "content_hash": r.content_hash,
                "params": dict(spec.get("params", {})),
            }
        )
    schedules = []
    for info in infos:
        ref = str(info.get("pipeline", ""))
        pub_name, _, version = ref.partition("@")
        pub = versions.get((pub_name, int(version))) if version.isdigit() else None
        if pub is None:
            same = [r for r in rows if r.name == pub_name]
            pub = max(same, key=lambda r: r.version) if same else None
        # Safe by default: a value is shown only for a parameter the published version
        # shows a plain default of, or when it names an environment variable (env:VAR);
        # a secret parameter without a default is not in the published defaults at all.
        plain = {
            p
            for p, defaults in (pub.spec.get("params", {}) if pub else {}).items()
            if defaults and "***" not in dict(defaults).values()
        }
        info["params"] = {
            k: (v if k in plain or str(v).startswith("env:") else "***")
            for k, v in dict(info.get("params") or {}).items()
        }
        schedules.append(info)
    return {"available": True, "published": found, "schedules": schedules}
