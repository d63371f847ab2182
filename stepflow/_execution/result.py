"""What a run returns: ``RunResult``, a report per step, and the step states."""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from stepflow._sentinels import MISSING
from stepflow.errors import StepFailedError, StorageError

if TYPE_CHECKING:
    from stepflow._execution.context import Metric

__all__ = ["RunInfo", "RunResult", "StepReport", "StepState", "assert_counts"]


class StepState(enum.StrEnum):
    """The final state of a step in a run."""

    #: the step's function ran and succeeded
    RAN = "ran"
    #: a stored result was reused instead of running
    REUSED = "reused"
    #: the step raised, timed out or its worker was lost, on every attempt
    FAILED = "failed"
    #: the step did not run: an upstream step failed, or the run stopped first
    SKIPPED = "skipped"

    def __str__(self) -> str:
        return self.value


@attrs.frozen
class StepReport:
    """How one step went."""

    name: str
    state: StepState
    #: seconds spent in the final attempt (0 for skipped steps)
    duration: float = 0.0
    attempts: int = 0
    backend: str = ""
    #: the error of the final attempt, for failed steps
    error: StepFailedError | None = None
    #: for skipped steps, why
    reason: str = ""
    outputs: tuple[str, ...] = ()
    #: what the final attempt wrote: ``{"stdout": ..., "stderr": ..., "log": ...}``
    logs: Mapping[str, str] = attrs.field(factory=dict)
    #: the metrics the final attempt logged with ``stepflow.context().log_metric``, in order
    #: (each has ``name``, ``value``, ``step`` and ``timestamp``); empty for a reused step
    metrics: tuple[Metric, ...] = ()
    #: for a fan-out step (``foreach``): how many items ran, were reused or failed
    #: (``{"ran": 3, "reused": 97}``); empty for other steps
    items: Mapping[str, int] = attrs.field(factory=dict)


@attrs.frozen(eq=False)
class RunInfo:
    """The run being executed, as plugins see it."""

    run_id: str
    pipeline: str
    #: the steps the run will execute, in order
    steps: tuple[str, ...]
    #: parameter values, secrets masked
    params: Mapping[str, Any]
    workers: int
    fail_fast: bool


class _Output:
    """An output's value, loaded at most once and only when asked for."""

    def __init__(self, loader: Callable[[], Any]) -> None:
        self._loader = loader
        self._value: Any = MISSING
        self._lock = threading.Lock()

    def get(self) -> Any:
        with self._lock:
            if self._value is MISSING:
                self._value = self._loader()
                self._loader = lambda: None
            return self._value


