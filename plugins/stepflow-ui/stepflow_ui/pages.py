"""The HTML pages, each formatting one of :mod:`stepflow_ui.data`'s values.

Parts of a page that change while a run goes on sit inside ``<div id="live">``; the page's
script fetches the page again when the server says something changed, and swaps that part.
"""

from __future__ import annotations

import json
from typing import Any

from stepflow._planning.svg import render_svg
from stepflow_ui.render import (
    badge,
    chart,
    esc,
    iso,
    kv,
    page,
    pre,
    q,
    query,
    seconds,
    table,
    when,
)

__all__ = [
    "compare_page",
    "datasets_page",
    "lineage_page",
    "models_page",
    "published_page",
    "run_page",
    "runs_page",
    "step_page",
]


def _run_link(run_id: str | None) -> str:
    if not run_id:
        return "-"
    return f'<a href="/runs/{q(run_id)}">{esc(run_id)}</a>'


def _counts(counts: dict[str, int]) -> str:
    return " ".join(f'<span class="c-{esc(k)}">{v} {esc(k)}</span>' for k, v in counts.items() if v)


def _select(name: str, options: list[str], chosen: str | None, all_label: str) -> str:
    opts = [f'<option value="">{esc(all_label)}</option>']
    for o in options:
        sel = " selected" if o == chosen else ""
        opts.append(f'<option value="{esc(o)}"{sel}>{esc(o)}</option>')
    return f'<label>{esc(name)} <select name="{esc(name)}">{"".join(opts)}</select></label>'


def runs_page(data: dict[str, Any], *, version: str = "") -> str:
    """``version``: the records' change token the page was made from (see ``app``)."""
    f = data["filters"]
    form = (
        '<form class="filters" method="get" action="/runs" hx-get="/runs" hx-target="#live" '
        'hx-select="#live" hx-swap="outerHTML" hx-push-url="true" hx-trigger="change">'
        + _select("pipeline", data["pipelines"], f["pipeline"], "all pipelines")
        + _select("state", data["states"], f["state"], "any state")
        + _select("schedule", data["schedules"], f["schedule"], "any schedule")
        + "<noscript><button>filter</button></noscript></form>"
    )
    rows = [
        (
            _run_link(r["id"]),
            esc(r["pipeline"]),
            badge(r["state"]),
            when(r["_ts"]),
            seconds(r["duration"]),
            _counts(r["counts"]),
            esc(r["schedule"] or ""),
            esc((r["git_commit"] or "")[:10]) + (" (dirty)" if r["git_dirty"] else ""),
        )
        for r in data["runs"]
    ]
    start, total, limit = data["offset"], data["total"], data["limit"]
    pager = []
    filters = {k: v for k, v in f.items() if v}
    if start > 0:
        pager.append(f'<a href="/runs{query(**filters, offset=max(0, start - limit))}">newer</a>')
    if start + limit < total:
        pager.append(f'<a href="/runs{query(**filters, offset=start + limit)}">older</a>')
    shown = f"{start + 1}-{start + len(rows)} of {total}" if rows else "no runs"
    body = (
        form
        + '<div id="live">'
        + f'<p class="muted">{shown} {" ".join(pager)}</p>'
        + table(
            ["run", "pipeline", "state", "started", "duration", "steps", "schedule", "commit"],
            rows,
            id="runs",
        )
        + "</div>"
    )
    live = "/events/runs" + query(**filters, v=version)
    return page("Runs", body, current="/runs", live=live)


def dag_svg(run: dict[str, Any]) -> str:
    names = [s["name"] for s in run["steps"]]
    states = {s["name"]: s["state"] for s in run["steps"]}
    notes = {
        s["name"]: seconds(s["duration"])
        for s in run["steps"]
        if s["state"] == "ran" and s.get("duration") is not None
    }
    return render_svg(
        names,
        [tuple(e) for e in run["edges"]],
        states=states,
        notes=notes,
        href=lambda step: f"/runs/{q(run['id'])}/steps/{q(step)}",
        title=f"run {run['id']} of {run['pipeline']}",
    )


