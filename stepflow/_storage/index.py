"""The cache index: which stored outputs a cache key stands for (diskcache on SQLite).

The index is the one commit point: an output becomes visible to later runs only when its
record is written here, after its objects are safely in the datastore. Records are plain
dicts on disk, so a newer stepflow can read what an older one wrote. An output under 32 KiB
has no object: its bytes are inside the record (``ArtifactRef.data``), committed in the same
transaction, checked against the same digest before a load. A record that cannot be read
back (a damaged row) is a miss, and is dropped.

When the datastore is ``shared`` (an object store other machines read), each record is also
written to it as a JSON document ``index/<key[:2]>/<key>.json``, after the local commit; a
local miss looks there before giving up, and keeps what it finds. A second home pointed at
the same store so reuses results made elsewhere. A local store pays nothing for this.
"""

from __future__ import annotations

import json
import os
import pickle
import threading
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from stepflow._sentinels import MISSING
from stepflow._slotted import Frozen
from stepflow._storage.artifacts import ArtifactRef
from stepflow._storage.datastore import Datastore
from stepflow._storage.faults import is_known_fault, is_storage_fault, storage_error, writing
from stepflow._storage.home import make_private_dirs, make_private_sqlite
from stepflow.errors import StepflowError, StepflowWarning, StoreUnavailableError

__all__ = ["CacheIndex", "CacheRecord", "NullIndex"]

#: bump when the record layout changes; older records are then ignored (a miss)
RECORD_VERSION = 1
#: a record holding an output's bytes (``ArtifactRef.data``): a version of its own, so that
#: an older stepflow, which would not know where the bytes are, ignores it (a miss) while
#: it still reads the records without one
INLINE_RECORD_VERSION = 2
_READABLE = (RECORD_VERSION, INLINE_RECORD_VERSION)
#: how large a record diskcache keeps inside its SQLite row (its default, 32 KiB, would
#: move a record holding an output of almost 32 KiB to a file of its own)
_ROW_MAX = 1 << 22


class CacheRecord(Frozen):
    """What a step produced for one cache key, and what went into that key."""

    __slots__ = (
        "key",
        "step",
        "pipeline",
        "run_id",
        "created",
        "outputs",
        "components",
        "param_values",
    )

    key: str
    step: str
    pipeline: str
    run_id: str
    created: float
    outputs: Mapping[str, ArtifactRef]
    #: ``{"code": {...}, "inputs": {...}, "params": {...}, "env": {...}}``, for ``explain``
    components: Mapping[str, Mapping[str, str]]
    #: readable parameter values (secrets masked), for ``explain``
    param_values: Mapping[str, str]

    def __init__(
        self,
        key: str,
        step: str,
        pipeline: str,
        run_id: str,
        created: float,
        outputs: Mapping[str, ArtifactRef],
        components: Mapping[str, Mapping[str, str]] | None = None,
        param_values: Mapping[str, str] | None = None,
    ) -> None:
        init = object.__setattr__
        init(self, "key", key)
        init(self, "step", step)
        init(self, "pipeline", pipeline)
        init(self, "run_id", run_id)
        init(self, "created", created)
        init(self, "outputs", outputs)
        init(self, "components", {} if components is None else components)
        init(self, "param_values", {} if param_values is None else param_values)

    @property
    def size(self) -> int:
        return sum(ref.size for ref in self.outputs.values())

    @property
    def inline(self) -> bool:
        """Whether an output's bytes are inside this record (``ArtifactRef.data``)."""
        return any(ref.data is not None for ref in self.outputs.values())

    def to_dict(self) -> dict[str, Any]:
        """The record as the index stores it; an inline output's ``data`` is ``bytes``
        (``to_doc`` gives the JSON form)."""
        # Spelled out: attrs.asdict(recurse=True) took longer than storing the record.
        outputs: dict[str, dict[str, Any]] = {}
        version = RECORD_VERSION
        for name, ref in self.outputs.items():
            out = outputs[name] = {
                "name": ref.name,
                "content_hash": ref.content_hash,
                "serializer": ref.serializer,
                "size": ref.size,
                "digest": ref.digest,
            }
            if ref.data is not None:
                out["data"] = ref.data
                version = INLINE_RECORD_VERSION
        return {
            "key": self.key,
            "step": self.step,
            "pipeline": self.pipeline,
            "run_id": self.run_id,
            "created": self.created,
            "outputs": outputs,
            "components": {k: dict(v) for k, v in self.components.items()},
            "param_values": dict(self.param_values),
            "version": version,
        }

    def to_doc(self) -> bytes:
        """The record as a JSON document (inline bytes in base64), for a shared store."""
        import base64  # only a shared store's documents carry inline bytes as text

        data = self.to_dict()
        for out in data["outputs"].values():
            if "data" in out:
                out["data"] = base64.b64encode(out["data"]).decode("ascii")
        return json.dumps(data, sort_keys=True).encode()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CacheRecord | None:
        if not isinstance(data, Mapping) or data.get("version") not in _READABLE:
            return None
        fields = {k: v for k, v in data.items() if k != "version"}
        fields["outputs"] = {k: _ref(v) for k, v in fields["outputs"].items()}
        return cls(**fields)


