"""Refuse a run that a worker process starts by importing a step's module.

Tiny on purpose: every run checks it, also a run that reuses every step and so never
imports the modules that execute steps.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from stepflow.errors import NestedRunError

__all__ = ["loading_step", "refuse_nested_run"]

#: (step, module or file) a worker process is importing to load a step, while it does
_loading: list[tuple[str, str]] = []


@contextlib.contextmanager
def loading_step(step: str, where: str) -> Iterator[None]:
    """Mark the block as a worker process importing ``where`` to load ``step``."""
    _loading.append((step, where))
    try:
        yield
    finally:
        _loading.pop()


def refuse_nested_run() -> None:
    """Raise ``NestedRunError`` when a run is started by a worker importing a step's module.

    Such a module starts a run at import time, outside ``if __name__ == "__main__":``; each
    worker would start a run of its own, with workers of their own (multiprocessing refuses
    the same mistake for the same reason).
    """
    if _loading:
        step, where = _loading[-1]
        raise NestedRunError(
            f"a run was started while a worker process imported {where} to load step "
            f"{step!r}: the module starts a run whenever it is imported, so every worker "
            f"would start another run. Start the run only when the file is run as a script, "
            f'under `if __name__ == "__main__":`, or from a function'
        )
