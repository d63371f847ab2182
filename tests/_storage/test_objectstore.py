"""The object-store datastore against a real S3 API (moto in server mode on loopback).

Every test gets an empty bucket on the session's server (the ``s3_server`` fixture in
``tests/conftest.py``); a second stepflow home is simply another folder pointed at the
same bucket, which is how a second machine would see it.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import attrs
import pandas as pd
import pytest

from stepflow import Pipeline, StepState
from stepflow._config import load_config
from stepflow._pluginmanager import datastore_kinds
from stepflow._storage import artifacts, stores
from stepflow._storage.artifacts import ArtifactIO
from stepflow._storage.datastore import KEYED_HASH_DOC, ArtifactMissingError
from stepflow._storage.index import CacheIndex, _doc
from stepflow._storage.objectstore import FsspecDatastore
from stepflow._storage.serializers import builtin_serializers
from stepflow.errors import StepflowWarning, StoreUnavailableError, UsageError

#: the store at a URL, opened with the kinds the installed plugins register
open_datastore = functools.partial(stores.open_datastore, kinds=datastore_kinds())

NAME = "0123456789abcdef0123.pickle"


def open_store(s3, home: Path, prefix: str = "stepflow") -> FsspecDatastore:
    store = open_datastore(s3.url(prefix), home=home, options=s3.options)
    assert isinstance(store, FsspecDatastore)
    return store


def write(store: FsspecDatastore, name: str, data: bytes) -> None:
    with store.writer(name) as tmp:
        tmp.write_bytes(data)


def project_config(root: Path, s3, home: Path, prefix: str = "stepflow"):
    """The configuration of a project whose pyproject.toml names the S3 store."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "pyproject.toml").write_text(s3.pyproject(prefix))
    return load_config(root, home=home, environ={})


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class TestObjects:
    def test_round_trip_between_homes(self, s3_server, tmp_path):
        """An object written through one home is read through another, which downloads it
        once into its own cache."""
        a = open_store(s3_server, tmp_path / "a")
        write(a, NAME, b"payload")
        assert a.exists(NAME) and a.size(NAME) == 7 and list(a.names()) == [NAME]
        remote = f"{s3_server.bucket}/stepflow/objects/01/{NAME[2:]}"
        assert s3_server.fs().cat_file(remote) == b"payload"

        b = open_store(s3_server, tmp_path / "b")
        path = b.local_path(NAME)
        assert path.read_bytes() == b"payload"
        assert path.is_relative_to(tmp_path / "b" / "cache")
        assert b.local_path(NAME) == path

    def test_writer_keeps_a_local_copy(self, s3_server, tmp_path):
        """The writing home needs no download: its copy is already in its cache."""
        store = open_store(s3_server, tmp_path / "a")
        write(store, NAME, b"payload")
        cached = store.cache_dir / NAME[:2] / NAME[2:]
        assert cached.read_bytes() == b"payload"
        assert store.local_path(NAME) == cached
        # Owner-only, like the local store's folders.
        assert (cached.parent.stat().st_mode & 0o077) == 0
        assert ((tmp_path / "a" / "cache").stat().st_mode & 0o077) == 0

    def test_stale_local_copy_is_downloaded_again(self, s3_server, tmp_path):
        """A local copy whose size differs from the stored object is replaced."""
        store = open_store(s3_server, tmp_path / "a")
        write(store, NAME, b"payload")
        cached = store.local_path(NAME)
        cached.write_bytes(b"pay")
        assert store.local_path(NAME).read_bytes() == b"payload"

    def test_failed_write_publishes_nothing(self, s3_server, tmp_path):
        store = open_store(s3_server, tmp_path / "a")
        with pytest.raises(RuntimeError, match="boom"), store.writer(NAME) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("boom")
        assert not store.exists(NAME)
        assert list(store.names()) == []
        assert list(store.cache_dir.rglob("*.pickle")) == []

    def test_missing_object(self, s3_server, tmp_path):
        store = open_store(s3_server, tmp_path / "a")
        assert not store.exists(NAME)
        with pytest.raises(ArtifactMissingError, match="missing from s3://"):
            store.local_path(NAME)
        with pytest.raises(ArtifactMissingError, match="missing"):
            store.size(NAME)
        store.delete(NAME)  # nothing to delete is fine

    def test_delete_removes_object_and_local_copy(self, s3_server, tmp_path):
        store = open_store(s3_server, tmp_path / "a")
        write(store, NAME, b"payload")
        store.delete(NAME)
        assert not store.exists(NAME)
        assert not (store.cache_dir / NAME[:2] / NAME[2:]).exists()

    def test_names_skip_foreign_keys(self, s3_server, tmp_path):
        """Keys under objects/ that stepflow did not write are not reported as objects."""
        store = open_store(s3_server, tmp_path / "a")
        write(store, NAME, b"x")
        fs = s3_server.fs()
        fs.pipe_file(f"{s3_server.bucket}/stepflow/objects/README", b"hello")
        fs.pipe_file(f"{s3_server.bucket}/stepflow/objects/zz/not-a-hash", b"hello")
        assert list(store.names()) == [NAME]

    @pytest.mark.parametrize("bad", ["../../etc/passwd.pickle", "/abs.pickle", "AB12.x", ""])
    def test_names_cannot_escape(self, s3_server, tmp_path, bad):
        store = open_store(s3_server, tmp_path / "a")
        with pytest.raises(ArtifactMissingError, match="invalid object name"):
            store.local_path(bad)
        with pytest.raises(ArtifactMissingError, match="invalid object name"), store.writer(bad):
            pass

    def test_prefixes_are_separate_stores(self, s3_server, tmp_path):
        one = open_store(s3_server, tmp_path / "a", prefix="one")
        two = open_store(s3_server, tmp_path / "a", prefix="two")
        write(one, NAME, b"x")
        assert list(two.names()) == [] and not two.exists(NAME)
        assert one.cache_dir != two.cache_dir


