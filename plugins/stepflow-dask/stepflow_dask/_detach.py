"""A Dask worker preload for the ``LocalCluster`` a run starts: leave the terminal's group.

The worker processes of a ``LocalCluster`` are children of the run's process, in its process
group, so a Ctrl-C in the terminal reached them too: they died with a ``KeyboardInterrupt``
traceback each while the run was still cancelling their tasks. In a group of their own they
hear only the run, which cancels the tasks and closes the cluster. They still die with the
run's process (Dask's nanny watches its parent), and the steps with them.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any


def dask_setup(worker: Any) -> None:
    # Only a worker in a process of its own (started by a nanny): a worker thread in the
    # run's own process (``processes=False``) must not move the run out of the terminal.
    if getattr(worker, "nanny", None):
        with contextlib.suppress(OSError):
            os.setpgid(0, 0)
