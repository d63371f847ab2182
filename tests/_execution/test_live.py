"""A run publishes what its steps in flight print, secrets masked, and removes it once the
step is recorded (``stepflow._execution.live``); read back through the read API, as the web
UI does from its own process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from stepflow._config import load_config
from stepflow._execution import live
from stepflow._storage.live import LIVE_DIR
from stepflow._storage.read import ReadAPI

SECRET = "s3cr3t-token-value"

FLOW = """
import sys, time
from pathlib import Path
from stepflow import Pipeline, Secret, step

GATES = Path(__file__).parent / "gates"

def wait(name):
    while not (GATES / name).exists():
        time.sleep(0.02)

@step(backend=BACKEND)
def talk(token: Secret[str]) -> int:
    print("line one", flush=True)
    print("the token is " + token, flush=True)
    # A secret split across two writes, with a copy of the output in between.
    sys.stdout.write(token[:6])
    sys.stdout.flush()
    (GATES / "half").touch()
    wait("rest")
    sys.stdout.write(token[6:] + " end\\n")
    sys.stdout.flush()
    print("to stderr", file=sys.stderr, flush=True)
    wait("talk")
    return 1

@step(backend=BACKEND)
def after(talk: int) -> int:
    print("after starts", flush=True)
    wait("after")
    return talk + 1

pipe = Pipeline("talking", [talk, after])
"""


class _Run:
    """A run of ``talking`` in a process of its own, and what a reader sees of it."""

    def __init__(self, folder: Path, home: Path, backend: str, plugins: str = "") -> None:
        self.gates = folder / "gates"
        self.gates.mkdir()
        (folder / "talking.py").write_text(textwrap.dedent(FLOW).replace("BACKEND", backend))
        code = (
            "import talking\n"
            f"r = talking.pipe.run(params={{'token': {SECRET!r}}}{plugins})\n"
            "assert r.ok, r.summary()\n"
        )
        env = {**os.environ, "STEPFLOW_HOME": str(home), "PYTHONPATH": _pythonpath(folder)}
        self.proc = subprocess.Popen([sys.executable, "-c", code], cwd=folder, env=env)
        self.home = home
        self.config = load_config(home=home)

    def open(self, name: str) -> None:
        (self.gates / name).touch()

    def read(self, fn: Callable[[ReadAPI, Any], Any]) -> Any:
        try:
            with ReadAPI(self.config, read_only=True) as api:
                return fn(api, api.run("last"))
        except Exception:  # no records yet
            return None

    def log(self, step: str) -> str:
        entries = self.read(lambda api, run: api.live_log(run, step)) or []
        return "".join(f"[{e.stream} #{e.attempt}] {e.text}" for e in entries)

    def states(self) -> dict[str, str]:
        graph = self.read(lambda api, run: api.run_graph(run))
        return {s["name"]: s["state"] for s in graph["steps"]} if graph else {}

    def finish(self) -> None:
        for name in ("rest", "talk", "after"):
            self.open(name)
        assert self.proc.wait(timeout=60) == 0


def _pythonpath(folder: Path) -> str:
    return os.pathsep.join([str(folder), *sys.path])


@pytest.fixture
def run_of(tmp_path: Path, stepflow_home: Path) -> Iterator[Callable[..., _Run]]:
    runs: list[_Run] = []

    def start(backend: str, plugins: str = "") -> _Run:
        run = _Run(tmp_path, stepflow_home, backend, plugins)
        runs.append(run)
        return run

    yield start
    for run in runs:
        for name in ("rest", "talk", "after"):
            run.open(name)
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait()


@pytest.mark.parametrize("backend", ["local", "process"])
def test_a_step_log_is_published_while_it_runs_and_gone_once_recorded(run_of, backend, wait_for):
    """In the run's own process (``local``) and in a worker process (``process``): the first
    lines show while the step still runs, the secret never does (not even split across two
    writes), the step is ``running`` exactly while in flight, and its live copy goes once its
    record is written."""
    run = run_of(repr(backend))
    seen: list[str] = []

    def log_has(text: str) -> Callable[[], bool]:
        def check() -> bool:
            seen.append(run.log("talk"))
            return text in seen[-1]

        return check

    wait_for(log_has("the token is ***"))
    assert "[stdout #1] line one\n" in seen[-1]
    assert run.states() == {"talk": "running", "after": "pending"}
    wait_for(lambda: (run.gates / "half").exists())
    time.sleep(3 * live.POLL)  # copies happen while half of the secret is written
    seen.append(run.log("talk"))
    run.open("rest")
    wait_for(log_has("*** end\n"))
    wait_for(log_has("[stderr #1] to stderr\n"))
    assert all(SECRET not in s and SECRET[:6] not in s for s in seen)
    run.open("talk")
    # `after` starts: `talk` is recorded (within a second), its live copy is gone
    wait_for(lambda: "after starts" in run.log("after"))
    # the same worker process ran `talk` before: none of its output is taken for `after`'s
    assert run.log("after") == "[stdout #1] after starts\n"
    wait_for(lambda: run.states() == {"talk": "ran", "after": "running"})
    wait_for(lambda: run.read(lambda api, r: api.live_log(r, "talk")) is None)
    recorded = run.read(lambda api, r: api.step_log(r, "talk"))
    assert "the token is ***" in "".join(e.text for e in recorded)
    run.open("after")
    run.finish()
    assert not (run.home / LIVE_DIR).exists()
    assert run.states() == {"talk": "ran", "after": "ran"}


PLUGIN = """
import time
from pathlib import Path
import stepflow
from stepflow.backends import Backend, publish_output
from stepflow.worker import execute_task