def run_page(run: dict[str, Any], files: list[dict[str, Any]], *, version: str = "") -> str:
    rid = run["id"]
    step_rows = [
        (
            f'<a href="/runs/{q(rid)}/steps/{q(s["name"])}">{esc(s["name"])}</a>',
            badge(s["state"]),
            iso(s.get("started")),
            seconds(s.get("duration")) if s["state"] in ("ran", "failed") else "-",
            esc(s.get("attempts", "")),
            esc(s.get("backend") or ""),
            _run_link(s.get("reused_from")) if s.get("reused_from") else "",
        )
        for s in run["steps"]
    ]
    info = kv(
        [
            ("pipeline", esc(run["pipeline"])),
            ("state", badge(run["state"])),
            ("started", iso(run["started"])),
            ("finished", iso(run["finished"])),
            ("duration", seconds(run["duration"])),
            ("steps", _counts(run["counts"]) or "-"),
            ("workers", esc(run["workers"])),
            ("commit", esc(run["git_commit"] or "-")),
            ("user@host", esc(f"{run['user']}@{run['host']}")),
            ("resumed from", _run_link(run["resumed_from"])),
        ]
    )
    params = table(
        ["parameter", "value"],
        [
            (esc(k), esc(json.dumps(v) if not isinstance(v, str) else v))
            for k, v in run["params"].items()
        ],
        id="params",
    )
    tags = table(["tag", "value"], [(esc(k), esc(v)) for k, v in run["tags"].items()])
    file_rows = [
        (
            (
                f'<a href="/runs/{q(rid)}/source/{esc(f["path"])}">{esc(f["path"])}</a>'
                if f["stored"]
                else esc(f["path"])
            ),
            esc(f["size"] if f["size"] is not None else "-"),
            f"<code>{esc(f['hash'][:12])}</code>",
        )
        for f in files
    ]
    source = (
        table(["file", "bytes", "hash"], file_rows, id="source")
        if files
        else '<p class="muted">no code snapshot recorded (yet)</p>'
    )
    compare = (
        f'<form method="get" action="/compare"><input type="hidden" name="a" value="{esc(rid)}">'
        '<label>compare with run <input name="b" placeholder="run id or last~1" required>'
        "</label> <button>compare</button></form>"
    )
    body = (
        '<div id="live">'
        + info
        + f'<div class="dag" id="dag">{dag_svg(run)}</div>'
        + "<h2>Steps</h2>"
        + table(
            ["step", "state", "started", "duration", "attempts", "backend", "reused from"],
            step_rows,
            id="steps",
        )
        + "</div><h2>Parameters</h2>"
        + (params if run["params"] else '<p class="muted">none</p>')
        + ("<h2>Tags</h2>" + tags if run["tags"] else "")
        + "<h2>Code snapshot</h2>"
        + source
        + "<h2>Compare</h2>"
        + compare
    )
    live = f"/events/runs/{q(rid)}{query(v=version)}" if run["state"] == "running" else ""
    return page(f"Run {rid}", body, current="/runs", live=live)


def _io_rows(step: dict[str, Any]) -> list[tuple[str, ...]]:
    rows = []
    for io in step["io"]:
        target = io["content_hash"] or io["object"]
        link = (
            f'<a href="/lineage/{q(target)}">lineage</a>'
            if target and io["direction"] in ("in", "out")
            else ""
        )
        rows.append(
            (
                esc(io["direction"]),
                esc(io["name"]),
                esc(io["object"] or "-"),
                f"<code>{esc((io['content_hash'] or '-')[:16])}</code>",
                esc(io["size"] if io["size"] is not None else "-"),
                link,
            )
        )
    return rows


