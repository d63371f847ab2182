"""Infer the graph from step signatures and validate it, before anything runs.

Resolution of each step parameter, in order (DESIGN.md section 1): an output of another step
with that name (an edge); a ``Param[T]`` or defaulted parameter (a pipeline parameter); a
``Dataset``/``Model`` reference marker; otherwise a definition error.
"""

from __future__ import annotations

import collections.abc
import heapq
import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs

from stepflow._authoring.step import Port, StepSpec, is_step
from stepflow._planning.typecheck import is_compatible, is_known_fit, type_repr
from stepflow.errors import (
    CycleError,
    DuplicateOutputError,
    MissingInputError,
    NotAStepError,
    PipelineDefinitionError,
    TypeMismatchError,
)

__all__ = ["DAG", "Edge", "ParamSpec", "build_dag"]


@attrs.frozen
class Edge:
    """``producer``'s output ``output`` feeds ``consumer``'s parameter of the same name."""

    producer: str
    output: str
    consumer: str


@attrs.frozen
class ParamSpec:
    """A pipeline parameter: one name, possibly read by several steps."""

    name: str
    annotation: Any
    #: per consuming step, its default (or ``MISSING``)
    defaults: Mapping[str, Any]
    secret: bool = False

    @property
    def steps(self) -> tuple[str, ...]:
        return tuple(self.defaults)


@attrs.frozen(eq=False)
class DAG:
    """A validated graph of steps, in a deterministic topological order."""

    #: step name → spec, in topological order (the user's order breaks ties)
    steps: Mapping[str, StepSpec]
    edges: tuple[Edge, ...]
    #: output name → producing step
    producers: Mapping[str, str]
    params: Mapping[str, ParamSpec]
    #: step name → names of the steps it reads from
    upstream: Mapping[str, tuple[str, ...]]
    #: step name → names of the steps that read from it
    downstream: Mapping[str, tuple[str, ...]]
    #: ordering without data, ``(before, after)``, from ``@step(after=[...])``; these pairs
    #: are in ``upstream`` and ``downstream`` too, so selection, order and skipping follow them
    after: tuple[tuple[str, str], ...] = ()

    @property
    def order(self) -> tuple[str, ...]:
        return tuple(self.steps)

    def ancestors(self, names: Iterable[str]) -> set[str]:
        """``names`` and every step they depend on, transitively."""
        return _reachable(names, self.upstream)

    def descendants(self, names: Iterable[str]) -> set[str]:
        """``names`` and every step that depends on them, transitively."""
        return _reachable(names, self.downstream)


def _reachable(names: Iterable[str], edges: Mapping[str, Iterable[str]]) -> set[str]:
    """``names`` and every step reached from them through ``edges``, transitively."""
    seen: set[str] = set()
    stack = list(names)
    while stack:
        name = stack.pop()
        if name not in seen:
            seen.add(name)
            stack.extend(edges[name])
    return seen


Compatible = Callable[[Any, Any], bool]


def build_dag(steps: Sequence[object], *, compatible: Compatible = is_compatible) -> DAG:
    """Validate ``steps`` and infer their graph; raise a definition error on any problem."""
    specs = _collect_specs(steps)
    producers = _producers(specs)
    edges: list[Edge] = []
    params: dict[str, dict[str, Any]] = {}
    param_ports: dict[str, tuple[str, Port]] = {}
    outputs_by_name = {p.name: (s.name, p) for s in specs.values() for p in s.outputs}
    for spec in specs.values():
        for port in spec.inputs:
            producer = producers.get(port.name)
            if producer is not None:
                _check_edge(spec, port, producer, outputs_by_name[port.name][1], compatible)
                edges.append(Edge(producer, port.name, spec.name))
            elif port.name == spec.options.foreach:
                raise _foreach_unproduced(spec, port, outputs_by_name)
            elif port.is_param or port.has_default:
                _merge_param(params, param_ports, spec.name, port, compatible)
            elif port.reference is not None:
                continue
            else:
                raise _missing_input(spec, port, outputs_by_name, compatible)
    upstream: dict[str, list[str]] = {name: [] for name in specs}
    downstream: dict[str, list[str]] = {name: [] for name in specs}
    for edge in edges:
        if edge.producer not in upstream[edge.consumer]:
            upstream[edge.consumer].append(edge.producer)
            downstream[edge.producer].append(edge.consumer)
    after = _after_pairs(specs)
    for before, later in after:
        if before not in upstream[later]:
            upstream[later].append(before)
            downstream[before].append(later)
    order = _toposort(list(specs), upstream, downstream, set(after))
    param_specs = {
        name: ParamSpec(
            name=name,
            annotation=param_ports[name][1].annotation,
            defaults=defaults,
            secret=param_ports[name][1].secret,
        )
        for name, defaults in params.items()
    }
    return DAG(
        steps={name: specs[name] for name in order},
        edges=tuple(edges),
        producers=producers,
        params=param_specs,
        upstream={k: tuple(v) for k, v in upstream.items()},
        downstream={k: tuple(v) for k, v in downstream.items()},
        after=tuple(after),
    )


