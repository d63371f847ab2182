"""stepflow-dask: run steps on a Dask cluster.

Registers the backend kind ``dask``. Each attempt of a step is one Dask task, keyed by the
attempt's identity; inside the Dask worker the step runs in a ``python -m stepflow.worker``
subprocess, so a timeout or a cancel kills its whole process tree. Data goes through the
run's datastore, never through Dask's memory::

    [tool.stepflow.backends.cluster]
    plugin = "dask"
    address = "tcp://scheduler:8786"     # a running scheduler, left running
    # or: cluster = "dask.distributed.LocalCluster", cluster_options = {n_workers = 4},
    #     adapt = {minimum = 0, maximum = 8}: a cluster stepflow starts and closes

``docs/how-to/scale-out-with-dask.md`` goes from a ``LocalCluster`` to SLURM
(dask-jobqueue) and Kubernetes (dask-kubernetes) with an S3 store. This module imports no
Dask code: stepflow loads it at every start.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import stepflow

if TYPE_CHECKING:
    from stepflow_dask._backend import DaskBackend

__all__ = ["DaskBackend"]


def __getattr__(name: str) -> Any:
    if name == "DaskBackend":
        from stepflow_dask._backend import DaskBackend

        return DaskBackend
    raise AttributeError(f"module 'stepflow_dask' has no attribute {name!r}")


@stepflow.hookimpl
def stepflow_backend_types() -> dict[str, Any]:
    # Imported here, when a run needs its backends: the class imports no Dask code either.
    from stepflow_dask._backend import DaskBackend

    return {"dask": DaskBackend}
