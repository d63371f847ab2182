"""What a run writes to the run records: runs, steps, logs, metrics, lineage; never secrets."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from stepflow._storage.records import RunRecords
from stepflow.errors import StorageWarning

FLOW = """
import logging
import stepflow
from stepflow import Pipeline, Secret, step

log = logging.getLogger("flow")

@step
def numbers(n: int = 3, token: Secret[str] = "tok-9f8e7d") -> list[int]:
    print("making numbers with", token)
    log.info("n is %d", n)
    ctx = stepflow.context()
    ctx.log_metric("count", n)
    ctx.log_param("token_seen", token)
    ctx.set_tag("owner", "team-a")
    return list(range(n))

@step
def total(numbers: list[int]) -> int:
    for epoch in range(3):
        stepflow.context().log_metric("loss", 1.0 / (epoch + 1), step=epoch)
    return sum(numbers)

@step
def broken(total: int, fail: bool = False) -> int:
    import sys
    print("about to decide", file=sys.stderr)
    if fail:
        raise RuntimeError("asked to fail")
    return total

pipe = Pipeline("journal", [numbers, total, broken])
"""


@pytest.fixture
def flow(make_module):
    return make_module("journal_flow", FLOW)


def _records(home: Path) -> RunRecords:
    return RunRecords(home / "runs.db")


@pytest.mark.parametrize("workers", [1, 2])
def test_a_run_is_recorded_with_steps_logs_metrics_and_lineage(
    flow, tmp_path: Path, workers: int
) -> None:
    result = flow.pipe.run(home=tmp_path, workers=workers)
    assert result.ok
    recs = _records(tmp_path)
    run = recs.run(result.run_id)
    assert run.state == "succeeded"
    assert run.counts == {"ran": 3}
    assert run.display_params() == {"n": 3, "fail": False, "token": "***"}
    assert run.tags == {"owner": "team-a"}
    assert run.pid == os.getpid() and run.host and run.stepflow_version
    steps = {s.name: s for s in recs.steps(run.id)}
    assert [s.state for s in steps.values()] == ["ran", "ran", "ran"]
    assert all(len(s.cache_key) == 32 and s.duration > 0 for s in steps.values())
    assert [s.backend for s in steps.values()] == ["local"] * 3
    losses = [(m.counter, m.value) for m in steps["total"].metrics if m.name == "loss"]
    assert losses == [(0, 1.0), (1, 0.5), (2, pytest.approx(1 / 3))]
    assert steps["numbers"].params == {"token_seen": "***"}
    logs = {(s, st): t for s, _, st, t in recs.logs(run.id)}
    assert logs[("numbers", "stdout")] == "making numbers with ***\n"
    assert "n is 3" in logs[("numbers", "log")]
    assert logs[("broken", "stderr")] == "about to decide\n"
    # Lineage: what total read is what numbers wrote.
    made = next(io for io in steps["numbers"].io if io.direction == "out")
    read = next(io for io in steps["total"].io if io.direction == "in")
    assert made.content_hash == read.content_hash and made.object == read.object
    recs.close()


def test_reused_steps_point_at_the_run_that_made_them(flow, tmp_path: Path) -> None:
    first = flow.pipe.run(home=tmp_path)
    second = flow.pipe.run(home=tmp_path)
    recs = _records(tmp_path)
    steps = {s.name: s for s in recs.steps(second.run_id)}
    assert {s.state for s in steps.values()} == {"reused"}
    assert {s.reused_from for s in steps.values()} == {first.run_id}
    first_keys = {s.name: s.cache_key for s in recs.steps(first.run_id)}
    assert {n: s.cache_key for n, s in steps.items()} == first_keys
    # A reused step's output is still recorded, so lineage works from either run.
    assert any(io.direction == "out" for io in steps["total"].io)
    recs.close()


def test_failed_step_records_error_and_traceback(flow, tmp_path: Path) -> None:
    result = flow.pipe.run(home=tmp_path, params={"fail": True})
    assert not result.ok
    recs = _records(tmp_path)
    run = recs.run(result.run_id)
    assert run.state == "failed"
    broken = next(s for s in recs.steps(run.id) if s.name == "broken")
    assert broken.state == "failed"
    assert broken.error_type == "RuntimeError"
    assert "asked to fail" in broken.error
    assert 'raise RuntimeError("asked to fail")' in broken.traceback
    recs.close()


def test_secrets_never_reach_the_database_files(flow, tmp_path: Path) -> None:
    flow.pipe.run(home=tmp_path, params={"token": "zz-top-secret-zz", "fail": True})
    flow.pipe.run(home=tmp_path, params={"token": "zz-top-secret-zz"}, workers=2)
    written = b"".join(p.read_bytes() for p in tmp_path.glob("runs.db*") if p.is_file())
    assert b"runs" in written  # the files were read
    assert b"zz-top-secret-zz" not in written


def test_interrupted_run_is_marked(make_module, tmp_path: Path) -> None:
    mod = make_module(
        "interrupting",
        """
        from stepflow import Pipeline, step

        @step
        def first() -> int:
            return 1

        @step
        def second(first: int) -> int:
            raise KeyboardInterrupt

        pipe = Pipeline("interrupting", [first, second])
        """,
    )
    result = mod.pipe.run(home=tmp_path)
    assert result.interrupted
    recs = _records(tmp_path)
    assert recs.run(result.run_id).state == "interrupted"
    recs.close()


KILLED = """
import time

