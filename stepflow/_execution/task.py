"""What travels between the run loop and a worker: ``Task`` in, ``TaskResult`` out.

Both are plain frozen values that pickle, so any transport (a pipe, a container, SSH, a
cluster) can carry them; see ``python -m stepflow.worker``.
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Mapping
from typing import Any

import attrs

from stepflow._authoring.step import StepRef, StepSpec
from stepflow._storage.artifacts import ArtifactRef

__all__ = ["ArtifactRef", "Task", "TaskError", "TaskResult", "by_value"]


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
    #: ``sys.path`` entries the worker needs to import the step's module
    sys_path: tuple[str, ...] = ()
    #: parameter name → the registered data-set or model version it reads (resolved when the
    #: run started); the worker loads it (``stepflow._execution.references``)
    references: Mapping[str, Any] = attrs.field(factory=dict)


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
