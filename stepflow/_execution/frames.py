"""The protocol between a run and a serving worker (``python -m stepflow.worker --serve``).

A frame is an 8-byte big-endian length followed by a pickle. The worker sends a ready frame
(``ready_frame()``: ``READY`` with its stepflow and Python versions) once it is imported,
then answers each task frame on its stdin with a result frame on its stdout. The run's side
(``WorkerProcess``) and the worker both use this module, so neither imports the other.
"""

from __future__ import annotations

import pickle
import platform
import struct
import sys
from collections.abc import Mapping
from typing import Any, BinaryIO

from stepflow._version import __version__

__all__ = [
    "HEADER",
    "OUTPUT_ENV",
    "READY",
    "WATCH_ENV",
    "encode_frame",
    "frame_length",
    "read_frame",
    "ready_frame",
    "version_mismatch",
    "write_frame",
]

#: the length prefix of every frame
HEADER = struct.Struct(">Q")

#: the ``"ready"`` item of the first frame a serving worker sends (``ready_frame``)
READY = "stepflow-worker-ready"

#: environment variable naming the file descriptor of the pipe whose other end the run's
#: process holds: end-of-file on it means the run is gone, and the worker stops at once
WATCH_ENV = "STEPFLOW_WORKER_LIFELINE"

#: environment variable naming the folder where a serving worker captures each step's output
OUTPUT_ENV = "STEPFLOW_WORKER_OUTPUT"


def encode_frame(obj: Any) -> bytes:
    """One pickled object, length-prefixed."""
    data = pickle.dumps(obj, protocol=5)
    return HEADER.pack(len(data)) + data


def frame_length(header: bytes) -> int:
    """The length of the pickle that follows ``header`` (``HEADER.size`` bytes)."""
    (length,) = HEADER.unpack(header)
    return int(length)


def write_frame(stream: BinaryIO, obj: Any) -> None:
    """Write one pickled object, length-prefixed."""
    stream.write(encode_frame(obj))
    stream.flush()


def read_frame(stream: BinaryIO) -> Any:
    """Read one frame; raise ``EOFError`` when the stream ends cleanly before a frame."""
    length = frame_length(_read_exact(stream, HEADER.size))
    return pickle.loads(_read_exact(stream, length))  # noqa: S301 - our own parent process


def _read_exact(stream: BinaryIO, n: int) -> bytes:
    chunks = []
    while n:
        chunk = stream.read(n)
        if not chunk:
            raise EOFError("stream closed")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def ready_frame() -> dict[str, str]:
    """What a serving worker sends first: ``READY``, and the versions it runs with."""
    return {
        "ready": READY,
        "stepflow": __version__,
        "python": platform.python_version(),
        "executable": sys.executable,
    }


def version_mismatch(hello: Any, worker: str) -> str | None:
    """Why the worker that sent ``hello`` cannot run this process's tasks, or ``None``.

    Tasks and results are pickles of stepflow's own classes, and a step sent by value is
    Python bytecode, so the worker needs this stepflow version and this Python ``X.Y``.
    ``worker`` names it in the message (its interpreter). A ``hello`` that is no ready frame
    at all is not a version question; the caller says that.
    """
    if hello == READY:  # a stepflow from before workers said their versions
        theirs = "an older stepflow, which does not report its version"
    elif isinstance(hello, Mapping) and hello.get("ready") == READY:
        same_python = _minor(str(hello.get("python"))) == _minor(platform.python_version())
        if hello.get("stepflow") == __version__ and same_python:
            return None
        theirs = f"stepflow {hello.get('stepflow')} on Python {hello.get('python')}"
        worker = str(hello.get("executable") or worker)
    else:
        return None
    ours = f"stepflow {__version__} on Python {platform.python_version()}"
    return (
        f"the worker {worker} runs {theirs}, but this run uses {ours}: install stepflow "
        f"{__version__} with Python {_minor(platform.python_version())} where the worker runs"
    )


def _minor(version: str) -> str:
    return ".".join(version.split(".")[:2])
