"""Published pipelines, schedules and their ticks, in the home's SQLite (``<home>/schedules.db``).

Three tables:

``published``
    One row per version of a published pipeline: ``(name, version)`` and the hash of its
    content, unique per name, so publishing identical content again finds the existing version.
``schedules``
    One row per schedule: its rule (a recurrence or a cron expression, as JSON), parameters,
    policies, data trigger, whether it is paused, and its *cursor*: the instant up to which
    its fire times have been considered.
``ticks``
    One row per tick: ``(schedule id, tick key)`` is the primary key, so a tick is claimed by
    inserting its row, once, whoever tries (two daemons, a restart, an exported timer). The
    key of a timed tick is its fire time in UTC (``2026-03-29T01:00:00Z``); a data trigger's is
    what it saw (``dataset:scored_houses@v3``, ``change:<digest>``).

A tick's state moves ``queued`` → ``claimed`` → ``running`` → ``succeeded``/``failed``
(or ``skipped``, when an overlapping run made it skip). Its owner is the process that claimed or
runs it (``host:pid:token``). A ``claimed`` or ``running`` tick whose owner died (its pid is
gone, on this host), or that its owner released when it stopped, is *resumed*: the same row
gets a new owner and one more attempt. It is never inserted twice.

Every write is one ``BEGIN IMMEDIATE`` transaction, so concurrent processes serialize on the
database lock instead of interleaving a read and a write.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs

from stepflow._storage.faults import is_storage_fault, storage_error
from stepflow._storage.home import check_home, make_private_dirs, make_private_sqlite
from stepflow._storage.sqlitebusy import while_busy
from stepflow.errors import UsageError

__all__ = [
    "DB_NAME",
    "PublishedRow",
    "ScheduleDB",
    "ScheduleRow",
    "TickRow",
    "owner_alive",
]

DB_NAME = "schedules.db"
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS published (
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    content_hash TEXT NOT NULL,
    created REAL NOT NULL,
    description TEXT,
    spec TEXT NOT NULL,
    PRIMARY KEY (name, version),
    UNIQUE (name, content_hash)
);
CREATE TABLE IF NOT EXISTS schedules (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    pipeline TEXT NOT NULL,
    version INTEGER,
    rule TEXT,
    trigger TEXT,
    params TEXT NOT NULL DEFAULT '{}',
    catchup TEXT NOT NULL,
    max_catchup INTEGER NOT NULL,
    overlap TEXT NOT NULL,
    paused INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    cursor REAL NOT NULL,
    last_seen TEXT,
    last_poll REAL,
    description TEXT
);
CREATE TABLE IF NOT EXISTS ticks (
    schedule_id TEXT NOT NULL,
    tick TEXT NOT NULL,
    fire_time REAL NOT NULL,
    state TEXT NOT NULL,
    owner TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    claimed REAL NOT NULL,
    started REAL,
    finished REAL,
    run_id TEXT,
    detail TEXT,
    PRIMARY KEY (schedule_id, tick)
);
CREATE INDEX IF NOT EXISTS ticks_state ON ticks (state);
"""

#: tick states that hold the tick for an owner
ACTIVE = ("claimed", "running")


@attrs.frozen
class PublishedRow:
    name: str
    version: int
    content_hash: str
    created: float
    description: str | None
    spec: Mapping[str, Any]


@attrs.frozen
class ScheduleRow:
    id: str
    name: str
    pipeline: str
    #: ``None``: the latest version at each run
    version: int | None
    rule: Mapping[str, Any] | None
    trigger: Mapping[str, Any] | None
    params: Mapping[str, str]
    catchup: str
    max_catchup: int
    overlap: str
    paused: bool
    created: float
    cursor: float
    last_seen: str | None
    last_poll: float | None
    description: str | None

    @property
    def pipeline_ref(self) -> str:
        return self.pipeline if self.version is None else f"{self.pipeline}@{self.version}"


@attrs.frozen
class TickRow:
    schedule_id: str
    tick: str
    fire_time: float
    state: str
    owner: str | None
    attempts: int
    claimed: float
    started: float | None
    finished: float | None
    run_id: str | None
    detail: str | None


def new_owner(token: str) -> str:
    """The owner string of this process: ``host:pid:token``."""
    return f"{socket.gethostname()}:{os.getpid()}:{token}"


