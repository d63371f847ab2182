"""The base class every compute backend subclasses.

A backend is transport: it gets a ``Task`` and returns a ``TaskResult``, normally by running
``python -m stepflow.worker`` somewhere. Plugins register backend classes (or factories) by
kind through the ``stepflow_backend_types`` hook; ``[tool.stepflow.backends.NAME]`` tables
name configured instances (``plugin = "KIND"`` plus the kind's own options).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    from stepflow._authoring.step import StepSpec
    from stepflow._config import Config
    from stepflow._execution.task import Task, TaskResult

__all__ = ["Backend", "BackendContext", "BackendFactory"]


@attrs.frozen
class BackendContext:
    """What a backend may need to know about the run it serves."""

    config: Config
    #: how many steps the run executes at once
    workers: int
    run_id: str


class Backend:
    """Base class for compute backends.

    Subclasses implement ``execute``; the rest have working defaults. ``execute`` is called
    from several threads at once when the run has ``workers > 1``, and must be thread-safe.
    """

    #: the kind this class implements, e.g. ``"docker"``
    kind: str = ""

    def __init__(self, name: str, options: Mapping[str, Any], context: BackendContext) -> None:
        #: the configured name steps use in ``@step(backend=...)``
        self.name = name
        #: the ``[tool.stepflow.backends.NAME]`` table, without ``plugin``
        self.options = dict(options)
        self.context = context

    def check(self) -> None:
        """Raise ``BackendUnavailableError`` if the backend cannot work; runs before any step."""

    def runs_inline(self, spec: StepSpec) -> bool:
        """True when ``spec`` may be called in the run loop's own process, skipping the worker."""
        return False

    def execute(self, task: Task, *, timeout: float | None) -> TaskResult:
        """Run ``task`` and return its result; stop it and report a timeout after ``timeout``."""
        raise NotImplementedError

    def cancel(self) -> None:
        """Stop everything in flight now (Ctrl-C, fail-fast); results come back as failures."""

    def close(self) -> None:
        """Release resources at the end of the run."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


BackendFactory = Callable[[str, Mapping[str, Any], BackendContext], Backend]
