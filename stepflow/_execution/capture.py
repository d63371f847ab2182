"""Capture each step's stdout, stderr and ``logging`` output, per step, even when several steps
run at once in one process.

While a run is active, ``sys.stdout`` and ``sys.stderr`` are replaced by routers that send
writes to the buffer of the step running in the calling thread (a context variable), and
pass everything else through untouched; a ``logging`` handler on the root logger does the
same for log records. Output written straight to file descriptor 1 or 2 by C code is not seen
in the parent process (worker processes capture at the Python level the same way).
"""

from __future__ import annotations

import contextlib
import contextvars
import io
import logging
import sys
import threading
from collections.abc import Iterator
from typing import TextIO

__all__ = ["Captured", "capturing", "step_output"]

#: how many characters of one stream a step keeps; more is cut in the middle
MAX_CHARS = 2_000_000


class Captured:
    """What one step attempt wrote."""

    def __init__(self, *, echo: bool = False, secrets: tuple[str, ...] = ()) -> None:
        self.streams = {"stdout": io.StringIO(), "stderr": io.StringIO(), "log": io.StringIO()}
        self.echo = echo
        #: values masked in what is echoed (a value split across two writes is not caught)
        self.secrets = tuple(s for s in secrets if s)

    def mask(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    def write(self, stream: str, text: str) -> None:
        buffer = self.streams[stream]
        if buffer.tell() < MAX_CHARS:
            buffer.write(text)

    def texts(self, secrets: tuple[str, ...] = ()) -> dict[str, str]:
        """Stream name → text (empty streams left out), secret values masked."""
        found = {}
        for name, buffer in self.streams.items():
            text = buffer.getvalue()
            if len(text) >= MAX_CHARS:
                text = text[:MAX_CHARS] + "\n[... output cut: more than 2,000,000 characters]\n"
            for secret in secrets:
                if secret:
                    text = text.replace(secret, "***")
            if text:
                found[name] = text
        return found


_current: contextvars.ContextVar[Captured | None] = contextvars.ContextVar(
    "stepflow_capture", default=None
)


class _Router(io.TextIOBase):
    """Stands in for ``sys.stdout``/``sys.stderr``: a step's writes go to its buffer."""

    def __init__(self, original: TextIO, stream: str) -> None:
        self.original = original
        self.stream = stream

    def write(self, text: str) -> int:
        captured = _current.get()
        if captured is None:
            return self.original.write(text)
        captured.write(self.stream, text)
        if captured.echo:
            self.original.write(captured.mask(text))
        return len(text)

    def flush(self) -> None:
        self.original.flush()

    def isatty(self) -> bool:
        return _current.get() is None and self.original.isatty()

    def fileno(self) -> int:
        return self.original.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.original, "encoding", None) or "utf-8"

    def writable(self) -> bool:
        return True


class _LogRouter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)-8s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        captured = _current.get()
        if captured is None:
            return
        try:
            captured.write("log", self.format(record) + "\n")
        except Exception:
            self.handleError(record)


_install_lock = threading.Lock()
_installed = 0
_saved: tuple[TextIO, TextIO, int] | None = None
_handler = _LogRouter()

#: the level below which a step's log records are not captured (the root logger is lowered
#: to it while a run is active when it was higher, as pytest's ``log_level`` does)
CAPTURE_LEVEL = logging.INFO


@contextlib.contextmanager
def capturing() -> Iterator[None]:
    """Route output to step buffers for the duration of a run (re-entrant)."""
    global _installed, _saved
    with _install_lock:
        if _installed == 0:
            root = logging.getLogger()
            _saved = (sys.stdout, sys.stderr, root.level)
            sys.stdout = _Router(sys.stdout, "stdout")  # type: ignore[assignment]
            sys.stderr = _Router(sys.stderr, "stderr")  # type: ignore[assignment]
            root.addHandler(_handler)
            if root.level > CAPTURE_LEVEL:
                root.setLevel(CAPTURE_LEVEL)
        _installed += 1
    try:
        yield
    finally:
        with _install_lock:
            _installed -= 1
            if _installed == 0 and _saved is not None:
                stdout, stderr, level = _saved
                # Only undo our own replacement: if something replaced ours meanwhile, leave it.
                if isinstance(sys.stdout, _Router):
                    sys.stdout = stdout
                if isinstance(sys.stderr, _Router):
                    sys.stderr = stderr
                root = logging.getLogger()
                root.removeHandler(_handler)
                root.setLevel(level)
                _saved = None


@contextlib.contextmanager
def step_output(*, echo: bool = False, secrets: tuple[str, ...] = ()) -> Iterator[Captured]:
    """Capture what the calling thread writes during the block into a new ``Captured``."""
    captured = Captured(echo=echo, secrets=secrets)
    token = _current.set(captured)
    try:
        yield captured
    finally:
        _current.reset(token)
        with contextlib.suppress(Exception):
            sys.stdout.flush()
