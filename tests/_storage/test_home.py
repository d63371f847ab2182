"""The home as a trust boundary: owner-only folders and files, and homes that are refused."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from stepflow._storage import home as home_mod
from stepflow._storage.home import (
    atomic_write,
    check_home,
    make_private_dirs,
    make_private_sqlite,
    private_opener,
    replacing,
    set_shared_home,
)
from stepflow.errors import UnsafeHomeError, UsageError

OTHER_UID = 12345


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture(autouse=True)
def lenient_umask() -> Iterator[None]:
    """The usual umask, which leaves group and world read bits on what is made."""
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.fixture(autouse=True)
def fresh_checks(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test checks its homes anew, and leaves the process in private mode."""
    monkeypatch.setattr(home_mod, "_checked", set())
    monkeypatch.delenv("STEPFLOW_SHARED_HOME", raising=False)
    yield
    set_shared_home(False)


def test_make_private_dirs_makes_every_level_owner_only(tmp_path: Path) -> None:
    make_private_dirs(tmp_path / "a" / "b" / "c")
    for path in (tmp_path / "a", tmp_path / "a" / "b", tmp_path / "a" / "b" / "c"):
        assert mode(path) == 0o700, path
    # An existing folder is left as it is.
    (tmp_path / "open").mkdir(mode=0o755)
    os.chmod(tmp_path / "open", 0o755)
    make_private_dirs(tmp_path / "open")
    assert mode(tmp_path / "open") == 0o755


def test_make_private_dirs_refuses_a_file_in_the_way(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError):
        make_private_dirs(tmp_path / "file")


def test_private_opener_and_sqlite_files_are_owner_only(tmp_path: Path) -> None:
    with open(tmp_path / "f", "wb", opener=private_opener) as fh:
        fh.write(b"x")
    assert mode(tmp_path / "f") == 0o600
    db = tmp_path / "x.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (x)")
    assert mode(db) == 0o644  # what SQLite makes under umask 022
    make_private_sqlite(db)
    for name in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
        assert mode(name) == 0o600, name
    conn.close()


def test_shared_home_modes_are_group_accessible(tmp_path: Path) -> None:
    set_shared_home(True)
    assert os.environ["STEPFLOW_SHARED_HOME"] == "1"  # for the workers a run starts
    make_private_dirs(tmp_path / "team" / "objects")
    assert mode(tmp_path / "team") == 0o2770
    assert mode(tmp_path / "team" / "objects") == 0o2770
    with open(tmp_path / "team" / "f", "wb", opener=private_opener) as fh:
        fh.write(b"x")
    assert mode(tmp_path / "team" / "f") == 0o660
    set_shared_home(False)
    assert "STEPFLOW_SHARED_HOME" not in os.environ


def test_a_new_or_own_home_passes(tmp_path: Path) -> None:
    check_home(tmp_path / "not" / "made" / "yet")
    (tmp_path / "home").mkdir(mode=0o700)
    check_home(tmp_path / "home")
    # A symlink of one's own to one's own folder is fine.
    (tmp_path / "link").symlink_to(tmp_path / "home")
    check_home(tmp_path / "link")


@pytest.mark.parametrize("bits", [0o777, 0o1777], ids=["world-writable", "sticky"])
def test_a_world_writable_home_is_refused(tmp_path: Path, bits: int) -> None:
    home = tmp_path / "home"
    home.mkdir()
    os.chmod(home, bits)
    with pytest.raises(UnsafeHomeError, match="world-writable") as info:
        check_home(home)
    assert isinstance(info.value, UsageError)  # exit code 2 from the command line
    assert info.value.path == str(home)
    assert f"chmod o-w {home}" in str(info.value)
    # Even a team's home must not be writable by everyone.
    set_shared_home(True)
    with pytest.raises(UnsafeHomeError, match="world-writable"):
        check_home(home)


