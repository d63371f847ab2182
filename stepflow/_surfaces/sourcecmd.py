"""``stepflow runs source RUN [--to DIR] [--force] [--json]``: the code a past run ran with.

Without ``--to`` it lists the snapshot's files (path, size, hash) and names those that were
left out; with ``--to DIR`` it writes them into DIR, which must be new or empty unless
``--force`` (as ``git worktree add`` refuses a folder in use; with ``--force`` the snapshot's
files are written over what is there and other files are left alone, as ``cp -r`` does).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pluggy

    from stepflow._config import Config
    from stepflow._storage.records import RunRow
    from stepflow._storage.source.store import SnapshotFile
    from stepflow._surfaces.cli import AddCommon

__all__ = ["add_parser", "run_command"]


def add_parser(runs_sub: argparse._SubParsersAction, add_common: AddCommon) -> None:
    source = runs_sub.add_parser(
        "source",
        help="list the files of a run's code snapshot, or write them into a folder",
        description="Without --to, list the files of the run's code snapshot (path, size, "
        "hash). With --to DIR, write them into DIR, which must be new or empty unless --force.",
    )
    source.add_argument(
        "run", metavar="RUN", help="a run id, a unique prefix of it, last or last~N"
    )
    source.add_argument("--to", metavar="DIR", help="write the run's files into this folder")
    source.add_argument(
        "--force",
        action="store_true",
        help="with --to: write into a folder that is not empty (files not in the snapshot are "
        "left alone)",
    )
    add_common(source, with_json=True)


def run_command(args: argparse.Namespace, config: Config, pm: pluggy.PluginManager) -> int:
    from stepflow._execution.store import open_configured_store
    from stepflow._storage.source.store import SnapshotError, restore_snapshot, snapshot_manifest
    from stepflow._surfaces.runscmd import open_existing
    from stepflow.errors import UsageError

    if args.force and not args.to:
        raise UsageError("--force goes with --to DIR; without --to nothing is written")
    records = open_existing(config)
    try:
        run = records.run(args.run)
    finally:
        records.close()
    if run.source_hash is None:
        raise UsageError(
            f"run {run.id} has no code snapshot: it ran with record_source = false, or was "
            f"stopped before its snapshot was taken"
        )
    store = open_configured_store(config, pm)
    try:
        if args.to:
            try:
                done = restore_snapshot(run.source_hash, store, Path(args.to), force=args.force)
            except SnapshotError as exc:
                raise SnapshotError(f"cannot restore the code of run {run.id}: {exc}") from exc
            return _print_restored(run, args, done)
        manifest = snapshot_manifest(run.source_hash, store)
    finally:
        store.close()
    if manifest is None:
        # Stored elsewhere or not at all: the record's list of files is all there is.
        files = [_listed(p, h) for p, h in sorted((run.source_files or {}).items())]
        stored = False
    else:
        files = [_file_dict(f) for f in manifest.files]
        stored = True
    if args.json:
        print(
            json.dumps(
                {
                    "run": run.id,
                    "snapshot": run.source_hash,
                    "stored": stored,
                    "store": store.uri,
                    "git_commit": run.git_commit,
                    "git_dirty": run.git_dirty,
                    "files": files,
                },
                indent=2,
            )
        )
        return 0
    print(_table(run, files, stored, store.uri), end="")
    return 0


def _listed(path: str, digest: str) -> dict[str, Any]:
    return {"path": path, "size": None, "hash": digest, "kind": None, "left_out": None}


def _file_dict(entry: SnapshotFile) -> dict[str, Any]:
    data = {"path": entry.path, **entry.to_dict()}
    data.setdefault("left_out", None)
    return data


def _table(run: RunRow, files: list[dict[str, Any]], stored: bool, uri: str) -> str:
    from stepflow._humanize import human_size

    lines = [f"run {run.id}  snapshot {run.source_hash}  ({len(files)} files)"]
    if not stored:
        lines.append(
            f"its files are not in the store {uri} (runs before code snapshots were stored "
            f"keep only this list), so --to cannot restore them"
        )
    width = max([4, *(len(f["path"]) for f in files)])
    lines.append(f"{'path':<{width}}  {'size':>10}  hash")
    left_out = []
    for f in files:
        size = "" if f["size"] is None else human_size(f["size"])
        link = f"  -> {f['link']}" if f.get("link") is not None else ""
        lines.append(f"{f['path']:<{width}}  {size:>10}  {f['hash'][:12]}{link}")
        if f["left_out"] is not None:
            left_out.append(f"  {f['path']}: {f['left_out']}")
    if left_out:
        lines.append(f"left out ({len(left_out)}; listed, but their bytes were not stored):")
        lines += left_out
    return "\n".join(lines) + "\n"


def _print_restored(run: RunRow, args: argparse.Namespace, done: Any) -> int:
    skipped = dict(done.skipped)
    if args.json:
        print(
            json.dumps(
                {
                    "run": run.id,
                    "snapshot": run.source_hash,
                    "to": str(Path(args.to).absolute()),
                    "written": done.written,
                    "skipped": skipped,
                },
                indent=2,
            )
        )
        return 0
    print(f"wrote {done.written} files of run {run.id} to {args.to}")
    if skipped:
        print(f"not restored ({len(skipped)}):")
        for path, why in sorted(skipped.items()):
            print(f"  {path}: {why}")
    return 0
