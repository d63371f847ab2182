"""Tests for stepflow._storage.source: what the source snapshot counts, its cache, git facts."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stepflow._storage import source as source_module
from stepflow._storage.datastore import LocalDatastore
from stepflow._storage.hashing import hash_bytes, hash_file
from stepflow._storage.source import (
    CACHE_NAME,
    SourceDiff,
    SourceRecordError,
    SourceSnapshot,
    content_hash,
    diff,
    git_facts,
    snapshot,
)
from stepflow._storage.source import store as store_module
from stepflow._storage.source.store import (
    SnapshotError,
    SnapshotFile,
    SnapshotManifest,
    manifest_doc,
    restore_snapshot,
    snapshot_manifest,
    store_snapshot,
)
from stepflow.errors import StepflowWarning, UsageError

# A modification time well outside the cache's two-second "too recent to trust" window.
OLD_NS = 1_600_000_000 * 10**9


def write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def age(path: Path) -> None:
    """Move a file's modification time into the past, so the stat cache may keep it."""
    os.utime(path, ns=(OLD_NS, OLD_NS))


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    return root


@pytest.fixture
def git(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Run git in a folder, isolated from the machine's git configuration."""
    if shutil.which("git") is None:
        reason = "git is not installed; the git facts of a snapshot cannot be tested"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason}, and CI=true requires it")
        pytest.skip(reason)
    config = tmp_path / "gitconfig"
    config.write_text("[init]\n\tdefaultBranch = main\n[commit]\n\tgpgsign = false\n")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(config))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    # A folder under tmp_path must never find a repository above tmp_path.
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    for var in ("AUTHOR", "COMMITTER"):
        monkeypatch.setenv(f"GIT_{var}_NAME", "Test")
        monkeypatch.setenv(f"GIT_{var}_EMAIL", "test@example.invalid")

    def run(cwd: Path, *args: str) -> str:
        proc = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, check=True, timeout=30
        )
        return proc.stdout.strip()

    return run


# --- what counts ------------------------------------------------------------------------------


def test_manifest_holds_each_file_hash_by_relative_posix_path(project):
    """Every file is listed under its relative posix path with the hash of its bytes."""
    write(project, {"a.py": "a = 1\n", "pkg/mod.py": "b = 2\n", "pkg/sub/data.txt": "x"})
    snap = snapshot(project)
    assert snap.files == {
        "a.py": hash_file(project / "a.py"),
        "pkg/mod.py": hash_file(project / "pkg/mod.py"),
        "pkg/sub/data.txt": hash_file(project / "pkg/sub/data.txt"),
    }
    assert len(snap.content_hash) == 32


def test_gitignored_files_and_folders_do_not_count(project):
    """Files and folders matched by the root .gitignore are left out, the ignore file is in."""
    write(
        project,
        {
            ".gitignore": "*.log\ndata/\n/out.txt\n",
            "main.py": "",
            "run.log": "",
            "pkg/debug.log": "",
            "data/big.csv": "1,2",
            "out.txt": "",
            "pkg/out.txt": "",
        },
    )
    assert set(snapshot(project).files) == {".gitignore", "main.py", "pkg/out.txt"}


def test_ignored_folder_is_not_entered(project):
    """As in git, a file in an ignored folder cannot be re-included: the folder is skipped."""
    write(
        project,
        {
            ".gitignore": "data/\n",
            "data/.gitignore": "!keep.csv\n",
            "data/keep.csv": "1",
        },
    )
    assert set(snapshot(project).files) == {".gitignore"}


def test_nested_gitignore_patterns_are_relative_to_their_folder(project):
    """A nested .gitignore applies to its own folder and below, anchored there."""
    write(
        project,
        {
            ".gitignore": "*.csv\n",
            "local.txt": "",
            "x.tmp": "",
            "sub/.gitignore": "/local.txt\n*.tmp\n!keep.csv\n",
            "sub/local.txt": "",
            "sub/deep/local.txt": "",
            "sub/deep/x.tmp": "",
            "sub/keep.csv": "",
            "sub/other.csv": "",
            "other/x.tmp": "",
        },
    )
    assert set(snapshot(project).files) == {
        ".gitignore",
        "local.txt",
        "x.tmp",
        "sub/.gitignore",
        "sub/deep/local.txt",  # /local.txt is anchored to sub/
        "sub/keep.csv",  # re-included by the deeper file
        "other/x.tmp",  # sub/.gitignore does not reach a sibling folder
    }


