"""Publishing a pipeline: a named, numbered version that runs from its stored code.

A version holds the code snapshot of the project (each file once, by hash, in the datastore:
:mod:`stepflow._storage.source.store`), the target that names the pipeline inside it, its
parameters' defaults, the backends' configuration, and the Python, stepflow and package
versions. The hash of all that decides whether publishing makes a new version: the same
content publishes to the version that has it.

Running a version restores its snapshot once into ``<home>/published/code/<snapshot id>``
(written into a temporary folder, then renamed) and imports the target from there, never from
the working tree: editing the project does not change what a published version runs.
"""

from __future__ import annotations

import ast
import json
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from stepflow._storage.hashing import hash_bytes
from stepflow._storage.scheduledb import PublishedRow, ScheduleDB
from stepflow.errors import UsageError

if TYPE_CHECKING:
    import pluggy

    from stepflow._config import Config
    from stepflow._pipeline import Pipeline

__all__ = [
    "PublishedPipeline",
    "check_published_name",
    "get_published",
    "prepare_published",
    "publish",
    "split_ref",
]

_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
#: ``name`` or ``name@version``
_REF_RE = re.compile(r"^(?P<name>[A-Za-z0-9_][A-Za-z0-9_.\-]*)(?:@(?P<version>[^@]*))?$")


@attrs.frozen
class PublishedPipeline:
    """One version of a published pipeline (``stepflow.published.get``)."""

    name: str
    version: int
    #: what names the pipeline in the snapshot: ``path/to/file.py:pipeline`` or
    #: ``package.module:pipeline``
    target: str
    #: the id of the code snapshot it runs
    snapshot: str
    created: float
    description: str | None
    #: parameter → {step: default} (``repr`` of values that are not JSON)
    params: Mapping[str, Any]
    backends: Mapping[str, Any]
    default_backend: str
    python: str
    stepflow: str
    #: distribution → version, of what the target's module imports
    packages: Mapping[str, str]
    content_hash: str

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @classmethod
    def from_row(cls, row: PublishedRow) -> PublishedPipeline:
        spec = row.spec
        return cls(
            name=row.name,
            version=row.version,
            target=spec["target"],
            snapshot=spec["snapshot"],
            created=row.created,
            description=row.description,
            params=spec.get("params", {}),
            backends=spec.get("backends", {}),
            default_backend=spec.get("default_backend", "local"),
            python=spec.get("python", ""),
            stepflow=spec.get("stepflow", ""),
            packages=spec.get("packages", {}),
            content_hash=row.content_hash,
        )

    def to_dict(self) -> dict[str, Any]:
        from datetime import UTC, datetime

        data = attrs.asdict(self)
        data["created"] = datetime.fromtimestamp(self.created, UTC).isoformat(timespec="seconds")
        data["ref"] = self.ref
        return data


def check_published_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise UsageError(
            f"published name {name!r} is not valid; use letters, digits, '_', '-' and '.'"
        )
    return name


def split_ref(ref: str) -> tuple[str, int | None]:
    """``name`` or ``name@version`` → ``(name, version or None)``.

    :raises UsageError: not of that form, or a version that is not a whole number >= 1.
    """
    match = _REF_RE.match(ref.strip())
    if match is None:
        raise UsageError(f"{ref!r} is not a published pipeline name; write NAME or NAME@VERSION")
    raw = match["version"]
    if raw is None:
        return match["name"], None
    if not raw.isdigit() or int(raw) < 1:
        raise UsageError(f"{ref!r}: the version after '@' must be a whole number >= 1")
    return match["name"], int(raw)


def publish(
    pipeline: Pipeline,
    *,
    name: str,
    description: str | None = None,
    target: str | None = None,
    config: Config,
    pm: pluggy.PluginManager | None = None,
) -> tuple[PublishedPipeline, bool]:
    """Publish ``pipeline`` as ``name``; returns the version and whether it is new.

    ``target`` is the TARGET text that loaded it (the command line); without it, the
    pipeline must be a module-level name of the module of its steps.

    :raises UsageError: a bad name, or a target that is not inside the project folder.
    :raises TargetNotFoundError: the target names no pipeline.
    """
    from stepflow import __version__
    from stepflow._execution.store import open_configured_store
    from stepflow._storage.source.store import store_snapshot

    check_published_name(name)
    target = _resolve_target(pipeline, target, config.rootdir)
    module_file = _module_file(pipeline)
    store = open_configured_store(config, pm)
    try:
        snapshot = store_snapshot(config.rootdir, store, home=config.home)
    finally:
        store.close()
    spec = {
        "target": target,
        "snapshot": snapshot.content_hash,
        "params": _param_defaults(pipeline),
        "backends": {k: dict(v) for k, v in config.backends.items()},
        "default_backend": config.default_backend,
        "python": sys.version.split()[0],
        "stepflow": __version__,
        "packages": _package_versions(module_file),
        "store": config.store,
    }
    content = json.dumps(spec, sort_keys=True, default=repr).encode()
    with ScheduleDB(config.home) as db:
        row, new = db.publish(name, hash_bytes(content), spec, description)
    return PublishedPipeline.from_row(row), new


def get_published(name: str, version: int | None, *, config: Config) -> PublishedPipeline:
    with ScheduleDB(config.home) as db:
        return PublishedPipeline.from_row(db.published(check_published_name(name), version))


