"""pytest plugin for stepflow users and plugin authors (loaded through ``pytest11``).

Fixtures:

``stepflow_home``
    A fresh, empty stepflow home in a temporary folder, set as ``STEPFLOW_HOME`` for the
    test, so runs never touch the project's own ``.stepflow``.

``stepflow_runner``
    Runs the ``stepflow`` command line in a temporary project folder and returns a
    ``RunOutcome`` with the exit code and output, in the spirit of pytest's ``pytester``::

        def test_pipeline_runs(stepflow_runner):
            stepflow_runner.makepyfile(flow='''
                from stepflow import step
                @step
                def a() -> int:
                    return 1
            ''')
            outcome = stepflow_runner.run("run", "flow.py")
            assert outcome.ret == 0
            outcome.fnmatch_lines(["*1 ran in*"])

This module is imported by every pytest session in an environment where stepflow is
installed, so it must import nothing heavy.
"""

from __future__ import annotations

import fnmatch
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator, Sequence
from pathlib import Path

import attrs
import pytest

__all__ = ["RunOutcome", "StepflowRunner"]


@attrs.frozen
class RunOutcome:
    """The result of one ``stepflow`` invocation."""

    ret: int
    stdout: str
    stderr: str

    @property
    def lines(self) -> list[str]:
        return self.stdout.splitlines()

    def fnmatch_lines(self, patterns: Sequence[str], *, stream: str = "stdout") -> None:
        """Assert that each pattern matches a line, in order (like pytest's ``LineMatcher``)."""
        __tracebackhide__ = True
        lines = (self.stdout if stream == "stdout" else self.stderr).splitlines()
        pos = 0
        for pattern in patterns:
            for index in range(pos, len(lines)):
                if fnmatch.fnmatch(lines[index], pattern):
                    pos = index + 1
                    break
            else:
                text = "\n".join(lines)
                pytest.fail(f"no line matches {pattern!r} (after line {pos}) in {stream}:\n{text}")


class StepflowRunner:
    """Writes pipeline files into a temporary project and runs ``stepflow`` there."""

    def __init__(self, path: Path, home: Path) -> None:
        #: the temporary project folder (the working folder of every run)
        self.path = path
        self.home = home

    def makepyfile(self, **files: str) -> Path:
        """Write ``name=source`` pairs as ``name.py``; returns the last path written."""
        written = self.path
        for name, source in files.items():
            written = self.path / f"{name}.py"
            written.parent.mkdir(parents=True, exist_ok=True)
            written.write_text(textwrap.dedent(source).lstrip("\n"))
        return written

    def run(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 120
    ) -> RunOutcome:
        """Run ``stepflow ARGS`` in a fresh process (``python -m stepflow``)."""
        full_env = dict(os.environ)
        full_env["STEPFLOW_HOME"] = str(self.home)
        full_env.update(env or {})
        proc = subprocess.run(
            [sys.executable, "-m", "stepflow", *args],
            cwd=self.path,
            env=full_env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        return RunOutcome(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def stepflow_home(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    """An empty stepflow home, set as ``STEPFLOW_HOME`` for the duration of the test."""
    home = tmp_path_factory.mktemp("stepflow-home")
    monkeypatch.setenv("STEPFLOW_HOME", str(home))
    yield home


@pytest.fixture
def stepflow_runner(tmp_path: Path, stepflow_home: Path) -> StepflowRunner:
    """Run the ``stepflow`` command line against files written into ``tmp_path``."""
    return StepflowRunner(tmp_path, stepflow_home)