def test_stepflowignore_ignores_more_and_reincludes(project):
    """.stepflowignore takes precedence: it can ignore more and re-include with '!'."""
    write(
        project,
        {
            ".gitignore": "*.log\nmodels/\n",
            ".stepflowignore": "notes/\n!important.log\n!models/\nmodels/*.bin\n",
            "main.py": "",
            "debug.log": "",
            "important.log": "",
            "notes/todo.md": "",
            "models/config.json": "",
            "models/weights.bin": "",
        },
    )
    assert set(snapshot(project).files) == {
        ".gitignore",
        ".stepflowignore",
        "main.py",
        "important.log",
        "models/config.json",
    }


def test_home_folder_is_excluded_even_when_reincluded(project):
    """The stepflow home inside the project never counts, whatever the ignore files say."""
    write(
        project,
        {
            ".stepflowignore": "!.stepflow/\n!runs.db\n",
            "main.py": "",
            ".stepflow/runs.db": "x",
            ".stepflow/objects/ab.pkl": "x",
        },
    )
    home = project / ".stepflow"
    first = snapshot(project, home=home)
    assert set(first.files) == {".stepflowignore", "main.py"}
    (home / "more.db").write_text("changes every run")
    assert snapshot(project, home=home).content_hash == first.content_hash


def test_home_outside_the_project_changes_nothing(project, tmp_path):
    """A home elsewhere only keeps the cache; a same-named folder in the project counts."""
    write(project, {"main.py": "", ".stepflow/notes.txt": ""})
    age(project / "main.py")
    snap = snapshot(project, home=tmp_path / "home")
    assert set(snap.files) == {"main.py", ".stepflow/notes.txt"}
    assert (tmp_path / "home" / CACHE_NAME).is_file()


def test_git_folder_and_bytecode_are_always_excluded(project):
    """.git, __pycache__ and *.pyc cannot be re-included by .stepflowignore."""
    write(
        project,
        {
            ".stepflowignore": "!.git/\n!__pycache__/\n!*.pyc\n",
            "main.py": "",
            ".git/HEAD": "ref: refs/heads/main\n",
            "vendored/.git": "gitdir: ../.git/modules/vendored\n",
            "vendored/lib.py": "",
            "__pycache__/main.cpython-311.pyc": "",
            "legacy.pyc": "",
        },
    )
    assert set(snapshot(project).files) == {".stepflowignore", "main.py", "vendored/lib.py"}


def test_heavy_folders_are_skipped_only_without_a_root_gitignore(project):
    """Without a .gitignore, virtualenvs, build output and caches are skipped by default."""
    heavy = {
        ".venv/lib/site.py": "",
        "venv/bin/python": "",
        ".tox/py311/x": "",
        "node_modules/left-pad/index.js": "",
        ".mypy_cache/x.json": "",
        ".pytest_cache/v": "",
        ".ruff_cache/x": "",
        "build/lib/x.py": "",
        "dist/x.whl": "",
        "pkg.egg-info/PKG-INFO": "",
    }
    write(project, {"main.py": "", **heavy})
    assert set(snapshot(project).files) == {"main.py"}

    # A .stepflowignore alone does not switch the defaults off, but can re-include.
    write(project, {".stepflowignore": "!build/\n"})
    assert set(snapshot(project).files) == {".stepflowignore", "main.py", "build/lib/x.py"}

    # A project with its own .gitignore says itself what to leave out.
    write(project, {".gitignore": "node_modules/\n"})
    expected = {".gitignore", ".stepflowignore", "main.py", *heavy} - {
        "node_modules/left-pad/index.js"
    }
    assert set(snapshot(project).files) == expected


def test_symlinks_count_by_target_text_and_are_not_followed(project, tmp_path):
    """A link is recorded by its target text; a linked folder's files are not walked."""
    outside = tmp_path / "outside"
    write(outside, {"secret.txt": "s"})
    write(project, {"main.py": "", "same.txt": str(outside)})
    (project / "linked").symlink_to(outside, target_is_directory=True)
    snap = snapshot(project)
    assert set(snap.files) == {"main.py", "same.txt", "linked"}
    # The link and a file holding the target text hash apart.
    assert snap.files["linked"] != snap.files["same.txt"]

    (project / "linked").unlink()
    (project / "linked").symlink_to(tmp_path, target_is_directory=True)
    assert snapshot(project).files["linked"] != snap.files["linked"]


def test_special_files_do_not_count(project):
    """A FIFO is not source: it is skipped, and never opened (which would block)."""
    write(project, {"main.py": ""})
    os.mkfifo(project / "pipe")
    assert set(snapshot(project).files) == {"main.py"}


def test_rootdir_must_be_a_folder(tmp_path):
    """A missing folder or a file as rootdir is a UsageError naming the path."""
    with pytest.raises(UsageError, match=r"missing.*not a folder"):
        snapshot(tmp_path / "missing")
    (tmp_path / "file.py").write_text("")
    with pytest.raises(UsageError, match=r"file\.py.*not a folder"):
        snapshot(tmp_path / "file.py")


