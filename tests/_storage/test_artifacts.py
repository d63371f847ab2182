"""ArtifactIO: values stored once per content, verified before every load."""

from __future__ import annotations

import errno
import threading
from pathlib import Path

import pytest

from stepflow._pluginmanager import make_plugin_manager, serializers_of
from stepflow._storage.artifacts import ArtifactIO
from stepflow._storage.datastore import ArtifactMissingError, LocalDatastore
from stepflow._storage.hashing import hash_file
from stepflow._storage.serializers import SerializationError
from stepflow.errors import StorageError


@pytest.fixture
def io(tmp_path: Path) -> ArtifactIO:
    return ArtifactIO(LocalDatastore(tmp_path / "objects"), serializers_of(make_plugin_manager()))


def test_a_value_round_trips_and_equal_values_share_one_object(io):
    first = io.save({"a": [1, 2, 3]})
    second = io.save({"a": [1, 2, 3]})
    assert first == second and first.serializer == "cloudpickle"
    assert io.load(first) == {"a": [1, 2, 3]}
    path = io.store.local_path(first.name)
    assert first.size == path.stat().st_size and first.digest == hash_file(path)
    assert list(io.store.names()) == [first.name]


def test_a_large_object_gets_the_same_digest_as_a_small_read(io):
    """Large objects are hashed through a memory mapping; the digest must not change."""
    value = bytes(range(256)) * (40 << 10)  # 10 MB: past hash_file's 8 MB chunk
    ref = io.save(value)
    assert ref.digest == hash_file(io.store.local_path(ref.name), chunk=1 << 30)
    assert io.load(ref) == value


def test_a_tampered_object_is_refused_before_it_is_unpickled(io):
    """A byte changed in place keeps the size, so only the digest, checked before any
    unpickling, catches it."""
    ref = io.save([1, 2, 3])
    path = io.store.local_path(ref.name)
    data = bytearray(path.read_bytes())
    data[-2] ^= 0xFF
    path.write_bytes(bytes(data))
    assert io.available(ref)  # the cheap size check passes
    with pytest.raises(ArtifactMissingError, match="corrupted"):
        io.load(ref)


def test_saving_again_repairs_a_damaged_object(io):
    ref = io.save("text")
    path = io.store.local_path(ref.name)
    path.write_bytes(b"xx")
    assert not io.available(ref)  # the size no longer matches
    assert io.save("text") == ref
    assert io.available(ref) and io.load(ref) == "text"


def test_a_value_no_serializer_can_store_names_its_type_and_each_failure(io):
    with pytest.raises(SerializationError) as caught:
        io.save(threading.Lock(), content_hash="ab" * 16)
    error = caught.value
    assert "_thread.lock" in str(error) and "stepflow_serializer_types" in str(error)
    assert [name for name, _ in error.failures] == ["cloudpickle"]
    assert error.value_type is type(threading.Lock())
    assert list(io.store.names()) == []  # no partial object left behind


def test_an_output_that_does_not_fit_names_its_size_and_folder(io, monkeypatch):
    """ENOSPC while writing an object is the disk's fault, not the value's: no other
    serializer is tried, and no serializer is asked for."""
    serializer = io.serializers[-1]  # cloudpickle, which takes bytes

    def full(value: object, path: Path) -> None:
        path.write_bytes(b"x" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(serializer, "dump", full)
    with pytest.raises(StorageError) as caught:
        io.save(b"y" * 3_000_000)
    message = str(caught.value)
    assert "register a serializer" not in message
    assert "builtins.bytes value (2.9 MiB in memory" in message
    assert "the disk is full" in message and "1000 B of it had been written" in message
    assert caught.value.path.startswith(str(io.store.root))
    assert list(io.store.root.rglob(".tmp-*")) == []  # the partial file is gone


def test_an_output_on_a_real_full_disk(small_disk):
    """The same on a 1 MB tmpfs (needs mount rights: skipped elsewhere)."""
    io = ArtifactIO(LocalDatastore(small_disk / "objects"), serializers_of(make_plugin_manager()))
    with pytest.raises(StorageError, match=r"2\.0 MiB in memory.*the disk is full"):
        io.save(b"z" * (2 << 20))
    assert io.load(io.save(b"fits")) == b"fits"  # nothing was left behind
