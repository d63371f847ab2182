"""Fixtures for the Docker backend's tests: a real engine and a base image made here.

No image registry is reachable in CI, so the base image is built from Debian packages
(``debootstrap``, then ``docker import``) once, and kept on the engine between sessions as
``stepflow-test-base:bookworm``. Environment images (``stepflow-env:*``) are kept too, so a
second session builds nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

BASE_IMAGE = "stepflow-test-base:bookworm"
_DEBOOTSTRAP = [
    "debootstrap",
    "--variant=minbase",
    "--include=python3,python3-venv,python3-pip,ca-certificates",
    "bookworm",
]
_MIRROR = os.environ.get("STEPFLOW_TEST_DEBIAN_MIRROR", "http://deb.debian.org/debian")


def _engine() -> tuple[Any, str]:
    try:
        import docker
    except ImportError:
        return None, "the docker SDK is not installed: pip install -e plugins/stepflow-docker"
    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except Exception as exc:
        return None, f"no docker engine at DOCKER_HOST ({exc}): start dockerd"
    return client, ""


def _base_image(client: Any) -> str:
    """Build the base image unless the engine has it; '' when done, else why not."""
    import docker.errors

    try:
        client.images.get(BASE_IMAGE)
        return ""
    except docker.errors.ImageNotFound:
        pass
    if shutil.which("debootstrap") is None or os.geteuid() != 0:
        return f"no {BASE_IMAGE} image, and building it needs root and debootstrap"
    with tempfile.TemporaryDirectory(prefix="stepflow-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        made = subprocess.run(
            [*_DEBOOTSTRAP, str(rootfs), _MIRROR], capture_output=True, text=True, check=False
        )
        if made.returncode:
            return f"debootstrap failed: {made.stdout[-2000:]}{made.stderr[-2000:]}"
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run(
            ["docker", "import", "-", BASE_IMAGE], stdin=tar.stdout, capture_output=True
        )
        tar.wait()
        if imported.returncode:
            return f"docker import failed: {imported.stderr.decode()[-2000:]}"
    return ""


@pytest.fixture(scope="session")
def _docker_state() -> Iterator[tuple[Any, str]]:
    client, why = _engine()
    if client is not None:
        why = _base_image(client)
    yield client, why
    if client is not None:
        client.close()


@pytest.fixture
def docker_client(_docker_state: tuple[Any, str], need: Callable[[str], None]) -> Any:
    """A client of the real engine, with the base image there (skips, or fails in CI)."""
    client, why = _docker_state
    if why:
        need(why)
    return client


class Project:
    """A pipeline project in a temporary folder, run with ``python -m stepflow``."""

    def __init__(self, path: Path, home: Path) -> None:
        self.path = path
        self.home = home

    def write(self, name: str, text: str) -> Path:
        target = self.path / name
        target.write_text(textwrap.dedent(text).lstrip("\n"))
        return target

    def backend(self, name: str = "box", **options: Any) -> None:
        """``[tool.stepflow.backends.NAME]`` with plugin docker and the base image."""
        options = {"image": BASE_IMAGE, "pull": "never", **options}
        lines = [f"[tool.stepflow.backends.{name}]", 'plugin = "docker"']
        lines += [f"{key} = {_toml(value)}" for key, value in options.items()]
        self.write("pyproject.toml", "\n".join(lines) + "\n")

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env["STEPFLOW_HOME"] = str(self.home)
        env.update(extra)
        return env

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "stepflow", *args]

    def run(self, *args: str, timeout: float = 600, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            self.command(*args),
            cwd=self.path,
            env=self.env(**env),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def start(self, *args: str, **env: str) -> subprocess.Popen:
        return subprocess.Popen(
            self.command(*args),
            cwd=self.path,
            env=self.env(**env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    return str(value)


@pytest.fixture
def project(tmp_path: Path) -> Project:
    """A project folder, with its home (``STEPFLOW_HOME``) outside it."""
    path = tmp_path / "project"
    path.mkdir()
    return Project(path, tmp_path / "home")


@pytest.fixture
def containers(docker_client: Any) -> Callable[..., list[Any]]:
    """``containers(run_id=, step=)``: the containers (running or not) with those labels."""

    def find(run_id: str | None = None, step: str | None = None) -> list[Any]:
        labels = ["io.stepflow.owner"]
        if run_id:
            labels.append(f"io.stepflow.run={run_id}")
        if step:
            labels.append(f"io.stepflow.step={step}")
        return docker_client.containers.list(all=True, filters={"label": labels})

    return find
