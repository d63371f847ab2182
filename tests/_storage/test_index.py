"""The cache index: local records, and records shared through a ``shared`` datastore."""

from __future__ import annotations

import errno
import functools
import json
import sqlite3
import subprocess
import sys
import time

import attrs
import pytest

from stepflow import Pipeline
from stepflow._pluginmanager import datastore_kinds
from stepflow._sentinels import MISSING
from stepflow._storage import stores
from stepflow._storage.artifacts import ArtifactRef
from stepflow._storage.datastore import LocalDatastore
from stepflow._storage.index import CacheIndex, CacheRecord
from stepflow.errors import StepflowError, StepflowWarning, StorageError

#: the store at a URL, opened with the kinds the installed plugins register
open_datastore = functools.partial(stores.open_datastore, kinds=datastore_kinds())

KEY = "ab" + "0" * 62
OTHER = "cd" + "1" * 62


def record(key: str = KEY, step: str = "model") -> CacheRecord:
    ref = ArtifactRef(f"{'e' * 32}.joblib", "e" * 32, "joblib", 123, "f" * 32)
    return CacheRecord(
        key=key,
        step=step,
        pipeline="training",
        run_id="run-1",
        created=time.time(),
        outputs={step: ref},
        components={"params": {"n": "abc"}},
        param_values={"n": "3"},
    )


def doc_path(key: str) -> str:
    return f"index/{key[:2]}/{key}.json"


@pytest.fixture
def homes(s3_server, tmp_path):
    """Two homes' indexes on one S3 store: ``(index_a, index_b, store)``."""
    opened = []

    def index(home: str) -> CacheIndex:
        store = open_datastore(s3_server.url(), home=tmp_path / home, options=s3_server.options)
        opened.append(CacheIndex(tmp_path / home / "index", store=store))
        return opened[-1]

    a, b = index("a"), index("b")
    yield a, b, a.store
    for idx in opened:
        idx.close()


class TestSharedIndex:
    def test_put_publishes_a_document(self, homes):
        a, _, store = homes
        rec = record()
        a.put(rec)
        data = json.loads(store.get_doc(doc_path(KEY)))
        assert data["version"] == 1
        assert CacheRecord.from_dict(data) == rec

    def test_another_home_finds_it_and_keeps_it(self, homes):
        a, b, store = homes
        rec = record()
        a.put(rec)
        assert list(b.records()) == []
        found = b.get(KEY)
        assert found == rec
        # Kept locally: B no longer needs the store's copy.
        store.delete_doc(doc_path(KEY))
        assert b.get(KEY) == rec
        assert list(b.records()) == [rec]

    def test_miss_everywhere(self, homes):
        _, b, _ = homes
        assert b.get(KEY) is MISSING

    def test_delete_removes_the_document(self, homes):
        a, b, store = homes
        a.put(record())
        a.delete(KEY)
        assert store.get_doc(doc_path(KEY)) is None
        assert a.get(KEY) is MISSING and b.get(KEY) is MISSING

    @pytest.mark.parametrize(
        "content",
        [
            b"not json",
            b'{"version": 999, "key": "x"}',
            b'{"version": 1, "key": "missing fields"}',
            b"[1, 2]",
        ],
    )
    def test_unusable_documents_are_misses(self, homes, content):
        _, b, store = homes
        store.put_doc(doc_path(KEY), content)
        assert b.get(KEY) is MISSING
        assert list(b.shared_records()) == []

    def test_a_document_about_another_key_is_a_miss(self, homes):
        """A record copied under the wrong name must not answer for that name."""
        a, b, store = homes
        a.put(record(OTHER))
        store.put_doc(doc_path(KEY), store.get_doc(doc_path(OTHER)))
        assert b.get(KEY) is MISSING
        assert [r.key for r in b.shared_records()] == [OTHER]

    def test_shared_records_from_every_home(self, homes):
        a, b, _ = homes
        a.put(record(KEY, "model"))
        b.put(record(OTHER, "evaluation"))
        assert sorted(r.key for r in a.shared_records()) == [KEY, OTHER]
        assert [r.key for r in a.records()] == [KEY]

    def test_store_lost_after_the_commit_keeps_the_local_record(
        self, stoppable_s3_server, tmp_path
    ):
        """Publishing needs the store; when it is gone, the local commit still stands and a
        warning says the result was not shared."""
        store = open_datastore(
            stoppable_s3_server.url(), home=tmp_path, options=stoppable_s3_server.options
        )
        index = CacheIndex(tmp_path / "index", store=store)
        rec = record()
        try:
            stoppable_s3_server.stop()
            with pytest.warns(StepflowWarning, match="kept in this home but could not be shared"):
                index.put(rec)
            assert index.get(KEY) == rec
        finally:
            index.close()


