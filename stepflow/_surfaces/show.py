"""Render a pipeline's graph as text, Graphviz dot, Mermaid, JSON or SVG (``stepflow show``)."""

from __future__ import annotations

import json
from typing import Any

from stepflow._pipeline import Pipeline
from stepflow._planning.typecheck import type_repr
from stepflow._sentinels import MISSING

__all__ = ["FORMATS", "render"]


def _input_source(pipeline: Pipeline, step: str, name: str) -> dict[str, Any]:
    spec = pipeline.steps[step]
    port = spec.input(name)
    if name in pipeline.outputs:
        return {"kind": "step", "step": pipeline.outputs[name]}
    if port.reference is not None:
        ref = port.reference
        return {"kind": type(ref).__name__.lower(), "name": ref.name}
    return {"kind": "param"}


def _resources(spec: Any) -> dict[str, Any]:
    res = spec.options.resources
    return {k: getattr(res, k) for k in ("cpus", "memory", "gpus") if getattr(res, k) is not None}


def as_dict(pipeline: Pipeline, *, default_backend: str = "local") -> dict[str, Any]:
    """The graph as plain data (the ``--format json`` document).

    Each step's ``backend`` is where it runs (its ``@step(backend=...)``, else
    ``default_backend``); ``options.backend`` is what the decorator said, or ``null``.
    """
    steps = []
    for name, spec in pipeline.steps.items():
        opts = spec.options
        steps.append(
            {
                "name": name,
                "function": f"{spec.ref.module}.{spec.ref.qualname}",
                "backend": opts.backend or default_backend,
                "env": _jsonable(dict(opts.env)),
                "resources": _resources(spec),
                "inputs": [
                    {
                        "name": p.name,
                        "type": type_repr(p.annotation),
                        "source": _input_source(pipeline, name, p.name),
                    }
                    for p in spec.inputs
                ],
                "outputs": [
                    {"name": p.name, "type": type_repr(p.annotation)} for p in spec.outputs
                ],
                "options": {
                    "backend": opts.backend,
                    "retries": opts.retries,
                    "timeout": opts.timeout,
                    "cache": opts.cache,
                    "tags": list(opts.tags),
                    "after": list(opts.after),
                    "foreach": opts.foreach,
                },
            }
        )
    params = []
    for pname, pspec in pipeline.params.items():
        defaults = {
            s: (None if d is MISSING or pspec.secret else _jsonable(d))
            for s, d in pspec.defaults.items()
        }
        params.append(
            {
                "name": pname,
                "type": type_repr(pspec.annotation),
                "required": any(d is MISSING for d in pspec.defaults.values()),
                "secret": pspec.secret,
                "defaults": defaults,
            }
        )
    edges = [{"from": e.producer, "to": e.consumer, "output": e.output} for e in pipeline.dag.edges]
    # Ordering without data (``after=``) is kept apart from the data edges, which all carry
    # an output.
    order = [{"from": before, "to": after} for before, after in pipeline.dag.after]
    return {
        "pipeline": pipeline.name,
        "steps": steps,
        "edges": edges,
        "after": order,
        "params": params,
    }


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)
    return value


