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


def as_dict(pipeline: Pipeline) -> dict[str, Any]:
    """The graph as plain data (the ``--format json`` document)."""
    steps = []
    for name, spec in pipeline.steps.items():
        opts = spec.options
        steps.append(
            {
                "name": name,
                "function": f"{spec.ref.module}.{spec.ref.qualname}",
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
    return {"pipeline": pipeline.name, "steps": steps, "edges": edges, "params": params}


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)
    return value


def _text(pipeline: Pipeline) -> str:
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
        tail = f"  [{', '.join(extra)}]" if extra else ""
        lines.append(f"  {name}({', '.join(ins)}) -> {outs}{tail}")
    return "\n".join(lines) + "\n"


def _dot(pipeline: Pipeline) -> str:
    # Every id is a quoted string, so DOT keywords (node, edge, graph, ...) are safe as names;
    # step and pipeline names are validated to ASCII, so json.dumps quotes them exactly.
    lines = [f"digraph {json.dumps(pipeline.name)} {{", "  rankdir=LR;", "  node [shape=box];"]
    for name in pipeline.steps:
        lines.append(f"  {json.dumps(name)};")
    for e in pipeline.dag.edges:
        label = f" [label={json.dumps(e.output)}]" if e.output != e.producer else ""
        lines.append(f"  {json.dumps(e.producer)} -> {json.dumps(e.consumer)}{label};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _mermaid_label(text: str) -> str:
    # Inside a quoted Mermaid label only the double quote is special; #quot; is its entity.
    return '"' + text.replace('"', "#quot;") + '"'


def _mermaid(pipeline: Pipeline) -> str:
    # Node ids are generated (n0, n1, ...) and names are quoted labels: a step named ``end``,
    # ``graph`` or ``subgraph`` is a Mermaid keyword and would break the chart as a bare id.
    ids = {name: f"n{i}" for i, name in enumerate(pipeline.steps)}
    lines = ["flowchart LR"]
    for name, node in ids.items():
        lines.append(f"  {node}[{_mermaid_label(name)}]")
    for e in pipeline.dag.edges:
        label = f"|{_mermaid_label(e.output)}|" if e.output != e.producer else ""
        lines.append(f"  {ids[e.producer]} -->{label} {ids[e.consumer]}")
    return "\n".join(lines) + "\n"


def _json(pipeline: Pipeline) -> str:
    return json.dumps(as_dict(pipeline), indent=2) + "\n"


def _svg(pipeline: Pipeline) -> str:
    from stepflow._planning.svg import render_svg

    edges = [(e.producer, e.consumer) for e in pipeline.dag.edges]
    return render_svg(list(pipeline.steps), edges, title=f"pipeline {pipeline.name}") + "\n"


FORMATS = {"text": _text, "dot": _dot, "mermaid": _mermaid, "json": _json, "svg": _svg}


def render(pipeline: Pipeline, fmt: str = "text") -> str:
    return FORMATS[fmt](pipeline)