class TestLocalStore:
    def test_writes_no_documents(self, tmp_path):
        """The local store is not shared: recording a result costs nothing more."""
        store = LocalDatastore(tmp_path / "objects")
        index = CacheIndex(tmp_path / "index", store=store)
        try:
            index.put(record())
            assert index.get(KEY).key == KEY
            index.delete(KEY)
        finally:
            index.close()
        assert store.list_docs("") == []
        assert not (tmp_path / "refs").exists()

    def test_never_reads_documents(self, tmp_path):
        store = LocalDatastore(tmp_path / "objects")
        store.put_doc(doc_path(KEY), json.dumps(record().to_dict()).encode())
        index = CacheIndex(tmp_path / "index", store=store)
        try:
            assert index.get(KEY) is MISSING
            assert list(index.shared_records()) == []
        finally:
            index.close()


def test_storing_a_result_looks_for_no_expired_records(tmp_path):
    """Records never expire, so a write runs no query for expired ones (diskcache's
    culling would, on every write)."""
    index = CacheIndex(tmp_path / "index")
    statements: list[str] = []
    try:
        index._cache._con.set_trace_callback(statements.append)
        index.put(record(), last=False)
        index._cache._con.set_trace_callback(None)
    finally:
        index.close()
    assert any(s.startswith("INSERT INTO Cache") for s in statements), statements
    assert not [s for s in statements if "expire_time <" in s]


class TestLastResults:
    """The last result of each step of a pipeline, which ``explain`` compares with."""

    def test_put_marks_the_last_result_of_its_step(self, tmp_path):
        index = CacheIndex(tmp_path / "index")
        index.put(record(KEY, "model"))
        index.put(record(OTHER, "evaluation"))
        assert index.last("training", "model").key == KEY
        assert index.last("training", "evaluation").key == OTHER
        assert index.last("training", "absent") is MISSING
        assert index.last("other-pipeline", "model") is MISSING

    def test_a_run_marks_its_steps_at_the_end(self, tmp_path):
        index = CacheIndex(tmp_path / "index")
        index.put(record(KEY, "model"))
        newer = "ef" + "2" * 62
        index.put(record(newer, "model"), last=False)
        assert index.last("training", "model").key == KEY  # not yet
        index.touch_many([("training", "model", newer), ("scoring", "model", KEY)])
        assert index.last("training", "model").key == newer
        assert index.last("scoring", "model").key == KEY

    def test_two_runs_of_one_pipeline_both_keep_their_steps(self, tmp_path):
        a = CacheIndex(tmp_path / "index")
        a.put(record(KEY, "model"), last=False)
        a.put(record(OTHER, "evaluation"), last=False)
        a.touch_many([("training", "model", KEY)])
        a.touch_many([("training", "evaluation", OTHER)])
        assert a.last("training", "model").key == KEY
        assert a.last("training", "evaluation").key == OTHER


class TestRecordsKeptInProcess:
    def test_a_delete_is_seen_by_every_index_of_the_home(self, tmp_path):
        a, b = CacheIndex(tmp_path / "index"), CacheIndex(tmp_path / "index")
        a.put(record())
        assert b.get(KEY).key == KEY
        a.delete(KEY)
        assert b.get(KEY) is MISSING
        assert list(b.records()) == []

    def test_a_new_home_in_the_same_folder_starts_empty(self, tmp_path):
        import shutil

        a = CacheIndex(tmp_path / "index")
        a.put(record())
        assert a.get(KEY).key == KEY
        shutil.rmtree(tmp_path / "index")
        assert CacheIndex(tmp_path / "index").get(KEY) is MISSING