def _text(pipeline: Pipeline, *, default_backend: str = "local") -> str:
    lines = [f"pipeline {pipeline.name}: {len(pipeline.steps)} steps"]
    if pipeline.params:
        lines.append("")
        lines.append("parameters:")
        for pname, pspec in pipeline.params.items():
            defaults = {d for d in map(repr, pspec.defaults.values())}
            if any(d is MISSING for d in pspec.defaults.values()):
                shown = " (required)"
            elif pspec.secret:
                shown = " = ***"
            else:
                shown = " = " + " | ".join(sorted(defaults))
            used = ", ".join(pspec.steps)
            lines.append(f"  {pname}: {type_repr(pspec.annotation)}{shown}   [{used}]")
    lines.append("")
    lines.append("steps:")
    for name, spec in pipeline.steps.items():
        ins = []
        for p in spec.inputs:
            src = _input_source(pipeline, name, p.name)
            if src["kind"] == "step" and src["step"] != p.name:
                ins.append(f"{p.name}<-{src['step']}")
            elif src["kind"] == "param":
                ins.append(f"${p.name}")
            elif src["kind"] != "step":
                ins.append(f"{p.name}<-{src['kind']}:{src['name']}")
            else:
                ins.append(p.name)
        outs = ", ".join(f"{p.name}: {type_repr(p.annotation)}" for p in spec.outputs) or "None"
        extra = []
        if spec.options.backend:
            extra.append(f"backend={spec.options.backend}")
        if spec.options.retries:
            extra.append(f"retries={spec.options.retries}")
        if spec.options.timeout is not None:
            extra.append(f"timeout={spec.options.timeout:g}s")
        if not spec.options.cache:
            extra.append("cache=False")
        if spec.options.env:
            extra.append(f"env={dict(spec.options.env)!r}")
        if _resources(spec):
            extra.append(f"resources={_resources(spec)!r}")
        if spec.options.foreach:
            extra.append(f"foreach={spec.options.foreach}")
        if spec.options.after:
            extra.append(f"after={','.join(spec.options.after)}")
        tail = f"  [{', '.join(extra)}]" if extra else ""
        lines.append(f"  {name}({', '.join(ins)}) -> {outs}{tail}")
    # Where each step runs: the steps that name no backend run on the default one.
    where: dict[str, list[str]] = {}
    for name, spec in pipeline.steps.items():
        where.setdefault(spec.options.backend or default_backend, []).append(name)
    lines.append("")
    lines.append("backends:")
    for backend, names in where.items():
        lines.append(f"  {backend}: {', '.join(names)}")
    return "\n".join(lines) + "\n"


def _dot(pipeline: Pipeline, *, default_backend: str = "local") -> str:
    # Every id is a quoted string, so DOT keywords (node, edge, graph, ...) are safe as names;
    # step and pipeline names are validated to ASCII, so json.dumps quotes them exactly.
    lines = [f"digraph {json.dumps(pipeline.name)} {{", "  rankdir=LR;", "  node [shape=box];"]
    for name in pipeline.steps:
        lines.append(f"  {json.dumps(name)};")
    for e in pipeline.dag.edges:
        label = f" [label={json.dumps(e.output)}]" if e.output != e.producer else ""
        lines.append(f"  {json.dumps(e.producer)} -> {json.dumps(e.consumer)}{label};")
    for before, after in pipeline.dag.after:
        lines.append(f"  {json.dumps(before)} -> {json.dumps(after)} [style=dashed];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _mermaid_label(text: str) -> str:
    # Inside a quoted Mermaid label only the double quote is special; #quot; is its entity.
    return '"' + text.replace('"', "#quot;") + '"'


def _mermaid(pipeline: Pipeline, *, default_backend: str = "local") -> str:
    # Node ids are generated (n0, n1, ...) and names are quoted labels: a step named ``end``,
    # ``graph`` or ``subgraph`` is a Mermaid keyword and would break the chart as a bare id.
    ids = {name: f"n{i}" for i, name in enumerate(pipeline.steps)}
    lines = ["flowchart LR"]
    for name, node in ids.items():
        lines.append(f"  {node}[{_mermaid_label(name)}]")
    for e in pipeline.dag.edges:
        label = f"|{_mermaid_label(e.output)}|" if e.output != e.producer else ""
        lines.append(f"  {ids[e.producer]} -->{label} {ids[e.consumer]}")
    for before, after in pipeline.dag.after:
        lines.append(f"  {ids[before]} -.-> {ids[after]}")
    return "\n".join(lines) + "\n"


def _json(pipeline: Pipeline, *, default_backend: str = "local") -> str:
    return json.dumps(as_dict(pipeline, default_backend=default_backend), indent=2) + "\n"


def _svg(pipeline: Pipeline, *, default_backend: str = "local") -> str:
    from stepflow._planning.svg import render_svg

    # ``after=[...]`` orderings are drawn as edges too; backends are not drawn.
    edges = [(e.producer, e.consumer) for e in pipeline.dag.edges] + list(pipeline.dag.after)
    return render_svg(list(pipeline.steps), edges, title=f"pipeline {pipeline.name}") + "\n"


FORMATS = {"text": _text, "dot": _dot, "mermaid": _mermaid, "json": _json, "svg": _svg}


def render(pipeline: Pipeline, fmt: str = "text", *, default_backend: str = "local") -> str:
    """``pipeline`` in format ``fmt``; steps naming no backend run on ``default_backend``."""
    return FORMATS[fmt](pipeline, default_backend=default_backend)
