"""What travels between the run loop and a worker: ``Task`` in, ``TaskResult`` out.

Both are plain frozen values that pickle, so any transport (a pipe, a container, SSH, a
cluster) can carry them; see ``python -m stepflow.worker``.
"""

from __future__ import annotations

import functools
import os
import site
import sys
import sysconfig
import weakref
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from stepflow._authoring.step import Resources, StepRef, StepSpec
from stepflow._storage.artifacts import ArtifactRef

__all__ = ["ArtifactRef", "Task", "TaskError", "TaskResult", "by_value", "user_sys_path"]


@attrs.frozen
class Task:
    """One attempt at one step."""

    run_id: str
    step: str
    attempt: int
    ref: StepRef
    #: the step itself, pickled with cloudpickle, when a worker cannot find it through ``ref``
    #: (made in a function or a loop, or defined in ``__main__`` or a notebook); empty when
    #: ``ref`` finds it (see ``by_value``)
    func: bytes = attrs.field(default=b"", kw_only=True, repr=False)
    #: input parameter name → stored artifact
    inputs: Mapping[str, ArtifactRef]
    #: parameter name → value (pipeline parameters of this step)
    params: Mapping[str, Any]
    #: the datastore's ``uri`` and the plugin name that opens it
    store_uri: str
    store_kind: str = "local"
    #: keyword options the store's plugin needs to open it (an endpoint URL, say)
    store_options: Mapping[str, Any] = attrs.field(factory=dict)
    #: the stepflow home of the run (where a remote store keeps its local copies)
    home: str = ""
    pipeline: str = ""
    #: names of parameters whose values must be masked in captured output
    secret_params: tuple[str, ...] = ()
    #: also write the step's output to the worker's own stdout/stderr (``-s``)
    echo: bool = False
    #: the serializers to store outputs with, in priority order
    serializers: tuple[Any, ...] = ()
    #: ``sys.path`` entries the worker needs to import the step's module: the user's code
    #: only, never the run's standard library or site-packages (``user_sys_path``), so a
    #: worker running another interpreter keeps its own packages
    sys_path: tuple[str, ...] = ()
    #: parameter name → the registered data-set or model version it reads (resolved when the
    #: run started); the worker loads it (``stepflow._execution.references``)
    references: Mapping[str, Any] = attrs.field(factory=dict)
    #: the step's ``@step(env=...)``: what the environment it runs in must be (an image, the
    #: requirements); a backend that builds environments reads it, the worker ignores it
    env: Mapping[str, Any] = attrs.field(factory=dict)
    #: the step's ``@step(resources=...)``: CPUs, memory and GPUs it asks for
    resources: Resources = attrs.field(factory=Resources)
    #: the step's timeout in seconds (``None``: none), the one ``Backend.execute`` is given
    timeout: float | None = None
    #: importable modules of the run's plugins that give ``stepflow_hashers``: the worker
    #: loads them too, so the hashes of the outputs it stores (and so the keys of the steps
    #: that read them) are the ones the run's own process would compute
    hasher_plugins: tuple[str, ...] = ()

    @property
    def secret_values(self) -> tuple[str, ...]:
        """The non-empty values of the ``secret_params``, as text: what masking hides."""
        return tuple(str(self.params[n]) for n in self.secret_params if str(self.params.get(n, "")))


@attrs.frozen
class TaskError:
    """A step's exception, in a form that survives any transport."""

    exc_type: str
    message: str
    #: the formatted traceback, cut to the user's frames
    traceback: str
    #: the whole traceback, stepflow's frames included (``--full-trace``)
    full_traceback: str = ""
    #: ``True`` when stepflow stopped the step because it ran past its timeout
    timed_out: bool = False
    #: ``True`` when stepflow itself (not the step) failed: a lost worker, a bad store
    internal: bool = False
    #: the input whose stored object was missing or corrupted, so the producer can rerun
    bad_input: str | None = None


