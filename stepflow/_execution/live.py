"""Publish what the steps in flight print, as they print it, in the home's live area
(``stepflow._storage.live``), where ``stepflow ui`` reads it from another process.

The run loop tells this module when an attempt begins and ends (``attempt``); a backend says
where the attempt's output can be read while it runs (``follow_output``: files that a worker
process writes, or ``publish_output``: text a backend receives). One thread per process copies
new output every ``POLL`` seconds, secrets masked, into the attempt's folder; the journal has
the step's folder removed once the step's record, log included, is written (``recorded``),
and the run's folder goes when the run ends (``run_ended``).

Nearly free on the hot path: beginning and ending an attempt is a dictionary entry, and an
attempt gets a folder only once it has run for ``POLL`` seconds (made by the copying thread),
so a run of short steps writes nothing here at all. A step shorter than that is never shown
live; its recorded log follows within a second.

Secrets: only the run's process knows the values of ``Secret`` parameters, so it masks them
before anything reaches the home, holding back any text that could be the start of a secret
split across two copies (text is copied up to the last complete line).
"""

from __future__ import annotations

import codecs
import contextlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stepflow._execution.capture import Captured
    from stepflow._execution.task import Task

__all__ = [
    "POLL",
    "LiveAttempt",
    "attempt",
    "follow_output",
    "masked",
    "publish_output",
    "recorded",
    "run_ended",
]

#: seconds between copies of the attempts' new output (and the age at which an attempt gets
#: its folder)
POLL = 0.25
#: seconds the copying thread waits with nothing in flight before it ends
_IDLE = 2.0
#: a line longer than this is copied without waiting for its end
_LONG_LINE = 64 * 1024
#: bytes of one stream copied at most (the recorded log keeps 2,000,000 characters)
_MAX_BYTES = 8 * 1024 * 1024
#: bytes read from one file per copy
_CHUNK = 1 << 20

_Key = tuple[str, str, int]


class _FileSource:
    """Files ``stdout`` and ``stderr`` in a folder, which a process appends to."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.offsets = {"stdout": 0, "stderr": 0}
        #: made on the first read: most attempts end before anything is read
        self.decoders: dict[str, Any] = {}

    def read(self, final: bool = False) -> dict[str, str]:
        found = {}
        for stream, offset in self.offsets.items():
            if offset >= _MAX_BYTES:
                continue
            try:
                with open(self.directory / stream, "rb") as fh:
                    fh.seek(offset)
                    data = fh.read(min(_CHUNK, _MAX_BYTES - offset))
            except OSError:
                continue
            self.offsets[stream] = offset + len(data)
            decoder = self.decoders.get(stream)
            if decoder is None:
                decoder = self.decoders[stream] = codecs.getincrementaldecoder("utf-8")("replace")
            text = decoder.decode(data, final)
            if text:
                found[stream] = text
        return found


class _CapturedSource:
    """A step running in the run's own process: its ``Captured`` streams, or the files its
    descriptors 1 and 2 point at while it holds the descriptor-level capture."""

    def __init__(self, captured: Captured) -> None:
        self.captured = captured
        self.offsets: dict[str, int] = {}
        self.files: _FileSource | None = None
        #: the descriptor capture ended: stdout and stderr are no longer followed (the
        #: files may already hold another step's output; the recorded log has the rest)
        self.files_done = False

    def read(self, final: bool = False) -> dict[str, str]:
        from stepflow._execution.capture import inline_directory

        captured = self.captured
        found: dict[str, str] = {}
        streams = ["log"]
        if captured.fd_level and not self.files_done:
            if self.files is None:
                self.files = _FileSource(inline_directory())
            got = self.files.read()
            # Read while the step still held the descriptors: the files were its own.
            if captured.fd_level:
                found.update(got)
            else:
                self.files_done = True
        elif self.files is None:
            streams += ["stdout", "stderr"]
        for stream in streams:
            buffer = captured.streams.get(stream)
            if buffer is None:
                continue
            offset = self.offsets.get(stream, 0)
            text = buffer.getvalue()[offset:]
            if text:
                self.offsets[stream] = offset + len(text)
                found[stream] = text
        return found


class _TextSource:
    """Text a backend hands over as it receives it (``publish_output``)."""

    def __init__(self) -> None:
        self.texts: dict[str, list[str]] = {}
        self.lock = threading.Lock()

    def add(self, stream: str, text: str) -> None:
        with self.lock:
            self.texts.setdefault(stream, []).append(text)

    def read(self, final: bool = False) -> dict[str, str]:
        with self.lock:
            texts, self.texts = self.texts, {}
        return {s: "".join(parts) for s, parts in texts.items()}


class LiveAttempt:
    """One attempt in flight, and what of its output is published."""

    __slots__ = (
        "began",
        "ended",
        "fds",
        "folder",
        "home",
        "lock",
        "number",
        "pending",
        "run_id",
        "secrets",
        "source",
        "step",
    )

    def __init__(
        self, home: Path, run_id: str, step: str, number: int, secrets: tuple[str, ...]
    ) -> None:
        self.home = home if isinstance(home, Path) else Path(home)
        self.run_id = run_id
        self.step = step
        self.number = number
        self.secrets = tuple(s for s in secrets if s) if secrets else ()
        self.began = time.monotonic()
        self.source: Any = None
        #: the attempt's folder once it has one
        self.folder: Path | None = None
        self.pending: dict[str, str] = {}
        self.fds: dict[str, int] = {}
        self.lock = threading.Lock()
        self.ended = False

    def copy(self, *, final: bool = False) -> None:
        """Append the new output, masked, to the attempt's files (only once it has a folder)."""
        with self.lock:
            if self.folder is None:
                return
            try:
                new = self.source.read(final) if self.source is not None else {}
            except Exception:  # a source's trouble must never touch the run
                new = {}
            for stream, text in new.items():
                self.pending[stream] = self.pending.get(stream, "") + text
            for stream, text in list(self.pending.items()):
                shown, self.pending[stream] = masked(text, self.secrets, final=final)
                if shown:
                    self._append(stream, shown)

    def _append(self, stream: str, text: str) -> None:
        from stepflow._storage.home import private_opener

        assert self.folder is not None
        fd = self.fds.get(stream)
        if fd is None:
            fd = private_opener(str(self.folder / stream), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            self.fds[stream] = fd
        data = text.encode("utf-8", errors="backslashreplace")
        while data:
            data = data[os.write(fd, data) :]

    def close(self) -> None:
        with self.lock:
            fds, self.fds = self.fds, {}
        for fd in fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)


