"""What the backend sends to a host besides tasks: the code snapshot and a stepflow wheel."""

from __future__ import annotations

import base64
import functools
import hashlib
import importlib.metadata
import io
import os
import re
import tarfile
import tempfile
import tomllib
import zipfile
from pathlib import Path
from typing import IO

import stepflow
from stepflow.errors import BackendUnavailableError

__all__ = ["Wheel", "snapshot_tar", "stepflow_wheel"]

# Every entry of a wheel gets this time, so the same code always makes the same bytes (and the
# host's virtualenv, keyed by the wheel's hash, is made once).
_EPOCH = (2020, 1, 1, 0, 0, 0)


def snapshot_tar(root: str, files: dict[str, str]) -> IO[bytes]:
    """A tar of the snapshot's files (``path -> hash``; unreadable ones left out), rewound.

    Files and links are added as they are now; the host checks each file against its hash, so
    one that changed since the snapshot was taken is refused there, never run.
    """
    out = tempfile.SpooledTemporaryFile(max_size=64 << 20)
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel, digest in sorted(files.items()):
            if digest == "unreadable" or rel.endswith("/"):
                continue
            full = os.path.join(root, rel)
            try:
                info = tar.gettarinfo(full, arcname=rel)
            except OSError:
                continue  # vanished since: the host reports the missing file
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if info.isreg():
                with open(full, "rb") as fh:
                    tar.addfile(info, fh)
            elif info.issym():
                tar.addfile(info)
    out.seek(0)
    return out


class Wheel:
    """A wheel of the running stepflow: its file name, bytes and hash."""

    def __init__(self, name: str, data: bytes) -> None:
        self.name = name
        self.data = data
        self.digest = hashlib.blake2b(data, digest_size=16).hexdigest()


def stepflow_wheel(path: str | None = None) -> Wheel:
    """The wheel to bootstrap hosts with: the file at ``path``, or one built from the running
    stepflow's own files."""
    if path is not None:
        wheel = Path(path).expanduser()
        if not wheel.is_file() or wheel.suffix != ".whl":
            raise BackendUnavailableError(
                f"option wheel = {path!r}: no wheel file there (build one with "
                f"`pip wheel --no-deps PATH-TO-STEPFLOW`)"
            )
        return Wheel(wheel.name, wheel.read_bytes())
    return _built()


@functools.cache
def _built() -> Wheel:
    """A pure-Python wheel of the imported ``stepflow`` package, made in memory.

    Built by hand rather than with ``pip wheel``: an in-tree build writes ``build/`` and an
    ``egg-info`` into the checkout, and needs a build backend; a wheel of a pure package is
    a zip of its files with three small metadata files.
    """
    package = Path(stepflow.__file__).parent
    version = stepflow.__version__
    dist_info = f"stepflow-{version}.dist-info"
    entries: list[tuple[str, bytes]] = []
    for file in sorted(package.rglob("*")):
        rel = file.relative_to(package.parent).as_posix()
        if file.is_file() and "__pycache__" not in file.parts and file.suffix != ".pyc":
            entries.append((rel, file.read_bytes()))
    requires, python, scripts = _metadata(package)
    meta = [
        "Metadata-Version: 2.1",
        "Name: stepflow",
        f"Version: {version}",
        f"Requires-Python: {python}",
        *(f"Requires-Dist: {r}" for r in requires),
    ]
    entries.append((f"{dist_info}/METADATA", ("\n".join(meta) + "\n").encode()))
    wheel_file = (
        "Wheel-Version: 1.0\nGenerator: stepflow-ssh\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    entries.append((f"{dist_info}/WHEEL", wheel_file.encode()))
    entries.append((f"{dist_info}/entry_points.txt", scripts.encode()))
    record = []
    for rel, data in entries:
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{rel},sha256={digest},{len(data)}")
    record.append(f"{dist_info}/RECORD,,")
    entries.append((f"{dist_info}/RECORD", ("\n".join(record) + "\n").encode()))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for rel, data in entries:
            info = zipfile.ZipInfo(rel, date_time=_EPOCH)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    return Wheel(f"stepflow-{version}-py3-none-any.whl", buffer.getvalue())


def _metadata(package: Path) -> tuple[list[str], str, str]:
    """stepflow's dependencies, Python requirement and entry points: from the checkout's
    ``pyproject.toml`` when it runs from one, else from its installed metadata."""
    pyproject = package.parent / "pyproject.toml"
    if pyproject.is_file():
        with open(pyproject, "rb") as fh:
            project = tomllib.load(fh).get("project", {})
        if project.get("name") == "stepflow":
            scripts = "".join(f"{k} = {v}\n" for k, v in project.get("scripts", {}).items())
            groups = "[console_scripts]\n" + scripts
            for group, items in project.get("entry-points", {}).items():
                groups += f"\n[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in items.items())
            return (
                list(project.get("dependencies", [])),
                project.get("requires-python", ">=3.11"),
                groups,
            )
    try:
        dist = importlib.metadata.distribution("stepflow")
    except importlib.metadata.PackageNotFoundError:
        raise BackendUnavailableError(
            "bootstrap = true needs stepflow's metadata to build a wheel, and this stepflow "
            'is neither installed nor run from its checkout; set wheel = "PATH.whl"'
        ) from None
    requires = [r for r in dist.requires or [] if not re.search(r"extra\s*==", r)]
    return (
        requires,
        dist.metadata.get("Requires-Python") or ">=3.11",
        (dist.read_text("entry_points.txt") or ""),
    )
