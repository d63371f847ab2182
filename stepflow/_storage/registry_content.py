"""What registered data sets and models hold: storing their content, loading it back.

A data set is one of three kinds:

``file``
    one file, stored as it is (``store_file``); its content hash covers the bytes and the
    file's suffix (which decides how it loads as a table), not its name.
``folder``
    every file under a folder (symbolic links to files are followed, links to folders are
    not), each stored as it is, with a manifest of relative path → object.
``table``
    a pandas DataFrame, stored by the run's serializers; its content hash is the one step
    outputs use (``hash_value``), so a registered output and a registered frame agree.

A consumer gets a DataFrame (tables, and CSV, TSV or Parquet files) or a local path. Paths
point into ``<home>/materialized/<name>/<version>-<hash>/``: verified copies made once and
checked before reuse (a copy a step changed is made again), so a step can never alter the
store through them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
import pickle
import secrets
import shutil
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from stepflow._storage.artifacts import ArtifactIO, ArtifactRef
from stepflow._storage.datastore import Datastore
from stepflow._storage.files import fetch_file, store_file
from stepflow._storage.hashing import UnhashableValueError, hash_value
from stepflow._storage.home import file_mode, make_private_dirs, make_private_file
from stepflow._storage.locks import key_lock
from stepflow._storage.registry import DatasetVersion, ModelVersion
from stepflow._storage.serializers import SerializationError
from stepflow.errors import UsageError

__all__ = [
    "DatasetContent",
    "dataset_content",
    "is_dataframe",
    "load_dataset",
    "load_model",
    "materialize",
    "model_content",
    "problem",
    "structural_hash",
    "want_of",
]

#: file suffixes that load as a DataFrame, and how
_TABLE_SUFFIXES = {
    ".csv": "csv",
    ".csv.gz": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_STAMP = ".stepflow-stamp.json"


def is_dataframe(value: object) -> bool:
    """``value`` is a pandas DataFrame (checked without importing pandas)."""
    cls = type(value)
    return cls.__module__.partition(".")[0] == "pandas" and cls.__name__ == "DataFrame"


def _table_format(filename: str) -> str | None:
    lower = filename.lower()
    for suffix, fmt in _TABLE_SUFFIXES.items():
        if lower.endswith(suffix):
            return fmt
    return None


@attrs.frozen
class DatasetContent:
    """A data set's content, stored, before it gets a version number."""

    kind: str
    content_hash: str
    size: int
    objects: dict[str, ArtifactRef]


def dataset_content(store: Datastore, serializers: Sequence[Any], value: Any) -> DatasetContent:
    """Store a DataFrame, a file or a folder and describe it.

    :raises UsageError: ``value`` is none of those, or the path does not exist.
    """
    if is_dataframe(value):
        return table_content(ArtifactIO(store, serializers).save(value))
    if not isinstance(value, str | os.PathLike):
        raise UsageError(
            f"a data set is a path to a file or folder, or a pandas DataFrame; got "
            f"{type(value).__module__}.{type(value).__qualname__}"
        )
    path = Path(value).expanduser()
    if path.is_file():
        ref = store_file(store, path)
        return DatasetContent("file", _file_hash(path.name, ref), ref.size, {path.name: ref})
    if path.is_dir():
        objects = {}
        for rel, file in _walk(path):
            objects[rel] = store_file(store, file)
        if not objects:
            raise UsageError(f"folder {path} holds no files; a data set needs at least one")
        manifest = tuple(sorted((rel, ref.digest) for rel, ref in objects.items()))
        size = sum(ref.size for ref in objects.values())
        return DatasetContent("folder", hash_value(("folder", manifest)), size, objects)
    raise UsageError(f"no file or folder at {path} (working folder: {Path.cwd()})")


def table_content(ref: ArtifactRef) -> DatasetContent:
    """A stored DataFrame as data-set content (its hash is the value's hash)."""
    return DatasetContent("table", ref.content_hash, ref.size, {"table": ref})


def _file_hash(filename: str, ref: ArtifactRef) -> str:
    # The suffix counts (it decides how the file loads as a table); the rest of the name
    # does not, so re-registering the same bytes under a dated name makes no new version.
    return hash_value(("file", _table_format(filename) or "", ref.digest))


def _walk(root: Path) -> list[tuple[str, Path]]:
    found = []
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs.sort()
        for name in sorted(files):
            path = Path(folder) / name
            if path.is_file():  # follows a link to a file; skips sockets and dead links
                found.append((path.relative_to(root).as_posix(), path))
    return found


