"""GPU slots: devices the host lends, held exclusively through lock files on the host.

The devices are configured ids (``gpus = ["0", "1"]``); nothing needs ``nvidia-smi`` except
the last test, which runs only where a real GPU exists.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys

import pytest
from ssh_testing import wait_for

CLAIM = """
import os, time
from pathlib import Path
from stepflow import step

def hold(folder: str) -> str:
    # Fails if another step holds one of the same devices right now.
    devices = os.environ["CUDA_VISIBLE_DEVICES"].split(",")
    print("DEVICES", ",".join(devices))
    marks = [Path(folder, f"device-{d}") for d in devices]
    for mark in marks:
        fd = os.open(mark, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        os.close(fd)
    time.sleep(0.5)
    for mark in marks:
        mark.unlink()
    return os.environ["CUDA_DEVICE_ORDER"] + " " + os.environ["CUDA_VISIBLE_DEVICES"]

@step(backend="gpu", resources={"gpus": 1})
def a(folder: str = "") -> str:
    return hold(folder)

@step(backend="gpu", resources={"gpus": 1})
def b(folder: str = "") -> str:
    return hold(folder)

@step(backend="gpu", resources={"gpus": 1})
def c(folder: str = "") -> str:
    return hold(folder)

@step(backend="gpu", resources={"gpus": 2})
def both(folder: str = "") -> str:
    return hold(folder)

@step(backend="gpu")
def none() -> str:
    return repr(os.environ.get("CUDA_VISIBLE_DEVICES"))

@step
def report(a: str, b: str, c: str, both: str, none: str) -> None:
    print("SEEN", a, "|", b, "|", c, "|", both, "|", none)
"""


def test_steps_get_exclusive_devices(project, stepflow_runner, tmp_path_factory):
    """Four GPU steps at once on two lent devices: each gets its own device(s) as
    CUDA_VISIBLE_DEVICES in PCI bus order, and no two hold one device at the same time."""
    folder = tmp_path_factory.mktemp("devices")
    project(CLAIM, gpus=[0, 1])
    out = stepflow_runner.run("run", "flow.py", "--workers", "4", "--param", f"folder={folder}")
    assert out.ret == 0, out.stdout + out.stderr
    (line,) = [x for x in (out.stdout + out.stderr).splitlines() if x.startswith("SEEN ")]
    a, b, c, both, none = (part.strip() for part in line[len("SEEN ") :].split("|"))
    assert {a, b, c} <= {"PCI_BUS_ID 0", "PCI_BUS_ID 1"}
    assert both == "PCI_BUS_ID 0,1"
    # A step that asked for none sees none of the lent devices.
    assert none == "''"


def test_a_step_waits_for_devices_held_by_another_client(
    project, stepflow_runner, tmp_path_factory, remote_workdir
):
    """Lock files on the host guard against other clients: while both devices are locked
    the step waits; it gets the one released."""
    folder = tmp_path_factory.mktemp("devices")
    root = project(CLAIM, gpus=["0", "1"])
    gpus = remote_workdir / "gpus"
    gpus.mkdir(parents=True, mode=0o700)
    held = {}
    for device in ("0", "1"):
        fd = os.open(gpus / f"{device}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        held[device] = fd
    env = dict(os.environ, STEPFLOW_HOME=str(stepflow_runner.home))
    argv = [sys.executable, "-m", "stepflow", "run", "flow.py", "--target", "a"]
    proc = subprocess.Popen(
        [*argv, "--param", f"folder={folder}"],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        statuses = remote_workdir / "attempts"
        wait_for(
            lambda: any('"waiting"' in p.read_text() for p in statuses.rglob("status.json")),
            what="the attempt to wait for a device",
        )
        assert proc.poll() is None
        os.close(held.pop("1"))
        out, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
        for fd in held.values():
            os.close(fd)
    assert proc.returncode == 0, out
    assert "1 ran" in out
    assert "DEVICES 1" in out


def test_more_gpus_than_the_host_lends_is_refused(project, stepflow_runner, tmp_path_factory):
    """A step asking for more devices than the host lends never runs: the refusal names
    the count, the devices and the option."""
    folder = tmp_path_factory.mktemp("devices")
    project(CLAIM.replace('"gpus": 2', '"gpus": 3'), gpus=[0, 1])
    out = stepflow_runner.run("run", "flow.py", "--target", "both", "--param", f"folder={folder}")
    assert out.ret != 0
    text = out.stdout + out.stderr
    assert "asks for 3 GPUs" in text
    assert "lends 2 (0, 1)" in text
    assert "gpus = [...]" in text
    assert not list(folder.iterdir())


def _real_gpus() -> list[str]:
    if shutil.which("nvidia-smi") is None:
        return []
    done = subprocess.run(
        ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
        capture_output=True,
        text=True,
    )
    return [line.strip() for line in done.stdout.splitlines() if line.strip().isdigit()]


def test_a_real_gpu_is_visible_to_the_step(project, stepflow_runner):
    """Where ``nvidia-smi`` finds GPUs, a step asking for one sees exactly one of them."""
    gpus = _real_gpus()
    if not gpus:
        pytest.skip("no GPU here (nvidia-smi finds none); never required, even in CI")
    project(
        """
        import os, subprocess
        from stepflow import step

        @step(backend="gpu", resources={"gpus": 1})
        def seen() -> str:
            out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
            return os.environ["CUDA_VISIBLE_DEVICES"] + "|" + out.stdout

        @step
        def report(seen: str) -> None:
            print("SEEN " + seen.replace("\\n", " ; "))
        """,
        gpus=[int(g) for g in gpus],
    )
    out = stepflow_runner.run("run", "flow.py")
    assert out.ret == 0, out.stdout + out.stderr
    (line,) = [x for x in (out.stdout + out.stderr).splitlines() if x.startswith("SEEN ")]
    device, _, listing = line[len("SEEN ") :].partition("|")
    assert device in gpus
    assert "GPU" in listing
