"""The home as a trust boundary, black-box: what `stepflow run` makes there is owner-only,
and a home another user could change is refused."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

FLOW = """
from pathlib import Path

import stepflow
from stepflow import Pipeline, Secret, step

@step
def data(n: int = 20_000) -> list[int]:  # past 32 KiB pickled: an object file, not inline
    print("loading", n)
    return list(range(n))

@step
def report(data: list[int]) -> int:
    out = Path("report.txt")
    out.write_text(str(sum(data)))
    stepflow.context().log_artifact(out)
    return len(data)

@step
def model(data: list[int], token: Secret[str] = "k") -> float:
    return float(sum(data))

pipe = Pipeline("homedemo", [data, report, model])
"""


@pytest.fixture(autouse=True)
def lenient_umask() -> Iterator[None]:
    """The usual umask (022), inherited by the `stepflow` processes the tests start."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def modes(top: Path) -> dict[str, int]:
    found = {top.name: stat.S_IMODE(top.stat().st_mode)}
    for path in top.rglob("*"):
        found[str(path.relative_to(top.parent))] = stat.S_IMODE(path.lstat().st_mode)
    return found


def test_everything_a_run_makes_in_a_new_home_is_owner_only(stepflow_runner) -> None:
    stepflow_runner.makepyfile(flow=FLOW)
    top = stepflow_runner.path / "a"
    home = top / "b" / "home"
    for workers in ("1", "2"):
        out = stepflow_runner.run(
            "run", "flow.py:pipe", "--workers", workers, "--regenerate", "--param", "token=s3",
            env={"STEPFLOW_HOME": str(home)},
        )  # fmt: skip
        assert out.ret == 0, out.stderr
    assert stepflow_runner.run("runs", "list", env={"STEPFLOW_HOME": str(home)}).ret == 0
    found = modes(top)
    assert any(name.endswith(".cloudpickle") for name in found)
    assert any(name.endswith(".file") for name in found)
    for name in ("a", "a/b", "a/b/home/runs.db", "a/b/home/index/cache.db", "secret-params.key"):
        assert any(key.endswith(name) for key in found), name
    loose = {name: oct(m) for name, m in found.items() if m & 0o077}
    assert not loose, f"readable or writable by others: {loose}"


def test_a_world_writable_home_is_refused(stepflow_runner) -> None:
    stepflow_runner.makepyfile(flow=FLOW)
    home = stepflow_runner.home
    os.chmod(home, 0o777)
    out = stepflow_runner.run("run", "flow.py:pipe")
    assert out.ret == 2
    assert f"the stepflow home {home} is world-writable" in out.stderr
    assert f"chmod o-w {home}" in out.stderr
    assert "Traceback" not in out.stderr
    assert list(home.iterdir()) == []  # nothing was written there


def test_a_home_owned_by_another_user_is_refused_unless_shared(
    stepflow_runner, needs_root: None
) -> None:
    stepflow_runner.makepyfile(flow=FLOW)
    home = stepflow_runner.home
    os.chown(home, 12345, -1)
    out = stepflow_runner.run("run", "flow.py:pipe")
    assert out.ret == 2
    assert f"the stepflow home {home} is owned by another user (uid 12345)" in out.stderr
    assert "shared_home = true" in out.stderr
    # `stepflow runs` reads run records there without opening the store: refused too.
    assert stepflow_runner.run("runs", "list").ret == 2
    assert list(home.iterdir()) == []  # nothing was written there

    (stepflow_runner.path / "pyproject.toml").write_text("[tool.stepflow]\nshared_home = true\n")
    out = stepflow_runner.run("run", "flow.py:pipe", "--workers", "2")
    assert out.ret == 0, out.stderr
    found = modes(home)
    dirs = {name: m for name, m in found.items() if (home.parent / name).is_dir()}
    files = {name: m for name, m in found.items() if name not in dirs}
    assert set(dirs.values()) == {0o2770} | {stat.S_IMODE(home.stat().st_mode)}
    assert set(files.values()) == {0o660}, {k: oct(v) for k, v in files.items() if v != 0o660}


def test_a_bad_shared_home_setting_is_a_usage_error(stepflow_runner) -> None:
    stepflow_runner.makepyfile(flow=FLOW)
    (stepflow_runner.path / "pyproject.toml").write_text('[tool.stepflow]\nshared_home = "yes"\n')
    out = stepflow_runner.run("run", "flow.py:pipe")
    assert out.ret == 2
    assert "shared_home must be true or false" in out.stderr