class RunResult(Mapping[str, Any]):
    """The outcome of ``Pipeline.run``: outputs by name, and a report per step.

    ``result["predictions"]`` loads that output (lazily, once). ``result.steps[name].state``
    is ``ran``, ``reused``, ``failed`` or ``skipped``.
    """

    def __init__(
        self,
        *,
        info: RunInfo,
        steps: Mapping[str, StepReport],
        outputs: Mapping[str, Callable[[], Any]],
        duration: float,
        producers: Mapping[str, str] | None = None,
        interrupted: bool = False,
        storage_errors: Sequence[StorageError] = (),
        edges: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.run_id = info.run_id
        self.pipeline = info.pipeline
        self.params = dict(info.params)
        self.steps: Mapping[str, StepReport] = dict(steps)
        self.duration = duration
        self.interrupted = interrupted
        #: what could not be recorded after its step succeeded (a full disk, a read-only
        #: home, a locked index); the steps' states and outputs stand
        self.storage_errors: tuple[StorageError, ...] = tuple(storage_errors)
        self._outputs = {name: _Output(loader) for name, loader in outputs.items()}
        #: output name → the step that makes it (whether or not it succeeded)
        self._producers = dict(producers or {})
        #: (producer, consumer) pairs between the run's steps, to draw its graph
        self._edges = tuple(edges)

    def __getitem__(self, name: str) -> Any:
        try:
            return self._outputs[name].get()
        except KeyError:
            raise KeyError(self._why_missing(name)) from None

    def _why_missing(self, name: str) -> str:
        producer = self._producers.get(name)
        if producer is not None:
            report = self.steps[producer]
            return f"output {name!r} was not produced: step {producer!r} {report.state}"
        available = ", ".join(sorted(self._outputs)) or "none"
        return f"no output named {name!r} in this run; available: {available}"

    def __contains__(self, name: object) -> bool:
        # Mapping's default would load the value just to answer.
        return name in self._outputs

    def __iter__(self) -> Iterator[str]:
        return iter(self._outputs)

    def __len__(self) -> int:
        return len(self._outputs)

    @property
    def ok(self) -> bool:
        """True when no step failed and the run was not interrupted."""
        return not self.interrupted and not self.failed

    @property
    def failed(self) -> list[str]:
        return [n for n, r in self.steps.items() if r.state is StepState.FAILED]

    def count(self, state: StepState | str) -> int:
        return sum(1 for r in self.steps.values() if r.state == state)

    def summary(self) -> str:
        """``"5 ran, 3 reused, 1 failed, 1 skipped in 2.31s"`` (zero counts left out)."""
        parts = [f"{self.count(s)} {s.value}" for s in StepState if self.count(s)]
        text = ", ".join(parts) or "no steps"
        if self.interrupted:
            text += " (interrupted)"
        from stepflow._humanize import human_duration

        return f"{text} in {human_duration(self.duration)}"

    def assert_outcomes(
        self, *, ran: int = 0, reused: int = 0, failed: int = 0, skipped: int = 0
    ) -> None:
        """Assert how many steps ended in each state, like pytester's ``assert_outcomes``:
        every state not named must be 0.

        >>> result.assert_outcomes(ran=2, reused=3)  # doctest: +SKIP
        """
        __tracebackhide__ = True
        expected = {"ran": ran, "reused": reused, "failed": failed, "skipped": skipped}
        assert_counts({s.value: self.count(s) for s in StepState}, expected, self.steps)

    def raise_for_failures(self) -> None:
        """Raise the first failed step's ``StepFailedError`` (for scripts and tests)."""
        for report in self.steps.values():
            if report.error is not None:
                raise report.error

    def __repr__(self) -> str:
        return f"<RunResult {self.pipeline!r} {self.run_id}: {self.summary()}>"

    # --- notebooks: the graph with each step's state ----------------------------------------

    def _repr_svg_(self) -> str:
        from stepflow._planning.svg import render_svg

        notes = {
            name: f"{r.duration:.2f}s" for name, r in self.steps.items() if r.state is StepState.RAN
        }
        return render_svg(
            list(self.steps),
            self._edges,
            states={name: r.state.value for name, r in self.steps.items()},
            notes=notes,
            title=f"run {self.run_id} of {self.pipeline}",
        )

    def _repr_html_(self) -> str:
        from html import escape

        head = f"run <code>{escape(self.run_id)}</code> of <b>{escape(self.pipeline)}</b>"
        return (
            f'<div class="stepflow-run"><div>{head}: {escape(self.summary())}</div>'
            f"{self._repr_svg_()}</div>"
        )


def assert_counts(
    actual: Mapping[str, int],
    expected: Mapping[str, int],
    steps: Mapping[str, StepReport] | None = None,
) -> None:
    """Raise ``AssertionError`` naming each state whose count differs (and, when the
    reports are known, which steps ended in it)."""
    __tracebackhide__ = True
    wrong = {k: (actual.get(k, 0), v) for k, v in expected.items() if actual.get(k, 0) != v}
    if not wrong:
        return
    lines = [
        f"{state}: expected {want}, got {got}"
        + (
            f" ({', '.join(n for n, r in steps.items() if r.state == state)})"
            if steps is not None and got
            else ""
        )
        for state, (got, want) in wrong.items()
    ]
    raise AssertionError("step outcomes differ:\n  " + "\n  ".join(lines))