from stepflow import Pipeline, step

@step
def slow() -> int:
    print("started", flush=True)
    time.sleep(60)
    return 1

pipe = Pipeline("killed", [slow])
"""


@pytest.mark.slow
def test_run_killed_with_sigkill_is_marked_interrupted_later(tmp_path: Path) -> None:
    (tmp_path / "killed_flow.py").write_text(KILLED)
    home = tmp_path / "home"
    code = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        import killed_flow
        killed_flow.pipe.run(home={str(home)!r})
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=tmp_path
    )
    assert proc.stdout is not None
    try:
        assert proc.stdout.readline().strip() == "started"
        recs = _records(home)
        (run,) = recs.runs()
        assert run.state == "running"
    finally:
        # Also when an assertion failed: a live child would trouble the next tests.
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
    assert recs.mark_abandoned() == [run.id]
    assert recs.run(run.id).state == "interrupted"
    recs.close()


def test_unwritable_records_warn_and_the_run_goes_on(flow, tmp_path: Path) -> None:
    (tmp_path / "runs.db").mkdir()  # a folder where the database file should be
    with pytest.warns(StorageWarning, match="could not write the run records"):
        result = flow.pipe.run(home=tmp_path)
    assert result.ok and result["total"] == 3
    # The run's outcome says what was not recorded, and where.
    (error,) = result.storage_errors
    assert error.path == str(tmp_path / "runs.db")


def test_step_output_is_on_the_report(flow, tmp_path: Path, capsys) -> None:
    result = flow.pipe.run(home=tmp_path)
    assert result.steps["numbers"].logs["stdout"] == "making numbers with ***\n"
    # By default the output is also shown as it happens (tee), the secret masked there too.
    shown = capsys.readouterr().out
    assert "making numbers with ***" in shown
    assert "tok-9f8e7d" not in shown


@pytest.mark.parametrize("workers", [1, 2])
def test_secret_in_an_error_is_masked_everywhere(make_module, tmp_path: Path, workers) -> None:
    mod = make_module(
        f"leaky{workers}",
        """
        from stepflow import Pipeline, Secret, step

        @step
        def connect(password: Secret[str] = "") -> int:
            raise ConnectionError(f"login refused for password {password}")

        pipe = Pipeline("leaky", [connect])
        """,
    )
    result = mod.pipe.run(home=tmp_path, params={"password": "pw-5a5a5a"}, workers=workers)
    error = result.steps["connect"].error
    assert "password ***" in str(error)
    for text in (str(error), error.traceback, error.full_traceback):
        assert "pw-5a5a5a" not in text
    with pytest.raises(Exception) as raised:
        result.raise_for_failures()
    assert "pw-5a5a5a" not in str(raised.value)
    written = b"".join(p.read_bytes() for p in tmp_path.glob("runs.db*") if p.is_file())
    assert b"pw-5a5a5a" not in written


def test_steps_are_written_in_batches(
    make_module, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = ["from stepflow import Pipeline, step", "", "@step", "def s0() -> int:", "    return 0"]
    for i in range(1, 30):
        lines += ["", "@step", f"def s{i}(s{i - 1}: int) -> int:", f"    return s{i - 1} + 1"]
    lines += ["", f"pipe = Pipeline('chain', [{', '.join(f's{i}' for i in range(30))}])"]
    mod = make_module("chain30", "\n".join(lines))
    #: how many steps each transaction wrote: (by write_steps, by finish_run)
    batches: list[tuple[str, int]] = []
    write_steps, finish_run = RunRecords.write_steps, RunRecords.finish_run

    def counting_write(self: RunRecords, run_id: str, steps: list) -> None:
        batches.append(("write", len(steps)))
        write_steps(self, run_id, steps)

    def counting_finish(self: RunRecords, run_id: str, **kwargs: Any) -> None:
        batches.append(("finish", len(kwargs.get("steps", ()))))
        finish_run(self, run_id, **kwargs)

    monkeypatch.setattr(RunRecords, "write_steps", counting_write)
    monkeypatch.setattr(RunRecords, "finish_run", counting_finish)
    monkeypatch.setattr("stepflow._execution.journal._FLUSH_EVERY", 0.0)
    mod.pipe.run(home=tmp_path)
    # With no delay allowed, each step that ran is written at once.
    assert batches == [("write", 1)] * 30 + [("finish", 0)]
    batches.clear()
    monkeypatch.setattr("stepflow._execution.journal._FLUSH_EVERY", 3600.0)
    mod.pipe.run(home=tmp_path, regenerate=True)
    # Otherwise they wait for the batch, which the run's end writes with its outcome.
    assert batches == [("finish", 30)]
    batches.clear()
    mod.pipe.run(home=tmp_path)
    assert batches == [("finish", 30)]  # reused steps: one transaction at the end
    recs = _records(tmp_path)
    assert len(recs.steps(recs.run("last").id)) == 30
    recs.close()


def _wait_for_snapshots() -> None:
    import threading

    for thread in threading.enumerate():
        if thread.name == "stepflow-source":
            thread.join(30)


def test_source_snapshot_is_recorded_in_the_background(
    make_module, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "pyproject.toml").write_text("[tool.stepflow]\nhome = '.stepflow'\n")
    (project / "notes.txt").write_text("v1")
    monkeypatch.chdir(project)
    monkeypatch.delenv("STEPFLOW_HOME")  # the project's own home, from its pyproject.toml
    mod = make_module(
        "snapflow",
        """
        from stepflow import Pipeline, step

        @step
        def one() -> int:
            return 1

        pipe = Pipeline("snap", [one])
        """,
    )
    first = mod.pipe.run()
    _wait_for_snapshots()  # taken as the run starts, finished in the background
    (project / "notes.txt").write_text("v2")
    second = mod.pipe.run()
    _wait_for_snapshots()
    recs = _records(project / ".stepflow")
    a, b = recs.run(first.run_id), recs.run(second.run_id)
    recs.close()
    assert set(a.source_files) == {"notes.txt", "pyproject.toml"}  # not the home
    assert a.source_hash and b.source_hash and a.source_hash != b.source_hash
    assert a.source_files["pyproject.toml"] == b.source_files["pyproject.toml"]


def test_a_deleted_home_is_not_written_through_stale_handles(flow, tmp_path: Path) -> None:
    import shutil

    home = tmp_path / "home"
    flow.pipe.run(home=home)
    _wait_for_snapshots()  # it writes into the home: removing it meanwhile races with it
    shutil.rmtree(home)
    again = flow.pipe.run(home=home)  # the same process: cached handles must not be reused
    assert {r.state.value for r in again.steps.values()} == {"ran"}
    recs = _records(home)
    assert [r.id for r in recs.runs()] == [again.run_id]
    recs.close()


@pytest.mark.parametrize("user_env", [{"USER": "someone-else"}, {}])
def test_the_run_user_is_what_getpass_says(monkeypatch, user_env):
    """The journal reads the user as ``getpass.getuser()`` does, without importing it:
    the environment first (LOGNAME, USER, LNAME, USERNAME), then the password database."""
    import getpass

    from stepflow._execution.journal import _user

    for name in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        monkeypatch.delenv(name, raising=False)
    for name, value in user_env.items():
        monkeypatch.setenv(name, value)
    assert _user() == getpass.getuser()


def test_a_fully_cached_rerun_starts_no_flush_timer(
    make_module, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reused steps run no attempt, so nothing can keep their rows waiting long: the run's
    end writes them, and no timer thread is started (its start waited for the thread)."""
    import threading

    mod = make_module(
        "cached_no_timer",
        "from stepflow import Pipeline, step\n\n@step\ndef a() -> int:\n    return 1\n\n"
        "@step\ndef b(a: int) -> int:\n    return a + 1\n\npipe = Pipeline('p', [a, b])\n",
    )
    mod.pipe.run(home=tmp_path)
    started: list[object] = []
    timer = threading.Timer

    def counting(*args: Any, **kwargs: Any) -> threading.Timer:
        started.append(args)
        return timer(*args, **kwargs)

    monkeypatch.setattr(threading, "Timer", counting)
    # However slow this machine: no step is written before the end for being late.
    monkeypatch.setattr("stepflow._execution.journal._FLUSH_EVERY", 3600.0)
    result = mod.pipe.run(home=tmp_path)
    assert {r.state.value for r in result.steps.values()} == {"reused"}
    assert started == []
    recs = _records(tmp_path)
    assert len(recs.steps(recs.run("last").id)) == 2
    recs.close()


