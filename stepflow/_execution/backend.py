"""The base class every compute backend subclasses.

A backend is transport: it gets a ``Task`` and returns a ``TaskResult``, normally by running
``python -m stepflow.worker`` somewhere. Plugins register backend classes (or factories) by
kind through the ``stepflow_backend_types`` hook; ``[tool.stepflow.backends.NAME]`` tables
name configured instances (``plugin = "KIND"`` plus the kind's own options).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import attrs

from stepflow._authoring.step import Resources
from stepflow.errors import BackendUnavailableError

if TYPE_CHECKING:
    from concurrent.futures import Future, ThreadPoolExecutor

    import pluggy

    from stepflow._authoring.step import StepSpec
    from stepflow._config import Config
    from stepflow._execution.task import Task, TaskResult
    from stepflow._planning.plan import Plan

__all__ = [
    "RUN_LOOP_OPTIONS",
    "Backend",
    "BackendContext",
    "BackendFactory",
    "open_backends",
    "step_resources",
]

#: keys of a ``[tool.stepflow.backends.NAME]`` table the run loop reads for every backend (its
#: slots and resource pools); a backend gets them in ``context``, not in ``options``
RUN_LOOP_OPTIONS = ("workers", "resources")

#: the resources of a step that asks for none
_NOTHING = Resources()

# Makes each backend's ``submit`` thread pool once, however many threads submit at once.
_executor_lock = threading.Lock()


@attrs.frozen
class BackendContext:
    """What a backend may need to know about the run it serves."""

    config: Config
    #: how many of the run's steps this backend runs at once: its table's ``workers``, by
    #: default the run's ``--workers``
    workers: int
    run_id: str
    #: how much of each resource (``cpus``, ``memory`` in bytes, ``gpus``) the run lends this
    #: backend's steps at once: its table's ``resources``; the run loop counts it, so a step
    #: waits for what it asks, and a key here is honoured even if not in ``supported_resources``
    resources: Mapping[str, float] = attrs.field(factory=dict)
    #: how many steps the whole run executes at once (1: one after another, in this thread);
    #: ``None``: the same as ``workers``
    run_workers: int | None = None
    #: the steps of the run that use this backend (name → spec), so that ``check()`` can
    #: prepare what they need before any step runs (build their images, say)
    steps: Mapping[str, StepSpec] = attrs.field(factory=dict, kw_only=True)


class Backend:
    """Base class for compute backends.

    Subclasses implement ``execute``; the rest have working defaults. ``execute`` is called
    from several threads at once when the run has ``workers > 1``, and must be thread-safe.
    The building blocks a backend needs (worker processes, the frame codec, ready-made
    results for a timeout or a lost worker) are in ``stepflow.backends``; see
    ``docs/how-to/write-a-backend.md``.
    """

    #: the kind this class implements, e.g. ``"docker"``
    kind: str = ""
    #: keys of ``@step(env=...)`` this backend honours, e.g. ``{"image", "requirements"}``;
    #: a step asking for any other is refused before the run starts
    supported_env: frozenset[str] = frozenset()
    #: keys of ``@step(resources=...)`` this backend honours (``cpus``, ``memory``, ``gpus``)
    supported_resources: frozenset[str] = frozenset({"cpus", "memory"})

    def __init__(self, name: str, options: Mapping[str, Any], context: BackendContext) -> None:
        #: the configured name steps use in ``@step(backend=...)``
        self.name = name
        #: the ``[tool.stepflow.backends.NAME]`` table, without ``plugin``
        self.options = dict(options)
        self.context = context

    def check(self) -> None:
        """Raise ``BackendUnavailableError`` if the backend cannot work; runs before any step."""

    def environment(self) -> dict[str, str]:
        """What results made on this backend depend on, beyond the step's code and inputs.

        Part of every cache key (each item as ``backend:NAME``), so a result made in one
        environment is not reused in another, and shown by ``stepflow explain``. The key
        already holds the run's own Python version, which is right only for a backend that
        runs this interpreter. A backend that runs another interpreter (a virtualenv, a
        container, a remote host) returns that interpreter's Python version as ``"python"``
        and the versions of the packages installed there (distribution name → version), or
        something that stands for all of them (a Docker image digest, a lock file's hash).
        It is called for every step, so compute it once.
        """
        return {}

    def refusal(self, spec: StepSpec) -> str | None:
        """Why this backend cannot run step ``spec`` as declared, or ``None`` if it can.

        Called for every step before any runs; a reason fails the run at once (exit 2), naming
        the step and the configured backends that could run it. The default refuses ``env``
        keys not in ``supported_env`` and ``resources`` keys neither in
        ``supported_resources`` nor pooled in ``context.resources``. Override it to refuse
        values too (more GPUs than a host lends), calling ``super().refusal(spec)`` first.
        The reason completes "backend 'NAME' cannot run step 'STEP': ...".
        """
        if not spec.options.env and spec.options.resources == _NOTHING:
            return None  # most steps ask for nothing: checked once per step and run
        env = sorted(set(spec.options.env) - self.supported_env)
        pooled = set(getattr(getattr(self, "context", None), "resources", None) or ())
        resources = sorted(set(step_resources(spec)) - self.supported_resources - pooled)
        reasons = []
        if env:
            honoured = ", ".join(sorted(self.supported_env)) or "none"
            reasons.append(
                f"it does not provide env {', '.join(env)} (env keys it honours: {honoured})"
            )
        if resources:
            honoured = ", ".join(sorted(self.supported_resources | pooled)) or "none"
            reasons.append(
                f"it does not provide resources {', '.join(resources)} (resources it honours: "
                f"{honoured})"
            )
        return "; ".join(reasons) or None

    def step_environment(self, spec: StepSpec) -> dict[str, str]:
        """What results of step ``spec`` depend on here: ``environment()`` by default.

        A backend whose environment differs per step (a step's own ``env`` image) overrides
        this; the cache key and ``stepflow explain`` call it for every step.
        """
        return self.environment()

    def runs_inline(self, spec: StepSpec) -> bool:
        """True when ``spec`` may be called in the run loop's own process, skipping the worker."""
        return False

    def execute(self, task: Task, *, timeout: float | None) -> TaskResult:
        """Run ``task`` and return its result; stop it and report a timeout after ``timeout``.

        ``timeout`` is the step's (``task.timeout``), in seconds, or ``None``.
        """
        raise NotImplementedError

    def submit(self, task: Task) -> Future[TaskResult]:
        """Start ``task`` and return a future of its result, with ``task.timeout``.

        For engines that have futures of their own (Dask), which override this to hand the
        task over and return at once: the run loop then holds no thread for a step in
        flight, and takes the step up again on one of a few dispatch threads when the future
        is done (through ``add_done_callback``, which may be called on any thread). So
        ``submit`` must not wait (for the step, or a free slot). The default runs ``execute``
        on a pool of ``context.workers`` threads that ``close()`` shuts down; for a backend
        that does not override ``submit``, the run loop calls ``execute`` on a thread of its
        own per step in flight instead, which is the same without a thread hand-over. A
        future cancelled (by ``cancel()``) reports the step cancelled.
        """
        from concurrent.futures import ThreadPoolExecutor

        with _executor_lock:
            executor: ThreadPoolExecutor | None = self.__dict__.get("_submit_executor")
            if executor is None:
                workers = max(1, getattr(getattr(self, "context", None), "workers", 1))
                executor = ThreadPoolExecutor(workers, thread_name_prefix=f"stepflow-{self.name}")
                self.__dict__["_submit_executor"] = executor
        return executor.submit(self.execute, task, timeout=task.timeout)

    def cancel(self) -> None:
        """Stop everything in flight now (Ctrl-C, fail-fast); results come back as failures."""

    def close(self) -> None:
        """Release resources at the end of the run; an override calls ``super().close()``."""
        with _executor_lock:
            executor = self.__dict__.pop("_submit_executor", None)
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


BackendFactory = Callable[[str, Mapping[str, Any], BackendContext], Backend]


def step_resources(spec: StepSpec) -> dict[str, Any]:
    """The resources step ``spec`` asks for: ``{"gpus": 1, "memory": "4G"}`` (only those given)."""
    res = spec.options.resources
    return {k: getattr(res, k) for k in ("cpus", "memory", "gpus") if getattr(res, k) is not None}


def open_backends(
    plan: Plan,
    config: Config,
    pm: pluggy.PluginManager,
    *,
    workers: int,
    run_id: str,
    check: bool = True,
) -> dict[str, Backend]:
    """Create every backend the plan uses, then (``check``) refuse the steps a backend
    cannot run as declared and check each backend, before any step runs.

    Each backend gets its slots (``workers`` in its table, default ``workers``) and
    resource pools (``resources`` in its table) in its ``context``.

    :raises BackendUnavailableError: a backend name is unknown, a step asks for an ``env``
        or ``resources`` its backend cannot provide, or a backend's check fails; the
        backends already opened are closed again.
    """
    from stepflow._execution.placement import check_placement, limits_of, run_workers_of

    names = list(dict.fromkeys(plan.backends.values()))
    tables = {name: dict(config.backends.get(name, {"plugin": name})) for name in names}
    kinds = _Kinds(pm, needed={str(table.get("plugin", "")) for table in tables.values()})
    limits = {name: limits_of(name, tables[name], workers) for name in names}
    run_workers = run_workers_of(workers, limits.values())
    backends: dict[str, Backend] = {}
    try:
        for name in names:
            options = {k: v for k, v in tables[name].items() if k not in RUN_LOOP_OPTIONS}
            kind = options.pop("plugin")
            factory = kinds.get(kind)
            if factory is None:
                users = [s for s, b in plan.backends.items() if b == name]
                raise BackendUnavailableError(_unknown_backend(name, kind, users, kinds))
            steps = {s: plan.dag.steps[s] for s in plan.steps if plan.backends.get(s) == name}
            context = BackendContext(
                config=config,
                workers=limits[name].slots,
                run_id=run_id,
                resources=limits[name].pools,
                run_workers=run_workers,
                steps=steps,
            )
            backends[name] = factory(name, options, context)
        if check:
            check_placement(plan, backends, config, kinds)
            for backend in backends.values():
                backend.check()
    except BaseException:
        for backend in backends.values():
            backend.close()
        raise
    return backends


class _Kinds(Mapping[str, Any]):
    """The installed backend kinds, collected from every plugin only when a kind the
    built-in plugin lacks is wanted (a step on another kind, or an error listing them all).

    Collecting them imports every backend plugin's module (and its SDK): a run on the
    built-in backends alone, a fully cached rerun above all, pays for none of them. The
    collection checks that no two plugins give one kind (a ``PluginError`` naming both).
    """

    def __init__(self, pm: pluggy.PluginManager, *, needed: set[str]) -> None:
        self._pm = pm
        self._all: dict[str, Any] | None = None
        # The built-in plugin's own answer, through the plugin manager (not imported: it
        # sits in a layer above this one).
        plugin = pm.get_plugin("stepflow._plugins.backends")
        builtin = dict(plugin.stepflow_backend_types()) if plugin is not None else {}
        self._builtin = builtin
        if not needed <= builtin.keys():
            self._load()

    def _load(self) -> dict[str, Any]:
        if self._all is None:
            from stepflow._pluginmanager import backend_types

            self._all = backend_types(self._pm)
        return self._all

    def __getitem__(self, kind: str) -> Any:
        if self._all is None and kind in self._builtin:
            return self._builtin[kind]
        return self._load()[kind]

    def __iter__(self) -> Iterator[str]:
        return iter(self._load())

    def __len__(self) -> int:
        return len(self._load())


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