def _ref(data: Mapping[str, Any]) -> ArtifactRef:
    inline = data.get("data")
    if isinstance(inline, str):  # from a JSON document
        import base64

        data = {**data, "data": base64.b64decode(inline, validate=True)}
    elif inline is not None and not isinstance(inline, bytes):
        raise TypeError(f"inline bytes of output {data.get('name')!r} are a {type(inline)}")
    return ArtifactRef(**data)


# Keys are strings: diskcache stores those as they are, while tuples would be pickled (and
# pickle-optimized) on every lookup, which dominated a fully cached rerun.
def _result(key: str) -> str:
    return f"result:{key}"


def _last(pipeline: str) -> str:
    # One entry per pipeline, ``{step: key}``: a fully cached rerun then reads and writes one
    # entry, not one per step.
    return f"last:{pipeline}"


#: what reading a damaged record raises (unpickling it, or making a record of it)
_DAMAGED = (
    ValueError,
    TypeError,
    KeyError,
    AttributeError,
    IndexError,
    EOFError,
    ImportError,
    pickle.UnpicklingError,
)

#: the folder of shared index documents in a ``shared`` datastore
SHARED_PREFIX = "index"


def _doc(key: str) -> str:
    return f"{SHARED_PREFIX}/{key[:2]}/{key}.json"


def _parse_doc(raw: bytes, key: str | None = None) -> CacheRecord | None:
    """A record from a shared document, or ``None`` when it is unreadable, from another
    record version, or (when ``key`` is given) about another key."""
    try:
        record = CacheRecord.from_dict(json.loads(raw))
    except _DAMAGED:
        return None
    if record is None or (key is not None and record.key != key):
        return None
    return record


