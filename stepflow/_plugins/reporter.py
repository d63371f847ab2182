"""The terminal reporter: live progress, failures cut to user code, and the summary line.

Registered as the built-in plugin ``stepflow._plugins.terminal``, which makes a
``TerminalReporter`` when the command line configures a ``stepflow run``.

On a terminal it keeps a status line at the bottom (the steps running and the time since the
run started). Steps' own output must never land on that line: while the run is live,
``sys.stdout`` and ``sys.stderr`` pass through :class:`_LiveStream`, which wipes the status line
before any write and draws it again once the written line is complete.
"""

from __future__ import annotations

import io
import os
import shutil
import sys
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from typing import TextIO

from stepflow._execution.capture import set_echo_sink
from stepflow._execution.result import RunInfo, RunResult, StepReport, StepState
from stepflow._humanize import human_duration
from stepflow.hookspecs import hookimpl

__all__ = ["COLOR_CHOICES", "TerminalReporter", "use_color"]

#: the values of ``stepflow run --color``
COLOR_CHOICES = ("auto", "yes", "no")
#: seconds between redraws of the status line's elapsed time
_TICK = 0.5


def use_color(
    choice: str = "auto", out: TextIO | None = None, environ: Mapping[str, str] | None = None
) -> bool:
    """Whether to colour the report.

    ``--color yes|no`` wins over the environment. With ``auto``: a non-empty ``NO_COLOR``
    turns colour off (no-color.org), else a non-empty ``FORCE_COLOR`` turns it on
    (force-color.org), else colour is on when ``out`` is a terminal and ``TERM`` is not ``dumb``.
    ``NO_COLOR`` beats ``FORCE_COLOR`` when both are set: turning colour off is the safe reading.
    """
    if choice not in COLOR_CHOICES:
        raise ValueError(f"--color {choice!r}: use one of {', '.join(COLOR_CHOICES)}")
    if choice != "auto":
        return choice == "yes"
    environ = os.environ if environ is None else environ
    if environ.get("NO_COLOR"):
        return False
    if environ.get("FORCE_COLOR"):
        return True
    out = sys.stdout if out is None else out
    return _isatty(out) and environ.get("TERM") != "dumb"


def _own_descriptor(out: TextIO) -> TextIO:
    """``out``, or a stream on a copy of its file descriptor when it has one.

    While a step runs in the run's process, descriptors 1 and 2 point at the step's output
    files (``capture.inline_fd_output``); the report written through a copy of the descriptor
    still reaches the terminal, and never lands in a step's log.
    """
    try:
        fd = out.fileno()
    except (AttributeError, OSError, ValueError):
        return out  # a StringIO, pytest's capsys: no descriptor to keep
    return _DescriptorCopy(out, fd)


class _DescriptorCopy(io.TextIOBase):
    """Writes go to a duplicate of ``stream``'s descriptor, after flushing ``stream`` itself
    so that what went through it first comes out first."""

    def __init__(self, stream: TextIO, fd: int) -> None:
        self.stream = stream
        self.fd = os.dup(fd)
        self._encoding = getattr(stream, "encoding", None) or "utf-8"
        weakref.finalize(self, os.close, self.fd)

    def write(self, text: str) -> int:
        try:
            self.stream.flush()
        except (OSError, ValueError):
            pass
        data = text.encode(self._encoding, errors="replace")
        while data:
            data = data[os.write(self.fd, data) :]
        return len(text)

    def flush(self) -> None:
        pass  # every write goes straight to the descriptor

    def isatty(self) -> bool:
        return os.isatty(self.fd)

    def fileno(self) -> int:
        # The stream's own: a child process handed it writes where the stream's writes go.
        return self.stream.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self._encoding

    def writable(self) -> bool:
        return True


