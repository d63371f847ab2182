"""Run records: every run and step, with logs, metrics and lineage, in SQLite.

One database per stepflow home (``<home>/runs.db``), in WAL mode so that concurrent runs write
while ``stepflow runs`` reads. The schema carries a version (``PRAGMA user_version``) and is
migrated forward in one transaction when a newer stepflow opens an older file; a file written
by a newer stepflow is refused with a clear message rather than misread.

Writes are grouped: a run's row is written when it starts, and step rows are written in
batches (a failed step at once, others at most a second after they finish, and the rest at the
end of the run), so a run pays for a few transactions, not one per step.
A run killed before it could say how it ended is marked ``interrupted`` the next time the
records are opened on the same host, once its process is gone.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from stepflow._slotted import Frozen, as_dict, set_field
from stepflow._storage.faults import is_storage_fault, storage_error, writing
from stepflow._storage.home import check_home, make_private_dirs, make_private_sqlite
from stepflow._storage.sqlitebusy import while_busy
from stepflow.errors import StorageError, UsageError

__all__ = [
    "SCHEMA_VERSION",
    "MetricRow",
    "RunRecords",
    "RunRow",
    "StepIO",
    "StepRow",
]


def host_name() -> str:
    """This machine's name, as ``socket.gethostname()`` gives it.

    Without importing :mod:`socket` (5-7 ms of a fully cached rerun, which opens no
    connection): on POSIX both are the kernel's node name, ``gethostname(2)`` reading what
    ``uname(2)`` reports. Elsewhere (no ``os.uname``) it asks :mod:`socket`.
    """
    uname = getattr(os, "uname", None)
    if uname is not None:
        return str(uname().nodename)
    import socket

    return socket.gethostname()


#: the schema this stepflow writes; ``_MIGRATIONS[n - 1]`` upgrades version ``n - 1`` to ``n``
SCHEMA_VERSION = 4

_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE runs (
        id TEXT PRIMARY KEY,
        pipeline TEXT NOT NULL,
        target TEXT,
        state TEXT NOT NULL,
        started REAL NOT NULL,
        finished REAL,
        params TEXT NOT NULL DEFAULT '{}',
        secret_params TEXT NOT NULL DEFAULT '[]',
        targets TEXT NOT NULL DEFAULT '[]',
        workers INTEGER NOT NULL DEFAULT 1,
        host TEXT,
        user TEXT,
        pid INTEGER,
        stepflow_version TEXT,
        python_version TEXT,
        git_commit TEXT,
        git_dirty INTEGER,
        source_hash TEXT,
        source_files TEXT,
        resumed_from TEXT,
        counts TEXT NOT NULL DEFAULT '{}',
        tags TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX runs_pipeline ON runs (pipeline, started);
    CREATE INDEX runs_started ON runs (started);
    CREATE TABLE steps (
        run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        state TEXT NOT NULL,
        started REAL,
        finished REAL,
        duration REAL NOT NULL DEFAULT 0,
        attempts INTEGER NOT NULL DEFAULT 0,
        backend TEXT,
        cache_key TEXT,
        reused_from TEXT,
        reason TEXT,
        error_type TEXT,
        error TEXT,
        traceback TEXT,
        params TEXT NOT NULL DEFAULT '{}',
        tags TEXT NOT NULL DEFAULT '{}',
        PRIMARY KEY (run_id, name)
    );
    CREATE TABLE step_io (
        run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
        step TEXT NOT NULL,
        direction TEXT NOT NULL,
        name TEXT NOT NULL,
        object TEXT,
        content_hash TEXT,
        size INTEGER
    );
    CREATE INDEX step_io_hash ON step_io (content_hash);
    CREATE INDEX step_io_object ON step_io (object);
    CREATE INDEX step_io_run ON step_io (run_id, step);
    CREATE TABLE metrics (
        run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
        step TEXT NOT NULL,
        name TEXT NOT NULL,
        value REAL,
        counter INTEGER,
        ts REAL
    );
    CREATE INDEX metrics_run ON metrics (run_id);
    CREATE TABLE logs (
        run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
        step TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        stream TEXT NOT NULL,
        text TEXT NOT NULL
    );
    CREATE INDEX logs_run ON logs (run_id, step);
    """,
    # 2: no indexes on step_io's content hashes and object names. Lineage looks them up by
    # prefix (LIKE), which these indexes never served, and their random keys made every run
    # write a page per row to the WAL (most of the cost of recording a cached rerun).
    """
    DROP INDEX IF EXISTS step_io_hash;
    DROP INDEX IF EXISTS step_io_object;
    """,
    # 3: a partial index of the runs still marked running. Every run start looks for
    # abandoned runs among them, and without it scanned every run ever recorded (2 ms in a
    # home with 20,000 runs, a fifth of a fully cached 100-step rerun's budget).
    """
    CREATE INDEX IF NOT EXISTS runs_running ON runs (host) WHERE state = 'running';
    """,
    # 4: each run's plan (its steps and the edges between them), written when it starts, so
    # a reader can draw the graph of a run still going (steps are recorded as they finish).
    # A table of its own: listings of many runs never read it.
    """
    CREATE TABLE IF NOT EXISTS run_plans (
        run_id TEXT PRIMARY KEY REFERENCES runs (id) ON DELETE CASCADE,
        steps TEXT NOT NULL,
        edges TEXT NOT NULL
    );
    """,
)