class _Open:
    """A ``diskcache.Cache`` of one process and folder, with the records read from it.

    Opening one costs 3 ms, and creating one 7 ms, about as much as the rest of a fully
    cached 100-step rerun, so it opens in a thread of its own while the run starts; the
    first use waits for it. A record never changes under its key (a key names its inputs
    exactly), so a process may keep the ones it has seen: a fully cached rerun in the same
    process then reads no SQLite at all. Dropping a record from the index (``delete``,
    prune) in this process drops it here too. One dropped by another process may still be
    used from here, which is harmless: each use checks that the objects are in the store
    (for an output kept inline, that the record's row is still in the index), and each load
    checks their digests, so a kept record can only ever give the result it recorded.
    """

    __slots__ = (
        "_cache",
        "_error",
        "_held",
        "_thread",
        "directory",
        "existed",
        "file_id",
        "records",
    )

    #: records kept per home at most (about 1 KB each, plus the outputs kept inline)
    MAX_RECORDS = 4096
    #: inline output bytes kept in those records at most
    MAX_INLINE_BYTES = 32 << 20

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.file_id = -1
        #: whether the database was there before this process opened it
        self.existed = (directory / "cache.db").exists()
        self.records: dict[str, CacheRecord] = {}
        #: inline output bytes held in ``records``
        self._held = 0
        self._cache: Any = None
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        if self.existed:
            # An index set up before opens in about a millisecond (``_open_existing``):
            # less than starting a thread, which waits until the thread runs.
            self._open()
            return
        # Not a daemon: the process waits for it rather than stopping it mid-write.
        self._thread = threading.Thread(target=self._open, name="stepflow-index-open")
        self._thread.start()

    def _open(self) -> None:
        try:
            import diskcache

            cache = _open_existing(self.directory) if self.existed else None
            if cache is None:
                cache = diskcache.Cache(str(self.directory), timeout=60, **_SETTINGS)
            # diskcache makes cache.db (and its -wal, -shm) with the umask's mode.
            make_private_sqlite(self.directory / "cache.db")
            self.file_id = _file_id(self.directory / "cache.db")
            self._cache = cache
        except BaseException as exc:  # raised again where the index is used
            self._error = exc

    @property
    def opening(self) -> bool:
        return self._cache is None and self._error is None

    @property
    def cache(self) -> Any:
        if self._cache is None:
            if self._thread is not None:
                self._thread.join()
            if self._error is not None:
                raise _unreadable(self.directory, self._error)
        return self._cache

    def close(self) -> None:
        if self._thread is not None:
            self._thread.join()
        if self._cache is not None:
            self._cache.close()

    def remember(self, record: CacheRecord) -> None:
        held = sum(len(ref.data) for ref in record.outputs.values() if ref.data is not None)
        if len(self.records) >= self.MAX_RECORDS or self._held + held > self.MAX_INLINE_BYTES:
            self.records.clear()
            self._held = 0
        self.records[record.key] = record
        self._held += held


#: the diskcache settings of the index. No eviction: dropping a record is the job of `stepflow
#: cache prune`, never a side effect of a size limit the user did not set. No culling either:
#: records never expire, so the query for expired ones that each write would run finds
#: nothing (one SQLite statement of five per stored result).
_SETTINGS: dict[str, Any] = {
    "eviction_policy": "none",
    "cull_limit": 0,
    "disk_min_file_size": _ROW_MAX,
}
#: what diskcache's set-up makes in a database (the ``sqlite_master`` names), tag index off
_SCHEMA = frozenset(
    {
        "Settings",
        "sqlite_autoindex_Settings_1",
        "Cache",
        "Cache_key_raw",
        "Cache_expire_time",
        "Settings_count_insert",
        "Settings_count_delete",
        "Settings_size_insert",
        "Settings_size_update",
        "Settings_size_delete",
    }
)


def _open_existing(directory: Path) -> Any:
    """The ``diskcache.Cache`` of an index set up before, without diskcache's own set-up; or
    ``None`` when the database is not exactly what that set-up would leave (then the caller
    runs it).

    ``diskcache.Cache(...)`` rewrites every setting, one write transaction each, and then
    closes its connection and opens another. In a fresh process the first write makes
    SQLite start a new write-ahead log, with an fsync of it and of its folder, and the close
    checkpoints it, with two more fsyncs, and deletes it. A fully cached rerun writes
    nothing else to the index, yet paid those four fsyncs, each waiting behind whatever the
    disk still had to write (a 400 MB output just made: 50 ms to a second each, measured).
    When the settings and tables are already those the set-up writes, it would change
    nothing: this sets up the same object by reading them only (tested against diskcache's
    own set-up, attribute by attribute).
    """
    import diskcache

    cache = diskcache.Cache.__new__(diskcache.Cache)
    cache._directory = str(directory)
    cache._timeout = 60
    cache._local = threading.local()
    cache._txn_id = None
    try:
        # The connection applies the stored ``sqlite_*`` pragmas (as for every thread's).
        sql = cache._sql
        stored = dict(sql("SELECT key, value FROM Settings").fetchall())
        names = {row[0] for row in sql("SELECT name FROM sqlite_master").fetchall()}
        wanted = {**diskcache.DEFAULT_SETTINGS, **stored, **_SETTINGS}
        if names != _SCHEMA or any(stored.get(k, MISSING) != v for k, v in wanted.items()):
            cache.close()
            return None
        cache._disk = diskcache.Disk(
            str(directory), **{k[5:]: v for k, v in wanted.items() if k.startswith("disk_")}
        )
        for key, value in stored.items():
            setattr(cache, key, value)
        ((cache._page_size,),) = sql("PRAGMA page_size").fetchall()
    except Exception:  # diskcache's own set-up runs instead, and reports what is wrong
        cache.close()
        return None
    return cache