class TestVerifiedLoads:
    def test_value_round_trip(self, s3_server, tmp_path):
        frame = pd.DataFrame({"a": [1.5, 2.5], "b": ["x", "y"]})
        writer = ArtifactIO(open_store(s3_server, tmp_path / "a"), builtin_serializers())
        ref = writer.save(frame)
        reader = ArtifactIO(open_store(s3_server, tmp_path / "b"), builtin_serializers())
        assert reader.available(ref)
        pd.testing.assert_frame_equal(reader.load(ref), frame)

    @pytest.mark.parametrize("same_size", [True, False])
    def test_tampered_object_is_a_miss(self, s3_server, tmp_path, same_size):
        """Bytes changed in the bucket never load, whatever their size."""
        io_a = ArtifactIO(open_store(s3_server, tmp_path / "a"), builtin_serializers())
        ref = io_a.save({"answer": 42})
        remote = f"{s3_server.bucket}/stepflow/objects/{ref.name[:2]}/{ref.name[2:]}"
        fs = s3_server.fs()
        original = fs.cat_file(remote)
        damaged = bytes(b ^ 0xFF for b in original) if same_size else original[:-3]
        fs.pipe_file(remote, damaged)

        io_b = ArtifactIO(open_store(s3_server, tmp_path / "b"), builtin_serializers())
        assert io_b.available(ref) is same_size  # the cheap check only compares sizes
        with pytest.raises(ArtifactMissingError, match="corrupted"):
            io_b.load(ref)

    def test_damaged_local_copy_is_fetched_again(self, s3_server, tmp_path):
        """A damaged copy in this home's cache is not a damaged object: it is downloaded
        again and loads, instead of dropping a good result for every home."""
        io = ArtifactIO(open_store(s3_server, tmp_path / "a"), builtin_serializers())
        ref = io.save({"answer": 42})
        local = io.store.local_path(ref.name)
        local.write_bytes(bytes(b ^ 0xFF for b in local.read_bytes()))
        assert io.load(ref) == {"answer": 42}


