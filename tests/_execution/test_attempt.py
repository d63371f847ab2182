"""One attempt, one code path: a step fails alike in the run's process and in a worker."""

from __future__ import annotations

from stepflow import Pipeline, StepState

UNSTORABLE = """
import threading
from stepflow import step

@step
def fine() -> int:
    return 1

@step
def lock(fine: int) -> object:
    return threading.Lock()
"""


def test_unstorable_output_fails_alike_on_every_backend(make_module, stepflow_home):
    """The same error type and message whether the step ran in-process or in a worker."""
    errors = {}
    for backend in ("local", "process"):
        mod = make_module(f"unstorable_{backend}", UNSTORABLE)
        result = Pipeline("p", [mod.fine, mod.lock]).run(backends={"lock": backend})
        report = result.steps["lock"]
        assert report.state is StepState.FAILED and report.backend == backend
        errors[backend] = (report.error.exc_type, str(report.error))
    assert errors["local"] == errors["process"]
    exc_type, message = errors["local"]
    assert exc_type == "stepflow._storage.hashing.UnhashableValueError"
    assert message.startswith("output 'lock' of step 'lock': ") and "_thread.lock" in message
