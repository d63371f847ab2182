"""Turn a DAG plus run-time choices (targets, parameters, backends) into a ``Plan``."""

from __future__ import annotations

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
    #: outputs the selected steps read whose producers are not selected (``--from``,
    #: stubs): they come from earlier results or from ``stubs``, never from this run
    given: tuple[str, ...] = ()
    #: output → the value that replaces it (``stub=``); its producer does not run
    stubs: Mapping[str, Any] = attrs.field(factory=dict)
    #: the ``--from`` steps, when given
    start: tuple[str, ...] = ()

    @property
    def earlier(self) -> tuple[str, ...]:
        """The given outputs taken from earlier results (those not stubbed)."""
        return tuple(o for o in self.given if o not in self.stubs)


def make_plan(
    dag: DAG,
    *,
    params: Mapping[str, Any] | None = None,
    targets: Iterable[str] | None = None,
    backends: Mapping[str, str] | None = None,
    default_backend: str = "local",
    start: Iterable[str] | None = None,
    stubs: Mapping[str, Any] | None = None,
) -> Plan:
    """Select steps and resolve parameters; raise ``UsageError`` on unknown names.

    :param targets: steps or outputs; only they and what they need are selected.
    :param start: ``--from``: only these steps and what depends on them are selected; what
        they read from other steps comes from earlier results (``Plan.earlier``).
    :param stubs: output → value: the value replaces the output, and its producer (with
        whatever only it needed) is not selected.
    """
    params = dict(params or {})
    stubs = dict(stubs or {})
    selected = _select(dag, targets, stubs)
    starts: tuple[str, ...] = ()
    if start:
        starts = tuple(_resolve_start(dag, s) for s in start)
        below = dag.descendants(starts)
        selected = tuple(n for n in selected if n in below)
        if not selected:
            raise UsageError(
                f"--from {', '.join(starts)}: none of the targets depends on "
                f"{'these steps' if len(starts) > 1 else repr(starts[0])}, so nothing would run"
            )
    given = _given(dag, selected)

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
        given=given,
        stubs=stubs,
        start=starts,
    )


def _select(dag: DAG, targets: Iterable[str] | None, stubs: Mapping[str, Any]) -> tuple[str, ...]:
    """The steps a run needs, in order: the targets' (or every step's) ancestors, where a
    stubbed output cuts the walk upstream (its producer, and what only it needed, drop out).
    """
    for output in stubs:
        if output not in dag.producers:
            raise UsageError(_unknown_message("output", output, list(dag.producers), flag="stub"))
    stubbed = set(stubs)
    replaced = {dag.producers[o] for o in stubbed}

    def deps(name: str) -> set[str]:
        spec = dag.steps[name]
        found = {
            dag.producers[p.name]
            for p in spec.inputs
            if p.name in dag.producers and p.name not in stubbed
        }
        found.update(a for a in spec.options.after if a not in replaced)
        return found

    if targets:
        wanted = [_resolve_target(dag, t) for t in targets]
        needed: set[str] = set()
        stack = [w for w in wanted if w not in replaced]
        while stack:
            name = stack.pop()
            if name not in needed:
                needed.add(name)
                stack.extend(deps(name))
    elif not stubs:
        return dag.order
    else:
        # Every step but the replaced ones and those that only fed them.
        needed = set()
        for name in reversed(dag.order):
            below = dag.downstream[name]
            read = any(d in needed and name in deps(d) for d in below)
            if read or (not below and name not in replaced):
                needed.add(name)
    # A replaced step that still has to run for another of its outputs cannot be half stubbed.
    for name in needed & replaced:
        spec = dag.steps[name]
        missing = [p.name for p in spec.outputs if p.name not in stubbed]
        raise UsageError(
            f"the stub for {sorted(stubbed & {p.name for p in spec.outputs})[0]!r} replaces "
            f"step {name!r}, but its other output(s) {', '.join(map(repr, missing))} are still "
            f"needed; stub those too"
        )
    return tuple(n for n in dag.order if n in needed)


def _resolve_start(dag: DAG, name: str) -> str:
    if name not in dag.steps and name in dag.producers:
        name = dag.producers[name]
    if name not in dag.steps:
        raise UsageError(_unknown_message("step", name, list(dag.steps), flag="--from"))
    return name


def _given(dag: DAG, selected: tuple[str, ...]) -> tuple[str, ...]:
    """Outputs the selected steps read from producers that are not selected."""
    chosen = set(selected)
    given: list[str] = []
    for name in selected:
        for port in dag.steps[name].inputs:
            producer = dag.producers.get(port.name)
            if producer is not None and producer not in chosen and port.name not in given:
                given.append(port.name)
    # Stubs nobody reads are harmless: they replaced steps whose outputs go unused.
    return tuple(given)


def _resolve_target(dag: DAG, target: str) -> str:
    if target in dag.steps:
        return target
    if target in dag.producers:
        return dag.producers[target]
    names = sorted({*dag.steps, *dag.producers})
    raise UsageError(_unknown_message("step or output", target, names, flag="--target"))


def _unknown_message(what: str, name: str, known: list[str], flag: str = "--param") -> str:
    from stepflow._humanize import close_names, did_you_mean  # error paths only

    close = close_names(name, known)
    text = f"unknown {what} {name!r}"
    if close:
        text += f"; {did_you_mean(close)}"
    text += f"\navailable: {', '.join(sorted(known)) or 'none'}"
    if flag == "--param":
        text += "\n(see `stepflow show TARGET` for the pipeline's parameters)"
    return text