class TestDocuments:
    def test_round_trip_and_overwrite(self, s3_server, tmp_path):
        store = open_store(s3_server, tmp_path / "a")
        assert store.get_doc("models/m/1.json") is None
        assert store.put_doc("models/m/1.json", b"one") is True
        assert store.put_doc("models/m/1.json", b"uno") is True
        assert open_store(s3_server, tmp_path / "b").get_doc("models/m/1.json") == b"uno"
        fs = s3_server.fs()
        assert fs.cat_file(f"{s3_server.bucket}/stepflow/refs/models/m/1.json") == b"uno"

    def test_exclusive_create(self, s3_server, tmp_path):
        store = open_store(s3_server, tmp_path / "a")
        assert store.put_doc("aliases/prod", b"first", exclusive=True) is True
        assert store.put_doc("aliases/prod", b"second", exclusive=True) is False
        assert store.get_doc("aliases/prod") == b"first"

    def test_exclusive_create_is_enforced_by_the_server(self, s3_server, tmp_path, monkeypatch):
        """Even when the existence check misses the document (another writer got in between),
        the conditional PUT (If-None-Match: *) is refused: exactly one writer wins."""
        store = open_store(s3_server, tmp_path / "a")
        assert store.put_doc("lock", b"winner", exclusive=True) is True
        monkeypatch.setattr(store._fs, "exists", lambda path: False)
        assert store.put_doc("lock", b"loser", exclusive=True) is False
        assert store.get_doc("lock") == b"winner"

    def test_list_docs(self, s3_server, tmp_path):
        store = open_store(s3_server, tmp_path / "a")
        for path in ("a/2", "a/1", "a/sub/3", "ab/4", "b"):
            store.put_doc(path, b"x")
        assert store.list_docs("a") == ["a/1", "a/2", "a/sub/3"]
        assert store.list_docs("a/") == ["a/1", "a/2", "a/sub/3"]
        assert store.list_docs("") == ["a/1", "a/2", "a/sub/3", "ab/4", "b"]
        assert store.list_docs("nothing") == []
        # Objects are not documents.
        write(store, NAME, b"x")
        assert NAME not in "".join(store.list_docs(""))

    def test_delete_doc(self, s3_server, tmp_path):
        store = open_store(s3_server, tmp_path / "a")
        store.put_doc("x/y", b"1")
        store.delete_doc("x/y")
        store.delete_doc("x/y")
        assert store.get_doc("x/y") is None and store.list_docs("x") == []

    def test_secret_key_is_made_once_for_every_home(self, s3_server, tmp_path, monkeypatch):
        """Two homes racing to make the store's secret key end with one: the exclusive
        write (If-None-Match) of the later one fails, and it reads the winner's key."""
        first = open_store(s3_server, tmp_path / "a")
        late = open_store(s3_server, tmp_path / "b")
        real_put = late.put_doc

        def put_after_the_other(path, data, **options):
            first.secret_key()  # the other home wins the race just before this write
            return real_put(path, data, **options)

        # On the one instance: a background thread of an earlier test (a run's code
        # snapshot) may still be writing documents through the class.
        monkeypatch.setattr(late, "put_doc", put_after_the_other)
        key = late.secret_key()
        assert key == first.secret_key() and len(key) == 32
        assert open_store(s3_server, tmp_path / "c").secret_key() == key

    @pytest.mark.parametrize("bad", ["../escape", "/abs", "a//b", "a/./b", "", "sp ace"])
    def test_bad_paths_rejected(self, s3_server, tmp_path, bad):
        store = open_store(s3_server, tmp_path / "a")
        with pytest.raises(ValueError, match="invalid document path"):
            store.put_doc(bad, b"x")
        with pytest.raises(ValueError, match="invalid document path"):
            store.get_doc(bad)


