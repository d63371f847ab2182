"""stepflow: machine-learning pipelines from plain Python functions.

The only public API is what this module exports; every other module name is private.
"""

from __future__ import annotations

from stepflow import errors
from stepflow._authoring.markers import Dataset, Model, Param, Secret
from stepflow._authoring.step import Port, Resources, StepOptions, StepSpec, step
from stepflow._execution.backend import Backend, BackendContext
from stepflow._execution.result import RunInfo, RunResult, StepReport, StepState
from stepflow._execution.task import ArtifactRef, Task, TaskError, TaskResult
from stepflow._planning.pipeline import Pipeline
from stepflow._storage.datastore import Datastore
from stepflow._storage.serializers import Serializer
from stepflow.hookspecs import hookimpl

__all__ = [
    "ArtifactRef",
    "Backend",
    "BackendContext",
    "Dataset",
    "Datastore",
    "Model",
    "Param",
    "Pipeline",
    "Port",
    "Resources",
    "RunInfo",
    "RunResult",
    "Secret",
    "Serializer",
    "StepOptions",
    "StepReport",
    "StepSpec",
    "StepState",
    "Task",
    "TaskError",
    "TaskResult",
    "__version__",
    "errors",
    "hookimpl",
    "step",
]

for _name in __all__:
    _obj = globals().get(_name)
    if isinstance(_obj, type) and _obj.__module__.startswith("stepflow._"):
        _obj.__module__ = "stepflow"
del _name, _obj


def __getattr__(name: str) -> object:
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("stepflow")
        except PackageNotFoundError:
            return "0+unknown"
    raise AttributeError(f"module 'stepflow' has no attribute {name!r}")
