"""One attempt at a step, wherever it runs: load the inputs, add the parameters, invoke,
hash and store the outputs.

The in-process backend and ``stepflow.worker`` both call ``run_attempt`` (DESIGN §3, "one way
to run a step"), so a step fails with the same error types and messages wherever it runs.
They differ only in what they hand it: the in-process path loads inputs it already holds in
memory without reading the store, and each says where the step's own output goes.

Imported only when a step runs: a fully cached run never loads this module.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from stepflow._execution.invoke import StepRaised, invoke, task_error
from stepflow._execution.task import TaskError
from stepflow._storage.datastore import ArtifactMissingError
from stepflow._storage.hashing import hash_value
from stepflow.errors import StepFailedError, StepTimeoutError

if TYPE_CHECKING:
    from stepflow._authoring.step import StepSpec
    from stepflow._storage.artifacts import ArtifactIO, ArtifactRef

__all__ = ["Attempt", "internal_error", "run_attempt", "step_error"]


@attrs.frozen
class Attempt:
    """What one attempt made: its outputs stored (and in memory), or the error."""

    #: output name → stored reference, for every output stored (all of them on success)
    outputs: Mapping[str, ArtifactRef] = attrs.field(factory=dict)
    #: output name → the value the step returned
    values: Mapping[str, Any] = attrs.field(factory=dict)
    error: TaskError | None = None


def internal_error(exc: BaseException, what: str, **extra: Any) -> TaskError:
    """``exc`` as stepflow's own failure around a step (not the step's): ``what: message``."""
    error = task_error(exc, cut=None)
    return TaskError(
        exc_type=error.exc_type,
        message=f"{what}: {error.message}",
        traceback=error.full_traceback,
        full_traceback=error.full_traceback,
        internal=True,
        **extra,
    )


def run_attempt(
    spec: StepSpec,
    *,
    step: str,
    inputs: Mapping[str, Callable[[], Any]],
    references: Mapping[str, Any],
    params: Mapping[str, Any],
    io: ArtifactIO,
    home: Path,
    output: Callable[[], AbstractContextManager[Any]],
    check_inputs: Callable[[Mapping[str, Any]], None] | None = None,
    store: bool = True,
) -> Attempt:
    """Run ``spec`` (step ``step`` of the run) once; never raises for the step's own
    error, nor for a bad input.

    ``store=False`` returns the values without storing them (``Attempt.outputs`` is empty):
    for the caller that stores many small results together (the items of a fan-out).

    ``inputs`` maps each input made by another step to a function that gives its value
    (verified). ``references`` maps parameters to the registry versions they read.
    ``output`` makes the context in which the step's function runs (where its output is
    captured). ``check_inputs`` sees the arguments after the step returned, to catch a step
    that changed an input in place.
    """
    kwargs: dict[str, Any] = {}
    for name, load in inputs.items():
        try:
            kwargs[name] = load()
        except ArtifactMissingError as exc:
            # The producer must run again (the run loop does that, then retries).
            return Attempt(error=internal_error(exc, f"input {name!r}", bad_input=name))
        except Exception as exc:
            return Attempt(error=internal_error(exc, f"input {name!r} could not be loaded"))
    if references:
        from stepflow._execution.references import load_reference

        for name, version in references.items():
            # Loaded only now that the step runs: a reused step never reads it.
            try:
                kwargs[name] = load_reference(
                    version,
                    spec.input(name).annotation,
                    store=io.store,
                    serializers=io.serializers,
                    home=home,
                )
            except Exception as exc:
                what = f"input {name!r} ({version.label}) could not be loaded"
                return Attempt(error=internal_error(exc, what))
    kwargs.update(params)
    try:
        with output():
            values = invoke(spec, kwargs)
    except StepRaised as raised:
        return Attempt(error=raised.error)
    if check_inputs is not None:
        check_inputs(kwargs)
    if not store:
        return Attempt({}, values)
    outputs: dict[str, ArtifactRef] = {}
    for name, value in values.items():
        try:
            # Inline when small: the caller commits the bytes inside the step's index record.
            outputs[name] = io.save(value, hash_value(value), inline=True)
        except Exception as exc:
            # Only the line naming the problem: the frames are stepflow's own.
            error = attrs.evolve(
                internal_error(exc, f"output {name!r} of step {step!r}"),
                traceback=task_error(exc, cut=None).traceback,
            )
            return Attempt(outputs, values, error)
    return Attempt(outputs, values)


def step_error(name: str, error: TaskError) -> StepFailedError:
    """The error a run reports for an attempt's ``TaskError``."""
    cls = StepTimeoutError if error.timed_out else StepFailedError
    message = f"{error.exc_type}: {error.message}" if error.message else error.exc_type
    if error.timed_out or error.internal:
        message = error.message
    return cls(
        message,
        step=name,
        exc_type=error.exc_type,
        traceback=error.traceback,
        full_traceback=error.full_traceback,
    )
