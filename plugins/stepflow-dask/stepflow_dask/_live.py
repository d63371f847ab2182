"""What a Dask step prints, shown while it runs (``stepflow ui``), from a worker on any machine.

The Dask worker and the run share no folder, so the output travels as Dask events, the
documented way for a task to send messages to a client (``Worker.log_event`` and
``Client.subscribe_topic``, as ``distributed.print`` does):

- On the worker, ``follow`` reads the files the stepflow worker captures the step's stdout
  and stderr in, every ``POLL`` seconds, one thread per Dask worker process for every attempt
  it runs. It masks the task's secret values before anything leaves the machine (with the
  run's own ``masked``, which holds back text that could be the start of a secret split
  across two reads) and logs one event per look with new text, under the topic the run's
  client gave.
- In the run's process, ``LiveRelay`` receives the events in the client's event loop and
  hands their text to ``stepflow.backends.publish_output``, which masks again and writes the
  live area as for every other backend.

Bounded, so that a step printing 100 MB never floods the scheduler (which keeps the last
``distributed.admin.low-level-log-length`` events of a topic, 1,000 by default): at most one
event per attempt per look, at most ``CHUNK`` characters of a stream per event (a step
printing faster has the older part of its new text coalesced into one line saying how many
characters the live view left out), and at most ``LIMIT`` characters of a stream per
attempt (then one line says the live view stopped). The recorded log, which comes back with
the result, has the whole output. Events carry a number per attempt: the relay drops one
that comes out of order, and drops every event of an attempt that is no longer in flight.
"""

from __future__ import annotations

import codecs
import contextlib
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stepflow.backends import Task, masked, publish_output

if TYPE_CHECKING:
    from distributed import Worker

__all__ = ["CHUNK", "LIMIT", "MARK", "POLL", "LiveRelay", "follow"]

#: seconds between two looks at the attempts' output (and the age at which an attempt is
#: first looked at: a shorter step sends nothing, as the run shows no shorter step live)
POLL = 0.25
#: characters of one stream one event carries at most
CHUNK = 16 * 1024
#: characters of one stream sent at most for one attempt (the live area's own bound)
LIMIT = 8 * 1024 * 1024
#: bytes of one stream read at most per look: a step printing faster is followed late, but
#: nothing is skipped unread, so that every secret in the text is found and masked
_READ = 8 * 1024 * 1024
#: seconds the thread waits with nothing to follow before it ends
_IDLE = 2.0
#: the field of an event that says it carries live output: the attempt's Dask key
MARK = "stepflow-live"
STREAMS = ("stdout", "stderr")


class _Follow:
    """One attempt's output files, and what of them was sent."""

    def __init__(
        self, key: str, topic: str, worker: Worker, folder: Path, secrets: tuple[str, ...]
    ) -> None:
        self.key = key
        self.topic = topic
        self.worker = worker
        self.folder = folder
        self.secrets = secrets
        self.began = time.monotonic()
        self.looked = False
        self.seq = 0
        self.offsets = dict.fromkeys(STREAMS, 0)
        self.sent = dict.fromkeys(STREAMS, 0)
        self.pending = dict.fromkeys(STREAMS, "")
        #: made on the first look: most attempts end before it
        self.decoders: dict[str, Any] = {}
        #: one look at a time: the thread's, or the last one in the task's thread
        self.lock = threading.Lock()

    def look(self, *, final: bool = False) -> None:
        """Send what the step printed since the last look (all that is held back when
        ``final``) as one event."""
        with self.lock:
            self.looked = True
            texts = {}
            for stream in STREAMS:
                text = self._new(stream, final)
                if text:
                    texts[stream] = text
            if not texts:
                return
            self.seq += 1
            event = {MARK: self.key, "seq": self.seq, **texts}
        # A worker that cannot send (closing) costs the live view only, never the step.
        with contextlib.suppress(Exception):
            self.worker.log_event(self.topic, event)

    def _new(self, stream: str, final: bool) -> str:
        if self.sent[stream] >= LIMIT:
            return ""
        offset = self.offsets[stream]
        data = b""
        with contextlib.suppress(OSError), open(self.folder / stream, "rb") as fh:
            fh.seek(offset)
            data = fh.read(_READ)
        self.offsets[stream] = offset + len(data)
        decoder = self.decoders.get(stream)
        if decoder is None:
            decoder = self.decoders[stream] = codecs.getincrementaldecoder("utf-8")("replace")
        text = self.pending[stream] + decoder.decode(data, final)
        shown, self.pending[stream] = masked(text, self.secrets, final=final)
        if len(shown) > CHUNK:
            # Masked first, cut after: a cut never reveals part of a secret.
            tail = shown[-CHUNK:]
            line = tail.find("\n")
            if 0 <= line < len(tail) - 1:
                tail = tail[line + 1 :]
            left = len(shown) - len(tail)
            shown = f"[stepflow: {left:,} characters of {stream} not shown live]\n{tail}"
        room = LIMIT - self.sent[stream]
        if len(shown) >= room:
            shown = (
                f"{shown[:room]}\n[stepflow: the live view of {stream} stops after "
                f"{LIMIT:,} characters; the step's log is recorded when it ends]\n"
            )
            self.sent[stream] = LIMIT
            self.pending[stream] = ""
        else:
            self.sent[stream] += len(shown)
        return shown