class TestOpening:
    """The index opens in a thread of its own; its first use waits for it."""

    def test_quick_lookup_in_a_brand_new_index_answers_at_once(self, tmp_path):
        index = CacheIndex(tmp_path / "index")
        assert index.get(KEY, quick=True) is MISSING
        index.put(record())
        assert index.get(KEY, quick=True).key == KEY

    def test_an_existing_index_is_always_read(self, tmp_path):
        """``quick`` never hides a record that was committed before the index was opened."""
        CacheIndex(tmp_path / "index").put(record())
        subprocess_code = (
            "import sys\nfrom pathlib import Path\n"
            "from stepflow._storage.index import CacheIndex\n"
            "print(CacheIndex(Path(sys.argv[1])).get(sys.argv[2], quick=True).key)\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", subprocess_code, str(tmp_path / "index"), KEY],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == KEY

    def test_an_unreadable_index_is_a_clear_error(self, tmp_path):
        folder = tmp_path / "index"
        folder.mkdir()
        (folder / "cache.db").write_bytes(b"this is not a database" * 100)
        index = CacheIndex(folder)
        with pytest.raises(StepflowError, match="cannot be opened") as info:
            index.get(KEY, quick=True)
        assert str(folder) in str(info.value) and "move" in str(info.value)

    def test_a_run_with_an_unreadable_index_runs_no_step(self, tmp_path, make_module):
        mod = make_module(
            "unreadable_index_flow",
            "from stepflow import step\n\n"
            "@step\ndef one() -> int:\n    raise AssertionError('must not run')\n",
        )
        home = tmp_path / "home"
        (home / "index").mkdir(parents=True)
        (home / "index" / "cache.db").write_bytes(b"this is not a database" * 100)
        with pytest.raises(StepflowError, match="cannot be opened"):
            Pipeline("p", [mod.one]).run(home=home)


def test_record_dict_holds_every_field_and_round_trips():
    """to_dict is written out by hand for speed: it must still cover every field."""
    rec = record()
    expected = {name: getattr(rec, name) for name in CacheRecord.__slots__}
    expected["outputs"] = {k: attrs.asdict(ref) for k, ref in rec.outputs.items()}
    expected["version"] = 1
    for out in expected["outputs"].values():
        assert out.pop("data") is None  # only an inline output has its bytes in the record
    assert rec.to_dict() == expected
    assert CacheRecord.from_dict(json.loads(json.dumps(rec.to_dict()))) == rec


# --- outputs kept inside their records ----------------------------------------------------


def inline_record(key: str = KEY, data: bytes = b"\x80\x05K*.") -> CacheRecord:
    from stepflow._storage.hashing import hash_bytes

    ref = ArtifactRef(f"{'e' * 32}.cloudpickle", "e" * 32, "cloudpickle", len(data), "")
    ref = attrs.evolve(ref, digest=hash_bytes(data), data=data)
    rec = record(key)
    return CacheRecord(**{**rec.__getstate__(), "outputs": {"model": ref}})


