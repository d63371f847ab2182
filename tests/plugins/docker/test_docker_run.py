"""Steps in containers against a real engine: the environment, the mounts, the user, reuse."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

FLOW = """
import json, os, sys
from stepflow import step

@step
def number() -> int:
    return 21

@step(backend="box", env={"requirements": ["six==1.17.0"]})
def inside(number: int) -> str:
    import six
    home = os.path.expanduser("~")
    with open(os.path.join(home, "probe"), "w") as fh:  # HOME is writable
        fh.write("x")
    print("printed in the container")
    return json.dumps({
        "double": number * 2,
        "python": sys.executable,
        "six": six.__version__,
        "uid": os.getuid(),
        "gid": os.getgid(),
        "code_writable": os.access(os.getcwd(), os.W_OK),
        "cwd": os.getcwd(),
        "socket": os.path.exists("/var/run/docker.sock"),
    })

@step
def report(inside: str) -> None:
    print("REPORT", inside)
"""


def _report(out: str) -> dict:
    line = next(line for line in out.splitlines() if line.startswith("REPORT "))
    return json.loads(line.removeprefix("REPORT "))


def _run_id(out: str) -> str:
    match = re.search(r"run (\d{8}-\d{6}-[0-9a-f]+)", out)
    assert match, out
    return match.group(1)


def test_step_runs_in_its_environment_and_is_reused(docker_client, project, containers):
    """The step's env overrides the backend's; the code is mounted read-only at its own
    path; the container is removed after it ran; a rerun reuses the result."""
    project.backend()
    project.write("flow.py", FLOW)
    first = project.run("run", "flow.py")
    assert first.returncode == 0, first.stdout + first.stderr
    seen = _report(first.stdout)
    assert seen["double"] == 42
    assert seen["python"] == "/opt/stepflow/venv/bin/python"
    assert seen["six"] == "1.17.0"
    assert (seen["uid"], seen["gid"]) == (os.getuid(), os.getgid())
    assert seen["cwd"] == str(project.path.resolve())
    assert seen["code_writable"] is False
    assert seen["socket"] is False
    assert containers(run_id=_run_id(first.stdout)) == []
    again = project.run("run", "flow.py")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "3 reused" in again.stdout and "building" not in again.stderr


def test_code_edit_does_not_rebuild(docker_client, project):
    """An edit of the step changes its key but not its image: nothing is built."""
    project.backend()
    project.write("flow.py", FLOW)
    assert project.run("run", "flow.py").returncode == 0
    project.write("flow.py", FLOW.replace("number * 2", "number * 3"))
    edited = project.run("run", "flow.py")
    assert edited.returncode == 0, edited.stdout + edited.stderr
    assert "building" not in edited.stderr
    assert _report(edited.stdout)["double"] == 63  # the new code ran, in the same image


def test_requirements_and_image_are_in_the_key(docker_client, project):
    """Changing the backend's requirements changes the step's key; explain names them."""
    project.backend(requirements=["six==1.17.0"])
    project.write("flow.py", FLOW.replace(', env={"requirements": ["six==1.17.0"]}', ""))
    assert project.run("run", "flow.py").returncode == 0
    project.backend(requirements=["six==1.16.0"])
    explained = project.run("explain", "flow.py", "inside")
    assert explained.returncode == 0, explained.stdout + explained.stderr
    text = explained.stdout
    assert "backend:requirements" in text and "six==1.16.0" in text, text
    assert "backend:image" in text, text
    rerun = project.run("run", "flow.py")
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert _report(rerun.stdout)["six"] == "1.16.0"
    assert "inside" in rerun.stdout and "1 reused" in rerun.stdout  # number only


def test_store_files_belong_to_the_caller(docker_client, project, tmp_path, need):
    """Outputs written in the container belong to the user who ran stepflow. Run as root,
    the test makes that user another uid: a forked child of this process (its interpreter
    may not be reachable by other users) drops to uid 4242 and runs the pipeline. The
    output is padded past 32 KiB, so that the container writes it as a file (a smaller one
    comes back inside the result)."""
    project.backend()
    project.write("flow.py", FLOW.replace('"double": number * 2,', '"pad": "." * 40_000,'))
    if os.getuid() != 0:
        done = project.run("run", "flow.py")
        assert done.returncode == 0, done.stdout + done.stderr
        uid, gid, seen = os.getuid(), os.getgid(), _report(done.stdout)
    else:
        uid = gid = 4242
        # pytest's own temporary folders are root's alone: another user needs a path in.
        base = Path(tempfile.mkdtemp(prefix="stepflow-uid-"))
        try:
            base.chmod(0o755)
            shutil.copytree(project.path, base / "project")
            project = type(project)(base / "project", base / "home")
            seen = _run_forked_as(uid, gid, project.path / "flow.py", project, tmp_path, need)
            files = [p for p in (project.home / "objects").rglob("*") if p.is_file()]
            owners = {(p.stat().st_uid, p.stat().st_gid) for p in files}
        finally:
            shutil.rmtree(base, ignore_errors=True)
    if os.getuid() != 0:
        files = [p for p in (project.home / "objects").rglob("*") if p.is_file()]
        owners = {(p.stat().st_uid, p.stat().st_gid) for p in files}
    assert (seen["uid"], seen["gid"]) == (uid, gid)
    assert files
    assert owners == {(uid, gid)}


def _run_forked_as(uid: int, gid: int, flow: Path, project, tmp_path: Path, need) -> dict:
    from stepflow import Pipeline
    from stepflow._config import load_config

    sock = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not sock.startswith("unix://"):
        need("another user reaches the engine through its local socket only")
    sock_gid = os.stat(sock.removeprefix("unix://")).st_gid
    pipeline = Pipeline.from_module(flow)
    # As root first, in another home: every module a run imports is loaded before the fork.
    warm = pipeline.run(config=load_config(project.path, home=tmp_path / "warm-home"))
    assert warm.steps["inside"].state.value == "ran"
    for path in (project.path, *project.path.iterdir()):
        os.chown(path, uid, gid)
    project.home.mkdir(mode=0o700)
    os.chown(project.home, uid, gid)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            os.close(read)
            os.setgroups([sock_gid])
            os.setgid(gid)
            os.setuid(uid)
            os.chdir(project.path)
            result = pipeline.run(config=load_config(project.path, home=project.home))
            failed = result.steps["inside"].error
            if failed is not None:
                raise RuntimeError(f"{failed}")
            os.write(write, json.dumps(result["inside"]).encode())
            code = 0
        except BaseException as exc:
            os.write(write, f"ERROR {type(exc).__name__}: {exc}".encode())
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as fh:
        answer = fh.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, answer
    return json.loads(json.loads(answer))


@pytest.mark.skipif(
    shutil.which("nvidia-smi") is None
    or subprocess.run(["nvidia-smi", "-L"], capture_output=True, check=False).returncode != 0,
    reason="no GPU: nvidia-smi finds none (GPU steps are never required, even in CI)",
)
def test_gpu_step_sees_its_gpu(docker_client, project):
    """resources={"gpus": 1} becomes a device request: the container sees one GPU."""
    project.backend()
    project.write(
        "flow.py",
        """
        import glob
        from stepflow import step

        @step(backend="box", resources={"gpus": 1})
        def devices() -> list:
            return sorted(glob.glob("/dev/nvidia[0-9]*"))

        @step
        def report(devices: list) -> None:
            print("GPUS", len(devices))
        """,
    )
    done = project.run("run", "flow.py")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "GPUS 1" in done.stdout
