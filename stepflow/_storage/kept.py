"""Files a process keeps for later ones: checksummed JSON in a folder of the stepflow home.

Used for what is slow to find out and cannot go stale under its name: the analysis of a
source file under the hash of its text (``fingerprint``), and what is installed on the
import path under :func:`import_path_signature` (library versions, plugin entry points).
A torn, truncated or edited file is ignored and rewritten; failures to read or write are
ignored too, since without these files everything is only slower. Kept light to import: the
plugin manager reads the entry points through it on every command.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import xxhash

from stepflow._storage.home import atomic_write, home_is_safe

__all__ = ["KeptFiles", "import_path_signature", "kept_for_import_path", "kept_in_home"]

#: a folder changed this recently may change again within the same clock tick, unseen
SETTLE_NS = 2_000_000_000


class KeptFiles:
    """JSON files in ``folder``, each starting with the hash of its contents."""

    def __init__(self, folder: str, max_files: int = 2000) -> None:
        self.folder = folder
        #: files kept; beyond this the least recently written half is removed
        self.max_files = max_files

    def read(self, name: str) -> Any:
        try:
            with open(os.path.join(self.folder, name), "rb") as fh:
                raw = fh.read()
        except OSError:
            return None
        check, _, payload = raw.partition(b"\n")
        if check.decode("ascii", "replace") != xxhash.xxh3_128_hexdigest(payload):
            return None
        try:
            return json.loads(payload)
        except ValueError:
            return None

    def write(self, name: str, data: Any) -> None:
        payload = json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode(
            "utf-8", "surrogatepass"
        )
        content = xxhash.xxh3_128_hexdigest(payload).encode() + b"\n" + payload
        try:
            atomic_write(os.path.join(self.folder, name), content)
        except OSError:
            return
        self._prune()

    def _prune(self) -> None:
        try:
            with os.scandir(self.folder) as entries:
                files = [(e.stat().st_mtime_ns, e.path) for e in entries if e.is_file()]
        except OSError:
            return
        if len(files) <= self.max_files:
            return
        files.sort()
        for _, path in files[: len(files) - self.max_files // 2]:
            with contextlib.suppress(OSError):
                os.unlink(path)


def import_path_signature() -> tuple[str, bool]:
    """A hash of the import path and its folders' modification times, and whether every
    folder is settled (unchanged for a while): only then is anything kept under it.

    Installing, upgrading or removing a distribution changes its folder's time (the signal
    ``importlib.metadata`` itself caches folder listings by).
    """
    parts = [sys.implementation.cache_tag or "", sys.executable, sys.prefix]
    newest = -1
    for entry in sys.path:
        path = os.path.abspath(os.fspath(entry) or os.curdir)
        try:
            mtime = os.stat(path).st_mtime_ns
        except OSError:
            mtime = -1
        newest = max(newest, mtime)
        parts.append(f"{path}\x00{mtime}")
    settled = newest < time.time_ns() - SETTLE_NS
    text = "\n".join(parts)
    return xxhash.xxh3_128_hexdigest(text.encode("utf-8", "surrogatepass")), settled


def kept_for_import_path(
    folder: str | os.PathLike[str], kind: str, compute: Callable[[], Any]
) -> Any:
    """``compute()``, a JSON value that depends only on what is installed on the import
    path (the entry points of installed plugins, say), kept in ``folder`` under the path's
    signature. ``compute`` runs again whenever a folder of ``sys.path`` changed, and its
    result is kept only once they settled.
    """
    files = KeptFiles(os.fspath(folder))
    signature, settled = import_path_signature()
    name = f"{kind}-{signature}.json"
    found = files.read(name)
    if found is not None:
        return found
    found = compute()
    if settled:
        files.write(name, found)
    return found


def kept_in_home(home: Path | None) -> Callable[[str, Callable[[], Any]], Any] | None:
    """What the plugin manager keeps between processes (its ``keep``): files in
    ``<home>/fingerprints``, or ``None`` without a home.

    Kept in a home only once the home passed its check: the refusal itself comes from the
    first use of the home's store or records.
    """
    if home is None or not home_is_safe(home):
        return None
    folder = Path(home) / "fingerprints"
    return lambda kind, compute: kept_for_import_path(folder, kind, compute)
