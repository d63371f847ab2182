"""The code snapshot a container sees: the run's stored source, restored once per hash.

The project folder is scanned and stored the way every run records its code (filtered by
``.gitignore`` and ``.stepflowignore``), restored into ``<home>/docker/code/<hash>``, and
mounted read-only at the project's own path, so the paths in a task (its ``sys_path``, a
script's file) hold in the container as they do here. An edit makes a new snapshot, never a
new image.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# Every folder made in the home is owner-only at each level (DESIGN.md section 7).
from stepflow._storage.home import make_private_dirs
from stepflow.errors import BackendUnavailableError

__all__ = ["code_snapshot", "stepflow_source"]

#: snapshots kept beside the newest (older ones are removed when a new one is made)
_KEEP = 8


def code_snapshot(
    rootdir: Path,
    home: Path,
    store: str | None,
    backend: str,
    store_options: Mapping[str, Any] | None = None,
) -> Path:
    """The folder holding the snapshot of ``rootdir`` (made if needed)."""
    # Private modules of stepflow: this first-party plugin shares the snapshot format.
    from stepflow._pluginmanager import datastore_kinds
    from stepflow._storage.source import scan
    from stepflow._storage.source.store import restore_snapshot, save_scan
    from stepflow._storage.stores import open_datastore

    try:
        found = scan(rootdir, home=home)
        datastore = open_datastore(store, home=home, options=store_options, kinds=datastore_kinds())
        try:
            snapshot_id = save_scan(found, datastore, home=home)
            folders = home / "docker" / "code"
            dest = folders / snapshot_id
            if not dest.is_dir():
                make_private_dirs(folders)
                tmp = Path(tempfile.mkdtemp(dir=folders, prefix=".tmp-"))
                restore_snapshot(snapshot_id, datastore, tmp / "code")
                try:
                    os.rename(tmp / "code", dest)
                except OSError:
                    if not dest.is_dir():  # not made meanwhile by another run
                        raise
                shutil.rmtree(tmp, ignore_errors=True)
                _prune(folders, dest)
        finally:
            datastore.close()
    except BackendUnavailableError:
        raise
    except Exception as exc:
        raise BackendUnavailableError(
            f"backend {backend!r}: the code snapshot of {rootdir} could not be made for the "
            f"containers ({type(exc).__name__}: {exc})"
        ) from exc
    return dest


def _prune(folders: Path, newest: Path) -> None:
    entries = sorted(
        (p for p in folders.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: p.stat().st_mtime,
    )
    for old in entries[: max(0, len(entries) - _KEEP)]:
        if old != newest:
            shutil.rmtree(old, ignore_errors=True)


def stepflow_source(home: Path) -> tuple[Path, bool]:
    """A copy of this process's ``stepflow`` package in the home, and whether it still needs
    compiling; the folder holding it is mounted read-only on the container's ``PYTHONPATH``.

    A copy, not the package itself, so that its bytecode can be compiled once by the
    container's Python (next to the sources, where any Python looks for it): importing
    stepflow from sources costs a container most of a second. One copy per content (paths,
    sizes and modification times of the package's files).
    """
    import hashlib

    import stepflow

    package = Path(stepflow.__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            stat = path.stat()
            digest.update(
                f"{path.relative_to(package)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode()
            )
    folders = home / "docker" / "stepflow"
    dest = folders / digest.hexdigest()[:20]
    if not (dest / "stepflow").is_dir():
        make_private_dirs(folders)
        tmp = Path(tempfile.mkdtemp(dir=folders, prefix=".tmp-"))
        shutil.copytree(package, tmp / "stepflow", ignore=shutil.ignore_patterns("__pycache__"))
        try:
            os.rename(tmp, dest)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if not (dest / "stepflow").is_dir():
                raise
        _prune(folders, dest)
    return dest, not (dest / ".compiled").exists()
