"""The registry: versions as datastore documents, names, aliases, races and pins.

Every test runs against the local datastore and against a real S3 API on loopback (moto), since
the registry must keep all its state in the datastore, whatever kind it is.
"""

from __future__ import annotations

import errno
import functools
import json
import threading

import pytest

from stepflow._pluginmanager import datastore_kinds
from stepflow._storage import stores
from stepflow._storage.artifacts import ArtifactRef
from stepflow._storage.datastore import LocalDatastore
from stepflow._storage.registry import Registry
from stepflow._storage.registry_records import DatasetVersion, check_alias, check_version
from stepflow.errors import NotRegisteredError, StepflowError, StorageError, UsageError

#: the store at a URL, opened with the kinds the installed plugins register
open_datastore = functools.partial(stores.open_datastore, kinds=datastore_kinds())


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    """An empty datastore of each kind."""
    if request.param == "local":
        yield LocalDatastore(tmp_path / "objects")
        return
    s3 = request.getfixturevalue("s3_server")
    opened = open_datastore(s3.url(), home=tmp_path / "home", options=s3.options)
    yield opened
    opened.close()


@pytest.fixture
def registry(store):
    return Registry(store)


def ref(n: int) -> ArtifactRef:
    digest = f"{n:032x}"
    return ArtifactRef(f"{digest}.file", digest, "file", 10 + n, digest)


def add(registry, name="houses", content="a", **kw):
    return registry.add_dataset(
        name,
        kind=kw.pop("kind", "file"),
        content_hash=content,
        size=kw.pop("size", 11),
        objects=kw.pop("objects", {"houses.csv": ref(1)}),
        **kw,
    )


def add_model(registry, name="HousePrices", content="m1", metrics=None, tags=None, obj=None):
    return registry.add_model(
        name,
        content_hash=content,
        obj=obj or ref(5),
        type_name="sklearn.pipeline.Pipeline",
        metrics=metrics or {},
        tags=tags or {},
    )


class TestDatasetVersions:
    def test_first_version_is_1_and_documents_live_in_the_store(self, registry, store):
        """A first registration makes version 1, kept as datasets/<name>/00000001.json."""
        version = add(registry, description="all houses", source={"kind": "path", "path": "/x"})
        assert (version.name, version.version, version.new) == ("houses", 1, True)
        assert store.list_docs("datasets") == ["datasets/houses/00000001.json"]
        doc = json.loads(store.get_doc("datasets/houses/00000001.json"))
        assert doc["kind"] == "file"
        assert doc["description"] == "all houses"
        assert doc["source"] == {"kind": "path", "path": "/x"}
        assert doc["objects"]["houses.csv"]["name"] == ref(1).name

    def test_same_content_returns_the_latest_version(self, registry):
        """Registering unchanged content makes no version and says so with ``new=False``."""
        first = add(registry, content="a")
        again = add(registry, content="a", description="ignored: content is what counts")
        assert again == first
        assert again.new is False
        assert [v.version for v in registry.dataset_versions("houses")] == [1]

    def test_changed_content_makes_the_next_version(self, registry):
        """New content gets 2, then 3; going back to old content is a new version too."""
        numbers = [add(registry, content=c).version for c in ("a", "b", "a")]
        assert numbers == [1, 2, 3]
        assert registry.dataset("houses").content_hash == "a"
        assert registry.dataset("houses", 2).content_hash == "b"

    def test_latest_of_each_data_set(self, registry):
        """``datasets()`` gives each name's latest version, sorted by name."""
        add(registry, "b", "1")
        add(registry, "a", "1")
        add(registry, "a", "2")
        assert [(v.name, v.version) for v in registry.datasets()] == [("a", 2), ("b", 1)]
        assert registry.names("data set") == ["a", "b"]

    def test_unknown_name_lists_what_exists(self, registry):
        """A missing data set is a NotRegisteredError naming close and all names."""
        add(registry, "houses")
        with pytest.raises(NotRegisteredError) as info:
            registry.dataset("housse")
        message = str(info.value)
        assert "no data set named 'housse'" in message
        assert "did you mean 'houses'" in message
        assert "registered data sets: houses" in message
        assert info.value.available == ["houses"]
        assert isinstance(info.value, UsageError) and isinstance(info.value, LookupError)

    def test_unknown_version_lists_the_versions(self, registry):
        """Asking for a version that does not exist lists those that do."""
        add(registry, content="a")
        add(registry, content="b")
        with pytest.raises(NotRegisteredError, match=r"has no version 7; versions: 1, 2"):
            registry.dataset("houses", 7)

    def test_empty_registry(self, registry):
        """Nothing registered: empty lists, and a clear error for a name."""
        assert registry.datasets() == []
        assert registry.models() == []
        with pytest.raises(NotRegisteredError, match="registered data sets: none"):
            registry.dataset_versions("houses")

    def test_record_round_trips_through_its_document(self, registry):
        """``from_dict(to_dict())`` is the identity (``new`` is not part of a record)."""
        version = add(registry, kind="folder", objects={"a/b.csv": ref(1), "c.txt": ref(2)})
        assert DatasetVersion.from_dict(version.to_dict()) == version


