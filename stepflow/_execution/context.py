"""``stepflow.context()``: the run and step a step's code is executing in.

Inside a running step, ``context()`` gives the current run id, step name and attempt, and
records metrics, parameters, tags and files with the run. Called anywhere else (a step
unit-tested as a plain function, a notebook) it returns a *detached* context that keeps what
is logged in memory, so step code never needs an ``if`` around its logging.
"""

from __future__ import annotations

import contextlib
import contextvars
import numbers
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs

from stepflow.errors import UsageError

__all__ = ["Metric", "StepContext", "activate", "context", "current"]


@attrs.frozen
class Metric:
    """One logged metric value."""

    name: str
    value: float
    #: the caller's own counter (epoch, iteration), if it gave one
    step: int | None = None
    timestamp: float = 0.0


def _check_name(what: str, name: object) -> str:
    if not isinstance(name, str) or not name or len(name) > 250:
        raise UsageError(f"{what} name must be a non-empty string, got {name!r}")
    return name


@attrs.define(eq=False)
class StepContext:
    """The run and step being executed, and what the step logged.

    ``run_id`` and ``step`` are ``None`` in a detached context (outside a run).
    """

    run_id: str | None = None
    pipeline: str | None = None
    step: str | None = None
    attempt: int = 1
    #: the run's datastore (``None`` when detached); registries write through it
    store: Any = None
    #: the serializers the run stores values with
    serializers: tuple[Any, ...] = ()
    #: the stepflow home of the run
    home: Path | None = None
    metrics: list[Metric] = attrs.field(factory=list)
    params: dict[str, str] = attrs.field(factory=dict)
    tags: dict[str, str] = attrs.field(factory=dict)
    #: file name → stored artifact reference (``log_artifact``)
    artifacts: dict[str, Any] = attrs.field(factory=dict)
    #: secret parameter values, masked wherever this context writes text
    secrets: tuple[str, ...] = ()

    @property
    def detached(self) -> bool:
        """``True`` outside a run: what is logged stays in memory only."""
        return self.run_id is None

    def _mask(self, text: str) -> str:
        for secret in self.secrets:
            if secret:
                text = text.replace(secret, "***")
        return text

    def log_metric(self, name: str, value: float, step: int | None = None) -> None:
        """Record a numeric metric (``step`` is your own counter: epoch, iteration)."""
        _check_name("metric", name)
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise UsageError(
                f"metric {name!r} must be a real number, got {type(value).__name__} {value!r}"
            )
        if step is not None and (isinstance(step, bool) or not isinstance(step, int)):
            raise UsageError(f"metric {name!r}: step must be an int, got {step!r}")
        self.metrics.append(Metric(name, float(value), step, time.time()))

    def log_param(self, name: str, value: Any) -> None:
        """Record a parameter of the step's own (a chosen hyper-parameter, say)."""
        self.params[_check_name("param", name)] = self._mask(str(value))

    def set_tag(self, name: str, value: Any) -> None:
        """Attach a tag to the run (``set_tag("dataset", "ames")``)."""
        self.tags[_check_name("tag", name)] = self._mask(str(value))

    def log_artifact(self, path: str | os.PathLike[str], name: str | None = None) -> Any:
        """Keep a copy of a file (a plot, a report) with the run, content-addressed.

        :returns: the stored artifact's reference (``None`` when detached).
        :raises UsageError: ``path`` is not a file.
        """
        source = Path(path)
        if not source.is_file():
            raise UsageError(f"log_artifact: {source} is not a file")
        name = _check_name("artifact", name or source.name)
        if self.store is None:
            self.artifacts[name] = str(source)
            return None
        from stepflow._storage.files import store_file

        ref = store_file(self.store, source)
        self.artifacts[name] = ref
        return ref

    def summary(self) -> Mapping[str, Any]:
        """What was logged, as plain data (for tests and reports)."""
        return {
            "metrics": [attrs.asdict(m) for m in self.metrics],
            "params": dict(self.params),
            "tags": dict(self.tags),
            "artifacts": sorted(self.artifacts),
        }


_current: contextvars.ContextVar[StepContext | None] = contextvars.ContextVar(
    "stepflow_step_context", default=None
)


def current() -> StepContext | None:
    """The context of the step running in this thread, or ``None``."""
    return _current.get()


def context() -> StepContext:
    """The current step's context; a detached one outside a run.

    >>> import stepflow
    >>> ctx = stepflow.context()
    >>> ctx.detached
    True
    >>> ctx.log_metric("rmse", 0.25)
    >>> ctx.metrics[-1].value
    0.25
    """
    ctx = _current.get()
    if ctx is None:
        ctx = StepContext()
        _current.set(ctx)
    return ctx


@contextlib.contextmanager
def activate(ctx: StepContext | None) -> Iterator[StepContext | None]:
    """Make ``ctx`` the current context for the duration of the block."""
    token = _current.set(ctx)
    try:
        yield ctx
    finally:
        _current.reset(token)