_DELETE_STEP_ROWS = tuple(
    f"DELETE FROM {table} WHERE run_id = ? AND step = ?"  # noqa: S608 - fixed table names
    for table in ("step_io", "metrics", "logs")
)

#: the columns of ``runs``, in schema order
_RUN_COLUMNS = (
    "id pipeline target state started finished params secret_params targets workers host user"
    " pid stepflow_version python_version git_commit git_dirty source_hash source_files"
    " resumed_from counts tags"
).split()

#: run states; ``running`` only until the run says how it ended
RUN_STATES = ("running", "succeeded", "failed", "interrupted")


class StepIO(Frozen):
    """An input, output or logged file of a step: which object, with which content."""

    __slots__ = ("direction", "name", "object", "content_hash", "size")

    #: ``"in"``, ``"out"`` or ``"file"`` (``log_artifact``)
    direction: str
    #: the parameter, output or file name
    name: str
    object: str | None
    content_hash: str | None
    size: int | None

    def __init__(
        self,
        direction: str,
        name: str,
        object: str | None,
        content_hash: str | None,
        size: int | None = None,
    ) -> None:
        init = set_field  # not object.__setattr__: a field is named ``object``
        init(self, "direction", direction)
        init(self, "name", name)
        init(self, "object", object)
        init(self, "content_hash", content_hash)
        init(self, "size", size)


class MetricRow(Frozen):
    __slots__ = ("name", "value", "counter", "ts")

    name: str
    value: float | None
    counter: int | None
    ts: float | None

    def __init__(
        self,
        name: str,
        value: float | None,
        counter: int | None = None,
        ts: float | None = None,
    ) -> None:
        init = object.__setattr__
        init(self, "name", name)
        init(self, "value", value)
        init(self, "counter", counter)
        init(self, "ts", ts)


class StepRow(Frozen):
    """One step of one run, as recorded."""

    __slots__ = (
        "name",
        "state",
        "started",
        "finished",
        "duration",
        "attempts",
        "backend",
        "cache_key",
        "reused_from",
        "reason",
        "error_type",
        "error",
        "traceback",
        "params",
        "tags",
        "io",
        "metrics",
        "logs",
    )

    name: str
    state: str
    started: float | None
    finished: float | None
    duration: float
    attempts: int
    backend: str | None
    cache_key: str | None
    #: for a reused step, the run that made the result
    reused_from: str | None
    reason: str | None
    error_type: str | None
    error: str | None
    traceback: str | None
    params: Mapping[str, str]
    tags: Mapping[str, str]
    io: Sequence[StepIO]
    metrics: Sequence[MetricRow]
    #: (attempt, stream, text)
    logs: Sequence[tuple[int, str, str]]

    def __init__(
        self,
        name: str,
        state: str,
        started: float | None = None,
        finished: float | None = None,
        duration: float = 0.0,
        attempts: int = 0,
        backend: str | None = None,
        cache_key: str | None = None,
        reused_from: str | None = None,
        reason: str | None = None,
        error_type: str | None = None,
        error: str | None = None,
        traceback: str | None = None,
        params: Mapping[str, str] | None = None,
        tags: Mapping[str, str] | None = None,
        io: Sequence[StepIO] = (),
        metrics: Sequence[MetricRow] = (),
        logs: Sequence[tuple[int, str, str]] = (),
    ) -> None:
        init = object.__setattr__
        init(self, "name", name)
        init(self, "state", state)
        init(self, "started", started)
        init(self, "finished", finished)
        init(self, "duration", duration)
        init(self, "attempts", attempts)
        init(self, "backend", backend)
        init(self, "cache_key", cache_key)
        init(self, "reused_from", reused_from)
        init(self, "reason", reason)
        init(self, "error_type", error_type)
        init(self, "error", error)
        init(self, "traceback", traceback)
        init(self, "params", {} if params is None else params)
        init(self, "tags", {} if tags is None else tags)
        init(self, "io", io)
        init(self, "metrics", metrics)
        init(self, "logs", logs)

    def to_dict(self) -> dict[str, Any]:
        """Every field, its rows as dicts (as ``attrs.asdict`` gave them)."""
        return as_dict(self)