@attrs.frozen
class TaskResult:
    """The outcome of a ``Task``: output references, or an error."""

    step: str
    attempt: int
    outputs: Mapping[str, ArtifactRef] = attrs.field(factory=dict)
    error: TaskError | None = None
    duration: float = 0.0
    #: stream name (``stdout``, ``stderr``, ``log``) → what the step wrote, secrets masked
    logs: Mapping[str, str] = attrs.field(factory=dict)
    #: what the step recorded through ``stepflow.context()``
    metrics: tuple[Any, ...] = ()
    logged_params: Mapping[str, str] = attrs.field(factory=dict)
    tags: Mapping[str, str] = attrs.field(factory=dict)
    #: files kept with ``log_artifact``: name → stored reference
    files: Mapping[str, ArtifactRef] = attrs.field(factory=dict)
    #: the run of the task (the worker sets it). The run loop commits a result only when
    #: its run, step and attempt are the ones it asked for, so a late answer of a timed-out
    #: or superseded attempt is rejected. Empty: a backend that did not say.
    run_id: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None

    @classmethod
    def timed_out(
        cls, task: Task, seconds: float | None, *, logs: Mapping[str, str] | None = None
    ) -> TaskResult:
        """The result of ``task`` when it ran past its timeout of ``seconds`` and was killed.

        stepflow reports the step as timed out and retries it if it has retries. ``logs`` is
        what the step printed before it was killed, if the backend could get it.
        """
        return cls(
            task.step,
            task.attempt,
            run_id=task.run_id,
            error=TaskError(
                exc_type="stepflow.errors.StepTimeoutError",
                message=f"step {task.step!r} ran past its timeout of {seconds or 0:g}s and its "
                f"process was killed",
                traceback="",
                timed_out=True,
            ),
            duration=float(seconds or 0),
            logs=dict(logs or {}),
        )

    @classmethod
    def lost(cls, task: Task, why: str, *, logs: Mapping[str, str] | None = None) -> TaskResult:
        """The result of ``task`` when its worker went away before it answered.

        ``why`` completes "the worker process running step 'NAME' ...": say what happened
        (``"exited with code 137 before it answered"``, ``"lost its SSH connection"``). The
        report shows the message, not a traceback, since the step's own code did not raise.
        """
        return cls.failed(task, f"the worker process running step {task.step!r} {why}", logs=logs)

    @classmethod
    def cancelled(cls, task: Task, *, logs: Mapping[str, str] | None = None) -> TaskResult:
        """The result of ``task`` when the run stopped it (Ctrl-C, fail-fast) before it ended."""
        return cls.failed(task, f"step {task.step!r} was cancelled before it finished", logs=logs)

    @classmethod
    def failed(
        cls, task: Task, message: str, *, logs: Mapping[str, str] | None = None
    ) -> TaskResult:
        """The result of ``task`` when the backend itself failed: a ``BackendError``."""
        return cls(
            task.step,
            task.attempt,
            run_id=task.run_id,
            error=TaskError(
                exc_type="stepflow.errors.BackendError",
                message=message,
                traceback="",
                internal=True,
            ),
            logs=dict(logs or {}),
        )


_payloads: weakref.WeakKeyDictionary[StepSpec, bytes] = weakref.WeakKeyDictionary()


def by_value(spec: StepSpec) -> bytes:
    """The step pickled by value for ``Task.func``, or ``b""`` when ``spec.ref`` finds it.

    A worker imports ``ref.module`` and looks up ``ref.qualname``, which finds only a step
    defined at the top level of an importable module. Any other step (made by a factory
    function or in a loop, or defined in ``__main__`` or a notebook cell) travels by value,
    its closure and the globals it uses included. Computed once per step.
    """
    payload = _payloads.get(spec)
    if payload is None:
        payload = b""
        if not _found_by_ref(spec):
            import cloudpickle

            try:
                payload = cloudpickle.dumps(spec, protocol=5)
            except Exception as exc:
                # Said by the worker, as the step's failure, rather than crashing the run.
                payload = cloudpickle.dumps(
                    f"step {spec.name!r} cannot be imported by name in a worker process "
                    f"({spec.ref.module}:{spec.ref.qualname}), and sending it by value "
                    f"failed: {type(exc).__name__}: {exc}. Define it at the top level of a "
                    f"module, or keep what it uses picklable"
                )
        _payloads[spec] = payload
    return payload


def _found_by_ref(spec: StepSpec) -> bool:
    ref = spec.ref
    # A worker loads a script's ``__main__`` again under another name, which runs its
    # top-level code a second time (a run started there would start again), and a notebook's
    # ``__main__`` cannot be loaded at all.
    if ref.module == "__main__" or "<locals>" in ref.qualname:
        return False
    obj: Any = sys.modules.get(ref.module)
    for part in ref.qualname.split("."):
        obj = getattr(obj, part, None)
    # The name may hold another step by now: one redefined under the same name in a loop.
    return getattr(obj, "spec", None) is spec


def user_sys_path(paths: Iterable[str] | None = None) -> tuple[str, ...]:
    """The entries of ``paths`` (default ``sys.path``) that hold the user's code.

    The running interpreter's standard library and site-packages are left out: a worker
    running another interpreter (another virtualenv, a container) must import its own
    packages, not be handed ours first. ``""`` is the working folder.
    """
    own = _interpreter_dirs()
    kept: dict[str, None] = {}
    for entry in sys.path if paths is None else paths:
        path = os.getcwd() if entry == "" else entry
        real = os.path.realpath(path)
        if not any(real == d or real.startswith(d + os.sep) for d in own):
            kept[path] = None
    return tuple(kept)


@functools.cache
def _interpreter_dirs() -> tuple[str, ...]:
    # Cached: they follow from the interpreter and its prefixes, which a process keeps.
    dirs = set()
    for scheme_vars in ({}, {"base": sys.base_prefix, "platbase": sys.base_exec_prefix}):
        paths = sysconfig.get_paths(vars=scheme_vars)
        dirs.update(paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib"))
    dirs.update(site.getsitepackages())
    if site.ENABLE_USER_SITE and site.getusersitepackages():
        dirs.add(site.getusersitepackages())
    # The zipped standard library on sys.path (``lib/python311.zip``), present or not.
    version = f"{sys.version_info.major}{sys.version_info.minor}"
    for prefix in {sys.prefix, sys.base_prefix}:
        dirs.add(os.path.join(prefix, "lib", f"python{version}.zip"))
    return tuple(os.path.realpath(d) for d in dirs if d)
