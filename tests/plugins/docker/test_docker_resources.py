"""A step's resources become the container's limits; going past the memory limit is said."""

from __future__ import annotations

import json
import re

import pytest

pytestmark = pytest.mark.slow

LIMITS = """
import json, os
from stepflow import step

def read(*candidates):
    for path in candidates:
        if os.path.exists(path):
            with open(path) as fh:
                return fh.read().split()
    return []

@step(backend="box", resources={"cpus": 0.5, "memory": "256m"})
def limits() -> str:
    memory = read("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")
    cpu = read("/sys/fs/cgroup/cpu.max")
    if not cpu:
        cpu = read("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") + read(
            "/sys/fs/cgroup/cpu/cpu.cfs_period_us"
        )
    return json.dumps({"memory": int(memory[0]), "cpu": [int(c) for c in cpu]})

@step
def report(limits: str) -> None:
    print("LIMITS", limits)
"""

HOG = """
from stepflow import step

@step(backend="box", resources={"memory": "64m"})
def hog() -> int:
    blocks = [bytearray(16 * 1024 * 1024) for _ in range(32)]  # 512 MiB, touched
    return len(blocks)
"""


def test_cpus_and_memory_become_limits(docker_client, project):
    """resources={"cpus": 0.5, "memory": "256m"}: the container's cgroup says so."""
    project.backend(requirements=["six==1.17.0"])
    project.write("flow.py", LIMITS)
    done = project.run("run", "flow.py")
    assert done.returncode == 0, done.stdout + done.stderr
    line = next(line for line in done.stdout.splitlines() if line.startswith("LIMITS "))
    seen = json.loads(line.removeprefix("LIMITS "))
    assert seen["memory"] == 256 * 1024 * 1024
    quota, period = seen["cpu"]
    assert quota / period == pytest.approx(0.5)


def test_out_of_memory_is_named(docker_client, project):
    """A step past its memory limit fails saying so, not as a lost worker of unknown cause."""
    project.backend(requirements=["six==1.17.0"])
    project.write("flow.py", HOG)
    done = project.run("run", "flow.py")
    assert done.returncode == 1, done.stdout + done.stderr
    assert re.search(r"killed by the kernel for using more memory than its limit", done.stdout), (
        done.stdout
    )
