"""stepflow: machine-learning pipelines from plain Python functions.

The only public API is what this module exports; every other module name is private.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

# Names load on first use (PEP 562), so `stepflow --help` and `python -m stepflow.worker`
# start without importing attrs, pluggy and the whole API.
_LAZY = {
    "errors": "stepflow.errors",
    "datasets": "stepflow.datasets",
    "models": "stepflow.models",
    "published": "stepflow.published",
    "schedules": "stepflow.schedules",
    "publish": "stepflow.published",
    "Recurrence": "stepflow._scheduling.recurrence",
    "context": "stepflow._execution.context",
    "StepContext": "stepflow._execution.context",
    "Dataset": "stepflow._authoring.markers",
    "Model": "stepflow._authoring.markers",
    "Param": "stepflow._authoring.markers",
    "Secret": "stepflow._authoring.markers",
    "Port": "stepflow._authoring.step",
    "Resources": "stepflow._authoring.step",
    "StepOptions": "stepflow._authoring.step",
    "StepSpec": "stepflow._authoring.step",
    "step": "stepflow._authoring.step",
    "Backend": "stepflow._execution.backend",
    "BackendContext": "stepflow._execution.backend",
    "RunInfo": "stepflow._execution.result",
    "RunResult": "stepflow._execution.result",
    "StepReport": "stepflow._execution.result",
    "StepState": "stepflow._execution.result",
    "ArtifactRef": "stepflow._execution.task",
    "Task": "stepflow._execution.task",
    "TaskError": "stepflow._execution.task",
    "TaskResult": "stepflow._execution.task",
    "Pipeline": "stepflow._pipeline",
    "Datastore": "stepflow._storage.datastore",
    "Serializer": "stepflow._storage.serializers",
    "Hasher": "stepflow._storage.hashing",
    "register_hasher": "stepflow._storage.hashing",
    "hookimpl": "stepflow.hookspecs",
}

#: public names that are modules, not attributes of one
_MODULES = frozenset({"errors", "datasets", "models", "published", "schedules"})

if TYPE_CHECKING:
    from stepflow import datasets, errors, models, published, schedules
    from stepflow._authoring.markers import Dataset, Model, Param, Secret
    from stepflow._authoring.step import Port, Resources, StepOptions, StepSpec, step
    from stepflow._execution.backend import Backend, BackendContext
    from stepflow._execution.context import StepContext, context
    from stepflow._execution.result import RunInfo, RunResult, StepReport, StepState
    from stepflow._execution.task import ArtifactRef, Task, TaskError, TaskResult
    from stepflow._pipeline import Pipeline
    from stepflow._scheduling.recurrence import Recurrence
    from stepflow._storage.datastore import Datastore
    from stepflow._storage.hashing import Hasher, register_hasher
    from stepflow._storage.serializers import Serializer
    from stepflow.hookspecs import hookimpl
    from stepflow.published import publish

__all__ = [
    "ArtifactRef",
    "Backend",
    "BackendContext",
    "Dataset",
    "Datastore",
    "Hasher",
    "Model",
    "Param",
    "Pipeline",
    "Port",
    "Recurrence",
    "Resources",
    "RunInfo",
    "RunResult",
    "Secret",
    "Serializer",
    "StepContext",
    "StepOptions",
    "StepReport",
    "StepSpec",
    "StepState",
    "Task",
    "TaskError",
    "TaskResult",
    "__version__",
    "context",
    "datasets",
    "errors",
    "hookimpl",
    "models",
    "publish",
    "published",
    "register_hasher",
    "schedules",
    "step",
]


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        module = importlib.import_module(_LAZY[name])
        value = module if name in _MODULES else getattr(module, name)
        if isinstance(value, type) and value.__module__.startswith("stepflow._"):
            # Tracebacks and reprs show the supported path.
            value.__module__ = "stepflow"
        globals()[name] = value
        return value
    if name == "__version__":
        from stepflow._version import __version__

        return __version__
    raise AttributeError(f"module 'stepflow' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
