"""Turn a DAG plus run-time choices (targets, parameters, backends) into a ``Plan``."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from stepflow._authoring.parse import check_value
from stepflow._planning.dag import DAG
from stepflow._sentinels import MISSING
from stepflow.errors import UsageError

__all__ = ["Plan", "make_plan"]


@attrs.frozen(eq=False)
class Plan:
    """What a run will do: which steps, in which order, with which values, where."""

    dag: DAG
    #: the selected steps, in topological order
    steps: tuple[str, ...]
    #: step → {parameter: value}
    step_params: Mapping[str, Mapping[str, Any]]
    #: the pipeline parameters' values (one per name; the first step's default if unset)
    params: Mapping[str, Any]
    #: step → backend name
    backends: Mapping[str, str]
    #: parameter names whose values must never be displayed
    secret_params: frozenset[str] = frozenset()


def make_plan(
    dag: DAG,
    *,
    params: Mapping[str, Any] | None = None,
    targets: Iterable[str] | None = None,
    backends: Mapping[str, str] | None = None,
    default_backend: str = "local",
) -> Plan:
    """Select steps and resolve parameters; raise ``UsageError`` on unknown names."""
    params = dict(params or {})
    selected = dag.order
    if targets:
        wanted = [_resolve_target(dag, t) for t in targets]
        needed = dag.ancestors(wanted)
        selected = tuple(n for n in dag.order if n in needed)

    unknown = [p for p in params if p not in dag.params]
    if unknown:
        raise UsageError(_unknown_message("parameter", unknown[0], list(dag.params)))

    step_params: dict[str, dict[str, Any]] = {name: {} for name in selected}
    values: dict[str, Any] = {}
    for pname, pspec in dag.params.items():
        if pname in params:
            value = check_value(pname, params[pname], pspec.annotation, secret=pspec.secret)
            values[pname] = value
        for sname, default in pspec.defaults.items():
            if sname not in step_params:
                continue
            if pname in params:
                step_params[sname][pname] = values[pname]
            elif default is not MISSING:
                step_params[sname][pname] = default
                values.setdefault(pname, default)
            else:
                raise UsageError(
                    f"parameter {pname!r} of step {sname!r} has no default; give a value with "
                    f"--param {pname}=VALUE or run(params={{{pname!r}: ...}})"
                )

    # Dataset/Model references are resolved against the registry when a run starts (the
    # plan does not know the datastore): see stepflow._execution.references.

    overrides = dict(backends or {})
    for sname in overrides:
        if sname not in dag.steps:
            raise UsageError(_unknown_message("step", sname, list(dag.steps), flag="--backend"))
    chosen = {
        s: overrides.get(s) or dag.steps[s].options.backend or default_backend for s in selected
    }
    secret = frozenset(n for n, p in dag.params.items() if p.secret)
    return Plan(
        dag=dag,
        steps=selected,
        step_params=step_params,
        params=values,
        backends=chosen,
        secret_params=secret,
    )


def _resolve_target(dag: DAG, target: str) -> str:
    if target in dag.steps:
        return target
    if target in dag.producers:
        return dag.producers[target]
    names = sorted({*dag.steps, *dag.producers})
    raise UsageError(_unknown_message("step or output", target, names, flag="--target"))


def _unknown_message(what: str, name: str, known: list[str], flag: str = "--param") -> str:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    text = f"unknown {what} {name!r}"
    if close:
        text += f"; did you mean {' or '.join(repr(c) for c in close)}?"
    text += f"\navailable: {', '.join(sorted(known)) or 'none'}"
    if flag == "--param":
        text += "\n(see `stepflow show TARGET` for the pipeline's parameters)"
    return text
