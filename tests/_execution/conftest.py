from __future__ import annotations

from pathlib import Path

import pytest

from stepflow._execution.task import Task


@pytest.fixture
def task_for(tmp_path: Path):
    """``task_for(spec)``: a first attempt's task of the step ``spec``, with its store and
    import path in this test's folder (for tests that drive workers and pools directly)."""

    def make(spec) -> Task:
        return Task(
            run_id="run1",
            step=spec.name,
            attempt=1,
            ref=spec.ref,
            inputs={},
            params={},
            store_uri=str(tmp_path / "store"),
            sys_path=(str(tmp_path),),
        )

    return make
