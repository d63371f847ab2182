"""The terminal reporter: live progress, failures cut to user code, and the summary line.

It is a plugin of the run lifecycle hooks, registered by the command line.
"""

from __future__ import annotations

import shutil
import sys
import threading
from typing import TextIO

from stepflow._execution.result import RunInfo, RunResult, StepReport, StepState
from stepflow.hookspecs import hookimpl

__all__ = ["TerminalReporter"]

_COLORS = {
    StepState.RAN: "\x1b[32m",
    StepState.REUSED: "\x1b[36m",
    StepState.FAILED: "\x1b[31m",
    StepState.SKIPPED: "\x1b[33m",
}
_RESET = "\x1b[0m"


class TerminalReporter:
    """Prints one line per finished step, then failures and a summary line."""

    def __init__(
        self,
        out: TextIO | None = None,
        *,
        full_trace: bool = False,
        verbosity: int = 0,
        show_output: bool = False,
    ) -> None:
        self.out = out or sys.stdout
        #: print failed steps' captured output (when it was not shown live)
        self.show_output = show_output
        self.full_trace = full_trace
        self.verbosity = verbosity
        self.isatty = hasattr(self.out, "isatty") and self.out.isatty()
        self._lock = threading.Lock()
        self._running: dict[str, int] = {}
        self._done = 0
        self._total = 0
        self._status_shown = False
        self._width = max(40, min(shutil.get_terminal_size((80, 20)).columns, 120))

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def _color(self, state: StepState, text: str) -> str:
        return f"{_COLORS[state]}{text}{_RESET}" if self.isatty else text

    def _rule(self, title: str, char: str = "=") -> str:
        title = f" {title} "
        side = max(3, (self._width - len(title)) // 2)
        return f"{char * side}{title}{char * side}"

    def _clear_status(self) -> None:
        if self._status_shown:
            self._write("\r\x1b[2K")
            self._status_shown = False

    def _show_status(self) -> None:
        if not self.isatty or not self._running:
            return
        names = ", ".join(self._running)
        text = f"[{self._done}/{self._total}] running {names}"
        self._write("\r\x1b[2K" + text[: self._width - 1])
        self._status_shown = True

    @hookimpl
    def stepflow_run_start(self, run: RunInfo) -> None:
        with self._lock:
            self._total = len(run.steps)
            workers = f", {run.workers} workers" if run.workers > 1 else ""
            self._write(self._rule(f"stepflow run {run.pipeline}") + "\n")
            noun = "step" if self._total == 1 else "steps"
            self._write(f"run {run.run_id}: {self._total} {noun}{workers}\n")
            if run.params and self.verbosity > 0:
                for key, value in run.params.items():
                    self._write(f"  param {key} = {value!r}\n")

    @hookimpl
    def stepflow_step_start(self, run: RunInfo, step: str, attempt: int) -> None:
        with self._lock:
            self._running[step] = attempt
            self._show_status()

    @hookimpl
    def stepflow_step_retry(self, run: RunInfo, report: StepReport, delay: float) -> None:
        with self._lock:
            self._clear_status()
            error = report.error
            why = str(error).splitlines()[0] if error else "failed"
            self._write(
                f"{report.name} attempt {report.attempts} failed ({why}); "
                f"retrying in {delay:.1f}s\n"
            )
            self._show_status()

    @hookimpl
    def stepflow_step_finish(self, run: RunInfo, report: StepReport) -> None:
        with self._lock:
            self._running.pop(report.name, None)
            self._done += 1
            self._clear_status()
            detail = ""
            if report.state is StepState.SKIPPED and report.reason:
                detail = f"  ({report.reason})"
            elif report.state in (StepState.RAN, StepState.FAILED):
                detail = f"  {report.duration:.2f}s"
                if report.attempts > 1:
                    detail += f" after {report.attempts} attempts"
            if report.state is StepState.FAILED and report.error is not None:
                first = str(report.error).splitlines()[0]
                detail += f"  {first[:120]}"
            # Padded only to line up a detail after it: no trailing blanks on a bare state.
            state = self._color(
                report.state, f"{report.state.value:<7}" if detail else report.state.value
            )
            dots = "." * max(2, 30 - len(report.name))
            self._write(f"{report.name} {dots} {state}{detail}\n")
            self._show_status()

    @hookimpl
    def stepflow_run_finish(self, run: RunInfo, result: RunResult) -> None:
        with self._lock:
            self._clear_status()
            failed = [r for r in result.steps.values() if r.error is not None]
            if failed:
                self._write("\n" + self._rule("FAILURES") + "\n")
                for report in failed:
                    assert report.error is not None
                    self._write(self._rule(report.name, "_") + "\n")
                    error = report.error
                    text = error.full_traceback if self.full_trace else error.traceback
                    self._write((text or f"{error}\n").rstrip("\n") + "\n")
                    if self.show_output:
                        for stream, captured in report.logs.items():
                            self._write(self._rule(f"captured {stream}", "-") + "\n")
                            self._write(captured.rstrip("\n") + "\n")
                    if report.attempts > 1:
                        self._write(f"(failed on all {report.attempts} attempts)\n")
            summary = result.summary()
            if result.ok:
                line = self._rule(summary)
                line = f"\x1b[32m{line}{_RESET}" if self.isatty else line
            else:
                line = self._rule(summary)
                line = f"\x1b[31m{line}{_RESET}" if self.isatty else line
            self._write(line + "\n")
