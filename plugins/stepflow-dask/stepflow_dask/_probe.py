"""The step ``check()`` runs on a Dask worker: can the workers read the run's datastore?

The backend writes a marker document into the store, then runs this step on the cluster
like any other step (a Dask task, a serving ``python -m stepflow.worker``), so the check
covers what a real step needs: a worker that answers, the same stepflow on it, and the store.
"""

from __future__ import annotations

import stepflow


@stepflow.step(cache=False)
def read_marker(marker: str = "", expected: str = "") -> None:
    """Fail unless the store's document ``marker`` holds ``expected``."""
    store = stepflow.context().store
    found = store.get_doc(marker)
    if found is None:
        raise FileNotFoundError(f"the marker {marker!r} is not in the store at {store.uri}")
    if found.decode() != expected:
        raise ValueError(f"the marker {marker!r} in the store at {store.uri} holds other data")