class TestOpening:
    def test_hook_registers_object_store_schemes(self, s3_server, tmp_path):
        store = open_store(s3_server, tmp_path)
        assert (store.kind, store.uri, store.shared) == ("s3", s3_server.url(), True)

    def test_scheme_is_case_insensitive(self, s3_server, tmp_path):
        upper = open_datastore(
            f"S3://{s3_server.bucket}/stepflow", home=tmp_path, options=s3_server.options
        )
        write(upper, NAME, b"x")
        assert open_store(s3_server, tmp_path / "b").local_path(NAME).read_bytes() == b"x"

    def test_unknown_scheme(self, tmp_path):
        with pytest.raises(UsageError, match=r"no datastore plugin handles nope:// URLs") as exc:
            open_datastore("nope://bucket/x", home=tmp_path)
        assert "s3" in str(exc.value) and "local" in str(exc.value)

    def test_missing_bucket(self, s3_server, tmp_path):
        with pytest.raises(StoreUnavailableError, match=r"bucket 'no-such-bucket' does not ex"):
            open_datastore("s3://no-such-bucket/p", home=tmp_path, options=s3_server.options)

    @pytest.mark.slow
    def test_unreachable_endpoint(self, s3_server, tmp_path):
        """A port nobody listens on fails in seconds (bounded retries), naming the fix."""
        options = {"endpoint_url": f"http://127.0.0.1:{free_port()}"}
        with pytest.raises(StoreUnavailableError, match="did not answer") as exc:
            open_datastore(s3_server.url(), home=tmp_path, options=options)
        assert "endpoint_url" in str(exc.value) and exc.value.store == s3_server.url()

    def test_rejected_credentials(self, s3_server, tmp_path):
        """With authentication switched on in moto, unknown keys are refused: the message
        names the credentials and where to set them."""
        import urllib.request

        def require_auth(count: str) -> None:
            # text/plain: moto reads the raw body, which a form content type would consume.
            request = urllib.request.Request(
                f"{s3_server.endpoint_url}/moto-api/reset-auth",
                data=count.encode(),
                headers={"Content-Type": "text/plain"},
            )
            with urllib.request.urlopen(request, timeout=10) as response:
                assert response.status == 200

        require_auth("0")
        try:
            with pytest.raises(StoreUnavailableError, match="access denied") as exc:
                open_datastore(s3_server.url("auth"), home=tmp_path, options=s3_server.options)
        finally:
            require_auth("inf")
        assert "AWS_ACCESS_KEY_ID" in str(exc.value)

    def test_no_credentials(self, s3_server, tmp_path, monkeypatch):
        monkeypatch.delenv("AWS_ACCESS_KEY_ID")
        monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
        # No instance-metadata lookups: this is not a cloud machine.
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        with pytest.raises(StoreUnavailableError, match="no credentials found") as exc:
            open_datastore(s3_server.url("nocreds"), home=tmp_path, options=s3_server.options)
        assert "AWS_PROFILE" in str(exc.value)

    def test_bucket_name_the_client_refuses(self, s3_server, tmp_path):
        refused = r"(?s)cannot be opened.*Invalid bucket name"
        with pytest.raises(StoreUnavailableError, match=refused):
            open_datastore("s3://Bad_Bucket!/p", home=tmp_path, options=s3_server.options)

    def test_url_without_bucket(self, s3_server, tmp_path):
        with pytest.raises(UsageError, match="names no bucket"):
            open_datastore("s3://", home=tmp_path, options=s3_server.options)

    def test_bad_option(self, s3_server, tmp_path):
        with pytest.raises(UsageError, match=r"store_options\] are not accepted by s3fs"):
            open_datastore(
                s3_server.url(), home=tmp_path, options={**s3_server.options, "bogus": 1}
            )

    def test_missing_filesystem_package(self, tmp_path, monkeypatch):
        monkeypatch.setitem(sys.modules, "gcsfs", None)  # not installed, whatever this machine has
        with pytest.raises(UsageError, match="pip install gcsfs"):
            open_datastore("gs://bucket/p", home=tmp_path)


def tamper(s3_server, record, output: str) -> None:
    """Invert every byte of ``output`` of ``record`` in the bucket: its object, or its
    bytes inside the shared record (still a valid document)."""
    fs = s3_server.fs()
    ref = record.outputs[output]
    if ref.inline:
        remote = f"{s3_server.bucket}/stepflow/refs/{_doc(record.key)}"
        doc = json.loads(fs.cat_file(remote))
        data = base64.b64decode(doc["outputs"][output]["data"])
        doc["outputs"][output]["data"] = base64.b64encode(bytes(b ^ 0xFF for b in data)).decode()
        fs.pipe_file(remote, json.dumps(doc).encode())
        return
    remote = f"{s3_server.bucket}/stepflow/objects/{ref.name[:2]}/{ref.name[2:]}"
    fs.pipe_file(remote, bytes(b ^ 0xFF for b in fs.cat_file(remote)))