def step_page(step: dict[str, Any], log: list[dict[str, Any]], *, version: str = "") -> str:
    rid, name = step["run"], step["name"]
    nav = (
        f"<p>run {_run_link(rid)} · reads from "
        + (", ".join(_step_link(rid, u) for u in step["upstream"]) or "nothing")
        + " · read by "
        + (", ".join(_step_link(rid, d) for d in step["downstream"]) or "nothing")
        + "</p>"
    )
    parts = [nav, kv([("state", badge(step["state"]))])]
    if step["recorded"]:
        parts.append(
            kv(
                [
                    ("started", iso(step["started"])),
                    ("duration", seconds(step["duration"])),
                    ("attempts", esc(step["attempts"])),
                    ("backend", esc(step["backend"] or "-")),
                    ("reused from", _run_link(step["reused_from"])),
                    ("why", esc(step["reason"] or "-")),
                    ("cache key", f"<code>{esc(step['cache_key'] or '-')}</code>"),
                ]
            )
        )
        if step["error"]:
            parts.append("<h2>Error</h2>" + pre(f"{step['error_type']}: {step['error']}"))
            if step["traceback"]:
                parts.append(pre(step["traceback"]))
        parts.append("<h2>Inputs and outputs</h2>")
        parts.append(
            table(["", "name", "object", "content hash", "bytes", ""], _io_rows(step), id="io")
            if step["io"]
            else '<p class="muted">none recorded</p>'
        )
        if step["metrics"]:
            parts.append("<h2>Metrics</h2>")
        for metric, values in step["metrics"].items():
            over_steps = [
                (float(v["step"] if v["step"] is not None else i), v["value"])
                for i, v in enumerate(values)
            ]
            history = step["metric_history"].get(metric, [])
            parts.append(
                f'<div class="metric"><h3>{esc(metric)}</h3>'
                f"<div><p>this run, over steps</p>{chart(over_steps, x_label='step')}</div>"
                f"<div><p>last value, across runs</p>"
                + chart(
                    [(h["_ts"], h["value"]) for h in history],
                    labels=[f"{h['run']}: {h['value']}" for h in history],
                    links=[f"/runs/{q(h['run'])}/steps/{q(name)}" for h in history],
                    x_label="run start",
                )
                + "</div></div>"
            )
        if step["cache_key_parts"]:
            parts.append("<h2>Cache key parts</h2>")
            for part, values in step["cache_key_parts"].items():
                parts.append(
                    f"<h3>{esc(part)}</h3>"
                    + table(
                        ["name", "hash"],
                        [(esc(k), f"<code>{esc(v)}</code>") for k, v in values.items()],
                    )
                )
        if step["logged_params"]:
            parts.append(
                "<h2>Logged parameters</h2>"
                + table(
                    ["name", "value"], [(esc(k), esc(v)) for k, v in step["logged_params"].items()]
                )
            )
    live = f"/events/runs/{q(rid)}{query(v=version)}" if step["run_state"] == "running" else ""
    # The log stays outside #live: the page's refresh on a run change must not undo what its
    # own stream has added meanwhile.
    return page(
        f"Step {name}",
        '<div id="live">' + "".join(parts) + "</div>" + _log(step, log),
        live=live,
    )


def _log(step: dict[str, Any], log: list[dict[str, Any]]) -> str:
    """The step's log: the recorded one, or what it has printed so far while it runs (each
    attempt's stream in a part of its own, which the page's stream extends line by line)."""
    rid, name = step["run"], step["name"]
    streaming = step["state"] in ("running", "pending")
    log_url = f"/events/runs/{q(rid)}/steps/{q(name)}/log" if streaming else ""
    head = "<h2>Log</h2>" + (
        '<p class="muted" id="log-note">so far: the step has not finished</p>' if streaming else ""
    )
    if not log and not streaming:
        return head + '<pre id="log" class="muted">(nothing written)</pre>'
    text = "".join(
        f'<span data-part="{esc(e["attempt"])} {esc(e["stream"])}">'
        f"[{esc(e['stream'])} #{esc(e['attempt'])}] {esc(e['text'])}</span>"
        for e in log
    )
    follow = f' data-log="{esc(log_url)}"' if log_url else ""
    return head + f'<pre id="log"{follow}>{text}</pre>'


def _step_link(rid: str, name: str) -> str:
    return f'<a href="/runs/{q(rid)}/steps/{q(name)}">{esc(name)}</a>'


