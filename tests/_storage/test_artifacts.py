"""ArtifactIO: values stored once per content, verified before every load."""

from __future__ import annotations

import errno
import threading
from pathlib import Path

import attrs
import pytest

from stepflow._pluginmanager import make_plugin_manager, serializers_of
from stepflow._storage import artifacts
from stepflow._storage.artifacts import INLINE_LIMIT, ArtifactIO
from stepflow._storage.datastore import ArtifactMissingError, CorruptedObjectError, LocalDatastore
from stepflow._storage.hashing import hash_bytes, hash_file
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


# --- outputs kept inside their index record ----------------------------------------------


def _pickled_size(value: object) -> int:
    import cloudpickle

    return len(cloudpickle.dumps(value, protocol=5))


def _bytes_pickling_to(size: int) -> bytes:
    """A bytes value whose pickle is exactly ``size`` bytes long."""
    value = b"x" * (size - 20)
    while _pickled_size(value) < size:
        value += b"x"
    assert _pickled_size(value) == size
    return value


class TestInline:
    def test_a_small_output_is_inline_and_writes_no_file(self, io):
        ref = io.save({"a": [1, 2, 3]}, inline=True)
        assert ref.inline and ref.size == len(ref.data) and ref.digest == hash_bytes(ref.data)
        assert list(io.store.names()) == [] and list(io.store.root.rglob("*")) == []
        assert io.available(ref) and io.load(ref) == {"a": [1, 2, 3]}
        # The same bytes as the object file it would otherwise have been.
        plain = io.save({"a": [1, 2, 3]})
        assert not plain.inline and plain == ref.without_data()
        assert io.store.local_path(plain.name).read_bytes() == ref.data

    def test_only_when_asked(self, io):
        """Registries and log_artifact keep files: only index records hold inline bytes."""
        assert not io.save(1).inline and list(io.store.names())

    @pytest.mark.parametrize(
        ("size", "inline"),
        [(INLINE_LIMIT - 1, True), (INLINE_LIMIT, False), (INLINE_LIMIT + 1, False)],
    )
    def test_the_limit_is_32_kib_exclusive(self, io, size, inline):
        value = _bytes_pickling_to(size)
        ref = io.save(value, inline=True)
        assert ref.size == size and ref.inline is inline
        assert (list(io.store.names()) == []) is inline
        assert io.load(ref) == value
        if not inline:
            path = io.store.local_path(ref.name)
            assert hash_file(path) == ref.digest and path.stat().st_size == size
            assert list(io.store.root.rglob(".tmp-*")) == []

    def test_a_large_value_is_written_once_as_it_grows(self, io, monkeypatch):
        """A value whose size is not known up front (a list) is pickled once: the bytes
        move to the object file at 32 KiB, and the rest is written there directly."""
        writes: list[int] = []
        real = artifacts._Spool.write

        def counting(self, data):
            writes.append(len(memoryview(data).cast("B")))
            return real(self, data)

        monkeypatch.setattr(artifacts._Spool, "write", counting)
        value = list(range(2_000_000))
        ref = io.save(value, inline=True)
        assert not ref.inline and sum(writes) == ref.size > 8 << 20
        assert len(writes) > 10  # in frames, never the whole pickle at once
        assert io.load(ref) == value

    def test_a_known_large_value_goes_to_its_file_directly(self, io, monkeypatch):
        monkeypatch.setattr(artifacts, "_Spool", None)  # would fail if it were used
        ref = io.save(b"z" * (1 << 20), inline=True)
        assert not ref.inline and io.load(ref) == b"z" * (1 << 20)

    def test_small_arrays_are_inline(self, io):
        np = pytest.importorskip("numpy")
        array = np.arange(100, dtype=np.float32).reshape(10, 10)
        ref = io.save(array, inline=True)
        assert ref.inline and ref.serializer == "npy"
        loaded = io.load(ref)
        assert loaded.dtype == array.dtype and (loaded == array).all()
        assert ref.data == io.store.local_path(io.save(array).name).read_bytes()

    def test_damaged_inline_bytes_are_refused_before_they_are_unpickled(self, io):
        ref = io.save([1, 2, 3], inline=True)
        damaged = attrs.evolve(ref, data=ref.data[:-1] + bytes([ref.data[-1] ^ 0xFF]))
        assert io.available(damaged)  # same size: the cheap check passes
        with pytest.raises(CorruptedObjectError, match="inside its cache-index record"):
            io.load(damaged)
        truncated = attrs.evolve(ref, data=ref.data[:3])
        assert not io.available(truncated)

    def test_materialize_writes_the_object_file(self, io):
        ref = io.save("kept", inline=True)
        plain = io.materialize(ref)
        assert not plain.inline and io.available(plain) and io.load(plain) == "kept"
        assert io.materialize(plain) == plain
        damaged = attrs.evolve(ref, data=b"\x00" * ref.size, name="ee" * 16 + ".cloudpickle")
        with pytest.raises(CorruptedObjectError):
            io.materialize(damaged)
        assert not io.store.exists(damaged.name)

    def test_a_failing_serializer_leaves_no_file_behind(self, io):
        with pytest.raises(SerializationError):
            io.save([threading.Lock()], content_hash="ab" * 16, inline=True)
        with pytest.raises(SerializationError):  # after moving to its temporary file
            io.save([b"x" * 40_000, threading.Lock()], content_hash="cd" * 16, inline=True)
        assert list(io.store.names()) == []
        assert list(io.store.root.rglob(".tmp-*")) == []

    def test_a_full_disk_after_moving_to_the_file_names_the_folder(self, io, monkeypatch):
        class Full:
            def write(self, data: object) -> int:
                raise OSError(errno.ENOSPC, "No space left on device")

        real_spill = artifacts._Spool._spill

        def spill_then_fail(self):
            real_spill(self)  # the temporary file is open (and closed by the spool)
            self._file = Full()

        monkeypatch.setattr(artifacts._Spool, "_spill", spill_then_fail)
        with pytest.raises(StorageError, match="the disk is full"):
            io.save(list(range(100_000)), inline=True)
        assert list(io.store.root.rglob(".tmp-*")) == []