class RunRow(Frozen):
    """One run, as recorded."""

    __slots__ = (
        "id",
        "pipeline",
        "state",
        "started",
        "target",
        "finished",
        "params",
        "secret_params",
        "targets",
        "workers",
        "host",
        "user",
        "pid",
        "stepflow_version",
        "python_version",
        "git_commit",
        "git_dirty",
        "source_hash",
        "source_files",
        "resumed_from",
        "counts",
        "tags",
    )

    id: str
    pipeline: str
    state: str
    started: float
    target: str | None
    finished: float | None
    #: parameter name → ``{"json": value}`` or ``{"text": str(value)}``; secrets are absent
    params: Mapping[str, Any]
    secret_params: Sequence[str]
    targets: Sequence[str]
    workers: int
    host: str | None
    user: str | None
    pid: int | None
    stepflow_version: str | None
    python_version: str | None
    git_commit: str | None
    git_dirty: bool | None
    source_hash: str | None
    #: the source manifest (path → content hash), for ``runs compare`` and ``--resume``
    source_files: Mapping[str, str] | None
    resumed_from: str | None
    counts: Mapping[str, int]
    tags: Mapping[str, str]

    def __init__(
        self,
        id: str,
        pipeline: str,
        state: str,
        started: float,
        target: str | None = None,
        finished: float | None = None,
        params: Mapping[str, Any] | None = None,
        secret_params: Sequence[str] = (),
        targets: Sequence[str] = (),
        workers: int = 1,
        host: str | None = None,
        user: str | None = None,
        pid: int | None = None,
        stepflow_version: str | None = None,
        python_version: str | None = None,
        git_commit: str | None = None,
        git_dirty: bool | None = None,
        source_hash: str | None = None,
        source_files: Mapping[str, str] | None = None,
        resumed_from: str | None = None,
        counts: Mapping[str, int] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        init = object.__setattr__
        init(self, "id", id)
        init(self, "pipeline", pipeline)
        init(self, "state", state)
        init(self, "started", started)
        init(self, "target", target)
        init(self, "finished", finished)
        init(self, "params", {} if params is None else params)
        init(self, "secret_params", secret_params)
        init(self, "targets", targets)
        init(self, "workers", workers)
        init(self, "host", host)
        init(self, "user", user)
        init(self, "pid", pid)
        init(self, "stepflow_version", stepflow_version)
        init(self, "python_version", python_version)
        init(self, "git_commit", git_commit)
        init(self, "git_dirty", git_dirty)
        init(self, "source_hash", source_hash)
        init(self, "source_files", source_files)
        init(self, "resumed_from", resumed_from)
        init(self, "counts", {} if counts is None else counts)
        init(self, "tags", {} if tags is None else tags)

    @property
    def duration(self) -> float | None:
        return None if self.finished is None else self.finished - self.started

    def display_params(self) -> dict[str, Any]:
        """Parameter values as shown to people (secrets as ``***``)."""
        shown = {k: v.get("json", v.get("text")) for k, v in self.params.items()}
        shown.update({k: "***" for k in self.secret_params})
        return shown

    def to_dict(self, *, with_files: bool = False) -> dict[str, Any]:
        data = as_dict(self)
        data["params"] = self.display_params()
        data["duration"] = self.duration
        if not with_files:
            data.pop("source_files")
        return data


def encode_params(params: Mapping[str, Any], secret: Iterable[str]) -> dict[str, Any]:
    """Parameters for the record: JSON where it round-trips, text otherwise, secrets dropped."""
    secret = set(secret)
    encoded: dict[str, Any] = {}
    for name, value in params.items():
        if name in secret:
            continue
        try:
            if json.loads(json.dumps(value)) == value:
                encoded[name] = {"json": value}
                continue
        except (TypeError, ValueError):
            pass
        encoded[name] = {"text": str(value)}
    return encoded


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _file_id(path: Path) -> int:
    try:
        return path.stat().st_ino
    except OSError:
        return -1


_shared: dict[tuple[int, str], RunRecords] = {}
_shared_lock = threading.Lock()
#: how many homes' databases one process keeps open at most
_SHARED_MAX = 4


def _run_filter(
    *,
    pipeline: str | None = None,
    state: str | None = None,
    since: float | None = None,
    tags: Mapping[str, str] | None = None,
) -> tuple[str, list[Any]]:
    """The ``WHERE`` clause (``""`` for none) and its arguments that pick the runs of a
    listing: of ``pipeline``, in ``state``, started at ``since`` or later, tagged ``tags``."""
    where: list[str] = []
    args: list[Any] = []
    if pipeline is not None:
        where.append("pipeline = ?")
        args.append(pipeline)
    if state is not None:
        where.append("state = ?")
        args.append(state)
    if since is not None:
        where.append("started >= ?")
        args.append(since)
    for key, value in (tags or {}).items():
        where.append("json_extract(tags, ?) = ?")
        args += ["$." + json.dumps(str(key)), value]
    return (" WHERE " + " AND ".join(where)) if where else "", args


class RunRecords:
    """The run-record database of one stepflow home."""

    @classmethod
    def shared(cls, path: Path) -> RunRecords:
        """One open database per process and path, kept open between runs.

        Closing the last connection to a WAL database checkpoints it with an fsync, which
        cost more than everything else a fully cached rerun does; a connection kept open lets
        SQLite checkpoint in the background of later commits instead.
        """
        key = (os.getpid(), str(path))
        with _shared_lock:
            found = _shared.get(key)
            if found is not None:
                if found._file_id == _file_id(path) != -1:
                    _shared[key] = _shared.pop(key)  # most recently used last
                    found._users += 1
                    return found
                # The file was deleted or replaced (rm -rf .stepflow): never write to a
                # database nobody can read any more.
                del _shared[key]
                found._retire()
            with writing(path, "the run records"):
                records = cls(path)
            records._is_shared = True
            records._file_id = _file_id(path)
            records._users = 1
            _shared[key] = records
            while len(_shared) > _SHARED_MAX:
                _shared.pop(next(iter(_shared)))._retire()
            return records

    @classmethod
    def read_only(cls, path: Path) -> RunRecords:
        """Open an existing database for reading only: nothing is created, migrated or
        locked for writing (a reader such as the web UI never holds up a run). A database
        of an older schema is opened for writing instead, to be migrated."""
        check_home(path.parent)  # a reader is refused an unsafe home as a writer is
        records = cls.__new__(cls)
        records.path = path
        records._lock = threading.Lock()
        uri = path.resolve().as_uri() + "?mode=ro"
        records._db = sqlite3.connect(
            uri, uri=True, timeout=30.0, isolation_level=None, check_same_thread=False
        )
        records._db.row_factory = sqlite3.Row
        records._db.execute("PRAGMA busy_timeout = 30000")
        if records.schema_version != SCHEMA_VERSION:
            records._really_close()
            return cls(path)
        return records

    def __init__(self, path: Path) -> None:
        check_home(path.parent)  # once per process: `stepflow runs` opens no store
        make_private_dirs(path.parent)
        self.path = path
        self._lock = threading.Lock()
        # Autocommit mode: transactions are explicit (BEGIN IMMEDIATE), so a writer takes the
        # lock up front instead of failing half-way on a busy database.
        self._db = sqlite3.connect(
            str(path), timeout=30.0, isolation_level=None, check_same_thread=False
        )
        # SQLite makes the file with the umask's mode, and its -wal and -shm files later
        # with the mode the file has then.
        make_private_sqlite(path)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA busy_timeout = 30000")
        while_busy(self._set_up)

    def _set_up(self) -> None:
        # A new file starts in rollback-journal mode, and its switch to WAL is a write of its
        # header: without syncs (4 fdatasyncs less for a new home). Only a power failure in
        # that moment could hurt, and then only a database that holds nothing yet; for an
        # existing file the switch is a no-op (the mode is kept in the file).
        self._db.execute("PRAGMA synchronous = OFF")
        self._db.execute("PRAGMA journal_mode = WAL")
        # WAL with synchronous=NORMAL stays consistent after a crash; the last commits may be
        # lost on power failure, which a record of a finished run can afford.
        self._db.execute("PRAGMA synchronous = NORMAL")
        self._db.execute("PRAGMA foreign_keys = ON")
        self._migrate()

    # --- schema -------------------------------------------------------------------------

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise UsageError(
                f"run records {self.path} were written by a newer stepflow (schema "
                f"{version}, this one knows {SCHEMA_VERSION}); upgrade stepflow to read them"
            )
        if version == SCHEMA_VERSION:
            return
        with self._transaction():
            # Re-read inside the lock: another process may have migrated meanwhile.
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            for target in range(version + 1, SCHEMA_VERSION + 1):
                for statement in _MIGRATIONS[target - 1].split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version = {target}")

    @property
    def schema_version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    class _Tx:
        def __init__(self, records: RunRecords) -> None:
            self.records = records

        def __enter__(self) -> sqlite3.Connection:
            records = self.records
            records._lock.acquire()
            try:
                records._db.execute("BEGIN IMMEDIATE")
            except BaseException as exc:
                # Released here: no __exit__ follows a failed __enter__, and a lock left held
                # would hang the next write (a locked or full database fails at BEGIN).
                records._lock.release()
                if is_storage_fault(exc):
                    raise storage_error(exc, path=records.path, what="the run records") from exc
                raise
            return records._db

        def __exit__(self, exc_type: object, exc: BaseException | None, _: object) -> None:
            records = self.records
            try:
                if exc_type is None:
                    try:
                        records._db.execute("COMMIT")
                    except BaseException as error:
                        # A COMMIT that failed (a full disk) leaves the transaction open,
                        # and every later BEGIN would fail on it.
                        if records._db.in_transaction:
                            records._db.execute("ROLLBACK")
                        exc = error
                else:
                    records._db.execute("ROLLBACK")
            finally:
                records._lock.release()
            if exc is None or isinstance(exc, StorageError):
                return
            if is_storage_fault(exc):
                raise storage_error(exc, path=records.path, what="the run records") from exc
            if exc_type is None:
                raise exc

    def _transaction(self) -> RunRecords._Tx:
        return RunRecords._Tx(self)

    _is_shared = False
    _file_id = -1
    #: holders of a shared handle that have not closed it yet
    _users = 0
    #: no longer handed out by ``shared``: really closed by its last ``close``
    _retired = False

    def close(self) -> None:
        """Close the database (a ``shared`` one stays open for the next run)."""
        if not self._is_shared:
            self._really_close()
            return
        with _shared_lock:
            self._users -= 1
            if self._users <= 0 and self._retired:
                self._really_close()

    def _retire(self) -> None:
        """Taken out of the shared handles (called under ``_shared_lock``): closed now if
        nobody uses it, else by its last user's ``close``. A run, or a run's snapshot
        thread, must never find its handle closed under it because other homes were opened."""
        self._retired = True
        if self._users <= 0:
            self._really_close()

    def _really_close(self) -> None:
        with self._lock:
            self._db.close()

    # --- writing ------------------------------------------------------------------------

    def start_run(self, run: RunRow, *, plan: Mapping[str, Any] | None = None) -> None:
        """Record a run as it starts; ``plan``: ``{"steps": [...], "edges": [[a, b], ...]}``,
        what it will run (see :meth:`plan`)."""
        with self._transaction() as db:
            db.execute(
                "INSERT INTO runs (id, pipeline, target, state, started, params, secret_params,"
                " targets, workers, host, user, pid, stepflow_version, python_version,"
                " resumed_from, tags) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    run.id,
                    run.pipeline,
                    run.target,
                    run.state,
                    run.started,
                    _json(dict(run.params)),
                    _json(list(run.secret_params)),
                    _json(list(run.targets)),
                    run.workers,
                    run.host or host_name(),
                    run.user,
                    run.pid if run.pid is not None else os.getpid(),
                    run.stepflow_version,
                    run.python_version,
                    run.resumed_from,
                    _json(dict(run.tags)),
                ),
            )
            if plan is not None:
                db.execute(
                    "INSERT OR REPLACE INTO run_plans VALUES (?,?,?)",
                    (run.id, json.dumps(list(plan["steps"])), json.dumps(list(plan["edges"]))),
                )

    def write_steps(self, run_id: str, steps: Sequence[StepRow], *, replace: bool = False) -> None:
        """Record finished steps in one transaction.

        :param replace: the steps may have been written before; drop their old rows first.
            The run loop writes each step once, so it saves those deletes.
        """
        if not steps:
            return
        with self._transaction() as db:
            _insert_steps(db, run_id, steps, replace=replace)

    def finish_run(
        self,
        run_id: str,
        *,
        state: str,
        counts: Mapping[str, int],
        tags: Mapping[str, str] | None = None,
        source: Mapping[str, Any] | None = None,
        finished: float | None = None,
        steps: Sequence[StepRow] = (),
    ) -> None:
        """Say how the run ended; ``steps``: its last finished steps, written in the same
        transaction (one commit less for the run loop's last batch)."""
        if state not in RUN_STATES:
            raise ValueError(f"unknown run state {state!r}")
        source = dict(source or {})
        with self._transaction() as db:
            if steps:
                _insert_steps(db, run_id, steps, replace=False)
            db.execute(
                "UPDATE runs SET state = ?, finished = ?, counts = ?, tags = ?,"
                " git_commit = coalesce(?, git_commit), git_dirty = coalesce(?, git_dirty),"
                " source_hash = coalesce(?, source_hash),"
                " source_files = coalesce(?, source_files) WHERE id = ?",
                (
                    state,
                    time.time() if finished is None else finished,
                    _json(dict(counts)),
                    _json(dict(tags or {})),
                    source.get("git_commit"),
                    None if source.get("git_dirty") is None else int(source["git_dirty"]),
                    source.get("content_hash"),
                    None if source.get("files") is None else _json(source["files"]),
                    run_id,
                ),
            )

    def set_source(self, run_id: str, source: Mapping[str, Any]) -> None:
        """Record the run's source snapshot (``SourceSnapshot.to_dict()``)."""
        with self._transaction() as db:
            db.execute(
                "UPDATE runs SET git_commit = ?, git_dirty = ?, source_hash = ?,"
                " source_files = ? WHERE id = ?",
                (
                    source.get("git_commit"),
                    None if source.get("git_dirty") is None else int(source["git_dirty"]),
                    source.get("content_hash"),
                    None if source.get("files") is None else _json(source["files"]),
                    run_id,
                ),
            )

    def mark_abandoned(self) -> list[str]:
        """Mark runs of this host whose process died without finishing as ``interrupted``."""
        host = host_name()
        rows = self._db.execute(
            "SELECT id, pid FROM runs WHERE state = 'running' AND host = ?", (host,)
        ).fetchall()
        dead = [r["id"] for r in rows if r["pid"] is None or not _alive(int(r["pid"]))]
        if dead:
            with self._transaction() as db:
                db.executemany(
                    "UPDATE runs SET state = 'interrupted' WHERE id = ? AND state = 'running'",
                    [(run_id,) for run_id in dead],
                )
        return dead

    def delete_runs(self, run_ids: Iterable[str]) -> int:
        ids = list(run_ids)
        with self._transaction() as db:
            db.executemany("DELETE FROM runs WHERE id = ?", [(i,) for i in ids])
        return len(ids)

    # --- reading ------------------------------------------------------------------------

    def _run_from(self, row: sqlite3.Row) -> RunRow:
        files = row["source_files"]
        return RunRow(
            id=row["id"],
            pipeline=row["pipeline"],
            state=row["state"],
            started=row["started"],
            target=row["target"],
            finished=row["finished"],
            params=json.loads(row["params"]),
            secret_params=tuple(json.loads(row["secret_params"])),
            targets=tuple(json.loads(row["targets"])),
            workers=row["workers"],
            host=row["host"],
            user=row["user"],
            pid=row["pid"],
            stepflow_version=row["stepflow_version"],
            python_version=row["python_version"],
            git_commit=row["git_commit"],
            git_dirty=None if row["git_dirty"] is None else bool(row["git_dirty"]),
            source_hash=row["source_hash"],
            source_files=None if files is None else json.loads(files),
            resumed_from=row["resumed_from"],
            counts=json.loads(row["counts"]),
            tags=json.loads(row["tags"]),
        )

    def runs(
        self,
        *,
        pipeline: str | None = None,
        state: str | None = None,
        since: float | None = None,
        limit: int | None = None,
    ) -> list[RunRow]:
        """Runs, newest first."""
        clause, args = _run_filter(pipeline=pipeline, state=state, since=since)
        sql = f"SELECT * FROM runs{clause} ORDER BY started DESC, id DESC"  # noqa: S608
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [self._run_from(r) for r in self._db.execute(sql, args)]

    def run_page(
        self,
        *,
        pipeline: str | None = None,
        state: str | None = None,
        tags: Mapping[str, str] | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[RunRow], int]:
        """One page of runs, newest first, and how many match in all; without their source
        manifests (``source_files`` is ``None``), which a listing never shows.

        :param tags: tag → value every run listed has (``{"schedule": "nightly"}``).
        """
        clause, args = _run_filter(pipeline=pipeline, state=state, tags=tags)
        columns = ", ".join(
            "NULL AS source_files" if c == "source_files" else c for c in _RUN_COLUMNS
        )
        rows = self._db.execute(
            f"SELECT {columns} FROM runs{clause} ORDER BY started DESC, id DESC"  # noqa: S608
            f" LIMIT {int(limit)} OFFSET {int(offset)}",
            args,
        ).fetchall()
        total = self._db.execute(f"SELECT count(*) FROM runs{clause}", args).fetchone()[0]  # noqa: S608
        return [self._run_from(r) for r in rows], int(total)

    def pipelines(self) -> list[str]:
        """The names of the pipelines that have runs recorded."""
        return [r[0] for r in self._db.execute("SELECT DISTINCT pipeline FROM runs ORDER BY 1")]

    def tag_values(self, tag: str) -> list[str]:
        """The values runs were tagged with under ``tag`` (``schedule``: every schedule)."""
        return [
            r[0]
            for r in self._db.execute(
                "SELECT DISTINCT json_extract(tags, ?) AS v FROM runs WHERE v IS NOT NULL"
                " ORDER BY 1",
                ("$." + json.dumps(tag),),
            )
        ]

    def changes(self, run_id: str | None = None) -> tuple[Any, ...]:
        """A token that changes whenever a run (``run_id``, or any) starts, finishes or
        records a step; cheap enough to poll every second."""
        if run_id is None:
            row = self._db.execute(
                "SELECT count(*), max(started), max(finished),"
                " (SELECT count(*) FROM runs WHERE state = 'running') FROM runs"
            ).fetchone()
        else:
            row = self._db.execute(
                "SELECT state, finished, source_hash IS NULL,"
                " (SELECT count(*) FROM steps WHERE run_id = ?) FROM runs WHERE id = ?",
                (run_id, run_id),
            ).fetchone()
        return tuple(row) if row is not None else ()

    def plan(self, run_id: str) -> dict[str, list[Any]] | None:
        """The run's plan as it started: ``{"steps": [...], "edges": [[producer, consumer],
        ...]}``; ``None`` for a run recorded before plans were (schema 3 and older)."""
        try:
            row = self._db.execute(
                "SELECT steps, edges FROM run_plans WHERE run_id = ?", (run_id,)
            ).fetchone()
        except sqlite3.OperationalError:  # an older schema opened read-only: no plans
            return None
        if row is None:
            return None
        return {"steps": json.loads(row["steps"]), "edges": json.loads(row["edges"])}

    def metric_history(
        self, pipeline: str, step: str, name: str, *, limit: int = 50
    ) -> list[tuple[str, float, float | None]]:
        """``(run id, run start, last value)`` of metric ``name`` of ``step`` in the last
        ``limit`` runs of ``pipeline`` that logged it, oldest first."""
        rows = self._db.execute(
            "SELECT m.run_id, r.started, m.value FROM metrics m JOIN runs r ON r.id = m.run_id"
            " WHERE r.pipeline = ? AND m.step = ? AND m.name = ?"
            " AND m.rowid = (SELECT max(rowid) FROM metrics WHERE run_id = m.run_id"
            " AND step = m.step AND name = m.name)"
            " ORDER BY r.started DESC LIMIT ?",
            (pipeline, step, name, int(limit)),
        ).fetchall()
        return [(r[0], r[1], r[2]) for r in reversed(rows)]

    def run(self, ref: str) -> RunRow:
        """A run by id, unique id prefix, ``last``, ``last~N`` (N runs before it) or
        ``last-failed``.

        :raises UsageError: no such run, or the prefix is ambiguous.
        """
        back = re.fullmatch(r"last~(\d+)", ref)
        if ref in ("last", "latest"):
            found = self.runs(limit=1)
        elif back:
            found = self.runs(limit=int(back.group(1)) + 1)[int(back.group(1)) :]
        elif ref == "last-failed":
            found = self.runs(state="failed", limit=1)
        else:
            found = [
                self._run_from(r)
                for r in self._db.execute(
                    "SELECT * FROM runs WHERE id = ? OR id LIKE ? ESCAPE '\\' ORDER BY started"
                    " DESC LIMIT 11",
                    (ref, ref.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"),
                )
            ]
            exact = [r for r in found if r.id == ref]
            found = exact or found
        if not found:
            raise UsageError(
                f"no run {ref!r} in {self.path}; see `stepflow runs list` for the runs recorded"
            )
        if len(found) > 1:
            ids = ", ".join(r.id for r in found[:10])
            raise UsageError(f"run id {ref!r} is ambiguous ({ids}); give more of it")
        return found[0]

    def step_summaries(self, run_id: str) -> list[dict[str, Any]]:
        """The run's recorded steps in run order (as :meth:`steps`), each as a dict of its
        name, state, times, attempts, backend, cache key and ``reused_from``: without inputs,
        outputs, metrics or logs, so a run of thousands of steps is drawn at once."""
        rows = self._db.execute(
            "SELECT name, state, started, finished, duration, attempts, backend, cache_key,"
            " reused_from FROM steps WHERE run_id = ? ORDER BY started IS NULL, started, rowid",
            (run_id,),
        )
        return [dict(r) for r in rows]

    def step(self, run_id: str, name: str) -> StepRow | None:
        """One recorded step of the run, with its inputs, outputs and metrics; ``None`` when
        it has not been recorded (yet)."""
        found = self._step_rows(run_id, name)
        return found[0] if found else None

    def steps(self, run_id: str) -> list[StepRow]:
        """The run's steps in run order: as they started (a reused step when it was reused),
        then the steps that never started (skipped) in the order they were recorded."""
        return self._step_rows(run_id)

    def _step_rows(self, run_id: str, name: str | None = None) -> list[StepRow]:
        # A skipped step has neither time; NULL sorts first in SQLite, which listed skipped
        # steps before everything that ran.
        only = "" if name is None else " AND name = ?"
        also = "" if name is None else " AND step = ?"
        args = (run_id,) if name is None else (run_id, name)
        rows = self._db.execute(
            f"SELECT * FROM steps WHERE run_id = ?{only}"  # noqa: S608 - fixed text
            " ORDER BY started IS NULL, started, rowid",
            args,
        ).fetchall()
        io: dict[str, list[StepIO]] = {}
        for r in self._db.execute(
            f"SELECT * FROM step_io WHERE run_id = ?{also} ORDER BY rowid",  # noqa: S608
            args,
        ):
            io.setdefault(r["step"], []).append(
                StepIO(r["direction"], r["name"], r["object"], r["content_hash"], r["size"])
            )
        metrics: dict[str, list[MetricRow]] = {}
        for r in self._db.execute(
            f"SELECT * FROM metrics WHERE run_id = ?{also} ORDER BY rowid",  # noqa: S608
            args,
        ):
            metrics.setdefault(r["step"], []).append(
                MetricRow(r["name"], r["value"], r["counter"], r["ts"])
            )
        return [
            StepRow(
                name=r["name"],
                state=r["state"],
                started=r["started"],
                finished=r["finished"],
                duration=r["duration"],
                attempts=r["attempts"],
                backend=r["backend"],
                cache_key=r["cache_key"],
                reused_from=r["reused_from"],
                reason=r["reason"],
                error_type=r["error_type"],
                error=r["error"],
                traceback=r["traceback"],
                params=json.loads(r["params"]),
                tags=json.loads(r["tags"]),
                io=tuple(io.get(r["name"], ())),
                metrics=tuple(metrics.get(r["name"], ())),
            )
            for r in rows
        ]

    def last_outputs(
        self, pipeline: str, step: str, cache_key: str
    ) -> tuple[str, dict[str, str]] | None:
        """The run in which ``step`` of ``pipeline`` last ran and succeeded with this cache
        key (the same code, inputs, parameters and environment), and the content hash of each
        of its outputs then; ``None`` when it never did (or its outputs were not recorded)."""
        row = self._db.execute(
            "SELECT steps.run_id FROM runs JOIN steps ON steps.run_id = runs.id"
            " WHERE runs.pipeline = ? AND steps.name = ? AND steps.state = 'ran'"
            " AND steps.cache_key = ? ORDER BY runs.started DESC LIMIT 1",
            (pipeline, step, cache_key),
        ).fetchone()
        if row is None:
            return None
        outputs = {
            r["name"]: r["content_hash"]
            for r in self._db.execute(
                "SELECT name, content_hash FROM step_io"
                " WHERE run_id = ? AND step = ? AND direction = 'out'",
                (row["run_id"], step),
            )
            if r["content_hash"]
        }
        return (row["run_id"], outputs) if outputs else None

    def metrics(self, run_id: str) -> dict[str, list[MetricRow]]:
        """Step name → metrics in the order they were logged."""
        found: dict[str, list[MetricRow]] = {}
        for r in self._db.execute(
            "SELECT * FROM metrics WHERE run_id = ? ORDER BY rowid", (run_id,)
        ):
            found.setdefault(r["step"], []).append(
                MetricRow(r["name"], r["value"], r["counter"], r["ts"])
            )
        return found

    def logs(self, run_id: str, step: str | None = None) -> list[tuple[str, int, str, str]]:
        """``(step, attempt, stream, text)`` in the order they were recorded."""
        sql = "SELECT step, attempt, stream, text FROM logs WHERE run_id = ?"
        args: list[Any] = [run_id]
        if step is not None:
            sql += " AND step = ?"
            args.append(step)
        sql += " ORDER BY rowid"
        return [tuple(r) for r in self._db.execute(sql, args)]  # type: ignore[misc]

    def producers(self, content: str) -> Iterator[tuple[str, str, StepIO]]:
        """``(run id, step, output)`` rows whose output object or content hash starts with
        ``content``, earliest first."""
        pattern = content.replace("%", "").replace("_", "") + "%"
        for r in self._db.execute(
            "SELECT io.*, runs.started FROM step_io io JOIN runs ON runs.id = io.run_id"
            " WHERE io.direction = 'out' AND (io.object LIKE ? OR io.content_hash LIKE ?)"
            " ORDER BY runs.started",
            (pattern, pattern),
        ):
            yield (
                r["run_id"],
                r["step"],
                StepIO(r["direction"], r["name"], r["object"], r["content_hash"], r["size"]),
            )


def _insert_steps(
    db: sqlite3.Connection, run_id: str, steps: Sequence[StepRow], *, replace: bool
) -> None:
    step_rows = []
    io_rows = []
    metric_rows = []
    log_rows = []
    for step in steps:
        step_rows.append(
            (
                run_id,
                step.name,
                step.state,
                step.started,
                step.finished,
                step.duration,
                step.attempts,
                step.backend,
                step.cache_key,
                step.reused_from,
                step.reason,
                step.error_type,
                step.error,
                step.traceback,
                _json(dict(step.params)) if step.params else "{}",
                _json(dict(step.tags)) if step.tags else "{}",
            )
        )
        io_rows += [
            (run_id, step.name, io.direction, io.name, io.object, io.content_hash, io.size)
            for io in step.io
        ]
        metric_rows += [(run_id, step.name, m.name, m.value, m.counter, m.ts) for m in step.metrics]
        log_rows += [(run_id, step.name, a, s, t) for a, s, t in step.logs if t]
    if replace:
        for delete in _DELETE_STEP_ROWS:
            db.executemany(delete, [(run_id, step.name) for step in steps])
    db.executemany(
        "INSERT OR REPLACE INTO steps (run_id, name, state, started, finished,"
        " duration, attempts, backend, cache_key, reused_from, reason, error_type,"
        " error, traceback, params, tags) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        step_rows,
    )
    if io_rows:
        db.executemany("INSERT INTO step_io VALUES (?,?,?,?,?,?,?)", io_rows)
    if metric_rows:
        db.executemany("INSERT INTO metrics VALUES (?,?,?,?,?,?)", metric_rows)
    if log_rows:
        db.executemany("INSERT INTO logs VALUES (?,?,?,?,?)", log_rows)
