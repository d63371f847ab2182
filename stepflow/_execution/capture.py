"""Capture each step's stdout, stderr and ``logging`` output, per step, even when several steps
run at once in one process.

While a run is active, ``sys.stdout`` and ``sys.stderr`` are replaced by routers that send
writes to the buffer of the step running in the calling thread (a context variable), and
pass everything else through untouched; a ``logging`` handler on the root logger does the
same for log records. Output written straight to file descriptor 1 or 2 (by C code, or by a
child process the step starts) is not seen this way.

Worker processes therefore capture at the file-descriptor level (``fd_output``): during a
step, descriptors 1 and 2 point at two files in a folder the run's process chose, and
``sys.stdout``/``sys.stderr`` write straight through to them. Whatever the step or its child
processes print is in those files the moment it is written, so the run's process can still
read it after killing a step that ran past its timeout (``read_output``).

A step that runs in the run's own process (one worker, no timeout) is captured the same way
(``inline_fd_output``), so what its child processes print reaches its log too. Descriptors are
process-wide, so only one step at a time is captured so: a second run in another thread of
the same process falls back to the Python-level routers for its steps rather than mix
their output.
"""

from __future__ import annotations

import contextlib
import contextvars
import io
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO

__all__ = [
    "Captured",
    "capturing",
    "fd_output",
    "inline_directory",
    "inline_fd_output",
    "read_output",
    "set_echo_sink",
    "step_output",
]

#: how many characters of one stream a step keeps; more is cut in the middle
MAX_CHARS = 2_000_000


class Captured:
    """What one step attempt wrote."""

    def __init__(self, *, echo: bool = False, secrets: tuple[str, ...] = ()) -> None:
        #: stream ("stdout", "stderr", "log") → what was written, made on the first write
        #: (most steps write nothing)
        self.streams: dict[str, io.StringIO] = {}
        self.echo = echo
        #: values masked in what is echoed (a value split across two writes is not caught)
        self.secrets = tuple(s for s in secrets if s)
        #: stdout and stderr go to file descriptors 1 and 2, which ``fd_output`` captures
        self.fd_level = False

    def mask(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    def write(self, stream: str, text: str) -> None:
        buffer = self.streams.get(stream)
        if buffer is None:
            buffer = self.streams[stream] = io.StringIO()
        if buffer.tell() < MAX_CHARS:
            buffer.write(text)

    def texts(self, secrets: tuple[str, ...] = ()) -> dict[str, str]:
        """Stream name → text (empty streams left out), secret values masked."""
        found = {}
        for name in ("stdout", "stderr", "log"):
            buffer = self.streams.get(name)
            if buffer is None:
                continue
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
        if captured.fd_level:
            # Straight to the descriptor ``fd_output`` captures, in order with child
            # processes, and on disk at once should the process be killed next.
            data = text.encode("utf-8", errors="backslashreplace")
            fd = 1 if self.stream == "stdout" else 2
            while data:
                data = data[os.write(fd, data) :]
            return len(text)
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


_FD_STREAMS = (("stdout", 1), ("stderr", 2))
#: seconds between the echo thread's copies of a running step's output (``--capture tee``)
_ECHO_POLL = 0.05
#: seconds the echo thread waits with no step to follow before it ends
_ECHO_IDLE = 2.0


def read_output(directory: Path, secrets: tuple[str, ...] = ()) -> dict[str, str]:
    """What ``fd_output`` captured in ``directory`` so far: stream → text, secrets masked.

    Also after the process that wrote it was killed: it is what a step printed before it died.
    """
    captured = Captured()
    for stream, _ in _FD_STREAMS:
        try:
            with open(directory / stream, "rb") as fh:
                data = fh.read(MAX_CHARS * 4 + 4)
        except OSError:
            continue
        captured.write(stream, data.decode("utf-8", errors="replace"))
    return captured.texts(secrets)


#: the output files of each folder ``fd_output`` used, kept open for the next step: opening
#: two files per step cost more than the rest of the capture together on a slow disk
_open_files: dict[Path, dict[str, int]] = {}


def _files(directory: Path) -> dict[str, int]:
    """Stream → descriptor of ``directory``'s output files, emptied for a new step."""
    fds = _open_files.get(directory)
    if fds is None:
        # O_APPEND: after a truncation the next write lands at the start, whoever writes.
        flags = os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
        fds = {stream: os.open(directory / stream, flags, 0o600) for stream, _ in _FD_STREAMS}
        _open_files[directory] = fds
    else:
        for fd in fds.values():
            # fstat first: truncating an empty file still costs a metadata write on some
            # file systems, and most steps print nothing.
            if os.fstat(fd).st_size:
                os.ftruncate(fd, 0)
    return fds


def _read_fd(fd: int, offset: int = 0, limit: int = MAX_CHARS * 4 + 4) -> bytes:
    chunks = []
    while limit > 0:
        data = os.pread(fd, min(limit, 1 << 20), offset)
        if not data:
            break
        chunks.append(data)
        offset += len(data)
        limit -= len(data)
    return b"".join(chunks)


@contextlib.contextmanager
def fd_output(directory: Path, captured: Captured) -> Iterator[None]:
    """Point file descriptors 1 and 2 at ``directory/stdout`` and ``directory/stderr`` for
    the block, so that child processes and C code are captured too; then fill ``captured``.

    For a process of its own (a worker), or one step of a process at a time: it changes
    process-wide descriptors. With ``captured.echo`` the process's echo thread copies new
    output, secrets masked, to where descriptors 1 and 2 pointed before.
    """
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved = {fd: os.dup(fd) for _, fd in _FD_STREAMS}
    files = _files(directory)
    try:
        for stream, fd in _FD_STREAMS:
            os.dup2(files[stream], fd)
        captured.fd_level = True
        if captured.echo:
            _ECHO.follow(files, saved, captured)
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        if captured.echo:
            _ECHO.done()  # before its descriptors (the saved ones) are closed
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)
        captured.fd_level = False
        # After anything the step's thread wrote before the descriptors were switched.
        for stream, fd in files.items():
            data = _read_fd(fd)
            if data:
                captured.write(stream, data.decode("utf-8", errors="replace"))
                # Emptied now, not when the next step starts: whoever follows these files
                # while the next step loads (the run publishing them live) must never see
                # this step's output as the next one's.
                os.ftruncate(fd, 0)


