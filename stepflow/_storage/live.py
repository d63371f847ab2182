"""The live area of a home: what the steps in flight have printed so far, for readers in
other processes (``stepflow ui``).

A run publishes each attempt that has been running for a moment here, then removes it once
the step's record (and its log) is written::

    <home>/live/<run>/.owner                   "HOST PID" of the run's process
    <home>/live/<run>/<step>/name              the step's name as given
    <home>/live/<run>/<step>/<attempt>/stdout  what it printed, secrets already masked
    <home>/live/<run>/<step>/<attempt>/stderr
    <home>/live/<run>/<step>/<attempt>/log     its ``logging`` records (steps run in the
                                               run's process only)

A step folder that exists for a run whose process is alive means the step is in flight.
Folder names are made safe from any step name (``_safe``): only ``[A-Za-z0-9_-]`` are kept
as they are, so no name can climb out of the area or collide with ``.owner``; a long name is
cut and completed by a hash. The files hold masked text only: the run masks secret values
before anything reaches the home, as it does for the recorded log.

Leftovers of a run whose process died (``kill -9``) are ignored by readers (the ``.owner``
is checked, as the run records check a run's pid) and removed by the next run that
publishes here. This module writes nothing by itself: the run's process calls the writers
(``stepflow._execution.live``), readers only read.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from stepflow._storage.records import host_name

__all__ = [
    "LIVE_DIR",
    "OWNER",
    "STREAMS",
    "attempt_dir",
    "live_log",
    "live_steps",
    "make_run_dir",
    "owner_alive",
    "remove_run",
    "remove_steps",
    "run_dir",
    "step_dir",
    "sweep",
]

#: the live area's folder under the home
LIVE_DIR = "live"
#: the file naming a run's process: no step name's folder can be called so (``_safe``)
OWNER = ".owner"
#: the files of an attempt folder, in the order they are shown
STREAMS = ("stdout", "stderr", "log")
#: the longest folder name made from a step name (a file name is at most 255 bytes)
_MAX_NAME = 120
#: how much of one stream a reader takes at most (the recorded log keeps 2,000,000 chars)
_MAX_READ = 8 * 1024 * 1024
_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def _safe(name: str) -> str:
    """A folder name for ``name``: safe characters kept, every other one as ``.XX`` bytes.

    ``.`` only ever starts an escape, so ``.``, ``..`` and hidden names cannot be made, and
    no two names map to the same folder (a cut long name ends with a hash of the whole).
    """
    out = [c if c in _SAFE else "".join(f".{b:02x}" for b in c.encode()) for c in name]
    safe = "".join(out) or ".empty"  # not an escape: no step name gives it
    if len(safe) > _MAX_NAME:
        digest = hashlib.blake2b(name.encode(), digest_size=8).hexdigest()
        safe = f"{safe[: _MAX_NAME - 18]}~{digest}"
    return safe


def run_dir(home: Path, run_id: str) -> Path:
    return Path(home) / LIVE_DIR / _safe(run_id)


def step_dir(home: Path, run_id: str, step: str) -> Path:
    return run_dir(home, run_id) / _safe(step)


def attempt_dir(home: Path, run_id: str, step: str, attempt: int) -> Path:
    return step_dir(home, run_id, step) / str(int(attempt))


# --- writing (the run's process) -------------------------------------------------------------


def make_run_dir(home: Path, run_id: str) -> Path:
    """The run's folder, made with its ``owner`` file (this host and process)."""
    from stepflow._storage.home import atomic_write, make_private_dirs

    path = run_dir(home, run_id)
    if not (path / OWNER).is_file():
        make_private_dirs(path)
        atomic_write(path / OWNER, f"{host_name()} {os.getpid()}\n".encode())
    return path


def make_step_dir(home: Path, run_id: str, step: str, attempt: int) -> Path:
    """The attempt's folder (and its step's, with the ``name`` file); returns the attempt's."""
    from stepflow._storage.home import atomic_write, make_private_dirs

    folder = step_dir(home, run_id, step)
    if not (folder / "name").is_file():
        make_private_dirs(folder)
        atomic_write(folder / "name", step.encode())
    path = folder / str(int(attempt))
    make_private_dirs(path)
    return path


def remove_steps(home: Path, run_id: str, steps: list[str]) -> None:
    """Remove the folders of ``steps`` (their records are written now)."""
    for step in steps:
        shutil.rmtree(step_dir(home, run_id, step), ignore_errors=True)


def remove_run(home: Path, run_id: str) -> None:
    """Remove the run's whole folder (the run has ended), and the area when it is empty."""
    shutil.rmtree(run_dir(home, run_id), ignore_errors=True)
    with contextlib.suppress(OSError):
        (Path(home) / LIVE_DIR).rmdir()


def sweep(home: Path, keep: str) -> list[str]:
    """Remove the folders of runs of this host whose process is gone (all but ``keep``);
    returns the folder names removed."""
    root = Path(home) / LIVE_DIR
    removed = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(root):
            if entry.name == _safe(keep) or owner_alive(Path(entry.path)) is not False:
                continue
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(entry.name)
    return removed


# --- reading (any process) -------------------------------------------------------------------


def owner_alive(folder: Path) -> bool | None:
    """Whether the process that owns a run's live folder is alive: ``None`` when that cannot
    be told (no owner file yet, or another host's run)."""
    try:
        host, _, pid = (folder / OWNER).read_text().strip().rpartition(" ")
    except OSError:
        return None
    if host != host_name() or not pid.isdigit():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _live(home: Path, run_id: str) -> Path | None:
    folder = run_dir(home, run_id)
    return folder if owner_alive(folder) else None


def _attempts(folder: Path) -> Iterator[tuple[int, Path]]:
    try:
        entries = sorted(
            (int(e.name), Path(e.path)) for e in os.scandir(folder) if e.name.isdigit()
        )
    except OSError:
        return
    yield from entries


def live_steps(home: Path, run_id: str) -> dict[str, int]:
    """The steps of run ``run_id`` in flight now (step → its latest attempt), read from the
    live area; empty when the run's process is gone or publishes nothing."""
    folder = _live(home, run_id)
    if folder is None:
        return {}
    found: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            if not entry.is_dir(follow_symlinks=False):
                continue
            try:
                name = (Path(entry.path) / "name").read_text()
            except OSError:
                continue  # being made or removed right now
            attempts = [n for n, _ in _attempts(Path(entry.path))]
            if attempts and _safe(name) == entry.name:
                found[name] = attempts[-1]
    return found


def live_log(home: Path, run_id: str, step: str) -> list[tuple[int, str, str]] | None:
    """What step ``step`` of run ``run_id`` printed so far, attempt by attempt:
    ``(attempt, stream, text)``, secrets masked; ``None`` when it is not in flight."""
    folder = _live(home, run_id)
    if folder is None:
        return None
    folder = folder / _safe(step)
    if not folder.is_dir():
        return None
    entries = []
    for attempt, path in _attempts(folder):
        for stream in STREAMS:
            try:
                with open(path / stream, "rb") as fh:
                    data = fh.read(_MAX_READ)
            except OSError:
                continue
            if data:
                entries.append((attempt, stream, data.decode("utf-8", errors="replace")))
    return entries