_lock = threading.Lock()
#: Dask key → the attempt followed
_follows: dict[str, _Follow] = {}
_thread: threading.Thread | None = None


@contextlib.contextmanager
def follow(key: str, topic: str, worker: Worker, folder: Path, task: Task) -> Iterator[None]:
    """While the block runs, send what the attempt ``key`` prints into ``folder`` (files
    ``stdout`` and ``stderr``), secrets masked, as events of ``topic``; the last look is
    taken when the block ends."""
    global _thread
    secrets = task.secret_values
    followed = _Follow(key, topic, worker, folder, secrets)
    with _lock:
        _follows[key] = followed
        if _thread is None:
            _thread = threading.Thread(target=_run, name="stepflow-dask-live", daemon=True)
            _thread.start()
    try:
        yield
    finally:
        with _lock:
            _follows.pop(key, None)
        if followed.looked:
            # What was held back (a last line without its end); the stepflow worker empties
            # the files when the step ends, so nothing new is read here. The live view's
            # trouble must never cost the attempt its result.
            with contextlib.suppress(Exception):
                followed.look(final=True)


def _run() -> None:
    global _thread
    idle_since = time.monotonic()
    while True:
        time.sleep(POLL)
        with _lock:
            follows = list(_follows.values())
            if not follows and time.monotonic() - idle_since > _IDLE:
                _thread = None  # under the lock: the next ``follow`` starts another
                return
        if follows:
            idle_since = time.monotonic()
        now = time.monotonic()
        for followed in follows:
            if now - followed.began >= POLL:
                # One attempt's trouble must not end the thread that follows the others.
                with contextlib.suppress(Exception):
                    followed.look()


class LiveRelay:
    """The run's side: the events of ``topic`` become the live output of the attempts in
    flight (``attempts``: Dask key → the attempt's task, read under ``lock``)."""

    def __init__(self, attempts: Mapping[str, Any], lock: threading.Lock) -> None:
        self.attempts = attempts
        self.lock = lock
        #: Dask key → the number of the last event published
        self.seen: dict[str, int] = {}

    def __call__(self, event: tuple[float, Any]) -> None:
        """Dask's handler of one event ``(time, message)``; runs in the client's event loop."""
        message = event[1] if isinstance(event, tuple) and len(event) == 2 else None
        if not isinstance(message, dict):
            return  # the scheduler's own events of the topic (a client's actions)
        key = message.get(MARK)
        seq = message.get("seq")
        if not isinstance(key, str) or not isinstance(seq, int):
            return
        with self.lock:
            attempt = self.attempts.get(key)
            if attempt is None:
                self.seen.pop(key, None)  # ended: its recorded log follows
                return
            if seq <= self.seen.get(key, 0):
                return
            self.seen[key] = seq
        for stream in STREAMS:
            text = message.get(stream)
            if isinstance(text, str) and text:
                publish_output(attempt.task, stream, text)
