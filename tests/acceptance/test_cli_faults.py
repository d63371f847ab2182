"""A full disk or a read-only home, met by a real run: a clear message naming the path,
never a traceback, and the steps that succeeded reported as such (DESIGN §7).

The disk is a 1 MB tmpfs, mounted for the test; where mounting is not allowed the tests
are skipped (the same faults are unit-tested with injected errors in tests/_storage).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from stepflow.testing import StepflowRunner

#: a step that fills the disk the home is on, all but a page, and succeeds
FILLS_THE_DISK = """
    import os
    from stepflow import step

    @step
    def fill() -> int:
        if "FILLER" not in os.environ:
            return 1
        fd = os.open(os.environ["FILLER"], os.O_WRONLY | os.O_CREAT, 0o600)
        written = 0
        try:
            while True:
                written += os.write(fd, b"x" * 512)
        except OSError:
            pass
        os.ftruncate(fd, max(0, written - 4096))  # room for the step's small output
        os.close(fd)
        return 1
"""


def test_a_disk_that_fills_after_a_step_succeeded(
    stepflow_runner: StepflowRunner, small_disk: Path
) -> None:
    stepflow_runner.makepyfile(flow=FILLS_THE_DISK)
    # No code snapshot: stored in the home by a background thread, it would race the step's
    # output for the one page the step leaves free.
    (stepflow_runner.path / "pyproject.toml").write_text("[tool.stepflow]\nrecord_source = false\n")
    home = small_disk / "home"
    env = {"STEPFLOW_HOME": str(home), "FILLER": str(small_disk / "filler")}
    outcome = stepflow_runner.run("run", "flow.py", env=env)
    # The step stays `ran`, the summary line is there, and what could not be recorded is
    # named with its path, after it; the exit code tells this apart from a failed step.
    outcome.fnmatch_lines(["fill *ran*", "*1 ran in*"])
    assert outcome.ret == 3, outcome.stderr
    assert "Traceback" not in outcome.stderr + outcome.stdout
    assert f"could not write the cache-index entry of step 'fill' to {home}" in outcome.stderr
    assert "the disk is full" in outcome.stderr
    # With room again, the next run works (and runs the step again: it was not recorded).
    (small_disk / "filler").unlink()
    again = stepflow_runner.run("run", "flow.py", env={"STEPFLOW_HOME": str(home)})
    assert again.ret == 0, again.stderr
    again.fnmatch_lines(["*1 ran in*"])


def test_an_output_that_does_not_fit(stepflow_runner: StepflowRunner, small_disk: Path) -> None:
    stepflow_runner.makepyfile(
        flow="""
        from stepflow import step

        @step
        def big() -> bytes:
            return b"x" * 2_000_000
        """
    )
    home = small_disk / "home"
    outcome = stepflow_runner.run("run", "flow.py", env={"STEPFLOW_HOME": str(home)})
    assert outcome.ret == 1
    outcome.fnmatch_lines(["big *failed*", "*1 failed in*"])
    assert "builtins.bytes value (1.9 MiB in memory" in outcome.stdout
    assert f"to {home}/objects/" in outcome.stdout and "the disk is full" in outcome.stdout
    assert "register a serializer" not in outcome.stdout


def test_a_read_only_home(stepflow_runner: StepflowRunner, small_disk: Path) -> None:
    stepflow_runner.makepyfile(
        flow="""
        from stepflow import step

        @step
        def a() -> int:
            return 1
        """
    )
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    home = small_disk / "home"
    outcome = stepflow_runner.run("run", "flow.py", env={"STEPFLOW_HOME": str(home)})
    assert outcome.ret == 3
    assert "Traceback" not in outcome.stderr
    assert f"to {home}: the file system is read-only" in outcome.stderr