class TestPipelines:
    CHAIN = """
        import os
        from pathlib import Path
        from stepflow import Param, step

        @step
        def numbers(calls: Param[str], n: int = 5, pad: int = 0) -> list:
            with open(calls, "a") as fh:
                fh.write("numbers\\n")
            return list(range(n)) + (["." * pad] if pad else [])

        @step
        def total(numbers: list, calls: Param[str]) -> int:
            with open(calls, "a") as fh:
                fh.write("total\\n")
            return sum(x for x in numbers if isinstance(x, int))

        @step
        def pid(total: int) -> int:
            return os.getpid()
    """

    def chain(self, make_module, name: str) -> Pipeline:
        mod = make_module(name, textwrap.dedent(self.CHAIN))
        return Pipeline("chain", [mod.numbers, mod.total, mod.pid])

    @pytest.mark.parametrize("pad", [0, 40_000], ids=["inline", "object"])
    @pytest.mark.parametrize("workers", [1, 2])
    def test_run_and_reuse(self, s3_server, make_module, tmp_path, workers, pad):
        """Outputs land in the bucket (from worker processes too), records are shared, and
        a rerun reuses everything, also from another home. Outputs under 32 KiB are kept
        inside the shared records: only the padded list is an object."""
        pipe = self.chain(make_module, f"s3_chain_{workers}_{pad}")
        calls = tmp_path / "calls.txt"
        params = {"calls": str(calls), "pad": pad}
        config = project_config(tmp_path / "project", s3_server, tmp_path / "home")
        first = pipe.run(params, config=config, workers=workers)
        assert first.ok and first["total"] == 10
        assert {s.state for s in first.steps.values()} == {StepState.RAN}
        if workers > 1:
            import os

            assert first["pid"] != os.getpid()
        fs = s3_server.fs()
        assert len(fs.find(f"{s3_server.bucket}/stepflow/objects")) == (1 if pad else 0)
        assert len(fs.find(f"{s3_server.bucket}/stepflow/refs/index")) == 3
        assert not (tmp_path / "home" / "objects").exists()

        second = pipe.run(params, config=config, workers=workers)
        assert {s.state for s in second.steps.values()} == {StepState.REUSED}
        assert second["total"] == 10
        other = project_config(tmp_path / "project", s3_server, tmp_path / "other")
        third = pipe.run(params, config=other, workers=workers, regenerate=["pid"])
        assert third.steps["total"].state is StepState.REUSED
        assert third.steps["pid"].state is StepState.RAN  # loaded 'total' from the record
        assert third["numbers"][:5] == [0, 1, 2, 3, 4]
        assert calls.read_text().split() == ["numbers", "total"]

    @pytest.mark.parametrize("pad", [0, 40_000], ids=["inline", "object"])
    def test_tampered_input_is_recomputed(self, s3_server, make_module, tmp_path, pad):
        """A damaged object in the bucket (or damaged bytes inside a shared record) is a
        miss for the home that loads it: its producer runs again, and the consumer gets the
        right value."""
        pipe = self.chain(make_module, f"s3_chain_t{pad}")
        params = {"calls": str(tmp_path / "calls.txt"), "pad": pad}
        config_a = project_config(tmp_path / "project", s3_server, tmp_path / "a")
        assert pipe.run(params, config=config_a).ok
        index = CacheIndex(tmp_path / "a" / "index")
        try:
            record = index.last("chain", "numbers")
        finally:
            index.close()
        assert record.outputs["numbers"].inline is not bool(pad)
        tamper(s3_server, record, "numbers")

        config_b = project_config(tmp_path / "project", s3_server, tmp_path / "b")
        with pytest.warns(StepflowWarning, match="'numbers'.*unusable"):
            result = pipe.run(params, config=config_b, regenerate=["total"])
        assert result.ok and result["total"] == 10
        assert result.steps["numbers"].state is StepState.RAN  # planned as reused, then ran
        assert (tmp_path / "calls.txt").read_text().split() == [
            "numbers",
            "total",
            "numbers",  # run again when its object failed verification
            "total",
        ]

    @pytest.mark.parametrize("stored", ["inline", "file"])
    def test_damaged_final_result_is_dropped_for_every_home(
        self, s3_server, make_module, tmp_path, monkeypatch, stored
    ):
        """A reused result whose object in the bucket is damaged is dropped from the index
        (this home's and the shared one) when the user loads it, and computed again. Damaged
        bytes inside the shared record are dropped alike; the home that made them keeps
        its own, intact copy."""
        if stored == "file":
            monkeypatch.setattr(artifacts, "INLINE_LIMIT", 0)
        pipe = self.chain(make_module, f"s3_chain_f_{stored}")
        params = {"calls": str(tmp_path / "calls.txt")}
        config_a = project_config(tmp_path / "project", s3_server, tmp_path / "a")
        assert pipe.run(params, config=config_a).ok
        index = CacheIndex(tmp_path / "a" / "index")
        record = index.last("chain", "total")
        assert record.outputs["total"].inline is (stored == "inline")
        tamper(s3_server, record, "total")

        config_b = project_config(tmp_path / "project", s3_server, tmp_path / "b")
        result = pipe.run(params, config=config_b, targets=["total"])
        assert result.steps["total"].state is StepState.REUSED
        with pytest.raises(ArtifactMissingError, match=r"corrupted.*dropped"):
            result["total"]
        assert s3_server.fs().find(f"{s3_server.bucket}/stepflow/refs/{_doc(record.key)}") == []
        if stored == "inline":
            # Home a's own row holds the bytes it made, intact: reused, and right.
            again = pipe.run(params, config=config_a, targets=["total"])
            assert again.steps["total"].state is StepState.REUSED and again["total"] == 10
            again = pipe.run(params, config=config_b, targets=["total"])
            assert again.steps["total"].state is StepState.RAN and again["total"] == 10
            third = pipe.run(params, config=config_b, targets=["total"])
            assert third.steps["total"].state is StepState.REUSED and third["total"] == 10
            assert (tmp_path / "calls.txt").read_text().split() == ["numbers", "total", "total"]
            return
        # The damaged object is gone, so the other home's own record of it is a miss too.
        with pytest.warns(StepflowWarning, match="'total' is incomplete"):
            again = pipe.run(params, config=config_a, targets=["total"])
        assert again.steps["total"].state is StepState.RAN and again["total"] == 10
        # The repaired result is then reused by the home that found the damage.
        third = pipe.run(params, config=config_b, targets=["total"])
        assert third.steps["total"].state is StepState.REUSED and third["total"] == 10
        assert (tmp_path / "calls.txt").read_text().split() == ["numbers", "total", "total"]

    def test_secret_taking_step_is_reused_by_another_home(self, s3_server, make_module, tmp_path):
        """The key that hashes secrets is the store's, so a second home sharing the store
        makes the same cache key for a step that takes a ``Secret``, and reuses it."""
        mod = make_module(
            "s3_secret",
            textwrap.dedent(
                """
                from stepflow import Param, Secret, step

                @step
                def fetched(calls: Param[str], token: Secret[str] = "s3cr3t") -> int:
                    with open(calls, "a") as fh:
                        fh.write("fetched\\n")
                    return len(token)
                """
            ),
        )
        pipe = Pipeline("secret", [mod.fetched])
        calls = tmp_path / "calls.txt"
        params = {"calls": str(calls), "token": "abc"}
        for home in ("a", "b"):
            config = project_config(tmp_path / "project", s3_server, tmp_path / home)
            result = pipe.run(params, config=config)
            assert result.ok and result["fetched"] == 3
        assert result.steps["fetched"].state is StepState.REUSED
        assert calls.read_text().split() == ["fetched"]
        key = s3_server.fs().cat_file(f"{s3_server.bucket}/stepflow/refs/{KEYED_HASH_DOC}")
        assert len(key) == 32
        assert not (tmp_path / "a" / "secret.key").exists()

    @pytest.mark.slow
    def test_unreachable_store_stops_the_run_before_any_step(
        self, s3_server, make_module, tmp_path
    ):
        pipe = self.chain(make_module, "s3_chain_u")
        calls = tmp_path / "calls.txt"
        config = project_config(tmp_path / "project", s3_server, tmp_path / "home")
        config = attrs.evolve(
            config, store_options={"endpoint_url": f"http://127.0.0.1:{free_port()}"}
        )
        with pytest.raises(StoreUnavailableError, match="did not answer"):
            pipe.run({"calls": str(calls)}, config=config)
        assert not calls.exists()


