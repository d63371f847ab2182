"""Hashing throughput for the budget in DESIGN.md section 6 (8 GB/s or more from the buffers).

Run from the repository root::

    python benchmarks/bench_hashing.py          # median of 5 repeats per figure
    python benchmarks/bench_hashing.py --quick  # median of 3, smaller inputs

It prints one table: what was hashed, its size, the median time and the rate. The first two
rows are the ceilings measured in the same run (xxh3_128 over one contiguous buffer, and a plain
memory copy), so a slow machine or a busy neighbour shows up as such. It only measures: no test
asserts these timings.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable

import numpy as np
import pandas as pd
import xxhash

from stepflow._storage.hashing import hash_file, hash_value


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm up: page in the data, resolve handlers
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="median of 3, 1/4 of the data")
    args = parser.parse_args()
    repeats = 3 if args.quick else 5
    rows_count = 2_500_000 if args.quick else 10_000_000

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({f"c{i}": rng.standard_normal(rows_count) for i in range(5)})
    array = rng.standard_normal(rows_count * 5)
    with_nan = array.copy()
    with_nan[:: 1 << 17] = np.nan  # one NaN per 1 MiB piece: every piece takes the slow path
    fortran = np.asfortranarray(array.reshape(-1, 5))
    small = {f"key{i}": (i, float(i), f"value{i}") for i in range(100_000)}

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "blob.bin")
        array.tofile(path)
        cases: list[tuple[str, float, Callable[[], object]]] = [
            ("xxh3_128 of one buffer (ceiling)", array.nbytes, lambda: xxhash.xxh3_128(array)),
            ("memory copy (reference)", array.nbytes, lambda: array.copy()),
            (f"DataFrame {rows_count:,} x 5 float64", array.nbytes, lambda: hash_value(frame)),
            ("ndarray float64, C order", array.nbytes, lambda: hash_value(array)),
            ("ndarray float64 with NaNs", array.nbytes, lambda: hash_value(with_nan)),
            ("ndarray float64, Fortran order", array.nbytes, lambda: hash_value(fortran)),
            ("hash_file (page cache)", array.nbytes, lambda: hash_file(path)),
            ("dict of 100k small items", 0, lambda: hash_value(small)),
        ]
        print(f"{'what':40} {'size':>10} {'median':>10} {'rate':>14}")
        for label, nbytes, fn in cases:
            seconds = median_seconds(fn, repeats)
            if nbytes:
                size, rate = f"{nbytes / 1e6:.0f} MB", f"{nbytes / seconds / 1e9:.1f} GB/s"
            else:
                size, rate = f"{len(small):,} it", f"{seconds / len(small) * 1e6:.2f} us/item"
            print(f"{label:40} {size:>10} {seconds * 1e3:>8.1f}ms {rate:>14}")


if __name__ == "__main__":
    main()
