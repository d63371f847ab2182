"""What publishing steps in flight to the live area costs a run (issue 18).

A 100-step chain of trivial steps, first runs in fresh homes, in one process, alternating a
run with the live area on and one with it switched off (its entry points replaced by no-ops),
so both see the same load; prints the medians and the median of the paired differences.

    python benchmarks/bench_live.py [--workers 1] [--rounds 20]

``--workers 1`` runs the steps in the run's own process; ``--workers 2`` in worker
processes (their start-up dominates and varies; expect noise). It only measures; nothing
passes or fails.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CHAIN = 100


class _Off:
    """``live.attempt`` switched off."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args(argv)

    folder = Path(tempfile.mkdtemp(prefix="bench-live-"))
    src = ["from stepflow import step", "@step\ndef s0(seed: int = 0) -> int:\n    return seed"]
    for i in range(1, CHAIN):
        src.append(f"@step\ndef s{i}(s{i - 1}: int) -> int:\n    return s{i - 1} + 1")
    (folder / "bench_live_chain.py").write_text("\n".join(src) + "\n")
    sys.path.insert(0, str(folder))
    os.chdir(folder)  # the code snapshot scans this folder only
    module = importlib.import_module("bench_live_chain")

    from stepflow import Pipeline
    from stepflow._execution import live, pool

    pipe = Pipeline.from_module(module)
    real = (live.attempt, live.recorded, live.run_ended, pool.follow_output)

    def switch(on: bool) -> None:
        if on:
            live.attempt, live.recorded, live.run_ended, pool.follow_output = real
        else:
            live.attempt = _Off  # type: ignore[assignment,misc]
            live.recorded = live.run_ended = lambda *a, **k: None  # type: ignore[assignment]
            pool.follow_output = lambda *a, **k: contextlib.nullcontext()  # type: ignore[assignment]

    homes = Path(tempfile.mkdtemp(prefix="bench-live-homes-"))

    def once() -> float:
        start = time.perf_counter()
        result = pipe.run(workers=args.workers, home=tempfile.mkdtemp(dir=homes))
        if not result.ok:
            raise SystemExit(result.summary())
        return time.perf_counter() - start

    once()  # imports the run machinery
    samples: dict[bool, list[float]] = {True: [], False: []}
    for i in range(args.rounds):
        for on in (True, False) if i % 2 else (False, True):
            switch(on)
            samples[on].append(once())
    for on in (False, True):
        found = samples[on]
        print(
            f"{CHAIN}-step chain, workers={args.workers}, live area {'on ' if on else 'off'}: "
            f"median {statistics.median(found) * 1e3:.1f} ms, min {min(found) * 1e3:.1f} ms "
            f"({len(found)} runs)"
        )
    paired = [a - b for a, b in zip(samples[True], samples[False], strict=True)]
    print(f"paired difference (on - off): median {statistics.median(paired) * 1e3:+.1f} ms per run")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