@pytest.mark.slow
class TestStoreLostMidRun:
    FLOW = """
        import os
        import signal
        from stepflow import Param, step

        @step
        def numbers(n: int = 5) -> list:
            return list(range(n))

        @step
        def total(numbers: list, server_pid: Param[int], pad: Param[int]) -> list:
            os.kill(server_pid, signal.SIGKILL)  # the store goes away mid-step
            return [sum(numbers), "." * pad]

        @step
        def after(total: list) -> int:
            return total[0] + 1
    """

    def run(self, server, make_module, tmp_path, workers: int, pad: int = 40_000, **kwargs):
        mod = make_module(f"s3_lost_{workers}_{pad}", textwrap.dedent(self.FLOW))
        pipe = Pipeline("lost", [mod.numbers, mod.total, mod.after])
        root = tmp_path / "project"
        root.mkdir()
        # No source snapshot: it is stored from a thread of its own, which warns when the
        # store this test kills is gone, at a moment the test cannot wait for (before or
        # after the test ends, as the run's other work happens to take).
        text = server.pyproject().replace(
            "[tool.stepflow]\n", "[tool.stepflow]\nrecord_source = false\n", 1
        )
        (root / "pyproject.toml").write_text(text)
        config = load_config(root, home=tmp_path / "home", environ={})
        assert config.settings["record_source"] is False
        params = {"server_pid": server._process.proc.pid, "pad": pad}
        return pipe.run(params, config=config, workers=workers, **kwargs)

    def committed(self, tmp_path, step: str):
        index = CacheIndex(tmp_path / "home" / "index")
        try:
            return index.last("lost", step)
        finally:
            index.close()

    @pytest.mark.parametrize("workers", [1, 2])
    def test_step_fails_naming_the_store(self, stoppable_s3_server, make_module, tmp_path, workers):
        """In the run's process or in a worker (one attempt function for both), the step whose
        output cannot be uploaded fails with the store's message, its dependants are skipped,
        and the earlier result stays committed."""
        result = self.run(stoppable_s3_server, make_module, tmp_path, workers=workers)
        assert result.steps["numbers"].state is StepState.RAN
        report = result.steps["total"]
        assert report.state is StepState.FAILED
        assert "did not answer while uploading" in str(report.error)
        assert stoppable_s3_server.url() in str(report.error)
        assert result.steps["after"].state is StepState.SKIPPED
        assert self.committed(tmp_path, "numbers").step == "numbers"

    @pytest.mark.parametrize("workers", [1, 2])
    def test_small_outputs_need_no_store(self, stoppable_s3_server, make_module, tmp_path, workers):
        """An output under 32 KiB is kept inside its index record, so the step that lost
        the store succeeds: its result is committed in this home, and the user is told it
        could not be shared."""
        with pytest.warns(StepflowWarning, match="could not be shared through the store"):
            result = self.run(
                stoppable_s3_server, make_module, tmp_path, workers, pad=0, targets=["total"]
            )
        assert result.ok and result["total"] == [10, ""]
        assert self.committed(tmp_path, "total").outputs["total"].inline


