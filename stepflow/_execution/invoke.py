"""Call a step's function and split its return value into named outputs.

Shared by the in-process backend and ``stepflow.worker``, so a step behaves the same wherever
it runs.
"""

from __future__ import annotations

import traceback
from collections.abc import Mapping
from typing import Any

from stepflow._authoring.step import StepSpec
from stepflow._execution.task import TaskError
from stepflow.errors import StepOutputError

__all__ = ["StepRaised", "invoke", "split_outputs"]


class StepRaised(Exception):
    """Internal: carries a step's exception as a transport-safe ``TaskError``."""

    def __init__(self, error: TaskError, exc: BaseException) -> None:
        super().__init__(error.message)
        self.error = error
        self.exc = exc


def invoke(spec: StepSpec, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Run ``spec``'s function with ``kwargs`` and return ``{output name: value}``.

    :raises StepRaised: the function raised, or returned something that does not fit.
    """
    __tracebackhide__ = True
    try:
        value = spec.func(**kwargs)
    except (KeyboardInterrupt, GeneratorExit):
        raise
    except BaseException as exc:
        raise StepRaised(task_error(exc, cut=1), exc) from None
    try:
        return split_outputs(spec, value)
    except StepOutputError as exc:
        raise StepRaised(task_error(exc, cut=None), exc) from None


def split_outputs(spec: StepSpec, value: Any) -> dict[str, Any]:
    """Map a step's return value onto its declared outputs."""
    if spec.output_kind == "none":
        return {}
    if spec.output_kind == "single":
        return {spec.outputs[0].name: value}
    names = [p.name for p in spec.outputs]
    if not isinstance(value, tuple) or len(value) != len(names):
        got = f"a {type(value).__name__}"
        if isinstance(value, tuple):
            got += f" of length {len(value)}"
        raise StepOutputError(
            f"step {spec.name!r} declares {len(names)} outputs ({', '.join(names)}) but "
            f"returned {got}; return a tuple with one value per output, in that order",
            step=spec.name,
        )
    return dict(zip(names, value, strict=True))


def task_error(exc: BaseException, *, cut: int | None) -> TaskError:
    """Format ``exc``; ``cut`` drops that many leading frames (stepflow's own call site)."""
    tb = exc.__traceback__
    full = "".join(traceback.format_exception(type(exc), exc, tb))
    if cut is None:
        text = "".join(traceback.format_exception_only(type(exc), exc))
    else:
        for _ in range(cut):
            if tb is not None and tb.tb_next is not None:
                tb = tb.tb_next
        text = "".join(traceback.format_exception(type(exc), exc, tb))
    exc_type = type(exc).__qualname__
    module = type(exc).__module__
    if module not in ("builtins", "__main__"):
        exc_type = f"{module}.{exc_type}"
    return TaskError(
        exc_type=exc_type,
        message=str(exc),
        traceback=text,
        full_traceback=full,
    )