def prepare_published(
    ref: str, *, config: Config, pm: pluggy.PluginManager | None = None
) -> tuple[PublishedPipeline, str]:
    """Restore version ``ref`` (``NAME[@V]``) and make its code the one that imports; returns
    the version and the TARGET text to load (a file target made absolute in the restored
    code).

    The code folder goes first on ``sys.path`` and the working project's folder is taken off
    it, so the pipeline's own modules come from the snapshot, not from the working tree.
    """
    from stepflow._authoring.loader import looks_like_path

    name, version = split_ref(ref)
    found = get_published(name, version, config=config)
    code = checkout(found, config=config, pm=pm)
    for folder in (str(config.rootdir), os.getcwd(), ""):
        while folder in sys.path:
            sys.path.remove(folder)
    sys.path.insert(0, str(code))
    module_part, sep, attr = found.target.rpartition(":")
    if not sep:
        module_part, attr = found.target, ""
    if looks_like_path(module_part):
        module_part = str(code / module_part)
    return found, f"{module_part}{sep}{attr}"


def checkout(
    found: PublishedPipeline, *, config: Config, pm: pluggy.PluginManager | None = None
) -> Path:
    """The folder holding the version's code, restored from the store on first use."""
    import shutil
    import tempfile

    from stepflow._execution.store import open_configured_store
    from stepflow._storage.home import make_private_dirs
    from stepflow._storage.source.store import restore_snapshot

    folder = config.home / "published" / "code" / found.snapshot
    if folder.is_dir():
        return folder
    make_private_dirs(folder.parent)
    partial = Path(tempfile.mkdtemp(prefix=f".{found.snapshot}.", dir=folder.parent))
    store = open_configured_store(config, pm)
    try:
        restore_snapshot(found.snapshot, store, partial, force=True)
        try:
            os.rename(partial, folder)
        except OSError:
            if not folder.is_dir():  # another process restored it first otherwise
                raise
    finally:
        store.close()
        shutil.rmtree(partial, ignore_errors=True)
    return folder


def _resolve_target(pipeline: Pipeline, target: str | None, rootdir: Path) -> str:
    """The target text that loads ``pipeline``, as a path relative to the project folder
    when its module is a file there (so the command line's ``pkg/flows.py:pipe`` or
    ``pkg.flows:pipe`` and Python's ``stepflow.publish(pipe)`` publish the same content)."""
    from stepflow._authoring.loader import looks_like_path
    from stepflow._pipeline import Pipeline

    if not isinstance(pipeline, Pipeline):
        raise UsageError(f"publish() takes a Pipeline, got {type(pipeline).__name__}")
    if target is not None:
        text = target.strip()
        module_part, sep, attr = text.rpartition(":") if ":" in text else (text, "", "")
        if looks_like_path(module_part):
            return f"{_relative(Path(module_part), rootdir, text)}{sep}{attr}"
        module = sys.modules.get(module_part)
        path = getattr(module, "__file__", None)
        if path and _inside(Path(path), rootdir):
            return f"{_relative(Path(path), rootdir, text)}{sep}{attr}"
        raise UsageError(
            f"TARGET {text!r}: module {module_part!r} is not a file inside the project folder "
            f"{rootdir}, so its code snapshot cannot hold it; publish from the project that "
            f"contains it"
        )
    for spec in pipeline.steps.values():
        module = sys.modules.get(getattr(spec.func, "__module__", ""))
        if module is None:
            continue
        for attr, value in vars(module).items():
            if value is pipeline:
                path = getattr(module, "__file__", None)
                if not path:
                    break
                return f"{_relative(Path(path), rootdir, attr)}:{attr}"
    raise UsageError(
        f"pipeline {pipeline.name!r} is not a module-level name of the module of its steps; "
        f"define it at module level (name = Pipeline(...)), or publish it from the command "
        f"line: stepflow publish path/to/file.py:name --name NAME"
    )


def _inside(path: Path, rootdir: Path) -> bool:
    try:
        path.resolve().relative_to(rootdir.resolve())
    except ValueError:
        return False
    return True


def _relative(path: Path, rootdir: Path, text: str) -> str:
    full = path.resolve()
    try:
        return full.relative_to(rootdir.resolve()).as_posix()
    except ValueError:
        raise UsageError(
            f"TARGET {text!r} is outside the project folder {rootdir}, so its code snapshot "
            f"cannot hold it; publish from the project that contains it"
        ) from None


def _module_file(pipeline: Pipeline) -> str | None:
    for spec in pipeline.steps.values():
        module = sys.modules.get(getattr(spec.func, "__module__", ""))
        path = getattr(module, "__file__", None)
        if path:
            return str(path)
    return None


def _param_defaults(pipeline: Pipeline) -> dict[str, Any]:
    from stepflow._sentinels import MISSING

    out: dict[str, Any] = {}
    for name, spec in sorted(pipeline.params.items()):
        defaults = {}
        for step, value in sorted(spec.defaults.items()):
            if value is MISSING:
                continue
            if spec.secret:
                defaults[step] = "***"
                continue
            try:
                json.dumps(value)
                defaults[step] = value
            except (TypeError, ValueError):
                defaults[step] = repr(value)
        out[name] = defaults
    return out


def _package_versions(module_file: str | None) -> dict[str, str]:
    """Versions of the distributions the pipeline's module imports (anywhere in it, lazy
    imports inside steps included), and stepflow's."""
    from importlib import metadata

    names = {"stepflow"}
    if module_file and module_file.endswith(".py"):
        try:
            tree = ast.parse(Path(module_file).read_text(encoding="utf-8"))
        except (OSError, SyntaxError, UnicodeDecodeError):
            tree = None
        for node in ast.walk(tree) if tree is not None else ():
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    dists = metadata.packages_distributions()
    out = {}
    for top in sorted(names):
        for dist in dists.get(top, []):
            try:
                out[dist] = metadata.version(dist)
            except metadata.PackageNotFoundError:
                continue
    return out
