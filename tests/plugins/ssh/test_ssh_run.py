"""Steps on a host over SSH: code and data go there by hash, results come back verified."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

FLOW = """
import json, os, sys
from stepflow import step

@step
def numbers(pad: int = 0) -> list:
    # Zeros change no sum; 20,000 of them make the list an object (over 32 KiB).
    return list(range(10)) + [0] * pad

@step(backend="gpu")
def where(numbers: list, k: int = 1) -> dict:
    print("remote says hello")
    return {
        "file": __file__,
        "cwd": os.getcwd(),
        "attempt": os.environ.get("STEPFLOW_SSH_ATTEMPT", ""),
        "total": sum(numbers) * k,
    }

@step
def report(where: dict) -> None:
    print("REPORT " + json.dumps(where))
"""


def _report(out: str) -> dict:
    (line,) = [line for line in out.splitlines() if line.startswith("REPORT ")]
    return json.loads(line[len("REPORT ") :])


def _code_dirs(workdir: Path) -> list[Path]:
    return sorted(p for p in (workdir / "code").iterdir() if not p.name.startswith("."))


def test_step_runs_from_the_uploaded_snapshot_in_the_workdir(
    project, stepflow_runner, remote_workdir
):
    """The host imports the step from its own copy of the code, in the workdir, and the
    output comes back into the local store (the local step after it reads it)."""
    project(FLOW)
    out = stepflow_runner.run("run", "flow.py")
    assert out.ret == 0, out.stdout + out.stderr
    seen = _report(out.stdout)
    (code,) = _code_dirs(remote_workdir)
    assert seen["file"] == str(code / "flow.py")
    assert seen["cwd"] == str(code)
    assert seen["total"] == 45
    assert seen["attempt"].startswith(str(remote_workdir / "attempts"))
    # Shared by every step: read-only, and the attempt's folder is gone after the run.
    assert not os.stat(code / "flow.py").st_mode & 0o222
    assert not Path(seen["attempt"]).exists()
    assert stat.S_IMODE(os.stat(remote_workdir).st_mode) == 0o700
    out.fnmatch_lines(["*3 ran in*"])
    again = stepflow_runner.run("run", "flow.py")
    assert again.ret == 0, again.stdout + again.stderr
    again.fnmatch_lines(["*3 reused*"])


def test_code_and_inputs_are_uploaded_only_when_missing(project, stepflow_runner, remote_workdir):
    """A second run with another parameter sends neither the code nor the input again; a
    code edit sends a new snapshot next to the old one."""
    root = project(FLOW)
    assert stepflow_runner.run("run", "flow.py", "--param", "pad=20000").ret == 0
    (code,) = _code_dirs(remote_workdir)
    objects = sorted((remote_workdir / "store" / "objects").rglob("*"))
    files = [p for p in objects if p.is_file()]
    assert files, "the input went into the host's store"
    before = {p: p.stat().st_mtime_ns for p in files} | {code: code.stat().st_ino}

    out = stepflow_runner.run("run", "flow.py", "--param", "k=2", "--param", "pad=20000")
    assert out.ret == 0, out.stdout + out.stderr
    assert _report(out.stdout)["total"] == 90
    assert _code_dirs(remote_workdir) == [code]
    assert {p: p.stat().st_mtime_ns for p in files} | {code: code.stat().st_ino} == before

    (root / "flow.py").write_text(FLOW.replace("remote says hello", "remote says hi"))
    out = stepflow_runner.run("run", "flow.py")
    assert out.ret == 0, out.stdout + out.stderr
    assert len(_code_dirs(remote_workdir)) == 2


def test_small_inputs_and_outputs_travel_inside_task_and_result(
    project, stepflow_runner, remote_workdir
):
    """Under 32 KiB, the input goes inside the task and the output comes back inside the
    result: neither store gets an object, and the results are reused."""
    project(FLOW)
    out = stepflow_runner.run("run", "flow.py")
    assert out.ret == 0, out.stdout + out.stderr
    assert _report(out.stdout)["total"] == 45
    remote_objects = remote_workdir / "store" / "objects"
    assert [p for p in remote_objects.rglob("*") if p.is_file()] == []
    local_objects = stepflow_runner.home / "objects"
    assert [p for p in local_objects.rglob("*") if p.is_file()] == []
    again = stepflow_runner.run("run", "flow.py", "--regenerate", "report")
    assert again.ret == 0, again.stdout + again.stderr
    assert _report(again.stdout)["total"] == 45  # 'where' read back from its record
    again.fnmatch_lines(["*1 ran, 2 reused*"])


def test_an_output_damaged_on_the_way_back_is_not_stored(sshd, remote_workdir, tmp_path):
    """Objects coming back are checked against the digest the worker recorded: a mismatch
    publishes nothing in the local store."""
    from stepflow_ssh import SSHBackend

    from stepflow._authoring.step import StepRef
    from stepflow._config import load_config
    from stepflow.backends import ArtifactRef, BackendContext, Task, TaskResult

    (tmp_path / "pyproject.toml").write_text("[tool.stepflow]\n")
    config = load_config(tmp_path)
    options = sshd.options(remote_workdir)
    options.pop("plugin")
    backend = SSHBackend("gpu", options, BackendContext(config=config, workers=1, run_id="r1"))
    try:
        backend.check()
        name = "ab" * 16 + ".pickle"
        remote = remote_workdir / "store" / "objects" / name[:2] / name[2:]
        remote.parent.mkdir(parents=True)
        remote.write_bytes(b"the bytes the host has")
        local_store = tmp_path / "objects"
        task = Task(
            run_id="r1",
            step="s",
            attempt=1,
            ref=StepRef("flow", "s"),
            inputs={},
            params={},
            store_uri=str(local_store),
        )
        ref = ArtifactRef(name, "ab" * 16, "pickle", len(b"the bytes the host has"), "0" * 32)
        result = TaskResult("s", 1, outputs={"s": ref}, run_id="r1")
        channel = backend._acquire()
        try:
            assert backend._pull_outputs(channel, task, result) == [name]
        finally:
            backend._release(channel)
        assert not (local_store / name[:2] / name[2:]).exists()
        # With the right digest the same object is accepted.
        from stepflow._storage.hashing import hash_bytes

        good = ArtifactRef(name, "ab" * 16, "pickle", 22, hash_bytes(b"the bytes the host has"))
        result = TaskResult("s", 1, outputs={"s": good}, run_id="r1")
        channel = backend._acquire()
        try:
            assert backend._pull_outputs(channel, task, result) == []
        finally:
            backend._release(channel)
        assert (local_store / name[:2] / name[2:]).read_bytes() == b"the bytes the host has"
    finally:
        backend.close()


def test_with_a_shared_s3_store_nothing_is_copied(
    project, stepflow_runner, remote_workdir, s3_server
):
    """The worker on the host reads and writes the object store itself: no object travels
    over SSH, and the host's workdir has no store."""
    project(
        FLOW,
        forward_env=["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"],
        extra_tables={
            "tool.stepflow": {"store": s3_server.url()},
            "tool.stepflow.store_options": s3_server.options,
        },
    )
    out = stepflow_runner.run("run", "flow.py")
    assert out.ret == 0, out.stdout + out.stderr
    assert _report(out.stdout)["total"] == 45
    assert not (remote_workdir / "store").exists()
    assert s3_server.fs().ls(f"{s3_server.bucket}/stepflow")


def test_parallel_steps_share_one_connection(project, stepflow_runner):
    """Several steps at once on one host, each its own attempt."""
    project(
        """
        import os
        from stepflow import step

        @step(backend="gpu")
        def a() -> int:
            return os.getpid()

        @step(backend="gpu")
        def b() -> int:
            return os.getpid()

        @step
        def both(a: int, b: int) -> None:
            print("PIDS", a != b)
        """
    )
    out = stepflow_runner.run("run", "flow.py", "--workers", "2")
    assert out.ret == 0, out.stdout + out.stderr
    assert "PIDS True" in out.stdout + out.stderr