def model_content(
    store: Datastore, serializers: Sequence[Any], model: Any
) -> tuple[ArtifactRef, str, str]:
    """Store a model; returns its reference, content hash and class name.

    The content hash is structural (``structural_hash``), so the same model trained in this
    process, in a worker process or loaded from the store compares equal, and registering it
    again makes no new version. When the model cannot be hashed that way, the hash of its
    stored copy loaded back is used instead.
    """
    io = ArtifactIO(store, serializers)
    try:
        ref = io.save(model)
        content_hash = structural_hash(model)
        if content_hash is None:
            content_hash = hash_value(io.load(ref))
    except (SerializationError, UnhashableValueError) as exc:
        raise UsageError(f"cannot store the model: {exc}") from exc
    cls = type(model)
    return ref, content_hash, f"{cls.__module__}.{cls.__qualname__}"


class _CanonicalPickler(pickle._Pickler):  # the pure-Python pickler: its steps can be changed
    """Pickles what an object *holds*, not how its parts happen to be shared.

    ``hash_value`` hashes pickled bytes, and pickle writes a part used twice once plus a
    back-reference: a model fitted on a frame whose column names are the module's own string
    constants pickles differently from the same model fitted on a frame loaded from disk
    (equal strings, separate objects). Fast mode writes every part in full, and sets are
    written sorted, since their order follows the per-process string hash seed.
    """

    dispatch = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]

    def _save_set(self, obj: set[Any] | frozenset[Any]) -> None:
        self.save_reduce(type(obj), (sorted(obj, key=hash_value),), obj=obj)

    dispatch[set] = _save_set
    dispatch[frozenset] = _save_set


class _HashWriter:
    def __init__(self) -> None:
        import xxhash

        self.state = xxhash.xxh3_128()

    def write(self, data: bytes) -> int:
        self.state.update(data)
        return len(data)


def structural_hash(obj: Any) -> str | None:
    """A hash of ``obj``'s pickled content, independent of object sharing and set order;
    ``None`` when it cannot be pickled that way (self-references, local functions)."""
    sink = _HashWriter()

    def buffer(view: pickle.PickleBuffer) -> None:
        # Array data is hashed where it lies instead of being copied into the stream.
        try:
            raw = view.raw()
        except BufferError:  # not contiguous
            raw = memoryview(view).tobytes()
        sink.write(len(raw).to_bytes(8, "little"))
        sink.write(raw)

    pickler = _CanonicalPickler(sink, protocol=5, buffer_callback=buffer)
    pickler.fast = True  # no memo: every shared part is written in full
    try:
        pickler.dump(obj)
    except (RecursionError, pickle.PicklingError, TypeError, AttributeError, BufferError):
        return None
    return sink.state.hexdigest()


def load_model(version: ModelVersion, store: Datastore, serializers: Sequence[Any]) -> Any:
    """The model object of a version, verified against its digest."""
    return ArtifactIO(store, serializers).load(version.object)


# --- loading data sets ----------------------------------------------------------------------