@pytest.mark.slow
class TestSecondHome:
    QUICK = {"n_estimators": 60}

    def test_example_reused_from_another_home(self, s3_server, hp, tmp_path):
        """The house-prices training pipeline run in home A (two workers) is reused by a
        fresh home B that shares nothing with A but the S3 store; B then scores houses with
        the model A registered, which lives in the store too."""
        config_a = project_config(tmp_path / "project", s3_server, tmp_path / "home-a")
        first = hp.training.run(self.QUICK, config=config_a, workers=2)
        assert first.ok
        assert {s.state for s in first.steps.values()} == {StepState.RAN}

        config_b = project_config(tmp_path / "project", s3_server, tmp_path / "home-b")
        assert not (tmp_path / "home-b").exists()
        second = hp.training.run(self.QUICK, config=config_b)
        assert second.ok
        # Steps declared @step(cache=False) always run (`houses` among them); the output of
        # `houses` is identical, so everything cacheable after it is reused (early cutoff).
        always = {n for n, spec in hp.training.steps.items() if not spec.options.cache}
        assert "houses" in always
        assert {n: s.state for n, s in second.steps.items()} == {
            n: StepState.RAN if n in always else StepState.REUSED for n in hp.training.steps
        }
        assert {"prepared", "model", "evaluation"} <= set(hp.training.steps) - always
        assert second["evaluation"] == first["evaluation"]
        # The same model with the same metrics is the same registered version.
        assert second["registered_model"] == first["registered_model"]

        scoring = hp.batch_scoring.run({"output_dir": str(tmp_path / "out")}, config=config_b)
        assert scoring.ok, {n: s.error for n, s in scoring.steps.items() if s.error}
        assert len(scoring["predictions"]) == 10
        assert scoring["predictions"][hp.PREDICTION].notna().all()


def test_a_run_on_the_local_store_never_imports_the_object_store(tmp_path):
    """The object-store schemes are registered on every run, but their module is imported
    only when a store URL uses one (it is start-up time a local run does not need)."""
    (tmp_path / "flow.py").write_text(
        "from stepflow import step\n\n@step\ndef one() -> int:\n    return 1\n"
    )
    code = (
        "import sys, flow\n"
        "from stepflow import Pipeline\n"
        "assert Pipeline.from_module(flow).run().ok\n"
        "print('stepflow._storage.objectstore' in sys.modules)\n"
    )
    env = dict(os.environ, STEPFLOW_HOME=str(tmp_path / "home"))
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