# --- the content hash ---------------------------------------------------------------------------


def test_content_change_changes_the_hash(project):
    """Editing, adding, removing or renaming a file changes the content hash."""
    write(project, {"a.py": "x = 1\n", "b.py": "y = 2\n"})
    hashes = [snapshot(project).content_hash]
    write(project, {"a.py": "x = 2\n"})
    hashes.append(snapshot(project).content_hash)
    write(project, {"c.py": ""})
    hashes.append(snapshot(project).content_hash)
    (project / "c.py").unlink()
    (project / "b.py").rename(project / "d.py")
    hashes.append(snapshot(project).content_hash)
    (project / "d.py").unlink()
    hashes.append(snapshot(project).content_hash)
    assert len(set(hashes)) == len(hashes)


def test_equal_content_hashes_equal(project, tmp_path):
    """Two folders with the same files hash alike, wherever they are."""
    write(project, {"a.py": "x", "sub/b.py": "y"})
    other = tmp_path / "copy"
    shutil.copytree(project, other)
    assert snapshot(other).content_hash == snapshot(project).content_hash


def test_touching_a_file_does_not_change_the_hash(project, tmp_path):
    """A new modification time with the same bytes is the same snapshot (and cache entry)."""
    home = tmp_path / "home"
    write(project, {"a.py": "x = 1\n"})
    age(project / "a.py")
    first = snapshot(project, home=home)
    os.utime(project / "a.py", ns=(OLD_NS + 10**9, OLD_NS + 10**9))
    assert snapshot(project, home=home) == first


# --- the stat cache ------------------------------------------------------------------------------


def cache_entries(home: Path, root: Path) -> dict:
    data = json.loads((home / CACHE_NAME).read_text())
    return data["roots"][os.path.realpath(root)]


def test_unchanged_files_are_not_read_again(project, tmp_path):
    """An entry whose stat still matches is trusted: proof, a planted hash is returned as is."""
    home = tmp_path / "home"
    write(project, {"a.py": "x = 1\n", "b.py": "y = 2\n"})
    age(project / "a.py")
    age(project / "b.py")
    first = snapshot(project, home=home)
    data = json.loads((home / CACHE_NAME).read_text())
    entries = data["roots"][os.path.realpath(project)]
    assert set(entries) == {"a.py", "b.py"}
    entries["a.py"][1] = "planted"
    (home / CACHE_NAME).write_text(json.dumps(data))

    second = snapshot(project, home=home)
    assert second.files["a.py"] == "planted"
    assert second.files["b.py"] == first.files["b.py"]


def test_same_size_rewrite_with_restored_mtime_is_seen(project, tmp_path):
    """A rewrite that keeps size and mtime (cp -p, rsync -t) still changes the ctime."""
    home = tmp_path / "home"
    write(project, {"a.py": "x = 1\n"})
    age(project / "a.py")
    first = snapshot(project, home=home)
    assert "a.py" in cache_entries(home, project)
    # Coarse kernel timestamps: wait until the ctime can differ from the first write's.
    time.sleep(0.05)
    write(project, {"a.py": "x = 2\n"})
    age(project / "a.py")
    second = snapshot(project, home=home)
    assert second.files["a.py"] == hash_file(project / "a.py") != first.files["a.py"]


def test_recently_modified_files_are_not_cached(project, tmp_path):
    """A file modified in the last two seconds may change again within one timestamp tick."""
    home = tmp_path / "home"
    write(project, {"old.py": "", "new.py": ""})
    age(project / "old.py")
    snapshot(project, home=home)
    assert set(cache_entries(home, project)) == {"old.py"}


def test_cache_drops_entries_of_files_that_are_gone(project, tmp_path):
    """The cache holds what the last walk saw, so it does not grow with deleted files."""
    home = tmp_path / "home"
    write(project, {"a.py": "", "b.py": ""})
    age(project / "a.py")
    age(project / "b.py")
    snapshot(project, home=home)
    (project / "b.py").unlink()
    snapshot(project, home=home)
    assert set(cache_entries(home, project)) == {"a.py"}


def settle(root: Path) -> None:
    """Age every folder and ignore file under ``root``, so the walk may be kept."""
    for path in [root, *root.rglob("*")]:
        if path.is_dir() or path.name in (".gitignore", ".stepflowignore"):
            age(path)


def edit_aged(path: Path, text: str) -> None:
    path.write_text(text)
    age(path)


