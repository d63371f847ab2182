"""How a step's ``resources`` and attempt become a Dask task's resources and key."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.usefixtures("need_dask")


def test_resources_become_dask_worker_resources():
    """``gpus``, ``cpus`` and ``memory`` map to the worker resources GPU, CPU and MEMORY
    (bytes); a step that asks for nothing asks Dask for nothing."""
    from stepflow_dask._backend import dask_resources

    from stepflow import Resources

    assert dask_resources(Resources(gpus=1)) == {"GPU": 1}
    assert dask_resources(Resources(cpus=2.5, memory="4 GiB")) == {
        "CPU": 2.5,
        "MEMORY": 4 * 2**30,
    }
    assert dask_resources(Resources()) == {}


def test_a_memory_that_is_no_size_is_refused_before_the_run(tmp_path):
    """``memory="lots"`` is refused (``refusal``) with the step's name and an example."""
    from stepflow_dask import DaskBackend
    from stepflow_dask._backend import dask_resources

    from stepflow import BackendContext, Resources, step
    from stepflow._config import Config

    with pytest.raises(ValueError, match=r"memory='lots' is not a size"):
        dask_resources(Resources(memory="lots"))

    @step(resources={"memory": "lots"})
    def hungry() -> int:
        return 1

    context = BackendContext(config=Config(rootdir=tmp_path, home=tmp_path), workers=1, run_id="r")
    backend = DaskBackend("cluster", {"address": "tcp://127.0.0.1:1"}, context)
    reason = backend.refusal(hungry.spec)
    assert reason is not None and "'hungry'" in reason and '"4GB"' in reason
    backend.close()


def test_the_dask_key_is_the_attempt_identity():
    """Run, step and attempt make the key, so each attempt is its own Dask task and a
    second submit of the same attempt finds the first."""
    from stepflow_dask._backend import attempt_key

    from stepflow import Task
    from stepflow._authoring.step import StepRef

    def task(attempt: int) -> Task:
        ref = StepRef("flow", "train")
        return Task("run1", "train", attempt, ref, inputs={}, params={}, store_uri="/s")

    assert attempt_key(task(1)) == "stepflow-run1-train-1"
    assert attempt_key(task(2)) != attempt_key(task(1))