@pytest.mark.parametrize("workers", [1, 2])
def test_finished_steps_are_recorded_while_a_long_step_runs(
    make_module, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    """A reader (``stepflow ui``) sees the steps finished so far while a later one runs."""
    import threading
    import time

    go = tmp_path / "go"
    mod = make_module(
        f"long_step_flow_{workers}",
        textwrap.dedent(
            f"""
            import time
            from pathlib import Path
            from stepflow import Pipeline, step

            @step
            def quick() -> int:
                return 1

            @step
            def other() -> int:
                return 2

            @step
            def long(quick: int) -> int:
                deadline = time.monotonic() + 60
                while not Path({str(go)!r}).exists() and time.monotonic() < deadline:
                    time.sleep(0.02)
                return quick

            pipe = Pipeline("p", [quick, other, long])
            """
        ),
    )
    monkeypatch.setattr("stepflow._execution.journal._FLUSH_EVERY", 0.3)
    runner = threading.Thread(target=lambda: mod.pipe.run(home=tmp_path, workers=workers))
    runner.start()
    seen: set[str] = set()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not {"quick", "other"} <= seen:
            time.sleep(0.05)
            if not (tmp_path / "runs.db").exists():
                continue
            recs = RunRecords.read_only(tmp_path / "runs.db")
            try:
                runs = recs.runs(limit=1)
                seen = {s.name for s in recs.steps(runs[0].id)} if runs else set()
            finally:
                recs.close()
        assert {"quick", "other"} <= seen and "long" not in seen
    finally:
        go.write_text("")
        runner.join(60)
