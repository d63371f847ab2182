"""The reuse decision: a step's cache key, its stored result, and whether that is usable.

One function for the run loop and ``stepflow explain`` (DESIGN §3, "one way to decide
reuse"), so a prediction can never disagree with what a run does. It only reads the store and
the cache index; what to do about a stored result that is incomplete (warn, drop it) is the
caller's business.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from stepflow._planning.cachekey import CacheKey, plan_key
from stepflow._sentinels import MISSING
from stepflow._slotted import Frozen

if TYPE_CHECKING:
    from stepflow._authoring.step import StepSpec
    from stepflow._planning.plan import Plan
    from stepflow._storage.artifacts import ArtifactIO, ArtifactRef
    from stepflow._storage.datastore import Datastore
    from stepflow._storage.index import CacheIndex, CacheRecord
    from stepflow._storage.registry import DatasetVersion, ModelVersion

__all__ = [
    "CACHE_OFF",
    "NOT_STORED",
    "REGENERATE",
    "Decision",
    "decide",
    "earlier_results",
    "look_up",
    "reference_hashes",
    "step_key",
    "with_references",
]

#: why a step runs: its options say it always runs
CACHE_OFF = "cache=False"
#: why a step runs: it was asked to run again (``--regenerate``)
REGENERATE = "regenerate"
#: why a step runs: its current key has no stored result, or the result is incomplete
NOT_STORED = "no stored result for its current key"


class Decision(Frozen):
    """Whether a step would be reused, and on what grounds."""

    __slots__ = ("key", "record", "available", "reason")

    key: CacheKey
    #: what the index holds for ``key``; ``None`` when nothing is stored, or when it was
    #: not looked up (``cache=False``, regenerated)
    record: CacheRecord | None
    #: every output object of ``record`` is in the store (with its recorded size)
    available: bool
    #: why the step runs; empty when it is reused
    reason: str

    def __init__(
        self, key: CacheKey, record: CacheRecord | None, available: bool, reason: str
    ) -> None:
        init = object.__setattr__
        init(self, "key", key)
        init(self, "record", record)
        init(self, "available", available)
        init(self, "reason", reason)

    @property
    def reuse(self) -> bool:
        return not self.reason


def decide(
    plan: Plan,
    step: str,
    *,
    inputs: Mapping[str, str],
    references: Mapping[str, DatasetVersion | ModelVersion] | None,
    serializers: Any,
    backend_env: Mapping[str, str],
    home: Path,
    index: CacheIndex,
    io: ArtifactIO,
    regenerate: Collection[str] = (),
    quick: bool = False,
) -> Decision:
    """Decide whether ``step`` of ``plan`` is reused.

    ``inputs`` maps each input made by another step to its content hash; ``references`` the
    registry versions the step reads (their content counts as input). ``quick`` looks up
    without waiting for an index that is still being created (it holds nothing yet).
    """
    key = step_key(
        plan,
        step,
        inputs=inputs,
        references=references,
        serializers=serializers,
        backend_env=backend_env,
        home=home,
        store=io.store,
    )
    if not plan.dag.steps[step].options.cache:
        return Decision(key, None, False, CACHE_OFF)
    if step in regenerate:
        return Decision(key, None, False, REGENERATE)
    return look_up(key, index=index, io=io, quick=quick)


def earlier_results(
    plan: Plan, *, pipeline: str, index: CacheIndex, io: ArtifactIO
) -> dict[str, ArtifactRef]:
    """``--from``: each output in ``plan.earlier`` as its producer's latest result in this
    home has it (the one ``explain`` compares with).

    :raises UsageError: one is missing (never made here, pruned, or its object is gone);
        the message names every missing output and its step.
    """
    found: dict[str, ArtifactRef] = {}
    missing: list[str] = []
    for output in plan.earlier:
        producer = plan.dag.producers[output]
        record = index.last(pipeline, producer)
        ref = None if record is MISSING else record.outputs.get(output)
        if ref is None or not io.available(ref):
            missing.append(
                f"step {producer!r}" + (f" (output {output!r})" if output != producer else "")
            )
        else:
            found[output] = ref
    if missing:
        from stepflow.errors import UsageError

        starts = ", ".join(plan.start)
        raise UsageError(
            f"--from {starts}: no earlier result of {'; '.join(missing)} in this stepflow "
            f"home (never made here, pruned, or its stored object is gone); run the "
            f"pipeline once without --from, or start from an earlier step"
        )
    return found


def look_up(key: CacheKey, *, index: CacheIndex, io: ArtifactIO, quick: bool = False) -> Decision:
    """The decision for ``key`` as the index holds it now (again, after waiting for a
    concurrent run that computed the same key)."""
    record = index.get(key.digest, quick=quick)
    if record is MISSING:
        return Decision(key, None, False, NOT_STORED)
    if not all(io.available(ref) for ref in record.outputs.values()):
        return Decision(key, record, False, NOT_STORED)
    return Decision(key, record, True, "")


def step_key(
    plan: Plan,
    step: str,
    *,
    inputs: Mapping[str, str],
    references: Mapping[str, DatasetVersion | ModelVersion] | None,
    serializers: Any,
    backend_env: Mapping[str, str],
    home: Path,
    store: Datastore,
) -> CacheKey:
    """The key of ``step``: ``plan_key`` over its inputs and the registry versions it reads."""
    if references:
        # A registered data set or model counts by the content of the version read.
        inputs = {**inputs, **reference_hashes(references)}
    key = plan_key(
        plan,
        step,
        inputs=inputs,
        serializers=serializers,
        backend_env=backend_env,
        home=home,
        store=store,
    )
    if references:
        key = with_references(key, plan.dag.steps[step], references)
    return key


def reference_hashes(refs: Mapping[str, DatasetVersion | ModelVersion]) -> dict[str, str]:
    """Parameter → content hash: what the cache key's inputs hold for references."""
    return {param: version.content_hash for param, version in refs.items()}


def with_references(
    key: CacheKey, spec: StepSpec, refs: Mapping[str, DatasetVersion | ModelVersion]
) -> CacheKey:
    """``key`` with a ``references`` component naming the versions (``data set houses v3``).

    For ``stepflow explain``: the versions' content hashes are in the ``inputs`` component
    already, and the digest does not change.
    """
    if not refs:
        return key
    labels = {p: _label(v, spec.input(p).reference) for p, v in sorted(refs.items())}
    return attrs.evolve(key, components={**key.components, "references": labels})


def _label(version: DatasetVersion | ModelVersion, marker: Any) -> str:
    alias = getattr(marker, "alias", None)
    return f"{version.label} (alias {alias})" if alias else version.label