def test_a_home_owned_by_another_user_is_refused(tmp_path: Path, needs_root: None) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    os.chown(home, OTHER_UID, -1)
    with pytest.raises(UnsafeHomeError, match=f"owned by another user \\(uid {OTHER_UID}\\)") as e:
        check_home(home)
    assert "shared_home = true" in str(e.value)
    assert str(home) in str(e.value)
    # A symlink to that folder is refused the same way.
    (tmp_path / "link").symlink_to(home)
    with pytest.raises(UnsafeHomeError, match="owned by another user"):
        check_home(tmp_path / "link")
    # A team folder on purpose.
    set_shared_home(True)
    check_home(home)


def test_a_symlink_owned_by_another_user_on_the_way_is_refused(
    tmp_path: Path, needs_root: None
) -> None:
    (tmp_path / "real").mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "real")
    os.lchown(link, OTHER_UID, -1)
    with pytest.raises(UnsafeHomeError, match="symlink") as info:
        check_home(link / ".stepflow")
    assert info.value.path == str(link)
    set_shared_home(True)
    check_home(link / ".stepflow")


def test_a_home_is_checked_once_per_process(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    check_home(home)
    os.chmod(home, 0o777)
    check_home(home)  # no second look: the check costs its stat calls once
    home_mod._checked.clear()
    with pytest.raises(UnsafeHomeError):
        check_home(home)


# --- atomic_write and replacing: the one write-then-rename ------------------------------------


class TestAtomicWrite:
    def test_writes_bytes_and_text_owner_only(self, tmp_path: Path) -> None:
        """Bytes and text (as UTF-8) land whole, in missing folders made owner-only."""
        target = tmp_path / "a" / "b" / "doc.json"
        assert atomic_write(target, b"\x00bytes") is True
        assert target.read_bytes() == b"\x00bytes"
        assert atomic_write(target, "tëxt", fsync=True) is True
        assert target.read_text(encoding="utf-8") == "tëxt"
        assert mode(target) == 0o600 and mode(target.parent) == 0o700
        assert os.listdir(target.parent) == ["doc.json"]  # no temporary file is left

    def test_shared_home_is_group_readable(self, tmp_path: Path) -> None:
        """In a shared home the written file is 0660, like every other file."""
        set_shared_home(True)
        atomic_write(tmp_path / "doc", b"x")
        assert mode(tmp_path / "doc") == 0o660

    def test_exclusive_keeps_the_first(self, tmp_path: Path) -> None:
        """``exclusive`` creates the file only if absent and says whether it did."""
        target = tmp_path / "key"
        assert atomic_write(target, b"first", exclusive=True) is True
        assert atomic_write(target, b"second", exclusive=True) is False
        assert target.read_bytes() == b"first"
        assert os.listdir(tmp_path) == ["key"]

    def test_failure_leaves_old_file_and_no_temporary(self, tmp_path: Path) -> None:
        """A failed write raises and leaves the old contents and no temporary file behind."""
        target = tmp_path / "doc"
        target.write_bytes(b"old")
        with pytest.raises(TypeError):
            atomic_write(target, 42)  # type: ignore[arg-type]
        assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["doc"]


class TestReplacing:
    def test_renamed_on_success(self, tmp_path: Path) -> None:
        """The temporary file takes the target's name when the block ends."""
        target = tmp_path / "obj.pkl"
        with replacing(target, suffix=".pkl") as tmp:
            assert tmp.parent == tmp_path and tmp.name.endswith(".pkl")
            assert mode(tmp) == 0o600
            tmp.write_bytes(b"payload")
        assert target.read_bytes() == b"payload" and os.listdir(tmp_path) == ["obj.pkl"]

    def test_removed_on_error(self, tmp_path: Path) -> None:
        """A block that raises leaves neither the target nor the temporary file."""
        target = tmp_path / "obj"
        with pytest.raises(RuntimeError), replacing(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("serializer failed")
        assert os.listdir(tmp_path) == []