def owner_alive(owner: str | None) -> bool:
    """Whether the process an owner string names still runs.

    Only a process on this host can be checked; one on another host (a home on a shared
    disk) is taken to be alive: its claims are never taken over from here.
    """
    if not owner:
        return False
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname():
        return True
    try:
        pid = int(pid_text)
        os.kill(pid, 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    """A child that exited but was not waited for still answers ``kill(pid, 0)``."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return False


class ScheduleDB:
    """The schedule database of one stepflow home.

    ``read_only=True`` opens it for a reader that only shows (``stepflow ui``): nothing is
    created, migrated or written, and no file of the home is touched. A home without the
    database reads as empty. A database no writer has open (no ``-wal`` file beside it) is
    read whole into memory, so that SQLite makes no ``-wal``/``-shm`` file for the reader;
    one a writer has open is read through an SQLite ``mode=ro`` connection. A write through
    a read-only handle raises ``UsageError``.
    """

    def __init__(self, home: Path, *, read_only: bool = False) -> None:
        home = Path(home)
        check_home(home)
        self.path = home / DB_NAME
        self.read_only = read_only
        if read_only:
            self._db = self._open_read_only()
            return
        make_private_dirs(home)
        try:
            self._db = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None)
            make_private_sqlite(self.path)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA busy_timeout = 30000")
            while_busy(self._set_up)
        except sqlite3.Error as exc:
            if is_storage_fault(exc):
                raise storage_error(exc, path=self.path, what="the schedules") from exc
            raise

    def _set_up(self) -> None:
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = NORMAL")
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise UsageError(
                f"{self.path} was written by a newer stepflow (schema {version}, this one "
                f"knows {SCHEMA_VERSION}); upgrade stepflow to read it"
            )
        if version < SCHEMA_VERSION:
            with self.transaction() as db:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _open_read_only(self) -> sqlite3.Connection:
        try:
            db = _read_only_connection(self.path)
            version = db.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.Error as exc:
            if is_storage_fault(exc):
                raise storage_error(exc, path=self.path, what="the schedules") from exc
            raise
        if version > SCHEMA_VERSION:
            db.close()
            raise UsageError(
                f"{self.path} was written by a newer stepflow (schema {version}, this one "
                f"knows {SCHEMA_VERSION}); upgrade stepflow to read it"
            )
        if version < SCHEMA_VERSION:
            # Never written (or older): read as empty, in memory, without touching the file.
            db.close()
            db = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
            db.executescript(_SCHEMA)
        db.row_factory = sqlite3.Row
        return db

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> ScheduleDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, the database lock taken up front."""
        if self.read_only:
            raise UsageError(
                f"{self.path} is open read-only here (a reader such as `stepflow ui`); "
                f"change schedules with `stepflow publish` / `stepflow schedule`"
            )
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            if is_storage_fault(exc):
                raise storage_error(exc, path=self.path, what="the schedules") from exc
            raise
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        try:
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            if is_storage_fault(exc):
                raise storage_error(exc, path=self.path, what="the schedules") from exc
            raise

    # --- published pipelines --------------------------------------------------------------

    def publish(
        self, name: str, content_hash: str, spec: Mapping[str, Any], description: str | None
    ) -> tuple[PublishedRow, bool]:
        """The version holding ``content_hash``, made now unless one exists; ``(row, new)``."""
        with self.transaction() as db:
            found = db.execute(
                "SELECT * FROM published WHERE name = ? AND content_hash = ?",
                (name, content_hash),
            ).fetchone()
            if found is not None:
                return _published(found), False
            latest = db.execute(
                "SELECT max(version) FROM published WHERE name = ?", (name,)
            ).fetchone()[0]
            version = (latest or 0) + 1
            db.execute(
                "INSERT INTO published (name, version, content_hash, created, description, spec)"
                " VALUES (?,?,?,?,?,?)",
                (name, version, content_hash, time.time(), description, _json(spec)),
            )
        return self.published(name, version), True

    def published(self, name: str, version: int | None = None) -> PublishedRow:
        """One version (the latest when ``version`` is ``None``).

        :raises UsageError: no such name or version; the message lists what exists.
        """
        if version is None:
            row = self._db.execute(
                "SELECT * FROM published WHERE name = ? ORDER BY version DESC LIMIT 1", (name,)
            ).fetchone()
        else:
            row = self._db.execute(
                "SELECT * FROM published WHERE name = ? AND version = ?", (name, version)
            ).fetchone()
        if row is not None:
            return _published(row)
        versions = [r.version for r in self.published_versions(name)]
        if versions:
            raise UsageError(
                f"published pipeline {name!r} has no version {version}; versions: "
                f"{', '.join(map(str, versions))}"
            )
        names = sorted({r.name for r in self.published_list()})
        known = ", ".join(names) if names else "none"
        raise UsageError(
            f"no pipeline named {name!r} is published; published pipelines: {known}. Publish "
            f"one with `stepflow publish TARGET --name {name}`"
        )

    def published_versions(self, name: str) -> list[PublishedRow]:
        rows = self._db.execute(
            "SELECT * FROM published WHERE name = ? ORDER BY version", (name,)
        ).fetchall()
        return [_published(r) for r in rows]

    def published_list(self) -> list[PublishedRow]:
        """The latest version of each published pipeline, by name."""
        rows = self._db.execute(
            "SELECT * FROM published p WHERE version = "
            "(SELECT max(version) FROM published q WHERE q.name = p.name) ORDER BY name"
        ).fetchall()
        return [_published(r) for r in rows]

    # --- schedules ------------------------------------------------------------------------

    def add_schedule(self, row: ScheduleRow) -> None:
        """:raises UsageError: a schedule of that name exists."""
        with self.transaction() as db:
            if db.execute("SELECT 1 FROM schedules WHERE name = ?", (row.name,)).fetchone():
                raise UsageError(
                    f"a schedule named {row.name!r} exists already; pick another name, or "
                    f"`stepflow schedule delete {row.name}` first"
                )
            db.execute(
                "INSERT INTO schedules (id, name, pipeline, version, rule, trigger, params,"
                " catchup, max_catchup, overlap, paused, created, cursor, last_seen, last_poll,"
                " description) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    row.id,
                    row.name,
                    row.pipeline,
                    row.version,
                    None if row.rule is None else _json(row.rule),
                    None if row.trigger is None else _json(row.trigger),
                    _json(dict(row.params)),
                    row.catchup,
                    row.max_catchup,
                    row.overlap,
                    int(row.paused),
                    row.created,
                    row.cursor,
                    row.last_seen,
                    row.last_poll,
                    row.description,
                ),
            )

    def schedule(self, name: str) -> ScheduleRow:
        """:raises UsageError: no such schedule; the message lists the schedules."""
        row = self._db.execute("SELECT * FROM schedules WHERE name = ?", (name,)).fetchone()
        if row is None:
            names = [s.name for s in self.schedules()]
            known = ", ".join(names) if names else "none"
            raise UsageError(
                f"no schedule named {name!r}; schedules: {known} (`stepflow schedule list`)"
            )
        return _schedule(row)

    def schedules(self) -> list[ScheduleRow]:
        rows = self._db.execute("SELECT * FROM schedules ORDER BY name").fetchall()
        return [_schedule(r) for r in rows]

    def set_paused(self, name: str, paused: bool, *, cursor: float | None = None) -> ScheduleRow:
        """Pause or resume; resuming may move the cursor (fire times while paused are not
        run)."""
        self.schedule(name)
        with self.transaction() as db:
            db.execute(
                "UPDATE schedules SET paused = ?, cursor = max(cursor, coalesce(?, cursor))"
                " WHERE name = ?",
                (int(paused), cursor, name),
            )
        return self.schedule(name)

    def delete_schedule(self, name: str) -> ScheduleRow:
        """Remove a schedule; its ticks stay (they name its id), as history."""
        row = self.schedule(name)
        with self.transaction() as db:
            db.execute("DELETE FROM schedules WHERE id = ?", (row.id,))
        return row

    # --- ticks ----------------------------------------------------------------------------

    def claim(
        self,
        schedule_id: str,
        ticks: Sequence[tuple[str, float, str]],
        *,
        owner: str,
        cursor: float | None = None,
        last_seen: str | None = None,
        last_poll: float | None = None,
        expect_seen: tuple[str | None] | None = None,
    ) -> list[TickRow]:
        """Insert tick rows ``(key, fire time, state)`` in one transaction; returns the rows
        this call inserted (a tick someone else holds is left alone). ``cursor``,
        ``last_seen``, ``last_poll`` move the schedule's bookkeeping in the same transaction,
        so a crash never leaves a tick claimed without its cursor moved, or the reverse.
        ``expect_seen``: ``(value,)`` when the claim holds only if the schedule's
        ``last_seen`` is still ``value`` (a data trigger: another daemon may have seen the
        change first)."""
        now = time.time()
        made = []
        with self.transaction() as db:
            if expect_seen is not None:
                current = db.execute(
                    "SELECT last_seen FROM schedules WHERE id = ?", (schedule_id,)
                ).fetchone()
                if current is None or current[0] != expect_seen[0]:
                    return []
            for key, fire, state in ticks:
                cur = db.execute(
                    "INSERT OR IGNORE INTO ticks (schedule_id, tick, fire_time, state, owner,"
                    " attempts, claimed) VALUES (?,?,?,?,?,?,?)",
                    (schedule_id, key, fire, state, owner, 0, now),
                )
                if cur.rowcount == 1:
                    made.append(key)
            if cursor is not None:
                db.execute(
                    "UPDATE schedules SET cursor = max(cursor, ?) WHERE id = ?",
                    (cursor, schedule_id),
                )
            if last_seen is not None or last_poll is not None:
                db.execute(
                    "UPDATE schedules SET last_seen = coalesce(?, last_seen),"
                    " last_poll = coalesce(?, last_poll) WHERE id = ?",
                    (last_seen, last_poll, schedule_id),
                )
        return [self.tick(schedule_id, key) for key in made]

    def tick(self, schedule_id: str, key: str) -> TickRow:
        row = self._db.execute(
            "SELECT * FROM ticks WHERE schedule_id = ? AND tick = ?", (schedule_id, key)
        ).fetchone()
        if row is None:
            raise KeyError((schedule_id, key))
        return _tick(row)

    def find_tick(self, schedule_id: str, key: str) -> TickRow | None:
        try:
            return self.tick(schedule_id, key)
        except KeyError:
            return None

    def ticks(
        self, schedule_id: str | None = None, *, states: Sequence[str] = (), limit: int = 0
    ) -> list[TickRow]:
        """Ticks, newest fire time first."""
        where, args = [], []
        if schedule_id is not None:
            where.append("schedule_id = ?")
            args.append(schedule_id)
        if states:
            where.append(f"state IN ({','.join('?' * len(states))})")
            args.extend(states)
        sql = "SELECT * FROM ticks"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY fire_time DESC, tick DESC"
        if limit:
            sql += f" LIMIT {int(limit)}"
        return [_tick(r) for r in self._db.execute(sql, args).fetchall()]

    def take_over(self, schedule_id: str, key: str, *, owner: str, expect: str | None) -> bool:
        """Make ``owner`` the holder of a queued or active tick whose holder is ``expect``
        (the daemon that claimed it handing it to the run it started, or a dead holder's
        claim being resumed). ``False`` when someone else holds it now."""
        with self.transaction() as db:
            cur = db.execute(
                "UPDATE ticks SET owner = ?, state = CASE state WHEN 'queued' THEN 'claimed'"
                " ELSE state END WHERE schedule_id = ? AND tick = ? AND"
                " state IN ('queued', 'claimed', 'running') AND owner IS ?",
                (owner, schedule_id, key, expect),
            )
            return cur.rowcount == 1

    def resume_orphans(self, owner: str, *, max_attempts: int = 3) -> list[TickRow]:
        """Take over every active tick whose holder died or released it; returns them
        (``claimed``, held by ``owner``). A tick whose runs died ``max_attempts`` times is
        marked failed instead (a run that kills its process would otherwise loop)."""
        taken = []
        with self.transaction() as db:
            rows = db.execute(
                "SELECT * FROM ticks WHERE state IN ('claimed', 'running')"
            ).fetchall()
            for row in rows:
                if owner_alive(row["owner"]):
                    continue
                if row["attempts"] >= max_attempts:
                    db.execute(
                        "UPDATE ticks SET state = 'failed', finished = ?, detail = ? WHERE"
                        " schedule_id = ? AND tick = ? AND owner IS ?",
                        (
                            time.time(),
                            f"gave up after {row['attempts']} attempts: each run died",
                            row["schedule_id"],
                            row["tick"],
                            row["owner"],
                        ),
                    )
                    continue
                cur = db.execute(
                    "UPDATE ticks SET owner = ?, state = 'claimed', detail = ? WHERE"
                    " schedule_id = ? AND tick = ? AND owner IS ?",
                    (
                        owner,
                        f"resumed: its holder {row['owner'] or '(released)'} was gone",
                        row["schedule_id"],
                        row["tick"],
                        row["owner"],
                    ),
                )
                if cur.rowcount == 1:
                    taken.append((row["schedule_id"], row["tick"]))
        return [self.tick(s, k) for s, k in taken]

    def promote_queued(self, schedule_id: str, owner: str) -> TickRow | None:
        """The oldest queued tick becomes ``claimed`` by ``owner`` when no tick of the
        schedule is active any more."""
        with self.transaction() as db:
            active = db.execute(
                "SELECT owner FROM ticks WHERE schedule_id = ? AND state IN ('claimed', 'running')",
                (schedule_id,),
            ).fetchall()
            if active:
                return None
            row = db.execute(
                "SELECT tick FROM ticks WHERE schedule_id = ? AND state = 'queued'"
                " ORDER BY fire_time, tick LIMIT 1",
                (schedule_id,),
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE ticks SET state = 'claimed', owner = ? WHERE schedule_id = ? AND tick = ?",
                (owner, schedule_id, row["tick"]),
            )
        return self.tick(schedule_id, row["tick"])

    def active_ticks(self, schedule_id: str) -> list[TickRow]:
        return [t for t in self.ticks(schedule_id, states=ACTIVE) if owner_alive(t.owner)]

    def start_tick(self, schedule_id: str, key: str, *, owner: str) -> bool:
        """The holder starts the tick's run: ``running``, one more attempt."""
        with self.transaction() as db:
            cur = db.execute(
                "UPDATE ticks SET state = 'running', attempts = attempts + 1, started = ?"
                " WHERE schedule_id = ? AND tick = ? AND owner = ? AND"
                " state IN ('claimed', 'running')",
                (time.time(), schedule_id, key, owner),
            )
            return cur.rowcount == 1

    def finish_tick(
        self,
        schedule_id: str,
        key: str,
        *,
        owner: str,
        state: str,
        run_id: str | None = None,
        detail: str | None = None,
    ) -> bool:
        with self.transaction() as db:
            cur = db.execute(
                "UPDATE ticks SET state = ?, finished = ?, run_id = coalesce(?, run_id),"
                " detail = coalesce(?, detail) WHERE schedule_id = ? AND tick = ? AND owner = ?",
                (state, time.time(), run_id, detail, schedule_id, key, owner),
            )
            return cur.rowcount == 1

    def release(self, owner: str) -> int:
        """Give up every active tick ``owner`` holds (a daemon stopping): the next daemon
        resumes them."""
        with self.transaction() as db:
            cur = db.execute(
                "UPDATE ticks SET owner = NULL, state = 'claimed' WHERE owner = ? AND"
                " state IN ('claimed', 'running')",
                (owner,),
            )
            return cur.rowcount