def _after_pairs(specs: Mapping[str, StepSpec]) -> list[tuple[str, str]]:
    """``(before, after)`` for every ``@step(after=[...])``; a name outside the pipeline is
    an error (a misspelt or forgotten step would otherwise silently order nothing)."""
    pairs = []
    for spec in specs.values():
        for name in spec.options.after:
            if name not in specs:
                from stepflow._humanize import close_names, did_you_mean  # error paths only

                close = close_names(name, specs)
                hint = f"{did_you_mean(close)} " if close else ""
                raise PipelineDefinitionError(
                    f"step {spec.name!r} has after=[{name!r}], but the pipeline has no step "
                    f"{name!r}; {hint}add that step to the pipeline or drop it from after=[...]"
                    f"\nsteps: {', '.join(specs)}",
                    step=spec.name,
                )
            pairs.append((name, spec.name))
    return pairs


def _foreach_unproduced(
    spec: StepSpec, port: Port, outputs: Mapping[str, tuple[str, Port]]
) -> PipelineDefinitionError:
    from stepflow._humanize import close_names, did_you_mean  # error paths only

    close = close_names(port.name, outputs)
    hint = f"; {did_you_mean(close)}" if close else ""
    return PipelineDefinitionError(
        f"step {spec.name!r} has foreach={port.name!r}, but no step of the pipeline produces "
        f"{port.name!r}{hint}\nforeach runs over a list made by another step: add the step "
        f"that makes {port.name!r}, or rename the parameter to the output holding the items",
        step=spec.name,
        parameter=port.name,
    )


def _collect_specs(steps: Sequence[object]) -> dict[str, StepSpec]:
    if isinstance(steps, str | bytes) or not isinstance(steps, Iterable):
        raise PipelineDefinitionError(
            f"a pipeline takes a list of steps, got {type(steps).__name__}; "
            f"write Pipeline('name', [step_a, step_b])"
        )
    specs: dict[str, StepSpec] = {}
    for index, obj in enumerate(steps):
        if not is_step(obj):
            label = getattr(obj, "__qualname__", None) or repr(obj)
            hint = (
                "decorate it with @step"
                if callable(obj)
                else "only functions decorated with @step can be steps"
            )
            raise NotAStepError(
                f"item {index} of the step list, {label}, is not a step: {hint}",
                step=getattr(obj, "__name__", None),
            )
        spec: StepSpec = obj.spec  # type: ignore[attr-defined]
        if spec.name in specs:
            if specs[spec.name].func is spec.func:
                continue  # the same step listed twice is harmless
            raise PipelineDefinitionError(
                f"two different steps are named {spec.name!r} "
                f"({_where(specs[spec.name])} and {_where(spec)}); rename one with "
                f"@step(name=...)",
                step=spec.name,
            )
        specs[spec.name] = spec
    if not specs:
        raise PipelineDefinitionError("a pipeline needs at least one step")
    return specs


def _where(spec: StepSpec) -> str:
    return f"{spec.ref.module}.{spec.ref.qualname}"


def _producers(specs: Mapping[str, StepSpec]) -> dict[str, str]:
    producers: dict[str, str] = {}
    for spec in specs.values():
        for port in spec.outputs:
            if port.name in producers:
                first = producers[port.name]
                raise DuplicateOutputError(
                    f"output {port.name!r} is produced by two steps, {first!r} and "
                    f"{spec.name!r}; each name must have one producer, so rename one output "
                    f'(-> Annotated[T, "other_name"]) or drop one step',
                    output=port.name,
                    producers=[first, spec.name],
                )
            producers[port.name] = spec.name
    return producers


def _check_edge(
    consumer: StepSpec, port: Port, producer: str, output: Port, compatible: Compatible
) -> None:
    if port.name == consumer.options.foreach:
        # The parameter is one item: the producer must make a sequence of such items.
        wanted = collections.abc.Sequence[port.annotation]  # type: ignore[name-defined]
        if compatible(output.annotation, wanted):
            return
        raise TypeMismatchError(
            f"step {consumer.name!r} has foreach={port.name!r}, so it needs a sequence of "
            f"{type_repr(port.annotation)} (each item is one call), but step {producer!r} "
            f"produces {port.name!r} as {type_repr(output.annotation)}; make {producer!r} "
            f"return a list, e.g. -> list[{type_repr(port.annotation)}]",
            step=consumer.name,
            parameter=port.name,
            producer=producer,
            expected=wanted,
            provided=output.annotation,
        )
    if compatible(output.annotation, port.annotation):
        return
    raise TypeMismatchError(
        f"step {consumer.name!r} parameter {port.name!r} expects "
        f"{type_repr(port.annotation)}, but step {producer!r} produces {port.name!r} as "
        f"{type_repr(output.annotation)}; change one annotation so they agree",
        step=consumer.name,
        parameter=port.name,
        producer=producer,
        expected=port.annotation,
        provided=output.annotation,
    )


