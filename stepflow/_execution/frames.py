"""The protocol between a run and a serving worker (``python -m stepflow.worker --serve``).

A frame is an 8-byte big-endian length followed by a pickle. The worker sends ``READY``
once it is imported, then answers each task frame on its stdin with a result frame on its
stdout. The run's side (``WorkerProcess``) and the worker both use this module, so neither
imports the other.
"""

from __future__ import annotations

import pickle
import struct
from typing import Any, BinaryIO

__all__ = [
    "HEADER",
    "OUTPUT_ENV",
    "READY",
    "WATCH_ENV",
    "encode_frame",
    "frame_length",
    "read_frame",
    "write_frame",
]

#: the length prefix of every frame
HEADER = struct.Struct(">Q")

#: the first frame a serving worker sends, once it is imported and ready for tasks
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
