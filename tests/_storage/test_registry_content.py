"""What registered versions hold: files, folders, tables and models, and how they load."""

from __future__ import annotations

import io
import multiprocessing
import os
import pickle
from pathlib import Path

import pandas as pd
import pytest

from stepflow._storage.datastore import ArtifactMissingError, LocalDatastore
from stepflow._storage.hashing import hash_value
from stepflow._storage.registry import Registry
from stepflow._storage.registry_content import (
    dataset_content,
    load_dataset,
    materialize,
    model_content,
    structural_hash,
    want_of,
)
from stepflow._storage.serializers import builtin_serializers
from stepflow.errors import UsageError

SERIALIZERS = builtin_serializers()


@pytest.fixture
def store(tmp_path):
    return LocalDatastore(tmp_path / "store" / "objects")


@pytest.fixture
def home(tmp_path):
    return tmp_path / "home"


def register(store, name, value):
    return Registry(store).add_content(name, dataset_content(store, SERIALIZERS, value))


def load(version, want, store, home):
    return load_dataset(version, want, store=store, serializers=SERIALIZERS, home=home)


@pytest.fixture
def csv(tmp_path):
    path = tmp_path / "in" / "houses.csv"
    path.parent.mkdir()
    path.write_text("price,rooms\n100,3\n250,5\n")
    return path


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "images"
    (root / "cats").mkdir(parents=True)
    (root / "cats" / "a.txt").write_text("meow")
    (root / "dogs.txt").write_text("woof")
    return root


class TestContent:
    def test_file_hash_follows_bytes_and_suffix_not_name(self, store, tmp_path, csv):
        """Same bytes under another name: same content; under another suffix: different."""
        renamed = tmp_path / "houses-2024-01-01.csv"
        renamed.write_bytes(csv.read_bytes())
        as_text = tmp_path / "houses.txt"
        as_text.write_bytes(csv.read_bytes())
        a, b, c = (dataset_content(store, SERIALIZERS, p) for p in (csv, renamed, as_text))
        assert a.kind == "file" and a.size == csv.stat().st_size
        assert a.content_hash == b.content_hash != c.content_hash

    def test_folder_manifest(self, store, folder):
        """A folder holds each file by relative path; any change to a file changes it."""
        first = dataset_content(store, SERIALIZERS, folder)
        assert first.kind == "folder"
        assert sorted(first.objects) == ["cats/a.txt", "dogs.txt"]
        assert first.size == 8
        (folder / "dogs.txt").write_text("WOOF")
        assert dataset_content(store, SERIALIZERS, folder).content_hash != first.content_hash

    def test_folder_rename_of_a_file_changes_content(self, store, folder):
        first = dataset_content(store, SERIALIZERS, folder)
        (folder / "dogs.txt").rename(folder / "hounds.txt")
        assert dataset_content(store, SERIALIZERS, folder).content_hash != first.content_hash

    def test_table_hash_is_the_value_hash(self, store):
        """A DataFrame is stored by the serializers and hashed as step outputs are."""
        frame = pd.DataFrame({"a": [1, 2]})
        content = dataset_content(store, SERIALIZERS, frame)
        assert content.kind == "table"
        assert content.content_hash == hash_value(frame)
        assert content.objects["table"].serializer == "parquet"

    def test_empty_folder_missing_path_and_wrong_type(self, store, tmp_path):
        (tmp_path / "empty").mkdir()
        with pytest.raises(UsageError, match="holds no files"):
            dataset_content(store, SERIALIZERS, tmp_path / "empty")
        with pytest.raises(UsageError, match=r"no file or folder at .*nowhere.csv"):
            dataset_content(store, SERIALIZERS, tmp_path / "nowhere.csv")
        with pytest.raises(UsageError, match="a path to a file or folder, or a pandas DataFrame"):
            dataset_content(store, SERIALIZERS, [1, 2, 3])