class TestNames:
    @pytest.mark.parametrize("bad", ["", "a/b", "../x", ".hidden", "a b", "x" * 101, "dot.", 3])
    def test_bad_names_are_refused(self, registry, bad):
        """Names become folders in the store: only letters, digits, '_', '-', '.' pass."""
        with pytest.raises(UsageError, match=r"name .* is not valid"):
            add(registry, bad)
        with pytest.raises(UsageError, match="is not valid"):
            registry.model(bad)

    @pytest.mark.parametrize("good", ["houses", "House-Prices.v2", "2024_sales"])
    def test_good_names(self, registry, good):
        assert add(registry, good).name == good

    @pytest.mark.parametrize("bad", [0, -1, True, "2", 1.0])
    def test_versions_are_whole_numbers_from_1(self, bad):
        with pytest.raises(UsageError, match="version must be a whole number >= 1"):
            check_version(bad)

    @pytest.mark.parametrize("bad", ["", "1st", "a/b", "has space"])
    def test_bad_aliases(self, bad):
        with pytest.raises(UsageError, match=r"alias .* is not valid"):
            check_alias(bad)

    def test_latest_is_reserved(self):
        """'latest' always means the newest version, so it cannot be set."""
        with pytest.raises(UsageError, match="'latest' always means the newest version"):
            check_alias("latest")


class TestVersionClaims:
    def test_concurrent_registrations_get_distinct_versions(self, registry, store):
        """Eight threads registering different content at once: eight versions, none lost."""
        barrier = threading.Barrier(8)
        made: list[int] = []
        errors: list[BaseException] = []

        def register(i: int) -> None:
            try:
                barrier.wait()
                made.append(add(registry, content=f"content-{i}").version)
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=register, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert sorted(made) == list(range(1, 9))
        contents = {v.content_hash for v in registry.dataset_versions("houses")}
        assert contents == {f"content-{i}" for i in range(8)}

    def test_losing_a_race_to_the_same_content_returns_the_winner(self, tmp_path):
        """When another process claims the number first with the same content, that version
        is returned instead of making a duplicate."""

        class Racing(LocalDatastore):
            raced = False

            def put_doc(self, path, data, *, exclusive=False, sync=True):
                if exclusive and not self.raced:
                    self.raced = True
                    # Another process registers the same content just before us.
                    winner = json.loads(data)
                    winner["description"] = "the winner"
                    super().put_doc(path, json.dumps(winner).encode(), exclusive=True)
                return super().put_doc(path, data, exclusive=exclusive)

        registry = Registry(Racing(tmp_path / "objects"))
        version = add(registry, content="same")
        assert (version.version, version.new, version.description) == (1, False, "the winner")
        assert len(registry.dataset_versions("houses")) == 1

    def test_a_damaged_document_is_a_clear_error(self, registry, store):
        """A version document that is not JSON names itself and the fix."""
        add(registry)
        store.put_doc("datasets/houses/00000002.json", b"{not json")
        with pytest.raises(StepflowError, match=r"00000002.json .* not valid JSON"):
            registry.dataset("houses")