def _unreadable(directory: Path, exc: BaseException) -> StepflowError:
    if is_known_fault(exc):
        # A full disk, a read-only home or a lock: moving the index away would not help.
        return storage_error(exc, path=directory / "cache.db", what="the cache index")
    return StepflowError(
        f"the cache index in {directory} cannot be opened ({type(exc).__name__}: {exc}). "
        f"Stored results are kept in the objects folder beside it; move {directory} away "
        f"(or delete it) to start an empty index, and steps will run again."
    )


_open: dict[tuple[int, str], _Open] = {}
_open_lock = threading.Lock()
#: how many homes' indexes one process keeps open at most
_OPEN_MAX = 4


def _file_id(path: Path) -> int:
    try:
        return path.stat().st_ino
    except OSError:
        return -1


def _diskcache(directory: Path) -> _Open:
    """One ``diskcache.Cache`` per process and folder, kept between runs.

    A cache whose database file was replaced or deleted since (``rm -rf .stepflow``) is
    opened afresh, never used stale.
    """
    key = (os.getpid(), str(directory))
    with _open_lock:
        found = _open.get(key)
        if found is not None:
            if found.opening or found.file_id == _file_id(directory / "cache.db") != -1:
                _open[key] = _open.pop(key)
                return found
            del _open[key]
            found.close()
        make_private_dirs(directory)
        opened = _open[key] = _Open(directory)
        while len(_open) > _OPEN_MAX:
            _open.pop(next(iter(_open))).close()
        return opened


def _fetch_many(cache: Any, names: list[str]) -> list[tuple[str, Any]]:
    """``(name, value)`` of each of ``names`` that ``cache`` holds, as ``cache.get`` reads
    them (its quick path, for a cache without statistics or eviction), in a few queries.
    A value that cannot be read back is left out (``get`` of it says what is wrong)."""
    found: list[tuple[str, Any]] = []
    now = time.time()
    for start in range(0, len(names), 500):
        chunk = names[start : start + 500]
        marks = ", ".join("?" * len(chunk))  # the values are parameters
        query = f"SELECT key, mode, filename, value FROM Cache WHERE key IN ({marks})"  # noqa: S608
        query += " AND raw = 1 AND (expire_time IS NULL OR expire_time > ?)"
        rows = cache._sql(query, (*chunk, now)).fetchall()
        for name, mode, filename, value in rows:
            try:
                found.append((name, cache.disk.fetch(mode, filename, value, False)))
            except (OSError, *_DAMAGED):
                continue
    return found