def kept_walk(home: Path, root: Path):
    data = json.loads((home / CACHE_NAME).read_text())
    return data.get("walks", {}).get(os.path.realpath(root))


@pytest.fixture
def walked(project, tmp_path):
    """A project whose walk is kept in the home: ``(project, home, first snapshot)``."""
    home = tmp_path / "home"
    write(
        project,
        {
            ".gitignore": "*.log\nbuild/\n",
            "a.py": "a",
            "notes.log": "ignored",
            "pkg/b.py": "b",
            "pkg/.gitignore": "scratch.py\n",
            "pkg/scratch.py": "ignored",
            "build/out.py": "ignored",
        },
    )
    settle(project)
    first = snapshot(project, home=home)
    assert set(first.files) == {".gitignore", "a.py", "pkg/b.py", "pkg/.gitignore"}
    assert kept_walk(home, project) is not None
    return project, home, first


def test_an_unchanged_walk_is_not_repeated(walked, monkeypatch):
    project, home, first = walked

    def no_walk(*args, **kwargs):
        raise AssertionError("the folder was walked again")

    monkeypatch.setattr(source_module, "_walk", no_walk)
    assert snapshot(project, home=home) == first


def test_an_unchanged_walk_does_not_import_pathspec(walked):
    project, home, first = walked
    code = (
        "import sys, json; from pathlib import Path\n"
        "from stepflow._storage.source import snapshot\n"
        f"snap = snapshot(Path({str(project)!r}), home=Path({str(home)!r}))\n"
        "print(json.dumps([snap.content_hash, 'pathspec' in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == [first.content_hash, False]


@pytest.mark.parametrize(
    "change, added, removed",
    [
        (lambda p: (p / "c.py").write_text("c"), {"c.py"}, set()),
        (lambda p: (p / "pkg" / "b.py").unlink(), set(), {"pkg/b.py"}),
        (lambda p: (p / "pkg" / "b.py").rename(p / "pkg" / "d.py"), {"pkg/d.py"}, {"pkg/b.py"}),
        (
            lambda p: (p / "pkg" / "new").mkdir() or (p / "pkg/new/e.py").write_text("e"),
            {"pkg/new/e.py"},
            set(),
        ),
        (
            # Same size, and the old modification time restored: only the ctime tells.
            lambda p: edit_aged(p / "pkg" / ".gitignore", "b.py\n#1234\n"),
            {"pkg/scratch.py"},
            {"pkg/b.py"},
        ),
        # build/ stays out: without a root .gitignore the default ignores apply
        (lambda p: (p / ".gitignore").unlink(), {"notes.log"}, {".gitignore"}),
        (lambda p: (p / ".stepflowignore").write_text("a.py\n"), {".stepflowignore"}, {"a.py"}),
    ],
    ids=[
        "add",
        "remove-nested",
        "rename",
        "new-folder",
        "edit-nested-ignore",
        "drop-gitignore",
        "new-stepflowignore",
    ],
)
def test_a_changed_folder_or_ignore_file_is_walked_again(walked, change, added, removed):
    project, home, first = walked
    time.sleep(0.05)  # coarse timestamps: let the change's times differ from the first walk's
    change(project)
    again = snapshot(project, home=home)
    assert set(again.files) - set(first.files) == added
    assert set(first.files) - set(again.files) == removed


def test_a_recently_changed_folder_keeps_no_walk(project, tmp_path):
    home = tmp_path / "home"
    write(project, {"a.py": "a"})
    age(project / "a.py")  # the file's hash is kept, but its folder changed just now
    snapshot(project, home=home)
    assert "a.py" in cache_entries(home, project)
    assert kept_walk(home, project) is None


def test_projects_sharing_a_home_keep_their_own_entries(tmp_path):
    """One cache file serves several projects without them evicting each other."""
    home = tmp_path / "home"
    one, two = tmp_path / "one", tmp_path / "two"
    write(one, {"a.py": "1"})
    write(two, {"b.py": "2"})
    age(one / "a.py")
    age(two / "b.py")
    snapshot(one, home=home)
    snapshot(two, home=home)
    assert set(cache_entries(home, one)) == {"a.py"}
    assert set(cache_entries(home, two)) == {"b.py"}


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        "",
        "[]",
        '{"version": 999, "roots": {}}',
        '{"version": 1, "roots": []}',
        '{"version": 1, "roots": {"ROOT": {"a.py": "bare string", "b.py": [[1, 2], 3]}}}',
    ],
    ids=["bad-json", "empty", "list", "other-version", "bad-roots", "bad-entries"],
)
def test_corrupt_cache_file_is_ignored_and_replaced(project, tmp_path, content):
    """A damaged cache is a miss: the snapshot is right, and a good cache is written."""
    home = tmp_path / "home"
    home.mkdir()
    write(project, {"a.py": "x", "b.py": "y"})
    age(project / "a.py")
    age(project / "b.py")
    expected = snapshot(project)
    cache = home / CACHE_NAME
    cache.write_text(content.replace("ROOT", os.path.realpath(project)))
    assert snapshot(project, home=home) == expected
    assert set(cache_entries(home, project)) == {"a.py", "b.py"}