def masked(text: str, secrets: tuple[str, ...], *, final: bool = False) -> tuple[str, str]:
    """``text`` as two parts: what may be shown now, secret values masked, and the rest,
    held back until more text comes (all of it is shown when ``final``). For a backend that
    masks a step's output before it leaves the machine the step runs on (Dask)."""
    cut = len(text) if final else _cut(text, secrets)
    shown = text[:cut]
    for secret in secrets:
        if secret:
            shown = shown.replace(secret, "***")
    return shown, text[cut:]


def _cut(text: str, secrets: tuple[str, ...]) -> int:
    """How much of ``text`` may be published now: up to its last complete line (or most of
    a very long one), never into a secret that the text after the cut may complete."""
    cut = text.rfind("\n") + 1
    if cut == 0 and len(text) > _LONG_LINE:
        cut = len(text) - max((len(s) for s in secrets), default=1) + 1
    moved = True
    while moved and cut > 0:
        moved = False
        for secret in secrets:
            # The text before the cut ends with the start of a secret: cut before that start
            # (a secret without a line break never ends a line, so this is rare).
            for n in range(min(len(secret) - 1, cut), 0, -1):
                if text.endswith(secret[:n], 0, cut):
                    cut, moved = cut - n, True
                    break
    return cut


class _Publisher:
    """The attempts in flight in this process, and the thread that copies their output."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.attempts: dict[_Key, LiveAttempt] = {}
        #: (home, run) → the steps given a folder (removed once recorded)
        self.published: dict[tuple[Path, str], set[str]] = {}
        self.thread: threading.Thread | None = None

    def begin(self, live: LiveAttempt) -> None:
        with self.lock:
            self.attempts[(live.run_id, live.step, live.number)] = live
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="stepflow-live", daemon=True)
                self.thread.start()

    def end(self, live: LiveAttempt) -> None:
        with self.lock:
            self.attempts.pop((live.run_id, live.step, live.number), None)
            # Under the lock that ``_publish`` sets a folder under: from here on, an attempt
            # without a folder never gets one (most attempts: nothing more to do).
            live.ended = True
        if live.folder is not None:
            live.copy(final=True)
            live.close()

    def find(self, task: Task) -> LiveAttempt | None:
        with self.lock:
            return self.attempts.get((task.run_id, task.step, task.attempt))

    def _run(self) -> None:
        idle_since = time.monotonic()
        while True:
            time.sleep(POLL)
            with self.lock:
                attempts = list(self.attempts.values())
                if not attempts and time.monotonic() - idle_since > _IDLE:
                    self.thread = None  # under the lock: the next begin starts another
                    return
            if attempts:
                idle_since = time.monotonic()
            now = time.monotonic()
            for live in attempts:
                if live.folder is None and now - live.began >= POLL:
                    self._publish(live)
                live.copy()

    def _publish(self, live: LiveAttempt) -> None:
        """Give a long-running attempt its folder (the first of its run also sweeps the
        folders of dead runs)."""
        from stepflow._storage import live as area

        key = (live.home, live.run_id)
        try:
            with self.lock:
                first = key not in self.published
            if first:
                area.make_run_dir(live.home, live.run_id)
                area.sweep(live.home, keep=live.run_id)
            folder = area.make_step_dir(live.home, live.run_id, live.step, live.number)
        except OSError:
            return  # a read-only or full home: the step is simply not shown live
        with self.lock:
            if live.ended:
                return
            self.published.setdefault(key, set()).add(live.step)
            with live.lock:
                live.folder = folder

    def recorded(self, home: Path, run_id: str, steps: list[str]) -> None:
        if not self.published:
            return  # no attempt ran long enough to be published (most runs)
        with self.lock:
            published = self.published.get((home, run_id))
            done = [s for s in steps if published and s in published]
            in_flight = {k[1] for k in self.attempts if k[0] == run_id}
            done = [s for s in done if s not in in_flight]
            if published:
                published.difference_update(done)
        if done:
            from stepflow._storage import live as area

            area.remove_steps(home, run_id, done)

    def run_ended(self, home: Path, run_id: str) -> None:
        if not self.published:
            return
        with self.lock:
            published = self.published.pop((home, run_id), None)
        if published is not None:
            from stepflow._storage import live as area

            area.remove_run(home, run_id)


_PUBLISHER = _Publisher()


class attempt:
    """Publish attempt ``number`` of ``step`` while the block runs; what it prints is read
    from ``captured`` (a step in this process) unless a backend names another source.

    A class rather than a generator: it runs for every attempt of every run."""

    __slots__ = ("live",)

    def __init__(
        self,
        home: Path,
        run_id: str,
        step: str,
        number: int,
        *,
        secrets: tuple[str, ...] = (),
        captured: Captured | None = None,
    ) -> None:
        self.live = LiveAttempt(home, run_id, step, number, secrets)
        if captured is not None:
            self.live.source = _CapturedSource(captured)

    def __enter__(self) -> LiveAttempt:
        _PUBLISHER.begin(self.live)
        return self.live

    def __exit__(self, *exc: object) -> None:
        _PUBLISHER.end(self.live)


@contextlib.contextmanager
def follow_output(task: Task, directory: os.PathLike[str] | str) -> Iterator[None]:
    """While the block runs, files ``stdout`` and ``stderr`` in ``directory`` are what the
    attempt of ``task`` prints: the run publishes them as they grow (``stepflow ui`` shows
    them, secrets masked). The files may not exist yet; they must stay the attempt's own
    until the block ends. Does nothing for a task the run in this process did not start."""
    live = _PUBLISHER.find(task)
    if live is None:
        yield
        return
    source = _FileSource(directory if isinstance(directory, Path) else Path(directory))
    with live.lock:
        live.source = source
    try:
        yield
    finally:
        if live.folder is not None:
            live.copy()
        with live.lock:
            if live.source is source:
                live.source = None


def publish_output(task: Task, stream: str, text: str) -> None:
    """Publish ``text`` that the attempt of ``task`` printed on ``stream`` (``"stdout"`` or
    ``"stderr"``), for a backend that receives a step's output as it comes (a log stream).
    Does nothing for a task the run in this process did not start."""
    live = _PUBLISHER.find(task)
    if live is None or not text:
        return
    with live.lock:
        source = live.source
        if not isinstance(source, _TextSource):
            source = live.source = _TextSource()
    source.add(stream, text)


def recorded(home: Path, run_id: str, steps: list[str]) -> None:
    """The records of ``steps`` (their logs) are written: their live folders go."""
    _PUBLISHER.recorded(Path(home), run_id, steps)


def run_ended(home: Path, run_id: str) -> None:
    """The run has ended and its records are written: its live folder goes."""
    _PUBLISHER.run_ended(Path(home), run_id)