def _isatty(out: object) -> bool:
    isatty = getattr(out, "isatty", None)
    return bool(isatty and isatty())


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
        color: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.out = _own_descriptor(out or sys.stdout)
        #: print failed steps' captured output (when it was not shown live)
        self.show_output = show_output
        self.full_trace = full_trace
        self.verbosity = verbosity
        #: a live status line needs a terminal (it is redrawn with ``\r``), whatever the colours
        self.isatty = _isatty(self.out)
        #: ``None``: decided by :func:`use_color` from the environment and the stream
        self.color = use_color("auto", self.out) if color is None else color
        self._clock = clock
        # Re-entrant: a write through _LiveStream may come from a thread already holding it.
        self._lock = threading.RLock()
        self._running: dict[str, int] = {}
        self._done = 0
        self._total = 0
        self._started = clock()
        self._status_shown = False
        #: a step wrote part of a line: no status line until it ends, our own lines start anew
        self._line_open = False
        self._streams: list[tuple[str, _LiveStream]] = []
        self._stop_ticker = threading.Event()
        self._ticker: threading.Thread | None = None
        self._width = max(40, min(shutil.get_terminal_size((80, 20)).columns, 120))

    def _write(self, text: str) -> None:
        if self._line_open:
            text = "\n" + text
            self._line_open = False
        self.out.write(text)
        self.out.flush()

    def _color(self, state: StepState, text: str) -> str:
        return f"{_COLORS[state]}{text}{_RESET}" if self.color else text

    def _rule(self, title: str, char: str = "=") -> str:
        title = f" {title} "
        side = max(3, (self._width - len(title)) // 2)
        return f"{char * side}{title}{char * side}"

    def _clear_status(self) -> None:
        if self._status_shown:
            self.out.write("\r\x1b[2K")
            self.out.flush()
            self._status_shown = False

    def status_text(self) -> str:
        """The status line: progress, the steps running, and the time since the run started."""
        elapsed = f" ... {human_duration(self._clock() - self._started, digits=1)}"
        text = f"[{self._done}/{self._total}] running {', '.join(self._running)}"
        room = self._width - 1 - len(elapsed)
        if len(text) > room:
            text = text[: room - 1] + "…"
        return text + elapsed

    def _show_status(self) -> None:
        if not self.isatty or not self._running or self._line_open:
            return
        self.out.write("\r\x1b[2K" + self.status_text())
        self.out.flush()
        self._status_shown = True

    def _tick(self) -> None:
        while not self._stop_ticker.wait(_TICK):
            with self._lock:
                if self._status_shown:
                    self._show_status()

    def _go_live(self) -> None:
        """Route ``sys.stdout``/``sys.stderr`` around the status line and start the clock."""
        for name in ("stdout", "stderr"):
            stream = _LiveStream(self, _own_descriptor(getattr(sys, name)))
            setattr(sys, name, stream)
            self._streams.append((name, stream))
        set_echo_sink(self._echo)
        self._stop_ticker.clear()
        self._ticker = threading.Thread(target=self._tick, name="stepflow-status", daemon=True)
        self._ticker.start()

    def close(self) -> None:
        """Stop the clock and give ``sys.stdout``/``sys.stderr`` back (idempotent)."""
        self._stop_ticker.set()
        if self._ticker is not None:
            self._ticker.join()
            self._ticker = None
        if self._streams:
            set_echo_sink(None)
        for name, stream in reversed(self._streams):
            # Only undo our own replacement: if something replaced ours meanwhile, leave it.
            if getattr(sys, name) is stream:
                setattr(sys, name, getattr(stream.target, "stream", stream.target))
        self._streams.clear()

    def _echo(self, stream: str, text: str) -> None:
        """The live copy of an in-process step's output (``--capture tee``), around the
        status line like everything else written while it is shown."""
        for name, live in self._streams:
            if name == stream:
                live.write(text)

    @hookimpl
    def stepflow_run_start(self, run: RunInfo) -> None:
        with self._lock:
            self._total = len(run.steps)
            self._started = self._clock()
            if self.isatty and not self._streams:
                self._go_live()
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
                f"retrying in {human_duration(delay, digits=1)}\n"
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
                detail = f"  {human_duration(report.duration)}"
                if report.attempts > 1:
                    detail += f" after {report.attempts} attempts"
            if report.items:
                # A fan-out step: how its items went (``foreach``).
                total = sum(report.items.values())
                parts = ", ".join(f"{n} {state}" for state, n in report.items.items())
                detail += f"  [{total} items: {parts}]"
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
        self.close()
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
                line = f"\x1b[32m{line}{_RESET}" if self.color else line
            else:
                line = self._rule(summary)
                line = f"\x1b[31m{line}{_RESET}" if self.color else line
            self._write(line + "\n")


class _LiveStream(io.TextIOBase):
    """Stands in for ``sys.stdout``/``sys.stderr`` while the status line is live.

    In-process steps print through here (under the capture router, which echoes to it): the
    status line is wiped first, so the output starts at the left margin, and it is drawn again
    below the output once the line is complete.
    """

    def __init__(self, reporter: TerminalReporter, target: TextIO) -> None:
        self.reporter = reporter
        self.target = target

    def write(self, text: str) -> int:
        reporter = self.reporter
        with reporter._lock:
            reporter._clear_status()
            self.target.write(text)
            self.target.flush()
            if text:
                reporter._line_open = not text.endswith("\n")
            reporter._show_status()
        return len(text)

    def flush(self) -> None:
        self.target.flush()

    def isatty(self) -> bool:
        return self.target.isatty()

    def fileno(self) -> int:
        return self.target.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.target, "encoding", None) or "utf-8"

    def writable(self) -> bool:
        return True
