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
            outcome.assert_outcomes(ran=1)

    Given a ``Pipeline`` instead of command-line words, it runs the pipeline in this
    process (in the test's home) and returns its ``RunResult``; ``stub={"houses": df}``
    replaces an upstream output, so its producer does not run::

        result = stepflow_runner.run(pipeline, stub={"houses": small_frame})
        result.assert_outcomes(ran=2)

This module is imported by every pytest session in an environment where stepflow is
installed, so it must import nothing heavy.
"""

from __future__ import annotations

import fnmatch
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

import attrs
import pytest

if TYPE_CHECKING:
    from stepflow._execution.result import RunResult
    from stepflow._pipeline import Pipeline

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

    def parseoutcomes(self) -> dict[str, int]:
        """The counts of the summary line (``3 ran, 1 failed in 0.20s``) by state.

        :raises ValueError: the output has no summary line (the run never started).
        """
        for line in reversed(_ANSI.sub("", self.stdout).splitlines()):
            if _SUMMARY.search(line):
                return {state: int(n) for n, state in _COUNT.findall(line)}
        raise ValueError(f"no summary line in the output of stepflow:\n{self.stdout}")

    def assert_outcomes(
        self, *, ran: int = 0, reused: int = 0, failed: int = 0, skipped: int = 0
    ) -> None:
        """Assert the summary line's counts, like pytester's ``assert_outcomes``: every
        state not named must be 0."""
        __tracebackhide__ = True
        from stepflow._execution.result import assert_counts

        expected = {"ran": ran, "reused": reused, "failed": failed, "skipped": skipped}
        assert_counts(self.parseoutcomes(), expected)

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


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_SUMMARY = re.compile(r"\bin \d+\.\d+s\b")
_COUNT = re.compile(r"(\d+) (ran|reused|failed|skipped)\b")


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

    @overload
    def run(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 120
    ) -> RunOutcome: ...

    @overload
    def run(
        self,
        pipeline: Pipeline,
        /,
        *,
        stub: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> RunResult: ...

    def run(self, *args: Any, **kwargs: Any) -> Any:
        """Run ``stepflow ARGS`` in a fresh process (``python -m stepflow``) and return a
        ``RunOutcome``; or, given a ``Pipeline``, run it here and return its ``RunResult``.

        For a pipeline, ``stub`` maps output names to values that stand in for them (their
        producers do not run), ``params`` sets parameters, and other keywords go to
        ``Pipeline.run`` (``targets``, ``workers``, ``regenerate``, ...). The run uses
        this test's stepflow home.
        """
        from stepflow._pipeline import Pipeline

        if args and isinstance(args[0], Pipeline):
            if len(args) > 1:
                raise TypeError(
                    "stepflow_runner.run(pipeline, ...) takes keywords after the pipeline: "
                    "stub={...}, params={...}, targets=[...]"
                )
            return self._run_pipeline(args[0], **kwargs)
        return self._run_cli(*args, **kwargs)

    def _run_pipeline(
        self,
        pipeline: Pipeline,
        *,
        stub: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> RunResult:
        options.setdefault("home", self.home)
        return pipeline.run(params, stub=stub, **options)

    def _run_cli(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 120
    ) -> RunOutcome:
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