def want_of(annotation: Any) -> str:
    """What a parameter annotation asks a data set for: ``frame``, ``path``, ``str``, ``any``."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(options) == 1:
            annotation = options[0]
    if annotation is str:
        return "str"
    if isinstance(annotation, type):
        if issubclass(annotation, os.PathLike | pathlib.PurePath):
            return "path"
        if annotation.__module__.partition(".")[0] == "pandas" and annotation.__name__ == (
            "DataFrame"
        ):
            return "frame"
    return "any"


def problem(version: DatasetVersion, want: str) -> str | None:
    """Why ``version`` cannot be given as ``want``, or ``None`` when it can."""
    if version.kind == "folder" and want == "frame":
        return (
            f"{version.label} is a folder of {len(version.objects)} files, which does not "
            f"load as one DataFrame; annotate the parameter as pathlib.Path to get the folder"
        )
    if version.kind == "file" and want == "frame" and _table_format(version.filename) is None:
        return (
            f"{version.label} is the file {version.filename!r}, which stepflow does not read "
            f"as a DataFrame (it reads .csv, .tsv and .parquet); annotate the parameter as "
            f"pathlib.Path and read it yourself"
        )
    if version.kind == "table" and want in ("path", "str"):
        if version.objects["table"].serializer != "parquet":
            return (
                f"{version.label} is a table stored with "
                f"{version.objects['table'].serializer}, not as a Parquet file; annotate "
                f"the parameter as pd.DataFrame"
            )
    return None


def load_dataset(
    version: DatasetVersion,
    want: str,
    *,
    store: Datastore,
    serializers: Sequence[Any],
    home: Path,
) -> Any:
    """A data set's value as ``want`` asks (see ``want_of``); ``any`` gives a DataFrame for
    tables and table files, and a local path otherwise.

    :raises UsageError: the data set cannot be given that way.
    :raises ArtifactMissingError: an object is missing or damaged.
    """
    reason = problem(version, want)
    if reason is not None:
        raise UsageError(reason)
    if version.kind == "table" and want in ("frame", "any"):
        return ArtifactIO(store, serializers).load(version.objects["table"])
    if version.kind == "file" and want in ("frame", "any"):
        fmt = _table_format(version.filename)
        if fmt is not None:
            return _read_table(fetch_file(store, version.objects[version.filename]), fmt)
    path = materialize(version, store, home)
    return str(path) if want == "str" else path


def _read_table(path: Path, fmt: str) -> Any:
    import pandas as pd

    if fmt == "parquet":
        return pd.read_parquet(path)
    return pd.read_csv(path, sep="\t" if fmt == "tsv" else ",")


def _entries(version: DatasetVersion) -> dict[str, ArtifactRef]:
    """Relative path (under the materialized folder) → object."""
    if version.kind == "folder":
        return {f"{version.name}/{rel}": ref for rel, ref in version.objects.items()}
    if version.kind == "table":
        return {f"{version.name}.parquet": version.objects["table"]}
    return dict(version.objects)


def _safe(rel: str) -> str:
    """Paths come from documents, which another machine may have written: keep them inside."""
    parts = rel.split("/")
    if not rel or rel.startswith("/") or any(p in ("", ".", "..") or "\\" in p for p in parts):
        raise UsageError(f"refusing the unsafe path {rel!r} in a data set's manifest")
    return rel


def materialize(version: DatasetVersion, store: Datastore, home: Path) -> Path:
    """A local, verified copy of a data set's files; returns the file or folder path."""
    entries = {_safe(rel): ref for rel, ref in _entries(version).items()}
    parent = home / "materialized" / version.name
    final = parent / f"{version.version}-{version.content_hash}"
    top = next(iter(entries)).split("/")[0]
    if _intact(final, entries):
        return final / top
    # One copier per version at a time: a process that finished its copy while another was
    # still copying used to have it moved aside as stale, under the step reading it.
    lease = hashlib.sha256(f"materialize\0{final.name}\0{version.name}".encode()).hexdigest()
    with key_lock(home, lease):
        if not _intact(final, entries):
            _copy_in(entries, store, parent, final)
    return final / top


def _copy_in(entries: dict[str, ArtifactRef], store: Datastore, parent: Path, final: Path) -> None:
    """Copy ``entries`` into a new folder and put it at ``final``, replacing a damaged copy."""
    make_private_dirs(parent)
    tmp = parent / f".tmp-{secrets.token_hex(6)}"
    try:
        stamp = {}
        for rel, ref in entries.items():
            target = tmp / rel
            make_private_dirs(target.parent)
            shutil.copyfile(fetch_file(store, ref), target)
            # Read-only: a step that writes into its input fails instead of silently
            # changing what the next consumer reads. Owner-only, like the rest of the home.
            target.chmod(file_mode() & 0o444)
            stat = target.stat()
            stamp[rel] = [stat.st_size, stat.st_mtime_ns]
        (tmp / _STAMP).write_text(json.dumps(stamp))
        make_private_file(tmp / _STAMP)
        if final.exists():
            stale = parent / f".old-{secrets.token_hex(6)}"
            with contextlib.suppress(OSError):
                final.rename(stale)
                shutil.rmtree(stale, ignore_errors=True)
        try:
            tmp.rename(final)
        except OSError:
            # A copier holding no lease (an older stepflow) put an intact copy there first.
            if not _intact(final, entries):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _intact(folder: Path, entries: dict[str, ArtifactRef]) -> bool:
    try:
        stamp = json.loads((folder / _STAMP).read_text())
    except (OSError, ValueError):
        return False
    if set(stamp) != set(entries):
        return False
    present = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    if present - {_STAMP} != set(entries):
        return False
    for rel, ref in entries.items():
        try:
            stat = (folder / rel).stat()
        except OSError:
            return False
        if [stat.st_size, stat.st_mtime_ns] != stamp[rel] or stat.st_size != ref.size:
            return False
    return True