class TestInlineRecords:
    def test_the_bytes_round_trip_through_the_index(self, tmp_path):
        rec = inline_record()
        CacheIndex(tmp_path / "index").put(rec)
        assert rec.to_dict()["version"] == 2  # an older stepflow ignores it: a miss
        # A fresh process reads it back from SQLite, bytes included.
        found = _get_in_new_process(tmp_path / "index", KEY)
        assert found == rec.outputs["model"].data

    def test_a_record_of_almost_32_kib_stays_in_its_row(self, tmp_path):
        """diskcache moves a value of 32 KiB or more to a file of its own by default."""
        rec = inline_record(data=b"x" * (32 * 1024 - 1))
        index = CacheIndex(tmp_path / "index")
        index.put(rec)
        assert [p.name for p in (tmp_path / "index").rglob("*.val")] == []
        assert index.get(KEY) == rec

    def test_the_shared_document_holds_the_bytes_in_base64(self, homes):
        a, b, store = homes
        rec = inline_record(data=bytes(range(256)))
        a.put(rec)
        doc = json.loads(store.get_doc(doc_path(KEY)))
        assert doc["outputs"]["model"]["data"] != ""  # readable JSON, not raw bytes
        assert b.get(KEY) == rec

    def test_a_document_with_damaged_base64_is_a_miss(self, homes):
        a, b, store = homes
        a.put(inline_record())
        doc = json.loads(store.get_doc(doc_path(KEY)))
        doc["outputs"]["model"]["data"] = "not base64!"
        store.put_doc(doc_path(KEY), json.dumps(doc).encode())
        assert b.get(KEY) is MISSING

    def test_a_row_that_cannot_be_unpickled_is_a_miss_and_dropped(self, tmp_path):
        index = CacheIndex(tmp_path / "index")
        index.put(inline_record())
        index._open.records.clear()  # as a fresh process would, read it from SQLite
        with sqlite3.connect(index.path) as db:
            (value,) = db.execute("SELECT value FROM Cache WHERE key = ?", (f"result:{KEY}",))
            db.execute(
                "UPDATE Cache SET value = ? WHERE key = ?",
                (value[0][: len(value[0]) // 2], f"result:{KEY}"),
            )
        assert index.get(KEY) is MISSING
        assert index._cache.get(f"result:{KEY}") is None  # dropped
        assert list(index.records()) == []

    def test_records_kept_in_process_are_bounded_by_their_bytes(self, tmp_path, monkeypatch):
        from stepflow._storage import index as index_module

        monkeypatch.setattr(index_module._Open, "MAX_INLINE_BYTES", 100)
        index = CacheIndex(tmp_path / "index")
        index.put(inline_record(KEY, b"a" * 60))
        index.put(inline_record(OTHER, b"b" * 60))
        assert list(index._open.records) == [OTHER]


def _get_in_new_process(folder, key: str) -> bytes:
    code = (
        "import sys; from stepflow._storage.index import CacheIndex\n"
        "rec = CacheIndex(__import__('pathlib').Path(sys.argv[1])).get(sys.argv[2])\n"
        "sys.stdout.buffer.write(rec.outputs['model'].data)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(folder), key], capture_output=True, check=True
    )
    return done.stdout


# --- storage faults -----------------------------------------------------------------------


def _locked(index: CacheIndex) -> sqlite3.Connection:
    """Hold the index's SQLite write lock from another connection, as another process
    writing to it would; the index gives up after 0.1 s instead of its minute."""
    index._cache._timeout = 0.1  # this thread's connection is made with it
    other = sqlite3.connect(str(index.path), isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    return other


def test_a_locked_index_is_a_storage_error_naming_it(tmp_path) -> None:
    index = CacheIndex(tmp_path / "index")
    other = _locked(index)
    try:
        with pytest.raises(StorageError, match="locked") as put:
            index.put(record(), last=False)
        with pytest.raises(StorageError, match="locked") as touch:
            index.touch_many([("p", "model", KEY)])
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert put.value.path == str(tmp_path / "index" / "cache.db")
    assert "cache-index entry of step 'model'" in str(put.value)
    assert "latest-result pointers" in touch.value.what
    # Once the other writer is done, the same index writes again.
    stored = record()
    index.put(stored)
    assert index.last("training", "model") == stored


def test_a_full_disk_under_the_index_is_a_storage_error(tmp_path, monkeypatch) -> None:
    index = CacheIndex(tmp_path / "index")
    index.get("warm")  # opened

    def full(*args: object, **kwargs: object) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(index._cache, "set", full)
    with pytest.raises(StorageError, match="the disk is full") as caught:
        index.put(record())
    assert caught.value.reason == "the disk is full"
    assert str(tmp_path / "index" / "cache.db") in str(caught.value)
    assert "free some space" in str(caught.value)


def test_an_index_on_a_read_only_home_names_the_path(tmp_path, monkeypatch) -> None:
    index = CacheIndex(tmp_path / "index")
    index.get("warm")

    def read_only(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / "index" / "x.val"))

    monkeypatch.setattr(index._cache, "set", read_only)
    with pytest.raises(StorageError, match="read-only") as caught:
        index.touch_many([("p", "model", KEY)])
    assert caught.value.path == str(tmp_path / "index" / "cache.db")


class TestOpeningAnExistingIndex:
    """An index set up before opens by reading only (``index._open_existing``): diskcache's
    own set-up rewrote every setting and checkpointed, four fsyncs in a fresh process."""

    def test_gives_the_cache_diskcache_would(self, tmp_path):
        import diskcache

        from stepflow._storage import index as index_module

        CacheIndex(tmp_path / "index").put(record())
        fast = index_module._open_existing(tmp_path / "index")
        full = diskcache.Cache(str(tmp_path / "index"), timeout=60, **index_module._SETTINGS)
        try:
            assert fast is not None
            skip = {"_local"}
            assert {k: v for k, v in vars(fast).items() if k not in skip} == {
                k: v for k, v in vars(full).items() if k not in skip and k != "_disk"
            } | {"_disk": fast._disk}
            assert vars(fast._disk) == vars(full._disk)
            assert fast.get(f"result:{KEY}") == full.get(f"result:{KEY}")
        finally:
            fast.close()
            full.close()

    def test_a_database_set_up_otherwise_gets_diskcaches_set_up(self, tmp_path):
        import diskcache

        from stepflow._storage import index as index_module

        diskcache.Cache(str(tmp_path / "index")).close()  # diskcache's default settings
        assert index_module._open_existing(tmp_path / "index") is None
        sqlite3.connect(str(tmp_path / "index" / "cache.db")).execute(
            "CREATE TABLE Extra (x)"
        ).connection.close()
        CacheIndex(tmp_path / "other").put(record())
        sqlite3.connect(str(tmp_path / "other" / "cache.db")).execute(
            "CREATE TABLE Extra (x)"
        ).connection.close()
        assert index_module._open_existing(tmp_path / "other") is None

    def test_a_fresh_process_writes_nothing_to_it(self, tmp_path):
        import os

        path = tmp_path / "index"

        def in_a_process(code: str) -> str:
            opening = (
                "from pathlib import Path; from stepflow._storage.index import CacheIndex; "
                f"i = CacheIndex(Path({str(path)!r})); "
            )
            done = subprocess.run(
                [sys.executable, "-c", opening + code], capture_output=True, text=True
            )
            assert done.returncode == 0, done.stderr
            return done.stdout.strip()

        # Made by another process, which closed it (nobody holds it open now).
        in_a_process(_RECORD_CODE + "i.put(record)")
        db = path / "cache.db"
        os.utime(db, ns=(10**18, 10**18))
        assert in_a_process(f"print(i.get({KEY!r}).step)") == "model"
        # diskcache's set-up rewrote every setting, and checkpointed them into the file.
        assert db.stat().st_mtime_ns == 10**18


class TestReadingTheLastResultsTogether:
    """``read_last``: a pipeline's latest records in one query, taken by ``get``."""

    def queries(self, index: CacheIndex, keys: list[str]) -> tuple[list, list[str]]:
        statements: list[str] = []
        index._cache._con.set_trace_callback(statements.append)
        try:
            found = [index.get(k) for k in keys]
        finally:
            index._cache._con.set_trace_callback(None)
        return found, statements

    def test_an_unchanged_step_finds_its_record_without_a_query(self, tmp_path):
        index = CacheIndex(tmp_path / "index")
        made = [record(KEY, "model"), record(OTHER, "evaluation")]
        for one in made:
            index.put(one)
        reader = CacheIndex(tmp_path / "index")
        reader._open.records.clear()  # nothing kept in this process: a fresh one
        reader.read_last("training")
        found, statements = self.queries(reader, [KEY, OTHER])
        assert found == made
        assert statements == []
        # Taken once: a second lookup (of a record not kept in process) asks the index.
        reader._open.records.clear()
        assert self.queries(reader, [KEY])[1]

    def test_a_damaged_row_is_a_miss_and_dropped(self, tmp_path):
        index = CacheIndex(tmp_path / "index")
        index.put(record(KEY, "model"))
        index.put(record(OTHER, "evaluation"))
        db = sqlite3.connect(str(index.path))
        db.execute("UPDATE Cache SET value = X'80ff00' WHERE key = ?", (f"result:{KEY}",))
        db.commit()
        db.close()
        index._open.records.clear()
        index.read_last("training")
        assert KEY not in index._read_ahead and OTHER in index._read_ahead
        assert index.get(KEY) is MISSING
        assert f"result:{KEY}" not in index._cache  # dropped, for the next result
        assert index.get(OTHER).key == OTHER

    def test_a_key_committed_after_the_read_is_found(self, tmp_path):
        """Another run makes a step's new key after this run read the latest ones: this
        run's lookup of that key, not among them, asks the index and finds it."""
        index = CacheIndex(tmp_path / "index")
        index.put(record(KEY, "model"))
        index._open.records.clear()
        index.read_last("training")
        other_run = CacheIndex(tmp_path / "index")
        newer = record(OTHER, "model")
        other_run.put(newer)
        assert index.last("training", "model") == newer
        assert index.get(OTHER) == newer
        assert index.get(KEY).key == KEY

    def test_a_record_deleted_after_the_read_is_a_miss(self, tmp_path):
        index = CacheIndex(tmp_path / "index")
        index.put(record(KEY, "model"))
        index._open.records.clear()
        index.read_last("training")
        index.delete(KEY)  # an output failed its check: the result is dropped
        assert index.get(KEY) is MISSING

    def test_nothing_is_read_for_another_pipeline_or_twice(self, tmp_path):
        index = CacheIndex(tmp_path / "index")
        index.put(record(KEY, "model"))
        index._open.records.clear()
        index.read_last("another")
        assert index._read_ahead == {}
        index.read_last("training")
        assert set(index._read_ahead) == {KEY}
        index.get(KEY)
        index.read_last("training")  # once per pipeline and handle
        assert index._read_ahead == {}


#: a process's code making ``record()`` (the process imports no test module)
_RECORD_CODE = (
    "import time; from stepflow._storage.artifacts import ArtifactRef; "
    "from stepflow._storage.index import CacheRecord; "
    f"ref = ArtifactRef({'e' * 32 + '.joblib'!r}, {'e' * 32!r}, 'joblib', 123, {'f' * 32!r}); "
    f"record = CacheRecord(key={KEY!r}, step='model', pipeline='training', "
    "run_id='run-1', created=time.time(), outputs={'model': ref}); "
)
