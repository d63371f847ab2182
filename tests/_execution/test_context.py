"""``stepflow.context()``: inside a running step, and detached outside one."""

from __future__ import annotations

from pathlib import Path

import pytest

import stepflow
from stepflow._execution.context import StepContext, activate
from stepflow._storage.records import RunRecords
from stepflow.errors import UsageError

FLOW = """
from pathlib import Path
import stepflow
from stepflow import Pipeline, step

@step
def report(out_dir: str = ".") -> str:
    ctx = stepflow.context()
    path = Path(out_dir) / "report.txt"
    path.write_text(f"run {ctx.run_id} step {ctx.step} attempt {ctx.attempt}")
    ctx.log_artifact(path)
    return f"{ctx.run_id}/{ctx.pipeline}/{ctx.step}/{ctx.detached}"

pipe = Pipeline("ctx", [report])
"""


@pytest.mark.parametrize("workers", [1, 2])
def test_context_inside_a_step(make_module, tmp_path: Path, workers: int) -> None:
    mod = make_module("ctx_flow", FLOW)
    result = mod.pipe.run(
        home=tmp_path / "home", params={"out_dir": str(tmp_path)}, workers=workers
    )
    assert result["report"] == f"{result.run_id}/ctx/report/False"
    recs = RunRecords(tmp_path / "home" / "runs.db")
    (step,) = recs.steps(result.run_id)
    (kept,) = [io for io in step.io if io.direction == "file"]
    assert kept.name == "report.txt"
    stored = tmp_path / "home" / "objects" / kept.object[:2] / kept.object[2:]
    assert stored.read_text() == f"run {result.run_id} step report attempt 1"
    recs.close()


def test_detached_context_keeps_what_is_logged_in_memory(tmp_path: Path) -> None:
    with activate(None):
        ctx = stepflow.context()
        assert ctx.detached and ctx.run_id is None
        assert stepflow.context() is ctx
        ctx.log_metric("loss", 0.5, step=3)
        ctx.log_param("alpha", 0.1)
        ctx.set_tag("kind", "unit-test")
        path = tmp_path / "x.txt"
        path.write_text("x")
        assert ctx.log_artifact(path) is None
        assert ctx.summary()["params"] == {"alpha": "0.1"}
        assert ctx.metrics[0].step == 3
        assert ctx.summary()["artifacts"] == ["x.txt"]


def test_a_step_called_as_a_function_logs_to_a_detached_context(make_module) -> None:
    mod = make_module(
        "ctx_plain",
        """
        import stepflow
        from stepflow import step

        @step
        def train(n: int = 2) -> int:
            stepflow.context().log_metric("r2", 0.9)
            return n
        """,
    )
    with activate(None):
        assert mod.train(5) == 5
        assert [(m.name, m.value) for m in stepflow.context().metrics] == [("r2", 0.9)]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda c: c.log_metric("", 1.0), "metric name must be a non-empty string"),
        (lambda c: c.log_metric("m", "high"), "must be a real number, got str"),
        (lambda c: c.log_metric("m", True), "must be a real number, got bool"),
        (lambda c: c.log_metric("m", 1.0, step=1.5), "step must be an int"),
        (lambda c: c.set_tag(3, "x"), "tag name must be a non-empty string"),
        (lambda c: c.log_artifact("/no/such/file"), "is not a file"),
    ],
)
def test_bad_calls_say_what_is_wrong(call, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        call(StepContext())


def test_secrets_are_masked_in_params_and_tags() -> None:
    ctx = StepContext(secrets=("hunter22",))
    ctx.log_param("dsn", "postgres://u:hunter22@db")
    ctx.set_tag("note", "hunter22")
    assert ctx.params == {"dsn": "postgres://u:***@db"}
    assert ctx.tags == {"note": "***"}
