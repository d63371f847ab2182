"""Registry references of a run: ``Dataset``/``Model`` inputs and outputs registered on
completion.

When a run starts, every reference input of the selected steps is resolved to one version
(latest, ``version=`` or ``alias=``) before any step runs, so a missing data set or model is
a usage error that costs nothing. The version's content hash joins the consumer's cache key:
registering a new version, or moving an alias to other content, invalidates exactly the steps
that read it. The value itself is loaded only when the step runs, in the run's process or in a
worker (the ``Task`` carries the resolved versions).

An output marked ``-> Annotated[pd.DataFrame, Dataset("name")]`` (or ``@step(register_as=)``)
becomes a new data-set version when the whole run succeeded, with the run, step and output as
its source; unchanged content makes no new version.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from stepflow._authoring.markers import Dataset, Model
from stepflow._planning.reuse import reference_hashes, with_references
from stepflow._storage.datastore import Datastore
from stepflow._storage.registry import DatasetVersion, ModelVersion, Registry, check_name
from stepflow._storage.registry_content import (
    dataset_content,
    is_dataframe,
    load_dataset,
    load_model,
    problem,
    table_content,
    want_of,
)
from stepflow.errors import NotRegisteredError, StepflowWarning, UsageError

if TYPE_CHECKING:
    from stepflow._planning.plan import Plan
    from stepflow._storage.artifacts import ArtifactRef

__all__ = [
    "OutputValue",
    "Resolved",
    "load_reference",
    "marker_text",
    "publish_outputs",
    "reference_hashes",
    "resolve_references",
    "with_references",
]

log = logging.getLogger("stepflow.registry")

#: step → parameter → the version it reads
Resolved = dict[str, dict[str, "DatasetVersion | ModelVersion"]]


def marker_text(marker: Dataset | Model) -> str:
    """``Dataset("houses", version=2)`` as the user wrote it."""
    args = [repr(marker.name)]
    if marker.version is not None:
        args.append(f"version={marker.version!r}")
    if isinstance(marker, Model) and marker.alias is not None:
        args.append(f"alias={marker.alias!r}")
    return f"{type(marker).__name__}({', '.join(args)})"


def _fix(marker: Dataset | Model, registered: bool) -> str:
    """How to fix a reference that did not resolve (the registry's message lists what
    exists when only the version or alias is wrong)."""
    if registered:
        return "point the reference at one of those, or register a new version"
    if isinstance(marker, Dataset):
        return (
            f"register it with `stepflow datasets register {marker.name} PATH` or "
            f"stepflow.datasets.register({marker.name!r}, path_or_dataframe)"
        )
    return (
        f"register one with stepflow.models.register({marker.name!r}, model) (from a "
        f"training step, say), then run again"
    )


def resolve_references(plan: Plan, store: Datastore) -> Resolved:
    """The version each reference input of ``plan`` reads, and a check of each output marker.

    :raises UsageError: a data set, model, version or alias is missing, or a data set cannot
        be given as its parameter's type; nothing has run.
    """
    registry = Registry(store)
    resolved: Resolved = {}
    for sname in plan.steps:
        spec = plan.dag.steps[sname]
        for port in spec.outputs:
            if isinstance(port.reference, Dataset):
                try:
                    check_name("data set", port.reference.name)
                except UsageError as exc:
                    raise UsageError(f"step {sname!r} output {port.name!r}: {exc}") from None
        for port in spec.inputs:
            marker = port.reference
            if marker is None or port.name in plan.dag.producers:
                continue
            where = f"step {sname!r} parameter {port.name!r} reads {marker_text(marker)}"
            version: DatasetVersion | ModelVersion
            try:
                if isinstance(marker, Dataset):
                    version = registry.dataset(marker.name, marker.version)
                else:
                    version = registry.model(marker.name, marker.version, marker.alias)
            except NotRegisteredError as exc:
                kind = "data set" if isinstance(marker, Dataset) else "model"
                registered = marker.name in registry.names(kind)
                raise NotRegisteredError(
                    f"{where}, but {exc}\n{_fix(marker, registered)}",
                    kind=exc.kind,
                    name=exc.name,
                    available=exc.available,
                ) from None
            except UsageError as exc:
                raise UsageError(f"{where}: {exc}") from None
            if isinstance(version, DatasetVersion):
                reason = problem(version, want_of(port.annotation))
                if reason is not None:
                    raise UsageError(f"{where}: {reason}")
            resolved.setdefault(sname, {})[port.name] = version
    return resolved


def load_reference(
    version: DatasetVersion | ModelVersion,
    annotation: Any,
    *,
    store: Datastore,
    serializers: Sequence[Any],
    home: Path,
) -> Any:
    """The value a step parameter gets for a resolved reference."""
    if isinstance(version, ModelVersion):
        return load_model(version, store, serializers)
    return load_dataset(
        version, want_of(annotation), store=store, serializers=serializers, home=home
    )


# --- outputs registered when the run completes ---------------------------------------------


@attrs.frozen
class OutputValue:
    """What the run knows of one output: its stored reference, and how to load it."""

    content_hash: str
    ref: ArtifactRef | None
    load: Callable[[], Any]


def publish_outputs(
    plan: Plan,
    outputs: Mapping[str, OutputValue],
    *,
    store: Datastore,
    serializers: Sequence[Any],
    run_id: str,
    pipeline: str,
) -> list[DatasetVersion]:
    """Register every output marked as a data set; returns the versions (new or unchanged).

    An output that cannot be registered (not a DataFrame or a path) is a warning: the run's
    results are committed already and stay usable.
    """
    registry = Registry(store)
    done = []
    for sname in plan.steps:
        for port in plan.dag.steps[sname].outputs:
            if not isinstance(port.reference, Dataset) or port.name not in outputs:
                continue
            name = port.reference.name
            out = outputs[port.name]
            source = {
                "kind": "run",
                "run_id": run_id,
                "pipeline": pipeline,
                "step": sname,
                "output": port.name,
            }
            try:
                version = _register_output(registry, name, out, store, serializers, source)
            except UsageError as exc:
                warnings.warn(
                    StepflowWarning(
                        f"output {port.name!r} of step {sname!r} was not registered as data "
                        f"set {name!r}: {exc}"
                    ),
                    stacklevel=2,
                )
                continue
            state = "registered" if version.new else "unchanged"
            log.info("%s: %s from step %s", state, version.label, sname)
            done.append(version)
    return done


def _register_output(
    registry: Registry,
    name: str,
    out: OutputValue,
    store: Datastore,
    serializers: Sequence[Any],
    source: Mapping[str, Any],
) -> DatasetVersion:
    try:
        latest = registry.dataset(name)
    except NotRegisteredError:
        latest = None
    if latest is not None and latest.kind == "table" and latest.content_hash == out.content_hash:
        # A reused or recomputed output with the same content: no need to load it.
        return latest
    value = out.load()
    if is_dataframe(value) and out.ref is not None:
        from stepflow._storage.artifacts import ArtifactIO

        # A version outlives the cache entry: a small output kept inline in its index
        # record is written out as the object file the version refers to.
        content = table_content(ArtifactIO(store, serializers).materialize(out.ref))
    elif is_dataframe(value) or isinstance(value, Path):
        content = dataset_content(store, serializers, value)
    else:
        raise UsageError(
            f"it is a {type(value).__module__}.{type(value).__qualname__}; a registered "
            f"output must be a pandas DataFrame or a pathlib.Path to a file or folder"
        )
    return registry.add_content(name, content, source=source)
