"""``stepflow explain TARGET [STEP]``: would STEP (or each step) be reused, and if not, what
changed? ``stepflow run --dry-run`` prints the same plan.

The prediction walks the step's ancestors the way a run would, using only the cache index:
a step whose key is stored would be reused (its outputs' content hashes are known); a step
that would run makes its consumers' keys unknowable until it has run (early cutoff may
still reuse them).

A step with ``cache=False`` always runs, but it usually makes what it made last time (a data
loader reading an unchanged file). Its outputs are then taken to be those of its last
successful run, as the run records have them, and every verdict that rests on that says so.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs

from stepflow._config import Config
from stepflow._execution.backend import open_backends
from stepflow._execution.references import resolve_references
from stepflow._execution.store import open_configured_store
from stepflow._pipeline import Pipeline
from stepflow._planning.cachekey import describe_value, item_keys
from stepflow._planning.reuse import NOT_STORED, REGENERATE, decide, earlier_results
from stepflow._pluginmanager import serializers_of
from stepflow._sentinels import MISSING
from stepflow._storage.artifacts import ArtifactIO
from stepflow._storage.hashing import hash_value
from stepflow._storage.index import CacheIndex, CacheRecord
from stepflow.errors import UsageError

__all__ = ["Explanation", "PlanExplanation", "explain", "explain_plan"]


@attrs.frozen
class Explanation:
    step: str
    #: ``"reuse"`` or ``"run"``
    verdict: str
    reasons: tuple[str, ...]
    #: the stored result that would be reused, or the latest one of the step
    record: CacheRecord | None = None
    #: ``cache=False`` steps whose outputs the verdict takes to be those of their last
    #: successful run: step → that run's id
    assumes: Mapping[str, str] = attrs.field(factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "verdict": self.verdict,
            "reasons": list(self.reasons),
            "run_id": self.record.run_id if self.record else None,
            "assumes": dict(self.assumes),
        }

    def text(self) -> str:
        head = f"step {self.step!r} would be {'reused' if self.verdict == 'reuse' else 'run'}"
        return "\n".join([head, *(f"  - {r}" for r in self.reasons)]) + "\n"


@attrs.frozen
class PlanExplanation:
    """``stepflow explain TARGET`` and ``stepflow run --dry-run``: every selected step."""

    pipeline: str
    steps: tuple[Explanation, ...]
    #: outputs taken from outside the run: output → where from (``--from``, stubs)
    given: Mapping[str, str] = attrs.field(factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "pipeline": self.pipeline,
            "steps": [e.to_dict() for e in self.steps],
            "given": dict(self.given),
        }

    def text(self) -> str:
        runs = sum(1 for e in self.steps if e.verdict == "run")
        head = (
            f"plan of pipeline {self.pipeline}: {runs} run, {len(self.steps) - runs} reuse "
            f"(nothing has run)"
        )
        lines = [head]
        for output, where in self.given.items():
            lines.append(f"  given   {output}: {where}")
        # What a cache=False step is assumed to make is said once, not under every step
        # that rests on it.
        assumed = list(dict.fromkeys(r for e in self.steps for r in e.reasons if _assumes(r)))
        lines.extend(f"  note    {r}" for r in assumed)
        width = max((len(e.step) for e in self.steps), default=0)
        for e in self.steps:
            reasons = [r for r in e.reasons if not _assumes(r)] or [""]
            lines.append(f"  {e.verdict:<6}  {e.step:<{width}}  {reasons[0]}")
            lines.extend(f"  {'':<6}  {'':<{width}}  {r}" for r in reasons[1:])
        return "\n".join(lines) + "\n"


def explain(
    pipeline: Pipeline,
    step: str,
    *,
    params: Mapping[str, Any] | None,
    config: Config,
    pm: Any,
) -> Explanation:
    """Predict whether ``step`` would be reused, and say why not."""
    if step not in pipeline.steps:
        raise UsageError(
            f"pipeline {pipeline.name!r} has no step {step!r}; steps: {', '.join(pipeline.steps)}"
        )
    plan = pipeline.plan(params, targets=[step], default_backend=config.default_backend)
    return _walk(plan, pipeline.name, config=config, pm=pm, focus=step).steps[-1]


def explain_plan(
    pipeline: Pipeline,
    *,
    params: Mapping[str, Any] | None,
    config: Config,
    pm: Any,
    targets: Iterable[str] | None = None,
    start: Iterable[str] | None = None,
    regenerate: Collection[str] = (),
    backends: Mapping[str, str] | None = None,
    stubs: Mapping[str, Any] | None = None,
) -> PlanExplanation:
    """Predict, for every step a run would select, ``run`` or ``reuse`` and why.

    Takes what ``Pipeline.run`` takes; ``regenerate`` is the set of steps forced to run
    (already widened to their dependants). Nothing runs and nothing is written.
    """
    plan = pipeline.plan(
        params,
        targets=targets,
        backends=backends,
        default_backend=config.default_backend,
        start=start,
        stub=stubs,
    )
    return _walk(plan, pipeline.name, config=config, pm=pm, regenerate=regenerate)


def _walk(
    plan: Any,
    pipeline: str,
    *,
    config: Config,
    pm: Any,
    regenerate: Collection[str] = (),
    focus: str | None = None,
) -> PlanExplanation:
    """The verdicts of ``plan``'s steps, walked in order as a run would; only ``focus``
    when given (its ancestors are walked, not explained)."""
    serializers = serializers_of(pm)
    backends = open_backends(plan, config, pm, workers=1, run_id="explain", check=False)
    store = open_configured_store(config, pm)
    try:
        # The versions a run would read now; a missing one is the run's own usage error.
        refs = resolve_references(plan, store)
    except BaseException:
        for backend in backends.values():
            backend.close()
        raise
    index = CacheIndex(config.home / "index", store=store)
    io = ArtifactIO(store, serializers)
    try:
        hashes: dict[str, str | None] = {}
        #: output → how to load its value, where it is stored (for fan-out item counts)
        values: dict[str, Any] = {}
        #: fan-out step → how many of its items would run, of how many
        item_counts: dict[str, tuple[int, int]] = {}
        given: dict[str, str] = {}
        if plan.given:
            earlier = earlier_results(plan, pipeline=pipeline, index=index, io=io)
            for output in plan.given:
                producer = plan.dag.producers[output]
                if output in plan.stubs:
                    hashes[output] = hash_value(plan.stubs[output])
                    values[output] = functools.partial(_same, plan.stubs[output])
                    given[output] = f"stubbed (step {producer!r} does not run)"
                else:
                    hashes[output] = earlier[output].content_hash
                    values[output] = functools.partial(io.load, earlier[output])
                    last = index.last(pipeline, producer)
                    run = f" of run {last.run_id}" if last is not MISSING else ""
                    given[output] = f"the earlier result{run} of step {producer!r} (--from)"
        why_run: dict[str, str] = {}
        verdicts: dict[str, tuple[str, CacheRecord | None, Any]] = {}
        #: cache=False step → the run whose outputs are assumed for it
        assumed: dict[str, str] = {}
        #: step → the assumed cache=False steps its key rests on
        rests_on: dict[str, dict[str, str]] = {}
        for name in plan.steps:
            spec = plan.dag.steps[name]
            edges = [p.name for p in spec.inputs if p.name in plan.dag.producers]
            rests_on[name] = {}
            for edge in edges:
                producer = plan.dag.producers[edge]
                rests_on[name].update(rests_on.get(producer, {}))
                if producer in assumed:
                    rests_on[name][producer] = assumed[producer]
            unknown = [e for e in edges if hashes.get(e) is None]
            key = None
            record = None
            if unknown and name in regenerate:
                verdict = "run"
                why_run[name] = REGENERATE
            elif unknown:
                verdict = "run"
                why_run[name] = "inputs change"
            else:
                decision = decide(
                    plan,
                    name,
                    inputs={e: hashes[e] for e in edges},  # type: ignore[misc]
                    references=refs.get(name),
                    serializers=serializers,
                    backend_env=backends[plan.backends[name]].step_environment(spec),
                    home=config.home,
                    index=index,
                    io=io,
                    regenerate=regenerate,
                )
                key = decision.key
                if decision.reuse:
                    verdict, record = "reuse", decision.record
                else:
                    verdict = "run"
                    why_run[name] = decision.reason
                    foreach = spec.options.foreach
                    if foreach is not None and foreach in values and decision.reason == NOT_STORED:
                        item_counts[name] = _items_to_run(
                            decision.key, foreach, values[foreach], index, io
                        )
            verdicts[name] = (verdict, record, key)
            earlier_run = (
                _earlier_outputs(config.home, pipeline, name, key.digest)
                if not spec.options.cache and key is not None
                else None
            )
            if earlier_run is not None and all(p.name in earlier_run[1] for p in spec.outputs):
                assumed[name] = earlier_run[0]
                record_hashes = earlier_run[1]
            elif record is not None:
                record_hashes = {o: ref.content_hash for o, ref in record.outputs.items()}
                for o, ref in record.outputs.items():
                    values[o] = functools.partial(io.load, ref)
            else:
                record_hashes = {}
            for port in spec.outputs:
                hashes[port.name] = record_hashes.get(port.name)
        explained = [
            _with_items(
                _explanation(plan, step, verdicts, why_run, assumed, rests_on, index, pipeline),
                item_counts.get(step),
            )
            for step in ([focus] if focus is not None else plan.steps)
        ]
        return PlanExplanation(pipeline, tuple(explained), given)
    finally:
        index.close()
        for backend in backends.values():
            backend.close()


def _explanation(
    plan: Any,
    step: str,
    verdicts: Mapping[str, tuple[str, CacheRecord | None, Any]],
    why_run: Mapping[str, str],
    assumed: Mapping[str, str],
    rests_on: dict[str, dict[str, str]],
    index: CacheIndex,
    pipeline: str,
) -> Explanation:
    verdict, record, _ = verdicts[step]
    if not plan.dag.steps[step].options.cache:
        rests_on[step] = {}  # it runs whatever its inputs are
    assumptions = _assumptions(rests_on[step])
    if verdict == "reuse":
        assert record is not None
        return Explanation(
            step,
            "reuse",
            (f"its key matches the result stored by run {record.run_id}", *assumptions),
            record,
            rests_on[step],
        )
    if why_run.get(step) == REGENERATE:
        reasons = ["asked to regenerate it (--regenerate, or a step it depends on)"]
    else:
        reasons = _reasons(plan, step, verdicts, why_run, assumed, index, pipeline)
    return Explanation(
        step,
        "run",
        tuple(reasons + assumptions),
        _last(index, pipeline, step),
        rests_on[step],
    )


def _same(value: Any) -> Any:
    return value


def _items_to_run(
    key: Any, foreach: str, load: Any, index: CacheIndex, io: ArtifactIO
) -> tuple[int, int] | None:
    """For a fan-out step that would run: how many of its items have no stored result
    (they would run), of how many; ``None`` when the list cannot be read."""
    try:
        items = list(load())
    except Exception:  # explaining must not fail on a damaged object: it just knows less
        return None
    missing = 0
    key_of = item_keys(key, foreach)
    for item in items:
        record = index.get(key_of(hash_value(item)).digest)
        if record is MISSING or not all(io.available(r) for r in record.outputs.values()):
            missing += 1
    return missing, len(items)


def _with_items(explanation: Explanation, counts: tuple[int, int] | None) -> Explanation:
    if counts is None:
        return explanation
    missing, total = counts
    note = (
        f"{missing} of its {total} items would run (no stored result for their keys); "
        f"the other {total - missing} would be reused"
    )
    return attrs.evolve(explanation, reasons=(*explanation.reasons, note))


def _earlier_outputs(
    home: Path, pipeline: str, step: str, key: str
) -> tuple[str, dict[str, str]] | None:
    """What ``step`` made when it last ran with ``key``: ``(run id, {output: content
    hash})``, from the run records. A home without records (or with unreadable ones) knows
    nothing, and none is created."""
    from stepflow._storage.records import RunRecords

    path = home / "runs.db"
    if not path.is_file():
        return None
    try:
        records = RunRecords.shared(path)
        try:
            return records.last_outputs(pipeline, step, key)
        finally:
            records.close()
    except Exception:  # explaining must not fail on damaged records; it just knows less
        return None


def _assumes(reason: str) -> bool:
    return reason.startswith("assuming step ")


def _assumptions(rests_on: Mapping[str, str]) -> list[str]:
    return [
        f"assuming step {producer!r} makes the same output as in run {run_id}, when it last "
        f"ran with the same key (it has cache=False, so it always runs)"
        for producer, run_id in rests_on.items()
    ]


def _last(index: CacheIndex, pipeline: str, step: str) -> CacheRecord | None:
    last = index.last(pipeline, step)
    return None if last is MISSING else last


def _reasons(
    plan: Any,
    step: str,
    verdicts: Mapping[str, tuple[str, CacheRecord | None, Any]],
    why_run: Mapping[str, str],
    assumed: Mapping[str, str],
    index: CacheIndex,
    pipeline: str,
) -> list[str]:
    spec = plan.dag.steps[step]
    if not spec.options.cache:
        return ["it has cache=False, so it always runs"]
    reasons = []
    for port in spec.inputs:
        producer = plan.dag.producers.get(port.name)
        if producer in assumed:
            continue  # its output is taken as last time's: the key below says the rest
        if producer in verdicts and verdicts[producer][0] == "run":
            reasons.append(
                f"input {port.name!r} comes from step {producer!r}, which would run "
                f"({why_run[producer]}); if it makes identical output, {step!r} may still "
                f"be reused (early cutoff)"
            )
    key = verdicts[step][2]
    last = _last(index, pipeline, step)
    if key is None:
        return reasons
    if last is None:
        reasons.append(f"there is no earlier result of step {step!r} in this stepflow home")
        return reasons
    reasons.extend(_diff(last, key.components, plan.step_params[step], plan.secret_params))
    if len(reasons) == 0:
        reasons.append(
            f"its key is unchanged since run {last.run_id}, but the stored result is gone "
            f"(pruned, or an object went missing)"
        )
    return reasons


def _diff(
    last: CacheRecord,
    now: Mapping[str, Mapping[str, str]],
    params: Mapping[str, Any],
    secret: frozenset[str],
) -> list[str]:
    before = last.components
    reasons = []
    old_code = {k: v for k, v in before.get("code", {}).items() if k != "digest"}
    new_code = {k: v for k, v in now["code"].items() if k != "digest"}
    for part in sorted(set(old_code) | set(new_code)):
        if part not in old_code:
            reasons.append(f"code: now uses {_part(part)}")
        elif part not in new_code:
            reasons.append(f"code: no longer uses {_part(part)}")
        elif old_code[part] != new_code[part]:
            if part.startswith(("dist:", "python:")):
                reasons.append(f"code: {_part(part)} changed {old_code[part]} -> {new_code[part]}")
            else:
                reasons.append(f"code: {_part(part)} changed")
    if not reasons and before.get("code", {}).get("digest") != now["code"].get("digest"):
        reasons.append("code: the step's code changed")
    old_refs, new_refs = before.get("references", {}), now.get("references", {})
    for name in sorted(set(before.get("inputs", {})) | set(now["inputs"])):
        if before.get("inputs", {}).get(name) != now["inputs"].get(name):
            if name in old_refs and name in new_refs:
                reasons.append(f"{_versions(old_refs[name], new_refs[name])} (input {name!r})")
            elif name in new_refs:
                reasons.append(f"input {name!r} now reads {new_refs[name]}")
            else:
                reasons.append(f"input {name!r} has different content")
    for name in sorted(set(before.get("params", {})) | set(now["params"])):
        if before.get("params", {}).get(name) != now["params"].get(name):
            if name in secret:
                reasons.append(f"parameter {name!r} (secret) changed")
            else:
                old = last.param_values.get(name, "?")
                new = describe_value(params[name]) if name in params else "(unset)"
                reasons.append(f"parameter {name!r} changed: {old} -> {new}")
    for name in sorted(set(before.get("env", {})) | set(now["env"])):
        old_env, new_env = before.get("env", {}).get(name), now["env"].get(name)
        if old_env != new_env:
            reasons.append(f"environment {name!r} changed: {old_env} -> {new_env}")
    return reasons


def _versions(old: str, new: str) -> str:
    """``data set houses v2`` and ``data set houses v3`` → ``data set houses v2 -> v3``."""
    old_label, _, _ = old.partition(" (")
    new_label, paren, note = new.partition(" (")
    old_head, _, old_version = old_label.rpartition(" ")
    new_head, _, new_version = new_label.rpartition(" ")
    if old_head != new_head:
        return f"{old} -> {new}"
    return f"{new_head} {old_version} -> {new_version}{paren and ' (' + note}"


def _part(part: str) -> str:
    if part.startswith("dist:"):
        return f"library {part[5:]}"
    if part.startswith("python:"):
        return "the Python standard library"
    return part