def compare_page(data: dict[str, Any] | None, a: str = "", b: str = "", error: str = "") -> str:
    form = (
        '<form method="get" action="/compare">'
        f'<label>run A <input name="a" value="{esc(a)}" required></label> '
        f'<label>run B <input name="b" value="{esc(b)}" required></label> '
        "<button>compare</button></form>"
    )
    if error:
        form += f'<p class="error">{esc(error)}</p>'
    if data is None:
        return page("Compare runs", form, current="/compare")
    body = [form, f"<p>A = {_run_link(data['a'])}, B = {_run_link(data['b'])}</p>"]

    def pair(values: list[Any]) -> tuple[str, str]:
        return tuple(esc("-" if v is None else v) for v in values)  # type: ignore[return-value]

    body.append("<h2>Parameters that differ</h2>")
    body.append(
        table(["parameter", "A", "B"], [(esc(k), *pair(v)) for k, v in data["params"].items()])
        if data["params"]
        else '<p class="muted">none</p>'
    )
    body.append("<h2>Metrics (last values)</h2>")
    body.append(
        table(["metric", "A", "B"], [(esc(k), *pair(v)) for k, v in data["metrics"].items()])
        if data["metrics"]
        else '<p class="muted">none</p>'
    )
    body.append("<h2>Steps that differ</h2>")
    body.append(
        table(
            ["step", "A", "B", "why"],
            [
                (
                    esc(k),
                    badge(v["a"]) if v["a"] else "-",
                    badge(v["b"]) if v["b"] else "-",
                    esc(v["why"]),
                )
                for k, v in data["steps"].items()
            ],
        )
        if data["steps"]
        else '<p class="muted">none</p>'
    )
    body.append(f"<h2>Code</h2><p>commits: {esc(data['git'][0])} / {esc(data['git'][1])}</p>")
    if data["source"]:
        src = data["source"]
        rows = [("added", p) for p in src["added"]] + [("removed", p) for p in src["removed"]]
        rows += [("changed", p) for p in src["changed"]]
        body.append(
            table(["", "file"], [(esc(k), esc(p)) for k, p in rows])
            if rows
            else '<p class="muted">same files</p>'
        )
    return page("Compare runs", "".join(body), current="/compare")


def _lineage_html(node: dict[str, Any]) -> str:
    head = (
        f"<b>{esc(node.get('output') or node.get('input'))}</b> "
        f"<code>{esc((node.get('content_hash') or '')[:16])}</code>"
    )
    if node.get("run"):
        head += (
            f" made by {_step_link(node['run'], node['step'])} in run {_run_link(node['run'])}"
            f" {badge(node.get('state'))}"
        )
        used = node.get("used_by_runs") or []
        if used:
            head += f" · also in {len(used)} later run(s): " + ", ".join(
                _run_link(r) for r in used[:10]
            )
    children = "".join(f"<li>{_lineage_html(c)}</li>" for c in node.get("inputs", []))
    return head + (f"<ul>{children}</ul>" if children else "")


def lineage_page(node: dict[str, Any]) -> str:
    return page("Lineage", f'<ul class="lineage"><li>{_lineage_html(node)}</li></ul>')


def datasets_page(items: list[dict[str, Any]]) -> str:
    rows = [
        (
            f'<a href="/datasets/{q(d["name"])}">{esc(d["name"])}</a>',
            f"v{esc(d['version'])}",
            esc(d["kind"]),
            esc(d["size"]),
            iso(d["created"]),
            esc(d.get("description") or ""),
        )
        for d in items
    ]
    body = (
        table(
            ["data set", "latest", "kind", "bytes", "created", "description"], rows, id="datasets"
        )
        if rows
        else '<p class="muted">no data set is registered in this home</p>'
    )
    return page("Data sets", body, current="/datasets")


def _source(src: dict[str, Any]) -> str:
    if src.get("kind") == "run":
        return f"{_run_link(src.get('run_id'))} {esc(src.get('step') or '')}"
    return esc(src.get("path") or src.get("kind") or "-")


