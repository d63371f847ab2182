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

from stepflow.errors import BackendUnavailableError

if TYPE_CHECKING:
    import pluggy

    from stepflow._authoring.step import StepSpec
    from stepflow._config import Config
    from stepflow._execution.task import Task, TaskResult
    from stepflow._planning.plan import Plan

__all__ = ["Backend", "BackendContext", "BackendFactory", "open_backends"]


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

    def environment(self) -> dict[str, str]:
        """What results made on this backend depend on, beyond the Python version.

        Part of every cache key: a Docker backend returns its image digest, say.
        """
        return {}

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


def open_backends(
    plan: Plan,
    config: Config,
    pm: pluggy.PluginManager,
    *,
    workers: int,
    run_id: str,
    check: bool = True,
) -> dict[str, Backend]:
    """Create (and check) every backend the plan uses, before any step runs.

    :raises BackendUnavailableError: a backend name is unknown or its check fails; the
        backends already opened are closed again.
    """
    from stepflow._pluginmanager import backend_types

    # Checked, and a kind two plugins give is an error naming both.
    kinds = backend_types(pm)
    context = BackendContext(config=config, workers=workers, run_id=run_id)
    backends: dict[str, Backend] = {}
    try:
        for name in dict.fromkeys(plan.backends.values()):
            options = dict(config.backends.get(name, {"plugin": name}))
            kind = options.pop("plugin")
            factory = kinds.get(kind)
            if factory is None:
                users = [s for s, b in plan.backends.items() if b == name]
                raise BackendUnavailableError(_unknown_backend(name, kind, users, kinds))
            backend = factory(name, options, context)
            backends[name] = backend
            if check:
                backend.check()
    except BaseException:
        for backend in backends.values():
            backend.close()
        raise
    return backends


def _unknown_backend(name: str, kind: str, users: list[str], kinds: Mapping[str, Any]) -> str:
    steps = ", ".join(repr(s) for s in users)
    installed = ", ".join(sorted(kinds)) or "none"
    if name == kind:
        return (
            f"no backend named {name!r} (used by step {steps}); backend kinds installed: "
            f"{installed}. Configure it in pyproject.toml as [tool.stepflow.backends.{name}] "
            f'with plugin = "KIND", or install the plugin that provides it'
        )
    return (
        f"backend {name!r} (used by step {steps}) needs plugin {kind!r}, which is not "
        f"installed; installed kinds: {installed}"
    )
