"""What a data trigger sees: a fingerprint of a path in a local folder or an object store.

``--on-change PATH`` polls PATH: a local file or folder, or an object-store URL
(``s3://bucket/prefix``, opened through fsspec with the store's options, so an S3-compatible
endpoint set in ``[tool.stepflow.store_options]`` applies). The fingerprint is a hash over
every file under PATH, with its size and modification stamp (the ETag in S3), so any added,
removed or rewritten file changes it, and all changes between two polls make one change.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import attrs

from stepflow._storage.hashing import hash_bytes
from stepflow.errors import UsageError

__all__ = ["Seen", "fingerprint", "is_url"]


@attrs.frozen
class Seen:
    """One look at a path."""

    #: hash over the files' names, sizes and stamps; ``None`` when nothing is there
    digest: str | None
    files: int


def is_url(path: str) -> bool:
    return "://" in path


def fingerprint(path: str, *, options: Mapping[str, Any] | None = None) -> Seen:
    """Look at ``path`` once.

    :raises UsageError: a URL whose scheme no installed filesystem handles.
    :raises StoreUnavailableError: the object store does not answer.
    """
    entries = _remote(path, options or {}) if is_url(path) else _local(path)
    if not entries:
        return Seen(None, 0)
    text = "\n".join(f"{name}\0{size}\0{stamp}" for name, size, stamp in sorted(entries))
    return Seen(hash_bytes(text.encode()), len(entries))


def _local(path: str) -> list[tuple[str, int, str]]:
    root = os.path.abspath(os.path.expanduser(path))
    try:
        st = os.stat(root)
    except FileNotFoundError:
        return []
    if not os.path.isdir(root):
        return [(os.path.basename(root), st.st_size, str(st.st_mtime_ns))]
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if name.startswith("."):
                continue  # partial files written then renamed, editors' swap files
            full = os.path.join(folder, name)
            try:
                info = os.stat(full)
            except FileNotFoundError:
                continue
            found.append((os.path.relpath(full, root), info.st_size, str(info.st_mtime_ns)))
    return found


def _remote(url: str, options: Mapping[str, Any]) -> list[tuple[str, int, str]]:
    from stepflow._storage.objectstore import _connect

    kind = url.split("://", 1)[0].lower()
    fs = _connect(url, kind, dict(options))
    root = str(fs._strip_protocol(f"{kind}://{url.split('://', 1)[1]}")).rstrip("/")
    if not root:
        raise UsageError(f"--on-change {url!r} names no bucket; write {kind}://BUCKET/PREFIX")
    try:
        found = fs.find(root, detail=True)
    except FileNotFoundError:
        return []
    out = []
    for name, info in found.items():
        if info.get("type") == "directory":
            continue
        stamp = info.get("ETag") or info.get("etag") or info.get("LastModified") or ""
        rel = name[len(root) :].lstrip("/") or os.path.basename(name)
        out.append((rel, int(info.get("size") or 0), str(stamp)))
    return out
