"""The terminal reporter: colour choice, the live status line, and steps' output around it."""

from __future__ import annotations

import io
import sys

import pytest

from stepflow import Pipeline, step
from stepflow._config import load_config
from stepflow._execution.result import RunInfo
from stepflow._pluginmanager import make_plugin_manager
from stepflow._plugins.reporter import TerminalReporter, use_color

CLEAR = "\r\x1b[2K"


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def screen(raw: str) -> list[str]:
    """The lines a terminal ends up showing: ``\\r`` + erase-line wipes what came before."""
    return [line.rsplit(CLEAR, 1)[-1] for line in raw.split("\n")]


class TestUseColor:
    @pytest.mark.parametrize(
        ("choice", "environ", "tty", "expected"),
        [
            ("auto", {}, True, True),
            ("auto", {}, False, False),
            ("auto", {"TERM": "dumb"}, True, False),
            ("auto", {"NO_COLOR": "1"}, True, False),
            ("auto", {"NO_COLOR": ""}, True, True),  # empty means unset (no-color.org)
            ("auto", {"FORCE_COLOR": "1"}, False, True),
            ("auto", {"FORCE_COLOR": ""}, False, False),
            ("auto", {"FORCE_COLOR": "1", "NO_COLOR": "1"}, True, False),
            ("yes", {"NO_COLOR": "1"}, False, True),
            ("no", {"FORCE_COLOR": "1"}, True, False),
        ],
    )
    def test_precedence(self, choice, environ, tty, expected):
        """--color beats the environment; NO_COLOR beats FORCE_COLOR; auto asks the stream."""
        out = FakeTerminal() if tty else io.StringIO()
        assert use_color(choice, out, environ) is expected

    def test_reporter_follows_no_color(self, monkeypatch):
        """A reporter on a terminal leaves colour out when NO_COLOR is set."""
        monkeypatch.setenv("NO_COLOR", "1")
        assert TerminalReporter(FakeTerminal()).color is False
        monkeypatch.delenv("NO_COLOR")
        monkeypatch.setenv("FORCE_COLOR", "1")
        assert TerminalReporter(io.StringIO()).color is True


def test_status_line_shows_elapsed_time():
    now = [100.0]
    reporter = TerminalReporter(FakeTerminal(), clock=lambda: now[0])
    info = RunInfo(
        run_id="r1", pipeline="p", steps=("load", "train"), params={}, workers=1, fail_fast=False
    )
    reporter.stepflow_run_start(run=info)
    try:
        reporter.stepflow_step_start(run=info, step="load", attempt=1)
        now[0] = 103.25
        assert reporter.status_text() == "[0/2] running load ... 3.2s"
    finally:
        reporter.close()


def _run_printing_pipeline(monkeypatch, pipeline: Pipeline, **kwargs) -> str:
    term = FakeTerminal()
    monkeypatch.setattr(sys, "stdout", term)
    monkeypatch.setattr(sys, "stderr", term)
    reporter = TerminalReporter(term, **kwargs)
    pm = make_plugin_manager()
    pm.register(reporter, name="terminalreporter")
    pipeline.run(config=load_config(), plugin_manager=pm)
    # The run handed the streams back.
    assert sys.stdout is term and sys.stderr is term
    return term.getvalue()


def test_step_output_starts_on_its_own_line(monkeypatch, stepflow_home):
    """An in-process step's prints never land on the status line."""

    @step
    def first() -> int:
        print("hello from first")
        print("careful", file=sys.stderr)
        return 1

    @step
    def second(first: int) -> int:
        print("hello from second")
        return first

    raw = _run_printing_pipeline(monkeypatch, Pipeline("p", [first, second]), color=False)
    lines = screen(raw)
    assert "hello from first" in lines
    assert "careful" in lines
    assert "hello from second" in lines
    assert "\x1b[3" not in raw  # color=False: cursor control only, no colours


def test_partial_line_from_a_step_is_ended_before_the_report(monkeypatch, stepflow_home):
    """A step that prints without a newline does not get its report line glued on."""

    @step
    def progress() -> int:
        print("50%", end="")
        return 1

    lines = screen(_run_printing_pipeline(monkeypatch, Pipeline("p", [progress])))
    assert "50%" in lines
    assert any(line.startswith("progress ..") for line in lines)


def test_a_builtin_plugin_configured_for_stepflow_run(monkeypatch, stepflow_home):
    """The reporter comes with every plugin manager, like the other built-ins; it reports
    only once the command line configured a ``stepflow run`` (a run from Python prints
    nothing), and its durations are ``human_duration``'s."""
    term = FakeTerminal()
    monkeypatch.setattr(sys, "stdout", term)
    monkeypatch.setattr(sys, "stderr", term)

    @step
    def one() -> int:
        return 1

    pm = make_plugin_manager(entrypoints=False)
    assert pm.has_plugin("stepflow._plugins.terminal")
    assert Pipeline("p", [one]).run(config=load_config(), plugin_manager=pm).ok
    assert term.getvalue() == ""
    config = load_config(options={"command": "run", "color": "no", "verbose": 0})
    pm.hook.stepflow_configure(config=config)
    try:
        result = Pipeline("p", [one]).run(config=config, plugin_manager=pm)
    finally:
        pm.hook.stepflow_unconfigure(config=config)
    shown = screen(term.getvalue())
    assert any(line.startswith("one ") and line.endswith(" reused") for line in shown)
    assert any(f"1 reused in {result.duration:.2f}s" in line for line in shown)
    # Unconfigured again: the next run from Python prints nothing more.
    before = term.getvalue()
    Pipeline("p", [one]).run(config=load_config(), plugin_manager=pm)
    assert term.getvalue() == before


def test_durations_over_a_minute_read_as_minutes():
    now = [0.0]
    reporter = TerminalReporter(FakeTerminal(), clock=lambda: now[0])
    info = RunInfo(run_id="r1", pipeline="p", steps=("a",), params={}, workers=1, fail_fast=False)
    reporter.stepflow_run_start(run=info)
    try:
        reporter.stepflow_step_start(run=info, step="a", attempt=1)
        now[0] = 125.0
        assert reporter.status_text() == "[0/1] running a ... 2m05s"
    finally:
        reporter.close()