class _Echo:
    """One thread per process copies what the current step prints as it comes
    (``--capture tee``): a thread started and joined per step cost about a millisecond.

    The thread polls (every ``_ECHO_POLL`` seconds) instead of being woken for each step:
    waking it made a short step wait for a thread switch twice, about 0.2 ms of a step's
    first run. What a step prints shows at most one poll late, and ``done`` copies the rest
    in the step's thread. The thread ends after ``_ECHO_IDLE`` seconds with nothing to follow
    and is started again by the next ``follow``.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        #: (stream → file descriptor, saved descriptors, the step's Captured, offsets)
        self._job: tuple[dict[str, int], dict[int, int], Captured, dict[str, int]] | None = None

    def follow(self, files: dict[str, int], saved: dict[int, int], captured: Captured) -> None:
        with self._cond:
            self._job = (files, saved, captured, dict.fromkeys(files, 0))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="stepflow-echo", daemon=True)
                self._thread.start()

    def done(self) -> None:
        """Copy what is left, in the caller's thread, and stop following."""
        with self._cond:
            if self._job is not None:
                self._copy(self._job)
            self._job = None

    def _run(self) -> None:
        idle_since = time.monotonic()
        with self._cond:
            while True:
                if self._job is not None:
                    self._copy(self._job)
                    idle_since = time.monotonic()
                elif time.monotonic() - idle_since > _ECHO_IDLE:
                    self._thread = None  # under the lock: the next follow starts another
                    return
                self._cond.wait(_ECHO_POLL)

    @staticmethod
    def _copy(job: tuple[dict[str, int], dict[int, int], Captured, dict[str, int]]) -> None:
        files, saved, captured, offsets = job
        for stream, fd in _FD_STREAMS:
            data = _read_fd(files[stream], offsets[stream], 1 << 20)
            if not data:
                continue
            offsets[stream] += len(data)
            with contextlib.suppress(OSError):
                text = captured.mask(data.decode("utf-8", errors="replace"))
                sink = _echo_sink
                if sink is not None:
                    sink(stream, text)
                elif (python := _python_stream(fd)) is not None:
                    python.write(text)
                    python.flush()
                else:
                    os.write(saved[fd], text.encode())


_ECHO = _Echo()


#: where ``--capture tee`` copies what a step printed while descriptors 1 and 2 point at its
#: files: ``sink(stream, text)``, set by a terminal reporter that keeps a status line (its copy
#: goes around that line); ``None``: straight to the descriptors' earlier targets
_echo_sink: Callable[[str, str], None] | None = None


def set_echo_sink(sink: Callable[[str, str], None] | None) -> None:
    """Send the live copy of steps' descriptor-level output to ``sink`` (``None``: undo)."""
    global _echo_sink
    _echo_sink = sink


def _python_stream(fd: int) -> TextIO | None:
    """The stream that ``sys.stdout``/``sys.stderr`` stood for before the run, when it does
    not write to descriptor ``fd`` (a notebook's or pytest's capture): the live copy goes there,
    where the user reads it. ``None`` when it does write to ``fd`` (now the step's file)."""
    if _saved is None:
        return None
    stream = _saved[0] if fd == 1 else _saved[1]
    try:
        if stream.fileno() == fd:
            return None
    except (AttributeError, OSError, ValueError):
        pass
    return stream


#: held while a step of this process has descriptors 1 and 2 pointed at its files
_fd_lock = threading.Lock()
_inline_dir: Path | None = None


def inline_directory() -> Path:
    """A private folder for the in-process steps' output files, made once per process."""
    global _inline_dir
    # Made once: its files stay open (``_open_files``), so a cleaner removing it later is harmless.
    if _inline_dir is None:
        _inline_dir = Path(tempfile.mkdtemp(prefix="stepflow-output-"))  # mode 0700
        import atexit

        atexit.register(shutil.rmtree, _inline_dir, ignore_errors=True)
    return _inline_dir


@contextlib.contextmanager
def inline_fd_output() -> Iterator[None]:
    """Capture the step running in this thread at the descriptor level, like a worker does.

    The step's ``Captured`` is the one ``step_output`` made for this thread. Without one, or
    while another step of this process holds the descriptors, the block runs with the
    Python-level capture alone.
    """
    captured = _current.get()
    if captured is None or not _fd_lock.acquire(blocking=False):
        yield
        return
    try:
        with fd_output(inline_directory(), captured):
            yield
    finally:
        _fd_lock.release()