class CacheIndex:
    """Cache key → ``CacheRecord``, plus the last record of each (pipeline, step)."""

    def __init__(self, directory: Path, store: Datastore | None = None) -> None:
        #: the datastore whose results this index records; a ``shared`` store also
        #: carries the records, so that other homes pointed at it can reuse them
        self.store = store
        self._shared = store is not None and store.shared
        self._open = _diskcache(directory)
        #: the index's database file, named in errors
        self.path = directory / "cache.db"
        #: records read by ``read_last`` for this handle's run, taken by ``get``
        self._read_ahead: dict[str, CacheRecord] = {}
        self._read_for: set[str] = set()
        self._read_lock = threading.Lock()

    @property
    def _cache(self) -> Any:
        return self._open.cache

    def get(self, key: str, *, quick: bool = False) -> CacheRecord | Any:
        """The record of ``key``, or ``MISSING``.

        ``quick``: while a brand-new index is still being created, answer ``MISSING`` at
        once (nothing can be in it yet). Only for a caller that takes the key's lease next
        and looks again, without ``quick``, if it had to wait for it.
        """
        record = self._read_ahead.pop(key, None)
        if record is not None:
            # Read moments ago, in this run (``read_last``), like a lookup of its own.
            self._open.remember(record)
            return record
        record = self._open.records.get(key)
        if record is not None:
            # An output kept inline has no object whose absence would make a record pruned
            # by another process a miss: its row is looked for instead (one indexed read).
            if not record.inline or _result(key) in self._cache:
                return record
            self._open.records.pop(key, None)
        if quick and self._open.opening and not self._open.existed and not self._shared:
            return MISSING
        try:
            data = self._cache.get(_result(key), default=MISSING)
            record = None if data is MISSING else CacheRecord.from_dict(data)
        except _DAMAGED:
            # A damaged row (it cannot be unpickled, or holds no record): a miss, and
            # dropped, so that the step's next result takes its place.
            self._drop_damaged(key)
            return MISSING
        if data is MISSING:
            return self._get_shared(key) if self._shared else MISSING
        if record is None:
            return MISSING
        self._open.remember(record)
        return record

    def read_last(self, pipeline: str) -> None:
        """Read the records of ``pipeline``'s latest results in one query, for ``get``.

        A rerun with nothing changed looks up exactly these keys, one ``get`` (one SQLite
        query) a step; reading them together saves those queries. Only what the index
        holds is read: a key not among them (a step whose inputs or code changed) and a
        row that cannot be read back (damaged) are left to ``get``, which looks them up
        itself (and drops a damaged row). Each is taken once, by the first ``get`` of its
        key; ``delete`` drops it. Once per pipeline and handle; nothing for a brand-new
        index still being made (it holds nothing) or a shared store's (its misses look in
        the store).
        """
        with self._read_lock:
            if pipeline in self._read_for:
                return
            self._read_for.add(pipeline)
            if self._shared or (self._open.opening and not self._open.existed):
                return
            cache = self._cache
            if cache.statistics or cache.eviction_policy != "none":
                return  # diskcache's lookups would also count or touch the rows
            try:
                keys = [k for k in self._last_keys(pipeline).values() if isinstance(k, str)]
                rows = _fetch_many(cache, [_result(k) for k in keys])
            except _DAMAGED:
                return  # an unreadable pointer: each step looks itself up
            except Exception as exc:
                if is_storage_fault(exc):
                    return  # a locked index, say: each step's own lookup says so
                raise
            for name, data in rows:
                try:
                    record = CacheRecord.from_dict(data)
                except _DAMAGED:
                    continue
                if record is not None and _result(record.key) == name:
                    self._read_ahead[record.key] = record

    def _drop_damaged(self, key: str) -> None:
        try:
            with writing(self.path, "the removal of a damaged cache-index entry"):
                self._cache.delete(_result(key))
        except StepflowError as exc:
            # Rewritten anyway when the step's new result is committed.
            warnings.warn(StepflowWarning(str(exc)), stacklevel=3)

    def _get_shared(self, key: str) -> CacheRecord | Any:
        """The store's record for ``key``, kept locally once found (results never change
        under a key, so the local copy cannot go stale; ``delete`` drops both)."""
        assert self.store is not None
        raw = self.store.get_doc(_doc(key))
        record = None if raw is None else _parse_doc(raw, key)
        if record is None:
            return MISSING
        try:
            self._cache.set(_result(key), record.to_dict())
        except Exception as exc:
            # Keeping a local copy only saves the next lookup a read of the store.
            if not is_storage_fault(exc):
                raise
        self._open.remember(record)
        return record

    def put(self, record: CacheRecord, *, last: bool = True) -> None:
        """Commit ``record``; with ``last=False`` the caller marks it as its step's latest
        result later, through ``touch_many`` (a run does so once, for all of its steps).

        :raises StorageError: the index cannot be written (a full disk, a read-only home,
            another process holding it locked); nothing is committed then.
        """
        with writing(self.path, f"the cache-index entry of step {record.step!r}"):
            self._cache.set(_result(record.key), record.to_dict())
        self._open.remember(record)
        if last:
            self.touch_many([(record.pipeline, record.step, record.key)])
        if self._shared:
            self._share(record)

    def put_many(self, records: list[CacheRecord]) -> None:
        """Commit several records in one transaction (the items of a fan-out step); none
        becomes anyone's latest result.

        :raises StorageError: the index cannot be written; none of them is committed then.
        """
        if not records:
            return
        with (
            writing(self.path, f"the cache-index entries of {len(records)} item(s)"),
            self._cache.transact(),
        ):
            for record in records:
                self._cache.set(_result(record.key), record.to_dict())
        for record in records:
            self._open.remember(record)
            if self._shared:
                self._share(record)

    def _share(self, record: CacheRecord) -> None:
        assert self.store is not None
        try:
            self.store.put_doc(_doc(record.key), record.to_doc())
        except StoreUnavailableError as exc:
            # The local commit stands (nothing computed is lost); only sharing failed.
            warnings.warn(
                StepflowWarning(
                    f"the result of step {record.step!r} is kept in this home but could "
                    f"not be shared through the store: {exc}"
                ),
                stacklevel=3,
            )

    def touch_many(self, entries: list[tuple[str, str, str]]) -> None:
        """Remember each ``(pipeline, step, key)`` as that step's latest result (also when it
        was reused), all in one transaction.

        :raises StorageError: the index cannot be written; the results themselves stay
            committed (only ``explain``'s notion of each step's latest result is stale).
        """
        latest: dict[str, dict[str, str]] = {}
        for pipeline, step, key in entries:
            latest.setdefault(pipeline, {})[step] = key
        if not latest:
            return
        what = f"the latest-result pointers of {len(entries)} step(s)"
        # One transaction: two runs of one pipeline finishing together both keep their steps.
        with writing(self.path, what), self._cache.transact():
            for pipeline, steps in latest.items():
                known = self._last_keys(pipeline)
                if any(known.get(step) != key for step, key in steps.items()):
                    self._cache.set(_last(pipeline), {**known, **steps})

    def _last_keys(self, pipeline: str) -> dict[str, str]:
        known = self._cache.get(_last(pipeline), default=None)
        return known if isinstance(known, dict) else {}

    def last(self, pipeline: str, step: str) -> CacheRecord | Any:
        key = self._last_keys(pipeline).get(step)
        return MISSING if key is None else self.get(key)

    def delete(self, key: str) -> None:
        self._open.records.pop(key, None)
        self._read_ahead.pop(key, None)
        with writing(self.path, "the removal of a cache-index entry"):
            self._cache.delete(_result(key))
        if self._shared:
            assert self.store is not None
            self.store.delete_doc(_doc(key))

    def records(self) -> Iterator[CacheRecord]:
        """The records in this home's index (not the shared ones: see ``shared_records``)."""
        for entry in list(self._cache.iterkeys()):
            if isinstance(entry, str) and entry.startswith("result:"):
                try:
                    data = self._cache.get(entry, default=MISSING)
                    record = None if data is MISSING else CacheRecord.from_dict(data)
                except _DAMAGED:
                    continue  # dropped when a run looks it up
                if record is not None:
                    yield record

    def shared_records(self) -> Iterator[CacheRecord]:
        """The records published to a ``shared`` store by every home using it (one read
        per record); nothing for a store that is not shared."""
        if not self._shared:
            return
        assert self.store is not None
        for path in self.store.list_docs(SHARED_PREFIX):
            raw = self.store.get_doc(path)
            record = None if raw is None else _parse_doc(raw)
            if record is not None and path == _doc(record.key):
                yield record

    def close(self) -> None:
        """Nothing to do: the underlying cache stays open for the process (see above)."""


class NullIndex:
    """An index that remembers nothing: every lookup misses (caching switched off)."""

    def get(self, key: str, *, quick: bool = False) -> Any:
        return MISSING

    def put(self, record: CacheRecord, *, last: bool = True) -> None:
        return None

    def put_many(self, records: list[CacheRecord]) -> None:
        return None

    def touch_many(self, entries: list[tuple[str, str, str]]) -> None:
        return None

    def read_last(self, pipeline: str) -> None:
        return None

    def last(self, pipeline: str, step: str) -> Any:
        return MISSING

    def delete(self, key: str) -> None:
        return None

    def records(self) -> Iterator[CacheRecord]:
        return iter(())

    def shared_records(self) -> Iterator[CacheRecord]:
        return iter(())

    def close(self) -> None:
        return None
