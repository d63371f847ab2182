"""The web UI in a real headless browser: Debian's chromium, driven by Playwright (never a
downloaded browser), against ``stepflow ui`` served by its own process on a loopback port.

Set ``STEPFLOW_UI_SCREENSHOTS=DIR`` to keep the screenshots the tests take (the how-to's
images are made so: ``docs/how-to/img``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
_URL = re.compile(r"at (http://\S+) ")


@pytest.fixture(scope="module")
def _chromium() -> Iterator[Any]:
    """One headless chromium for the module's tests (starting Playwright's driver and the
    browser took seconds per test), or why there is none. Each test browses in contexts of
    its own (cookies, storage, listeners), closed when it ends."""
    if not CHROMIUM.exists():
        yield "no /usr/bin/chromium: apt-get install chromium"
        return
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        yield "playwright is not installed: pip install playwright (no browser download)"
        return
    with sync_playwright() as p:
        launched = p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def browser(_chromium: Any, need: Any) -> Iterator[Any]:
    """The module's chromium (skips without it, fails under CI=true); the contexts a test
    opened are closed after it, so no page of one test lives on into the next."""
    if isinstance(_chromium, str):
        need(_chromium)
    assert not _chromium.contexts, "a context of an earlier test is still open"
    yield _chromium
    for context in _chromium.contexts:
        context.close()


@pytest.fixture
def ui_server(ui_home: Path, ui_project: Path) -> Iterator[str]:
    """``stepflow ui --port 0`` in a process of its own; its base URL."""
    env = {**os.environ, "STEPFLOW_HOME": str(ui_home)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "stepflow", "ui", "--port", "0"],
        cwd=ui_project,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        found = _URL.search(line)
        assert found, f"stepflow ui printed {line!r}"
        yield found.group(1).rstrip("/")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


class _Page:
    """A browser page that keeps every console error and uncaught exception."""

    def __init__(self, browser: Any) -> None:
        self.context = browser.new_context(viewport={"width": 1280, "height": 800})
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        #: every answer of 400 or more, with its address (the console line names none)
        self.failed: list[str] = []
        self.page.on(
            "response",
            lambda r: self.failed.append(f"{r.status} {r.url}") if r.status >= 400 else None,
        )

    def shot(self, name: str) -> None:
        folder = os.environ.get("STEPFLOW_UI_SCREENSHOTS")
        if folder:
            Path(folder).mkdir(parents=True, exist_ok=True)
            self.page.screenshot(path=str(Path(folder) / f"{name}.png"))

    def states(self) -> dict[str, str]:
        return self.page.eval_on_selector_all(
            "#dag g[data-step]",
            "els => Object.fromEntries(els.map(e => [e.dataset.step, e.dataset.state]))",
        )


def _run_ids(base: str) -> list[str]:
    import json
    import urllib.request

    with urllib.request.urlopen(base + "/api/runs") as answer:
        return [r["id"] for r in json.load(answer)["runs"]]


def test_pages_load_without_console_errors(browser, ui_server, ui_secret):
    ids = _run_ids(ui_server)
    view = _Page(browser)
    pages = {
        "runs": "/runs",
        "run": f"/runs/{ids[0]}",
        "step": f"/runs/{ids[2]}/steps/features",
        "compare": f"/compare?a={ids[2]}&b={ids[0]}",
        "datasets": "/datasets",
        "models": "/models",
        "published": "/published",
        "source": f"/runs/{ids[2]}/source/numbers_pipeline.py",
    }
    for name, path in pages.items():
        answer = view.page.goto(ui_server + path)
        assert answer is not None and answer.status == 200, path
        view.page.wait_for_load_state("networkidle")
        assert ui_secret not in view.page.content(), path
        if name in ("runs", "run", "step", "compare"):
            view.shot(name)
    assert (view.errors, view.failed) == ([], [])
    # the runs page's filters work in the browser (htmx swaps the table, the URL follows)
    view.page.goto(ui_server + "/runs")
    view.page.select_option("select[name=state]", "failed")
    view.page.wait_for_url(re.compile(r"state=failed"))
    view.page.wait_for_selector("#runs tbody tr >> nth=0")
    view.page.wait_for_selector("#runs tbody tr:nth-child(2)", state="detached")
    assert (view.errors, view.failed) == ([], [])


def test_the_graph_shows_the_states_of_a_real_run(browser, ui_server):
    ids = _run_ids(ui_server)
    view = _Page(browser)
    view.page.goto(f"{ui_server}/runs/{ids[0]}")
    assert view.states() == {
        "raw": "ran",
        "features": "ran",
        "model": "failed",
        "report": "skipped",
    }
    fill = view.page.eval_on_selector(
        '#dag g[data-step="model"] rect.sf-box', "r => getComputedStyle(r).fill"
    )
    assert fill == "rgb(250, 218, 219)"  # drawn in the failed colour, not only labelled
    view.page.click('#dag g[data-step="model"]')
    view.page.wait_for_url(re.compile(r"/steps/model$"))
    assert "bad token ***" in view.page.text_content("main")
    assert (view.errors, view.failed) == ([], [])


def test_a_run_started_while_the_page_is_open_appears_and_updates(
    browser, ui_server, ui_home, ui_project, tmp_path, ui_secret
):
    view = _Page(browser)
    view.page.goto(ui_server + "/runs")
    assert view.page.locator("#runs tbody tr").count() == 3
    flag = tmp_path / "go-on"
    code = (
        "import numbers_pipeline as m\n"
        f"r = m.pipe.run(params={{'token': {ui_secret!r}, 'n': 7, 'wait_for': {str(flag)!r}}})\n"
        "assert r.ok, r.summary()\n"
    )
    run = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=ui_project,
        env={**os.environ, "STEPFLOW_HOME": str(ui_home), "PYTHONPATH": _pythonpath(ui_project)},
    )
    try:
        # The listing refreshes itself: the new run appears, running.
        # (CSS selectors only: the pages' policy allows no eval, Playwright's too)
        view.page.wait_for_selector("#runs tbody tr:nth-child(4)", timeout=30_000)
        first = view.page.locator("#runs tbody tr").first
        assert "running" in first.text_content()
        view.shot("runs-live")
        first.locator("a").first.click()
        view.page.wait_for_url(re.compile(r"/runs/[^/]+$"))
        # Steps before `report` are recorded within a second of finishing; `report` waits.
        view.page.wait_for_selector(
            '#dag g[data-step="model"][data-state="ran"]', state="attached", timeout=30_000
        )
        assert view.states()["report"] == "running"
        view.shot("run-live")
        # the running step's own page shows what it printed so far, and follows it line by
        # line while it still runs, then shows the recorded log
        step_view = _Page(browser)
        step_view.page.goto(view.page.url + "/steps/report")
        assert step_view.page.get_attribute("#log", "data-log")
        assert "report uses ***" in step_view.page.text_content("#log")
        assert ui_secret not in step_view.page.content()
        flag.write_text("go")
        step_view.page.wait_for_selector("#log:has-text('report halfway')", timeout=30_000)
        assert step_view.page.locator("#log-note").count() == 1  # still running
        step_view.shot("step-live")
        Path(f"{flag}.2").write_text("go")
        step_view.page.wait_for_selector("#log:has-text('report written')", timeout=30_000)
        step_view.page.wait_for_selector("#log-note", state="detached", timeout=30_000)
        assert ui_secret not in step_view.page.content()
        assert (step_view.errors, step_view.failed) == ([], [])
        # No reload: the page follows the run to its end through server-sent events.
        view.page.wait_for_selector(
            '#dag g[data-step="report"][data-state="ran"]', state="attached", timeout=30_000
        )
        assert view.states() == dict.fromkeys(["raw", "features", "model", "report"], "ran")
        assert run.wait(timeout=30) == 0
        view.page.wait_for_selector("main dl .badge.s-succeeded", timeout=30_000)
    finally:
        flag.touch()
        Path(f"{flag}.2").touch()
        if run.poll() is None:
            run.kill()
            run.wait()
    assert (view.errors, view.failed) == ([], [])


def _pythonpath(project: Path) -> str:
    parts = [str(project), *sys.path]
    return os.pathsep.join(p for p in parts if p)


def test_a_token_protects_another_address(browser, ui_home, ui_project):
    """Served on a non-loopback address without --token, the UI makes one up, prints the
    address with it, and refuses requests without it."""
    env = {**os.environ, "STEPFLOW_HOME": str(ui_home)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "stepflow", "ui", "--host", "0.0.0.0", "--port", "0"],
        cwd=ui_project,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        found = re.search(r"http://0\.0\.0\.0:(\d+)/\?token=(\S+) ", line)
        assert found, line
        port, token = found.groups()
        view = _Page(browser)
        refused = view.page.goto(f"http://127.0.0.1:{port}/runs")
        assert refused is not None and refused.status == 401
        ok = view.page.goto(f"http://127.0.0.1:{port}/runs?token={token}")
        assert ok is not None and ok.status == 200
        assert "token" not in view.page.url  # moved into a cookie
        assert view.page.locator("#runs tbody tr").count() == 3
        # the browser logs the refused load itself; nothing else went wrong
        assert [e for e in view.errors if "status of 401" not in e] == []
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()