def _merge_param(
    params: dict[str, dict[str, Any]],
    param_ports: dict[str, tuple[str, Port]],
    step_name: str,
    port: Port,
    compatible: Compatible,
) -> None:
    if port.name in param_ports:
        other_step, other = param_ports[port.name]
        same_type = compatible(other.annotation, port.annotation) and compatible(
            port.annotation, other.annotation
        )
        if not (same_type and other.secret == port.secret):
            raise PipelineDefinitionError(
                f"parameter {port.name!r} is declared as {type_repr(other.annotation)} by "
                f"step {other_step!r} and as {type_repr(port.annotation)} by step "
                f"{step_name!r}; one pipeline parameter has one type, so make them agree "
                f"or rename one",
                step=step_name,
                parameter=port.name,
            )
    else:
        param_ports[port.name] = (step_name, port)
    params.setdefault(port.name, {})[step_name] = port.default


def _missing_input(
    spec: StepSpec,
    port: Port,
    outputs: Mapping[str, tuple[str, Port]],
    compatible: Compatible,
) -> MissingInputError:
    from stepflow._humanize import close_names, did_you_mean  # error paths only

    close = close_names(port.name, outputs)
    lines = [
        f"step {spec.name!r} parameter {port.name!r} matches no step output, has no default "
        f"and is not a Param[...] or a Dataset/Model reference"
    ]
    if close:
        lines.append(did_you_mean(close))
    # Every producer whose declared type fits, not only an exact match: two steps producing
    # DataFrames are both candidates, and naming one would hide the other. Only a suggestion:
    # choosing between them is the user's call, never a silent edge.
    fitting = [
        (name, producer, out.annotation)
        for name, (producer, out) in outputs.items()
        if producer != spec.name
        and is_known_fit(out.annotation, port.annotation)
        and compatible(out.annotation, port.annotation)
    ]
    wanted = type_repr(port.annotation)
    if len(fitting) == 1:
        name, producer, annotation = fitting[0]
        lines.append(
            f"step {producer!r} produces {name!r} of {_type_note(annotation, wanted)}; "
            f"rename the parameter to {name!r} to use it"
        )
    elif fitting:
        listed = ", ".join(
            f"{producer!r} (output {name!r}"
            + ("" if type_repr(annotation) == wanted else f", {type_repr(annotation)}")
            + ")"
            for name, producer, annotation in fitting
        )
        exact = all(type_repr(annotation) == wanted for _, _, annotation in fitting)
        what = wanted if exact else f"a type that fits {wanted}"
        lines.append(
            f"steps producing {what}: {listed}; rename the parameter to one of those "
            f"outputs to use it"
        )
    lines.append(
        f"fix: rename it to an output's name, give it a default, or declare it "
        f"{port.name}: Param[{type_repr(port.annotation)}]"
    )
    return MissingInputError(
        "\n".join(lines),
        step=spec.name,
        parameter=port.name,
        suggestions=close,
        fitting_outputs=[name for name, _, _ in fitting],
    )


def _type_note(annotation: Any, wanted: str) -> str:
    """ "the same type list[int]", or "type bool, which fits int" for a narrower type."""
    name = type_repr(annotation)
    return f"the same type {name}" if name == wanted else f"type {name}, which fits {wanted}"


def _toposort(
    names: list[str],
    upstream: Mapping[str, list[str]],
    downstream: Mapping[str, list[str]],
    after: set[tuple[str, str]] | None = None,
) -> list[str]:
    position = {name: i for i, name in enumerate(names)}
    indegree = {name: len(upstream[name]) for name in names}
    ready = [(position[n], n) for n in names if indegree[n] == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        _, name = heapq.heappop(ready)
        order.append(name)
        for child in downstream[name]:
            indegree[child] -= 1
            if indegree[child] == 0:
                heapq.heappush(ready, (position[child], child))
    if len(order) != len(names):
        path = _find_cycle([n for n in names if indegree[n] > 0], upstream)
        ordered = [
            f"{a!r} -> {b!r}" for a, b in itertools.pairwise(path) if (a, b) in (after or ())
        ]
        fix = "renaming one parameter or output"
        if ordered:
            fix += f", or dropping an after=[...] ordering ({', '.join(ordered)})"
        raise CycleError(
            f"the steps form a cycle: {' -> '.join(path)}; a step cannot depend on its own "
            f"output, so break the cycle by {fix}",
            path=path,
        )
    return order


def _find_cycle(candidates: list[str], upstream: Mapping[str, list[str]]) -> list[str]:
    """A path ``a -> b -> ... -> a`` in data-flow order among the nodes left over."""
    remaining = set(candidates)
    for start in candidates:
        stack = [start]
        on_path = {start: 0}
        iters = [iter(upstream[start])]
        while iters:
            nxt = next(iters[-1], None)
            if nxt is None:
                iters.pop()
                on_path.pop(stack.pop())
                continue
            if nxt not in remaining:
                continue
            if nxt in on_path:
                cycle = [*stack[on_path[nxt] :], nxt]
                return list(reversed(cycle))
            on_path[nxt] = len(stack)
            stack.append(nxt)
            iters.append(iter(upstream[nxt]))
    return candidates[:1]