class Chatty(Backend):
    kind = "chatty"

    def execute(self, task, *, timeout):
        gates = Path(__file__).parent / "gates"
        publish_output(task, "stdout", "queued on the chatty engine\\n")
        for name in ("rest", "talk"):
            (gates / name).touch()
        while not (gates / "chatty").exists():
            time.sleep(0.02)
        return execute_task(task)

@stepflow.hookimpl
def stepflow_backend_types():
    return {"chatty": Chatty}
"""


def test_a_backend_publishes_what_it_receives(run_of, tmp_path, wait_for):
    """``stepflow.backends.publish_output``: a backend that gets a step's output as it comes
    (a log stream) has it shown live, through the same masking."""
    (tmp_path / "chatty_plugin.py").write_text(textwrap.dedent(PLUGIN))
    run = run_of("'chatty'", ", plugins=['chatty_plugin']")
    wait_for(lambda: "[stdout #1] queued on the chatty engine\n" in run.log("talk"))
    assert run.states()["talk"] == "running"
    run.open("chatty")
    run.finish()


def test_a_short_attempt_writes_nothing(tmp_path):
    """An attempt shorter than ``POLL`` never gets a folder: a run of short steps costs the
    home nothing."""
    from stepflow._execution.capture import capturing, step_output

    with (
        capturing(),
        step_output() as captured,
        live.attempt(tmp_path, "r", "s", 1, captured=captured) as a,
    ):
        print("quick")
    assert a.folder is None
    assert not (tmp_path / LIVE_DIR).exists()


def test_a_long_attempt_gets_a_folder_with_its_masked_lines(tmp_path, wait_for):
    from stepflow._execution.capture import capturing, step_output

    secrets = ("hunter2",)
    with (
        capturing(),
        step_output(secrets=secrets) as captured,
        live.attempt(tmp_path, "r", "s", 1, secrets=secrets, captured=captured) as a,
    ):
        print("pass hunter2")
        print("partial line", end="")
        wait_for(lambda: a.folder is not None and (a.folder / "stdout").exists())
        assert (a.folder / "stdout").read_text() == "pass ***\n"
    # the end of the attempt publishes the rest; the run's end removes it all
    assert (a.folder / "stdout").read_text() == "pass ***\npartial line"
    live.run_ended(tmp_path, "r")
    assert not (tmp_path / LIVE_DIR).exists()


@pytest.mark.parametrize(
    ("text", "secrets", "cut"),
    [
        ("one\ntwo", (), 4),
        ("one\ntwo\n", (), 8),
        ("no line end", (), 0),
        ("x" * 70_000, ("abc",), 70_000 - 2),
        # the text before the cut ends with the start of a secret that has a line break
        ("a\nkey\n", ("key\nvalue",), 2),
        ("a\nkey\nvalue\n", ("key\nvalue",), 12),
    ],
)
def test_the_cut_never_splits_a_line_or_a_secret(text, secrets, cut):
    assert live._cut(text, secrets) == cut


def test_masked_shows_whole_lines_masked_and_holds_back_the_rest():
    """``live.masked``, which a backend masking on the machine the step runs on (Dask) uses:
    the same cut and the same masking as the run's own copies."""
    secrets = ("hunter2",)
    assert live.masked("a hunter2\nb hun", secrets) == ("a ***\n", "b hun")
    assert live.masked("b hunter2 c", secrets, final=True) == ("b *** c", "")
    assert live.masked("", secrets) == ("", "")
