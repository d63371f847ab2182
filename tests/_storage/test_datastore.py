"""The local datastore: objects written atomically, in folders it makes as needed."""

from __future__ import annotations

import os
import shutil
import time

import pytest

from stepflow._storage.datastore import KEYED_HASH_DOC, ArtifactMissingError, LocalDatastore
from stepflow.errors import StepflowError

NAME = "ab" + "0" * 30 + ".pickle"
OTHER = "cd" + "1" * 30 + ".pickle"


def write(store: LocalDatastore, name: str, data: bytes) -> None:
    with store.writer(name) as tmp:
        tmp.write_bytes(data)


def age(path, seconds: float = 60) -> None:
    """Make ``path`` look last changed ``seconds`` ago."""
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_writes_publish_and_leave_no_temporary_files(tmp_path):
    store = LocalDatastore(tmp_path / "objects")
    write(store, NAME, b"hello")
    assert store.local_path(NAME).read_bytes() == b"hello"
    assert list(store.names()) == [NAME]
    assert not any(p.name.startswith(".tmp-") for p in (tmp_path / "objects").rglob("*"))


def test_a_failed_write_publishes_nothing(tmp_path):
    store = LocalDatastore(tmp_path / "objects")
    with pytest.raises(RuntimeError), store.writer(NAME) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("serializer failed")
    with pytest.raises(ArtifactMissingError):
        store.local_path(NAME)
    assert not any((tmp_path / "objects").rglob(".tmp-*"))


def test_stores_of_one_settled_root_share_what_they_know(tmp_path):
    """Folders found once are not asked for again by the next run's store."""
    root = tmp_path / "objects"
    write(LocalDatastore(root), NAME, b"x")
    age(root)
    first, second = LocalDatastore(root), LocalDatastore(root)
    write(first, NAME, b"x")
    assert first._folders is second._folders
    assert root / NAME[:2] in second._folders


def test_a_recently_changed_root_is_not_trusted(tmp_path):
    root = tmp_path / "objects"
    write(LocalDatastore(root), NAME, b"x")
    age(root)
    first = LocalDatastore(root)
    write(first, NAME, b"x")
    write(first, OTHER, b"y")  # a new folder: the root changed just now
    assert LocalDatastore(root)._folders is not first._folders


@pytest.mark.parametrize("removed", ["object folder", "root"])
def test_a_folder_removed_between_runs_is_made_again(tmp_path, removed):
    root = tmp_path / "objects"
    write(LocalDatastore(root), NAME, b"x")
    age(root)
    write(LocalDatastore(root), NAME, b"x")  # its folder is now known
    shutil.rmtree(root / NAME[:2] if removed == "object folder" else root)
    store = LocalDatastore(root)
    write(store, NAME, b"again")
    assert store.local_path(NAME).read_bytes() == b"again"


class TestSecretKey:
    """The key that hashes ``Secret`` parameters belongs to the store (DESIGN section 2)."""

    def test_made_once_owner_only_and_shared_by_every_user_of_the_store(self, tmp_path):
        key = LocalDatastore(tmp_path / "objects").secret_key()
        assert len(key) == 32
        path = tmp_path / "refs" / KEYED_HASH_DOC
        assert path.read_bytes() == key
        assert path.stat().st_mode & 0o077 == 0
        assert LocalDatastore(tmp_path / "objects").secret_key() == key

    def test_a_racing_maker_keeps_the_first_key(self, tmp_path, monkeypatch):
        """Two homes making the key at once end with one key: the later exclusive write
        loses and reads the winner's."""
        first = LocalDatastore(tmp_path / "objects")
        late = LocalDatastore(tmp_path / "objects")
        real_put = late.put_doc

        def put_after_the_other(path, data, **options):
            first.secret_key()  # the other home wins the race just before this write
            return real_put(path, data, **options)

        # On the one instance: a background thread of an earlier test (a run's code
        # snapshot) may still be writing documents through the class.
        monkeypatch.setattr(late, "put_doc", put_after_the_other)
        assert late.secret_key() == first.secret_key()

    def test_the_key_of_an_older_home_is_adopted(self, tmp_path):
        """A home made before the key moved into the store keeps reusing its results."""
        (tmp_path / "secret.key").write_bytes(b"k" * 32)
        assert LocalDatastore(tmp_path / "objects").secret_key() == b"k" * 32

    def test_a_damaged_key_is_a_clear_error_without_its_bytes(self, tmp_path):
        store = LocalDatastore(tmp_path / "objects")
        store.put_doc(KEYED_HASH_DOC, b"short-and-private")
        with pytest.raises(StepflowError, match=r"damaged.*delete it") as caught:
            store.secret_key()
        assert "short-and-private" not in str(caught.value)


def test_objects_and_documents_are_owner_only_whatever_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        store = LocalDatastore(tmp_path / "home" / "objects")
        write(store, NAME, b"hello")
        store.put_doc("datasets/prices/1.json", b"{}")
    finally:
        os.umask(old)
    made = [tmp_path / "home", *(tmp_path / "home").rglob("*")]
    assert len(made) == 8  # home, objects, ab, the object, refs, datasets, prices, 1.json
    for path in made:
        expected = 0o700 if path.is_dir() else 0o600
        assert path.stat().st_mode & 0o777 == expected, path
