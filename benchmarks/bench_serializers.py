"""Serializer benchmarks: write and read a 400 MB DataFrame and a 400 MB array.

Run from the repository root::

    python benchmarks/bench_serializers.py            # median of 5 repeats per figure
    python benchmarks/bench_serializers.py --quick    # median of 3
    python benchmarks/bench_serializers.py --memory   # also peak memory, one process per case

Each value (a 10,000,000 x 5 float64 DataFrame, and the same data as an ndarray) is written
with every built-in serializer that accepts it, and with plain ``pickle`` (protocol 5) and
``joblib.dump`` as the peers, to a new file in a temporary folder (``--dir`` to choose one).
Figures are warm-cache: the file was just written, as when a consumer loads what its producer
stored. ``load`` is the serializer's own load; ``load+sum`` also reads every value once
(``sum()``), which is where a memory-mapped load pays for its pages; compare it with the
``sum`` line, the same reduction on the value in memory. No fsync is timed: the datastore
decides that. It only measures: nothing here passes or fails.
"""

from __future__ import annotations

import argparse
import gc
import os
import pickle
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stepflow._storage.serializers import (
    CloudpickleSerializer,
    Serializer,
    builtin_serializers,
)

ROWS, COLS = 10_000_000, 5


class PicklePeer(Serializer):
    """Plain pickle, protocol 5: the peer every Python cache can fall back on."""

    name = "pickle (peer)"

    def can_dump(self, value: Any) -> bool:
        return True

    def dump(self, value: Any, path: Path) -> None:
        with open(path, "wb") as fh:
            pickle.dump(value, fh, protocol=5)

    def load(self, path: Path) -> Any:
        with open(path, "rb") as fh:
            return pickle.load(fh)


class JoblibPeer(Serializer):
    """``joblib.dump``/``joblib.load``, as joblib.Memory stores results."""

    name = "joblib (peer)"

    def can_dump(self, value: Any) -> bool:
        return True

    def dump(self, value: Any, path: Path) -> None:
        import joblib

        with open(path, "wb") as fh:
            joblib.dump(value, fh)

    def load(self, path: Path) -> Any:
        import joblib

        return joblib.load(path)


def make_values() -> dict[str, Any]:
    data = np.random.default_rng(0).random((ROWS, COLS))
    frame = pd.DataFrame(data.copy(), columns=[f"c{i}" for i in range(COLS)])
    return {"frame": frame, "array": data}


def serializers_for(value: Any) -> list[Serializer]:
    chosen = [s for s in builtin_serializers() if s.can_dump(value)]
    if not isinstance(chosen[0], CloudpickleSerializer):
        # Only the first that accepts a value would store it; cloudpickle shows the fallback.
        chosen = [chosen[0], CloudpickleSerializer()]
    return [*chosen, PicklePeer(), JoblibPeer()]


def total(value: Any) -> float:
    return float(value.to_numpy().sum() if isinstance(value, pd.DataFrame) else value.sum())


def median_time(fn: Callable[[], Any], repeats: int, setup: Callable[[], None]) -> float:
    times = []
    for _ in range(repeats):
        setup()
        gc.collect()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(
    serializer: Serializer, value: Any, folder: Path, repeats: int
) -> tuple[float, float, float, int]:
    path = folder / f"artifact{serializer.extension}"

    def remove() -> None:
        path.unlink(missing_ok=True)

    write = median_time(lambda: serializer.dump(value, path), repeats, remove)
    load = median_time(lambda: serializer.load(path), repeats, lambda: None)
    load_sum = median_time(lambda: total(serializer.load(path)), repeats, lambda: None)
    size = path.stat().st_size
    remove()
    return write, load, load_sum, size


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def peak_child(kind: str, name: str, op: str, folder: Path) -> None:
    """In a fresh process: how far one write, or one load and sum, raises resident memory.

    Linux only: the high-water mark is reset through ``/proc/self/clear_refs`` just before.
    A load's figure includes the loaded value itself (400 MB for an in-memory copy; a
    memory map's pages count once read).
    """
    value = make_values()[kind]
    serializer = next(s for s in serializers_for(value) if s.name == name)
    path = folder / f"artifact{serializer.extension}"
    serializer.dump(value, path)
    if op == "load":
        del value
    gc.collect()
    base = _status_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    if op == "write":
        path.unlink()
        serializer.dump(value, path)
    else:
        total(serializer.load(path))
    peak = _status_kb("VmHWM")
    path.unlink(missing_ok=True)
    print((peak - base) * 1024)


def peak_memory(kind: str, name: str, op: str, folder: Path) -> float:
    out = subprocess.run(
        [sys.executable, __file__, "--child", kind, name, op, "--dir", str(folder)],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout.split()[-1]) / 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="median of 3 instead of 5")
    parser.add_argument("--memory", action="store_true", help="also peak memory (slower)")
    parser.add_argument("--dir", type=Path, default=None, help="folder for the files")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        folder = Path(tmp)
        if args.child:
            peak_child(*args.child, folder)
            return 0
        repeats = 3 if args.quick else 5
        print(
            f"{platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs; ", end=""
        )
        print(f"pandas {pd.__version__}, numpy {np.__version__}; median of {repeats}")
        values = make_values()
        header = f"{'value':6} {'serializer':15} {'write s':>8} {'GB/s':>6} {'load s':>8} "
        header += f"{'GB/s':>6} {'load+sum':>9} {'size MB':>8}"
        if args.memory:
            header += f" {'write peak MB':>13} {'load peak MB':>12}"
        print(header)
        for kind, value in values.items():
            nbytes = ROWS * COLS * 8
            baseline = median_time(lambda value=value: total(value), repeats, lambda: None)
            print(
                f"{kind:6} {'sum (in memory)':15} {'':>8} {'':>6} {'':>8} {'':>6} {baseline:9.3f}"
            )
            for serializer in serializers_for(value):
                write, load, load_sum, size = measure(serializer, value, folder, repeats)
                line = (
                    f"{kind:6} {serializer.name:15} {write:8.3f} {nbytes / write / 1e9:6.2f} "
                    f"{load:8.3f} {nbytes / load / 1e9:6.2f} {load_sum:9.3f} {size / 1e6:8.0f}"
                )
                if args.memory:
                    write_peak = peak_memory(kind, serializer.name, "write", folder)
                    load_peak = peak_memory(kind, serializer.name, "load", folder)
                    line += f" {write_peak:13.0f} {load_peak:12.0f}"
                print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
