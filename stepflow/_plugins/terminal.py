"""The built-in plugin that reports a ``stepflow run`` to the terminal.

Registered like every built-in (``_pluginmanager.BUILTIN_PLUGINS``): when the command line
configures a ``stepflow run`` (``stepflow_configure``), it makes a
``reporter.TerminalReporter`` from the command's options, and the run lifecycle hooks below
report to it. In any other process (a ``Pipeline.run`` from Python, another command) they do
nothing, and the reporter module is not even imported. This module stays small: the plugin
manager inspects every name of a plugin module when it registers it, once per run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stepflow.hookspecs import hookimpl

if TYPE_CHECKING:
    from stepflow._config import Config
    from stepflow._execution.result import RunInfo, RunResult, StepReport
    from stepflow._plugins.reporter import TerminalReporter


#: the reporter of this process's ``stepflow run`` command, from ``stepflow_configure``
_REPORTER: TerminalReporter | None = None


@hookimpl
def stepflow_configure(config: Config) -> None:
    """Report a ``stepflow run`` of the command line to the terminal, as its options say."""
    global _REPORTER
    options = config.options
    if options.get("command") != "run":
        return
    from stepflow._plugins.reporter import TerminalReporter, use_color

    capture = options.get("capture") or config.settings.get("capture")
    _REPORTER = TerminalReporter(
        full_trace=bool(options.get("full_trace")),
        verbosity=int(options.get("verbose") or 0),
        # Failed steps' output goes in the report when it was not shown as it happened.
        show_output=capture == "quiet",
        color=use_color(options.get("color") or "auto"),
    )


@hookimpl
def stepflow_unconfigure(config: Config) -> None:
    global _REPORTER
    if _REPORTER is not None:
        _REPORTER.close()
        _REPORTER = None


@hookimpl
def stepflow_run_start(run: RunInfo) -> None:
    if _REPORTER is not None:
        _REPORTER.stepflow_run_start(run)


@hookimpl
def stepflow_step_start(run: RunInfo, step: str, attempt: int) -> None:
    if _REPORTER is not None:
        _REPORTER.stepflow_step_start(run, step, attempt)


@hookimpl
def stepflow_step_retry(run: RunInfo, report: StepReport, delay: float) -> None:
    if _REPORTER is not None:
        _REPORTER.stepflow_step_retry(run, report, delay)


@hookimpl
def stepflow_step_finish(run: RunInfo, report: StepReport) -> None:
    if _REPORTER is not None:
        _REPORTER.stepflow_step_finish(run, report)


@hookimpl
def stepflow_run_finish(run: RunInfo, result: RunResult) -> None:
    if _REPORTER is not None:
        _REPORTER.stepflow_run_finish(run, result)