def test_cache_write_failure_warns_and_keeps_the_snapshot(project, tmp_path):
    """An unwritable home costs speed only: a StepflowWarning, and the right snapshot."""
    home = tmp_path / "home"
    home.write_text("a file where the home folder should be")
    write(project, {"a.py": "x"})
    age(project / "a.py")
    with pytest.warns(StepflowWarning, match="could not write the source stat cache"):
        snap = snapshot(project, home=home)
    assert snap == snapshot(project)
    assert not list(tmp_path.glob("**/.tmp-source-cache-*"))


# --- git facts -----------------------------------------------------------------------------------


def test_git_commit_and_dirty_flag(project, git):
    """The commit is HEAD; edits and untracked files make the tree dirty, committing cleans it."""
    write(project, {"main.py": "x = 1\n"})
    git(project, "init", "-q")
    git(project, "add", "main.py")
    git(project, "commit", "-q", "-m", "first")
    head = git(project, "rev-parse", "HEAD")
    snap = snapshot(project)
    assert (snap.git_commit, snap.git_dirty) == (head, False)

    write(project, {"main.py": "x = 2\n"})
    assert (snapshot(project).git_commit, snapshot(project).git_dirty) == (head, True)

    git(project, "commit", "-q", "-am", "second")
    assert git_facts(project) == (git(project, "rev-parse", "HEAD"), False)

    write(project, {"new.py": ""})
    assert git_facts(project)[1] is True


def test_stepflow_home_does_not_make_the_tree_dirty(project, git):
    """Each run writes to the home; an unignored home inside the repository is not a change."""
    write(project, {"main.py": ""})
    git(project, "init", "-q")
    git(project, "add", "main.py")
    git(project, "commit", "-q", "-m", "first")
    age(project / "main.py")
    home = project / ".stepflow"
    write(home, {"runs.db": ""})
    snap = snapshot(project, home=home)
    assert snap.git_dirty is False
    assert (home / CACHE_NAME).is_file()
    assert git_facts(project)[1] is True  # without the exclusion it would be


def test_project_in_a_subfolder_of_the_repository(tmp_path, git):
    """Facts are the repository's: a change outside the project folder makes it dirty too."""
    repo = tmp_path / "repo"
    write(repo, {"README.md": "", "proj/main.py": ""})
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "first")
    assert git_facts(repo / "proj") == (git(repo, "rev-parse", "HEAD"), False)
    write(repo, {"README.md": "changed"})
    assert git_facts(repo / "proj")[1] is True


def test_repository_without_commits(project, git):
    """Before the first commit there is no commit id, but dirtiness is known."""
    git(project, "init", "-q")
    assert git_facts(project) == (None, False)
    write(project, {"main.py": ""})
    snap = snapshot(project)
    assert (snap.git_commit, snap.git_dirty) == (None, True)


def test_not_a_repository(project, git):
    """Outside any repository both facts are None, and the snapshot is still taken."""
    write(project, {"main.py": ""})
    snap = snapshot(project)
    assert (snap.git_commit, snap.git_dirty) == (None, None)
    assert set(snap.files) == {"main.py"}


def test_git_not_installed(project, tmp_path, monkeypatch):
    """Without git on PATH both facts are None; nothing crashes."""
    write(project, {"main.py": ""})
    (project / ".git").mkdir()  # looks like a repository: git would be started
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    snap = snapshot(project)
    assert (snap.git_commit, snap.git_dirty) == (None, None)
    assert set(snap.files) == {"main.py"}