def _read_only_connection(path: Path) -> sqlite3.Connection:
    """A connection that reads ``path`` and writes nothing beside it (see ``ScheduleDB``)."""
    if not path.is_file():
        return sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    if not Path(f"{path}-wal").exists():
        # No writer has it open: it is whole in the file. Read into memory, as a rollback-
        # journal database (bytes 18-19 of the header say WAL, which memory cannot hold).
        data = bytearray(path.read_bytes())
        if len(data) >= 100 and data[18] == data[19] == 2:
            data[18] = data[19] = 1
        db = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        try:
            if data:
                db.deserialize(bytes(data))
            db.execute("PRAGMA user_version").fetchone()
            return db
        except sqlite3.Error:
            db.close()  # changed while it was read: read it through SQLite instead
    uri = path.resolve().as_uri() + "?mode=ro"
    db = sqlite3.connect(uri, uri=True, timeout=30.0, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA busy_timeout = 30000")
    return db


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _published(row: sqlite3.Row) -> PublishedRow:
    return PublishedRow(
        name=row["name"],
        version=row["version"],
        content_hash=row["content_hash"],
        created=row["created"],
        description=row["description"],
        spec=json.loads(row["spec"]),
    )


def _schedule(row: sqlite3.Row) -> ScheduleRow:
    return ScheduleRow(
        id=row["id"],
        name=row["name"],
        pipeline=row["pipeline"],
        version=row["version"],
        rule=None if row["rule"] is None else json.loads(row["rule"]),
        trigger=None if row["trigger"] is None else json.loads(row["trigger"]),
        params=json.loads(row["params"]),
        catchup=row["catchup"],
        max_catchup=row["max_catchup"],
        overlap=row["overlap"],
        paused=bool(row["paused"]),
        created=row["created"],
        cursor=row["cursor"],
        last_seen=row["last_seen"],
        last_poll=row["last_poll"],
        description=row["description"],
    )


def _tick(row: sqlite3.Row) -> TickRow:
    return TickRow(**{field.name: row[field.name] for field in attrs.fields(TickRow)})