class TestModels:
    def test_versions_metrics_and_tags(self, registry, store):
        """Models are versioned like data sets and keep metrics and tags."""
        v1 = add_model(registry, metrics={"r2": 0.8}, tags={"data": "ames"})
        assert (v1.version, v1.new, v1.metrics, v1.tags) == (1, True, {"r2": 0.8}, {"data": "ames"})
        assert store.list_docs("models") == ["models/HousePrices/00000001.json"]
        assert registry.model("HousePrices").type == "sklearn.pipeline.Pipeline"

    def test_same_content_metrics_and_tags_make_no_version(self, registry):
        """Identical content, metrics and tags return the latest version."""
        add_model(registry, metrics={"r2": 0.8})
        again = add_model(registry, metrics={"r2": 0.8})
        assert (again.version, again.new) == (1, False)

    @pytest.mark.parametrize(
        "change",
        [{"content": "m2"}, {"metrics": {"r2": 0.9}}, {"tags": {"data": "other"}}],
        ids=["content", "metrics", "tags"],
    )
    def test_any_difference_makes_a_version(self, registry, change):
        add_model(registry, metrics={"r2": 0.8})
        assert add_model(registry, **{"metrics": {"r2": 0.8}, **change}).version == 2

    def test_alias_set_moved_and_read(self, registry, store):
        """An alias points at a version, can be moved, and resolves in ``model(alias=)``."""
        add_model(registry, content="m1")
        add_model(registry, content="m2")
        version, previous = registry.set_alias("HousePrices", "production", 1)
        assert (version.version, previous, version.aliases) == (1, None, ("production",))
        assert registry.model("HousePrices", alias="production").content_hash == "m1"
        _, previous = registry.set_alias("HousePrices", "production", 2)
        assert previous == 1
        assert registry.model("HousePrices", alias="production").version == 2
        assert registry.aliases("HousePrices") == {"production": 2}
        assert store.get_doc("models/HousePrices/aliases/production.json") is not None
        assert [v.aliases for v in registry.model_versions("HousePrices")] == [(), ("production",)]

    def test_alias_latest_is_the_newest(self, registry):
        add_model(registry, content="m1")
        add_model(registry, content="m2")
        assert registry.model("HousePrices", alias="latest").version == 2

    def test_unknown_alias_says_how_to_set_it(self, registry):
        add_model(registry)
        registry.set_alias("HousePrices", "staging", 1)
        with pytest.raises(NotRegisteredError) as info:
            registry.model("HousePrices", alias="production")
        message = str(info.value)
        assert "has no alias 'production'; aliases: staging (v1)" in message
        assert "stepflow models alias HousePrices production VERSION" in message

    def test_alias_to_a_missing_version_is_refused(self, registry):
        """Nothing is written when the version does not exist."""
        add_model(registry)
        with pytest.raises(NotRegisteredError, match="has no version 4"):
            registry.set_alias("HousePrices", "production", 4)
        assert registry.aliases("HousePrices") == {}

    def test_version_and_alias_together_are_refused(self, registry):
        add_model(registry)
        with pytest.raises(UsageError, match="give a version or an alias, not both"):
            registry.model("HousePrices", version=1, alias="production")

    def test_unknown_model(self, registry):
        add_model(registry)
        with pytest.raises(NotRegisteredError, match="did you mean 'HousePrices'"):
            registry.model("HousePrice")
        with pytest.raises(NotRegisteredError, match="no model named 'Other'"):
            registry.model("Other", alias="production")


def test_pinned_holds_every_object_of_every_version(registry):
    """``pinned()`` names the objects of all versions of all data sets and models."""
    add(registry, content="a", objects={"a.csv": ref(1)})
    add(registry, content="b", objects={"a.csv": ref(2)})
    add(registry, "folder", kind="folder", objects={"x/1.txt": ref(3), "x/2.txt": ref(4)})
    add_model(registry, obj=ref(5))
    add_model(registry, content="m2", obj=ref(6))
    assert registry.pinned() == {ref(n).name for n in range(1, 7)}


def test_a_registry_write_on_a_read_only_home_names_the_document(tmp_path, monkeypatch):
    registry = Registry(LocalDatastore(tmp_path / "objects"))

    def read_only(*args: object, **kwargs: object) -> bool:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(registry.store, "put_doc", read_only)
    with pytest.raises(StorageError, match="read-only") as caught:
        add(registry)
    assert caught.value.path.endswith("datasets/houses/00000001.json")
    assert "version 1 of data set 'houses'" in str(caught.value)