class TestLoading:
    @pytest.mark.parametrize("suffix", [".csv", ".tsv", ".parquet"])
    def test_table_files_load_as_frames(self, store, home, tmp_path, suffix):
        frame = pd.DataFrame({"price": [100, 250], "rooms": [3, 5]})
        path = tmp_path / f"houses{suffix}"
        if suffix == ".parquet":
            frame.to_parquet(path)
        else:
            frame.to_csv(path, index=False, sep="\t" if suffix == ".tsv" else ",")
        version = register(store, "houses", path)
        for want in ("frame", "any"):
            pd.testing.assert_frame_equal(load(version, want, store, home), frame)

    def test_file_as_path_keeps_its_name_and_is_read_only(self, store, home, csv):
        version = register(store, "houses", csv)
        path = load(version, "path", store, home)
        assert isinstance(path, Path) and path.name == "houses.csv"
        assert path.read_text() == csv.read_text()
        assert path.is_relative_to(home / "materialized" / "houses")
        assert not os.access(path, os.W_OK) or os.geteuid() == 0
        assert load(version, "str", store, home) == str(path)

    def test_a_changed_copy_is_made_again(self, store, home, csv):
        """A step that writes into its materialized input does not change what the next
        consumer reads."""
        version = register(store, "houses", csv)
        path = load(version, "path", store, home)
        path.chmod(0o644)
        path.write_text("tampered\n")
        again = load(version, "path", store, home)
        assert again.read_text() == csv.read_text()

    def test_folder_as_path(self, store, home, folder):
        version = register(store, "images", folder)
        path = load(version, "any", store, home)
        assert path.is_dir() and path.name == "images"
        assert (path / "cats" / "a.txt").read_text() == "meow"
        (path / "extra.txt").write_text("left by a step")
        assert not (load(version, "path", store, home) / "extra.txt").exists()

    def test_folder_as_frame_is_refused(self, store, home, folder):
        version = register(store, "images", folder)
        with pytest.raises(UsageError, match=r"is a folder of 2 files.*annotate the parameter"):
            load(version, "frame", store, home)

    def test_other_files_as_frame_are_refused(self, store, home, tmp_path):
        path = tmp_path / "notes.txt"
        path.write_text("hello")
        version = register(store, "notes", path)
        with pytest.raises(UsageError, match="stepflow does not read as a DataFrame"):
            load(version, "frame", store, home)
        assert load(version, "any", store, home).read_text() == "hello"

    def test_table_as_parquet_path(self, store, home):
        frame = pd.DataFrame({"a": [1.5, 2.5]})
        version = register(store, "t", frame)
        path = load(version, "path", store, home)
        assert path.name == "t.parquet"
        pd.testing.assert_frame_equal(pd.read_parquet(path), frame)

    def test_pickled_table_as_path_is_refused(self, store, home):
        """An object-column frame is pickled, not Parquet: no file to hand out."""
        version = register(store, "t", pd.DataFrame({"a": ["x", None, 3]}))
        assert version.objects["table"].serializer != "parquet"
        with pytest.raises(UsageError, match=r"annotate the parameter as pd.DataFrame"):
            load(version, "path", store, home)
        assert load(version, "frame", store, home)["a"].tolist() == ["x", None, 3]

    def test_missing_object_is_reported(self, store, home, csv):
        version = register(store, "houses", csv)
        store.delete(version.objects["houses.csv"].name)
        with pytest.raises(ArtifactMissingError):
            load(version, "frame", store, home)

    def test_unsafe_manifest_paths_are_refused(self, store, home, folder):
        """A manifest written elsewhere cannot make a copy escape the home."""
        version = register(store, "images", folder)
        import attrs

        evil = attrs.evolve(version, objects={"../../escape.txt": version.objects["dogs.txt"]})
        with pytest.raises(UsageError, match="unsafe path"):
            materialize(evil, store, home)


@pytest.mark.parametrize(
    ("annotation", "want"),
    [
        (pd.DataFrame, "frame"),
        (Path, "path"),
        (os.PathLike, "path"),
        (Path | None, "path"),
        (str, "str"),
        (object, "any"),
        ("pd.DataFrame", "any"),
    ],
)
def test_want_of(annotation, want):
    assert want_of(annotation) == want


class TestModelContent:
    def test_same_model_from_memory_or_disk_hashes_equal(self, store):
        """A model fitted on frames with shared or separate column-name strings, or loaded
        back from the store, has one content hash."""
        from sklearn.linear_model import LinearRegression

        columns = ["rooms", "area"]  # the same string objects in both places below
        frame = pd.DataFrame({c: [1.0, 2.0, 3.0, 4.0] for c in columns})
        fitted = LinearRegression().fit(frame[columns], [1.0, 2.0, 3.0, 4.5])
        loaded_frame = pickle.loads(pickle.dumps(frame))
        refitted = LinearRegression().fit(loaded_frame, [1.0, 2.0, 3.0, 4.5])
        ref, content, type_name = model_content(store, SERIALIZERS, fitted)
        assert type_name == "sklearn.linear_model._base.LinearRegression"
        assert model_content(store, SERIALIZERS, refitted)[1] == content
        buffer = io.BytesIO(pickle.dumps(fitted))
        assert structural_hash(pickle.load(buffer)) == content
        assert store.exists(ref.name)

    def test_set_order_does_not_count(self):
        a, b = set(), set()
        a.update([1, 9])
        b.update([9, 1])
        assert list(a) != list(b)  # the premise: same set, different iteration order
        assert structural_hash({"s": a}) == structural_hash({"s": b})

    def test_different_models_differ(self):
        assert structural_hash({"factor": 2}) != structural_hash({"factor": 3})

    def test_unpicklable_by_plain_pickle_falls_back(self, store):
        """A lambda cannot be pickled by reference; the stored copy's hash is used."""
        model = {"predict": lambda x: x}
        assert structural_hash(model) is None
        ref, content, _ = model_content(store, SERIALIZERS, model)
        assert content and ref.serializer == "cloudpickle"


def _materialize_and_read(version, store_root, home, start, out) -> None:
    """In a child process: wait for the others, materialize, read what came back."""
    start.wait()
    try:
        path = materialize(version, LocalDatastore(store_root), home)
        out.put(path.read_text())
    except Exception as exc:  # reported to the parent, which fails the test
        out.put(f"{type(exc).__name__}: {exc}")


class TestConcurrentMaterializing:
    def test_processes_racing_for_one_copy_all_read_it(self, store, tmp_path, csv):
        """Worker processes that materialize the same version at once each read the file.

        A process that finished its copy used to have it moved away by one that finished
        later (replacing what it took for a stale copy), so its step read a missing file.
        """
        version = register(store, "houses", csv)
        ctx = multiprocessing.get_context("fork")
        want = csv.read_text()
        for round_ in range(40):
            home = tmp_path / f"home{round_}"
            start, out = ctx.Barrier(4), ctx.Queue()
            procs = [
                ctx.Process(
                    target=_materialize_and_read, args=(version, store.root, home, start, out)
                )
                for _ in range(4)
            ]
            for proc in procs:
                proc.start()
            got = [out.get(timeout=60) for _ in procs]
            for proc in procs:
                proc.join(timeout=60)
            assert got == [want] * 4, f"round {round_}: {got}"
            assert len(list((home / "materialized" / "houses").iterdir())) == 1