def _spy_on_git(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Put a ``git`` first on PATH that notes each start in a file, then runs the real git."""
    real = shutil.which("git")
    folder = tmp_path / "spy-bin"
    folder.mkdir()
    started = tmp_path / "git-started"
    spy = folder / "git"
    spy.write_text(f'#!/bin/sh\necho "$@" >> "{started}"\nexec "{real}" "$@"\n')
    spy.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    return started


def test_git_is_not_started_outside_a_repository(project, git, tmp_path, monkeypatch):
    """No ``.git`` from the project up and no GIT_DIR: the facts are None without starting
    git; once the folder is a repository, git is asked again."""
    started = _spy_on_git(tmp_path, monkeypatch)
    write(project, {"main.py": ""})
    snap = snapshot(project)
    assert (snap.git_commit, snap.git_dirty) == (None, None)
    assert not started.exists()
    git(project, "init", "-q")
    assert git_facts(project) == (None, True)
    assert "status" in started.read_text()


def test_a_git_file_counts_as_a_repository(tmp_path, git, monkeypatch):
    """A linked work tree has a ``.git`` file, not a folder: its facts are still read."""
    repo = tmp_path / "repo"
    write(repo, {"main.py": ""})
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "first")
    git(repo, "worktree", "add", "-q", str(tmp_path / "linked"))
    linked = tmp_path / "linked"
    assert (linked / ".git").is_file()
    started = _spy_on_git(tmp_path, monkeypatch)
    assert git_facts(linked) == (git(repo, "rev-parse", "HEAD"), False)
    assert started.exists()


def test_git_dir_in_the_environment_is_followed(tmp_path, project, git, monkeypatch):
    """GIT_DIR points git at a repository elsewhere: git is asked even with no ``.git``."""
    repo = tmp_path / "repo"
    write(repo, {"main.py": ""})
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "first")
    head = git(repo, "rev-parse", "HEAD")
    write(project, {"main.py": ""})
    monkeypatch.setenv("GIT_DIR", str(repo / ".git"))
    monkeypatch.setenv("GIT_WORK_TREE", str(project))
    assert git_facts(project) == (head, False)


# --- records and diffs ---------------------------------------------------------------------------


def test_to_dict_round_trips_through_json_and_pickle(project):
    """A snapshot survives JSON (run records) and pickling (worker processes) unchanged."""
    write(project, {"a.py": "x", "é/ü.py": "y"})
    snap = SourceSnapshot("f" * 32, {"a.py": "1"}, "abc", True)
    for value in (snap, snapshot(project)):
        assert SourceSnapshot.from_dict(json.loads(json.dumps(value.to_dict()))) == value
        assert pickle.loads(pickle.dumps(value)) == value
    assert snap.to_dict() == {
        "content_hash": "f" * 32,
        "files": {"a.py": "1"},
        "git_commit": "abc",
        "git_dirty": True,
    }


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"files": {}}, "lacks content_hash"),
        ({"content_hash": "x"}, "lacks files"),
        ({"content_hash": 1, "files": {}}, "'content_hash' must be a string"),
        ({"content_hash": "x", "files": ["a.py"]}, "'files' must be a mapping"),
        ({"content_hash": "x", "files": {"a.py": 1}}, "'files' must be a mapping"),
        ({"content_hash": "x", "files": {}, "git_commit": 5}, "'git_commit' must be"),
        ({"content_hash": "x", "files": {}, "git_dirty": "yes"}, "'git_dirty' must be a bool"),
        ("not a dict", "must be a mapping, not str"),
    ],
)
def test_from_dict_names_what_is_wrong(data, message):
    """A malformed record is a SourceRecordError (also a ValueError) naming the bad key."""
    with pytest.raises(SourceRecordError, match=message) as info:
        SourceSnapshot.from_dict(data)
    assert isinstance(info.value, ValueError)


def test_from_dict_reads_records_without_git_facts():
    """git_commit and git_dirty may be absent (a record written where git was unknown)."""
    snap = SourceSnapshot.from_dict({"content_hash": "x", "files": {}})
    assert (snap.git_commit, snap.git_dirty) == (None, None)


def test_diff_sorts_added_removed_changed():
    """Each kind of difference is a sorted tuple; unchanged paths appear nowhere."""
    old = {"a.py": "1", "b.py": "2", "z.py": "9", "same.py": "s", "gone2.py": "0", "gone.py": "0"}
    new = {"b.py": "3", "a.py": "4", "same.py": "s", "new2.py": "5", "new.py": "5", "z.py": "9"}
    result = diff(old, new)
    assert result == SourceDiff(
        added=("new.py", "new2.py"), removed=("gone.py", "gone2.py"), changed=("a.py", "b.py")
    )
    assert result.text() == (
        "changed: a.py, b.py; added: new.py, new2.py; removed: gone.py, gone2.py"
    )
    assert result


def test_diff_of_equal_manifests_is_empty():
    """Equal manifests give an empty, false diff that says so."""
    result = diff({"a.py": "1"}, {"a.py": "1"})
    assert result == SourceDiff()
    assert not result
    assert result.text() == "no changes"


def test_diff_text_is_shortened_past_the_limit():
    """Long lists name the first paths and count the rest."""
    result = diff({}, {f"f{i:02}.py": "1" for i in range(15)})
    assert result.text(limit=2) == "added: f00.py, f01.py (+13 more)"
    assert result.text(limit=None).count(".py") == 15


def test_diff_of_two_snapshots(project):
    """diff works on the manifests of real snapshots."""
    write(project, {"a.py": "1", "b.py": "2"})
    before = snapshot(project)
    write(project, {"a.py": "changed", "c.py": "3"})
    (project / "b.py").unlink()
    assert diff(before.files, snapshot(project).files).text() == (
        "changed: a.py; added: c.py; removed: b.py"
    )


# --- the stored snapshot (stepflow._storage.source.store) ----------------------------------


class CountingStore(LocalDatastore):
    """A local store that counts the documents written to it."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.puts: list[str] = []

    def put_doc(self, path, data, *, exclusive=False, sync=True):
        self.puts.append(path)
        return super().put_doc(path, data, exclusive=exclusive)


class TestStoredSnapshot:
    @pytest.fixture
    def store(self, tmp_path):
        return CountingStore(tmp_path / "store" / "objects")

    @pytest.fixture
    def home(self, tmp_path):
        return tmp_path / "home"

    def test_store_and_restore_the_exact_files(self, project, store, home, tmp_path):
        write(project, {"pkg/mod.py": "x = 1\n", "run.sh": "#!/bin/sh\n"})
        (project / "run.sh").chmod(0o755)
        (project / "alias.py").symlink_to("pkg/mod.py")
        snap = store_snapshot(project, store, home=home)
        done = restore_snapshot(snap.content_hash, store, tmp_path / "out")
        out = tmp_path / "out"
        for rel in snap.files:
            if (project / rel).is_symlink():
                assert os.readlink(out / rel) == os.readlink(project / rel)
            else:
                assert (out / rel).read_bytes() == (project / rel).read_bytes(), rel
        assert os.access(out / "run.sh", os.X_OK) and not os.access(out / "pkg/mod.py", os.X_OK)
        assert done.written == len(snap.files) and not done.skipped
        manifest = snapshot_manifest(snap.content_hash, store)
        assert {f.path: f.size for f in manifest.files}["pkg/mod.py"] == 6

    def test_each_file_stored_once_and_unchanged_code_stores_nothing(self, project, store, home):
        write(project, {"a.py": "a\n", "b.py": "b\n", "copy.py": "a\n"})
        first = store_snapshot(project, store, home=home)
        files = [p for p in store.puts if p.startswith("source/files/")]
        assert len(files) == 2  # a.py and copy.py share their bytes
        store.puts.clear()
        assert store_snapshot(project, store, home=home) == first
        assert store.puts == []
        (project / "b.py").write_text("b, edited\n")
        second = store_snapshot(project, store, home=home)
        assert second.content_hash != first.content_hash
        assert len([p for p in store.puts if p.startswith("source/files/")]) == 1
        assert store.puts[-1] == manifest_doc(second.content_hash)

    def test_unchanged_files_are_not_read_again(self, project, store, home, monkeypatch):
        write(project, {"a.py": "a\n", "b.py": "b\n"})
        for path in project.rglob("*"):
            age(path)
        store_snapshot(project, store, home=home)
        (project / "b.py").write_text("b, edited\n")
        opened: list[str] = []
        real_open = open

        def spy(path, *args, **kwargs):
            opened.append(os.fspath(path))
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr(store_module, "open", spy, raising=False)
        store_snapshot(project, store, home=home)
        assert [os.path.basename(p) for p in opened] == ["b.py"]

    def test_a_store_emptied_behind_the_memo_is_filled_again(self, project, store, home, tmp_path):
        write(project, {"a.py": "a\n"})
        store_snapshot(project, store, home=home)
        shutil.rmtree(store.docs_root)
        (project / "b.py").write_text("b\n")
        snap = store_snapshot(project, store, home=home)
        restore_snapshot(snap.content_hash, store, tmp_path / "out")
        assert (tmp_path / "out" / "a.py").read_text() == "a\n"

    def test_restore_checks_each_files_hash(self, project, store, home, tmp_path):
        write(project, {"a.py": "a\n"})
        snap = store_snapshot(project, store, home=home)
        doc = store.docs_root / "source" / "files" / snap.files["a.py"][:2] / snap.files["a.py"]
        doc.write_bytes(b"tampered\n")
        with pytest.raises(SnapshotError, match=r"'a\.py' is damaged"):
            restore_snapshot(snap.content_hash, store, tmp_path / "out")
        doc.unlink()
        with pytest.raises(SnapshotError, match=r"'a\.py' .*is missing"):
            restore_snapshot(snap.content_hash, store, tmp_path / "out2")

    def test_a_manifest_that_does_not_match_its_id_is_refused(self, project, store, home):
        write(project, {"a.py": "a\n"})
        snap = store_snapshot(project, store, home=home)
        path = store.docs_root / manifest_doc(snap.content_hash)
        data = json.loads(path.read_text())
        data["files"]["b.py"] = data["files"]["a.py"]
        path.write_text(json.dumps(data))
        with pytest.raises(SnapshotError, match="do not hash to its id"):
            snapshot_manifest(snap.content_hash, store)

    def test_non_empty_destination_needs_force(self, project, store, home, tmp_path):
        write(project, {"a.py": "a\n"})
        snap = store_snapshot(project, store, home=home)
        (tmp_path / "busy").mkdir()
        (tmp_path / "busy" / "mine.txt").write_text("mine")
        with pytest.raises(UsageError, match=r"not empty.*--force"):
            restore_snapshot(snap.content_hash, store, tmp_path / "busy")
        restore_snapshot(snap.content_hash, store, tmp_path / "busy", force=True)
        assert (tmp_path / "busy" / "a.py").read_text() == "a\n"
        assert (tmp_path / "busy" / "mine.txt").read_text() == "mine"

    def test_big_files_are_listed_but_left_out(self, project, store, home, tmp_path, monkeypatch):
        monkeypatch.setattr(store_module, "MAX_FILE_SIZE", 10)
        write(project, {"a.py": "a\n", "data.csv": "x" * 100})
        snap = store_snapshot(project, store, home=home)
        left = {f.path: f.left_out for f in snapshot_manifest(snap.content_hash, store).files}
        assert left["a.py"] is None and "larger than" in left["data.csv"]
        done = restore_snapshot(snap.content_hash, store, tmp_path / "out")
        assert "data.csv" in done.skipped and not (tmp_path / "out" / "data.csv").exists()


def plant(store: LocalDatastore, files: dict[str, dict]) -> str:
    """Store a hand-made manifest (as someone with write access to the store could)."""
    snapshot_id = content_hash({p: e["hash"] for p, e in files.items()})
    raw = json.dumps({"format": "stepflow-source-manifest-1", "id": snapshot_id, "files": files})
    store.put_doc(manifest_doc(snapshot_id), raw.encode())
    return snapshot_id


class TestHostileManifest:
    @pytest.mark.parametrize(
        "name", ["../evil.py", "/tmp/evil.py", "a/../../evil.py", "./x", "a//b", "a\\..\\b"]
    )
    def test_names_escaping_the_folder_are_refused(self, tmp_path, name):
        store = LocalDatastore(tmp_path / "objects")
        data = b"evil\n"
        digest = hash_bytes(data)
        store.put_doc(f"source/files/{digest[:2]}/{digest}", data)
        snapshot_id = plant(store, {"ok.py": {"hash": digest, "size": 5}, name: {"hash": digest}})
        dest = tmp_path / "deep" / "out"
        with pytest.raises(SnapshotError, match="outside the folder"):
            restore_snapshot(snapshot_id, store, dest)
        assert not dest.exists()  # refused before anything was written
        assert not (tmp_path / "deep" / "evil.py").exists()

    def test_links_leading_outside_are_not_made(self, tmp_path):
        store = LocalDatastore(tmp_path / "objects")

        def link(target):
            return {
                "hash": hash_bytes(b"symlink\0" + target.encode()),
                "kind": "link",
                "link": target,
            }

        snapshot_id = plant(
            store,
            {
                "abs": link("/etc"),
                "up": link("../outside"),
                "here": link("."),
                "chain": link("here/.."),
                "fine": link("here"),
            },
        )
        done = restore_snapshot(snapshot_id, store, tmp_path / "out")
        assert set(done.skipped) == {"abs", "up", "chain"}
        assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["fine", "here"]

    def test_a_file_under_a_link_of_the_snapshot_is_refused(self, tmp_path):
        store = LocalDatastore(tmp_path / "objects")
        (tmp_path / "victim").mkdir()
        data = b"evil\n"
        digest = hash_bytes(data)
        store.put_doc(f"source/files/{digest[:2]}/{digest}", data)
        out = tmp_path / "out"
        out.mkdir()
        (out / "sub").symlink_to(tmp_path / "victim")
        snapshot_id = plant(store, {"sub/x.py": {"hash": digest, "size": 5}})
        with pytest.raises(SnapshotError, match="is a link"):
            restore_snapshot(snapshot_id, store, out, force=True)
        assert not (tmp_path / "victim" / "x.py").exists()


def test_manifest_round_trip():
    digest = "0" * 32
    manifest = SnapshotManifest(content_hash({"a.py": digest}), (SnapshotFile("a.py", digest, 3),))
    assert SnapshotManifest.from_json(manifest.to_json(), manifest.id) == manifest