def dataset_page(data: dict[str, Any]) -> str:
    rows = [
        (
            f"v{esc(v['version'])}",
            esc(v["kind"]),
            f"<code>{esc(v['content_hash'][:16])}</code>",
            esc(v["size"]),
            iso(v["created"]),
            _source(v["source"]),
            esc(v.get("description") or ""),
        )
        for v in reversed(data["versions"])
    ]
    body = table(
        ["version", "kind", "content hash", "bytes", "created", "source", "description"],
        rows,
        id="versions",
    )
    return page(f"Data set {data['name']}", body, current="/datasets")


def models_page(items: list[dict[str, Any]]) -> str:
    rows = [
        (
            f'<a href="/models/{q(m["name"])}">{esc(m["name"])}</a>',
            f"v{esc(m['version'])}",
            esc(m.get("type") or ""),
            esc(", ".join(m.get("aliases", []))),
            iso(m["created"]),
        )
        for m in items
    ]
    body = (
        table(["model", "latest", "type", "aliases", "created"], rows, id="models")
        if rows
        else '<p class="muted">no model is registered in this home</p>'
    )
    return page("Models", body, current="/models")


def model_page(data: dict[str, Any]) -> str:
    rows = [
        (
            f"v{esc(v['version'])}",
            esc(", ".join(v.get("aliases", []))),
            esc(", ".join(f"{k}={val:g}" for k, val in v["metrics"].items())),
            esc(", ".join(f"{k}={val}" for k, val in v["tags"].items())),
            iso(v["created"]),
            _source(v["source"]),
        )
        for v in reversed(data["versions"])
    ]
    aliases = ", ".join(f"{esc(k)} → v{esc(v)}" for k, v in data["aliases"].items()) or "none"
    body = f"<p>aliases: {aliases}</p>" + table(
        ["version", "aliases", "metrics", "tags", "created", "source"], rows, id="versions"
    )
    return page(f"Model {data['name']}", body, current="/models")


def published_page(data: dict[str, Any]) -> str:
    pubs = [
        (
            f"<b>{esc(p['ref'])}</b>",
            esc(p.get("target") or ""),
            iso(p.get("created")),
            f"<code>{esc((p.get('content_hash') or '')[:12])}</code>",
            esc(p.get("description") or ""),
        )
        for p in data["published"]
    ]
    scheds = []
    for s in data["schedules"]:
        upcoming = "<br>".join(
            f"{esc(t['local'])} <span class=muted>({esc(t['utc'])})</span>"
            for t in s.get("next", [])
        )
        last = "<br>".join(
            f"{esc(t['tick'])} {badge(t['state'])} {_run_link(t.get('run_id'))}"
            for t in s.get("last_runs", [])
        )
        params = ", ".join(f"{esc(k)}={esc(v)}" for k, v in s.get("params", {}).items())
        runs = f'<a href="/runs?schedule={q(s["name"])}">runs</a>'
        scheds.append(
            (
                f"<b>{esc(s['name'])}</b> {badge('paused') if s.get('paused') else ''}",
                esc(s.get("pipeline")),
                esc(s.get("describe")),
                params or "-",
                upcoming or "-",
                (last or "-") + "<br>" + runs,
            )
        )
    if not data.get("available", True):
        note = "publishing is not available in this stepflow"
    else:
        note = "no pipeline has been published from this home"
    body = (
        "<h2>Published pipelines</h2>"
        + (
            table(
                ["version", "target", "published", "content", "description"], pubs, id="published"
            )
            if pubs
            else f'<p class="muted">{esc(note)}</p>'
        )
        + "<h2>Schedules</h2>"
        + (
            table(
                ["schedule", "pipeline", "when", "parameters", "next fire times", "last runs"],
                scheds,
                id="schedules",
            )
            if scheds
            else '<p class="muted">no schedule exists in this home</p>'
        )
    )
    return page("Published pipelines and schedules", body, current="/published")


def message_page(title: str, message: str, *, current: str = "") -> str:
    return page(title, f'<p class="error">{esc(message)}</p>', current=current)


def source_page(rid: str, path: str, text: str) -> str:
    return page(f"{path}", f"<p>from the code snapshot of run {_run_link(rid)}</p>" + pre(text))
