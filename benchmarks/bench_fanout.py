"""The fan-out budget of DESIGN.md section 6: ``foreach`` over 10,000 small items against
joblib.Memory's 10,000 cached calls, on the first run and on the cached rerun.

The workload is the same function on both sides, ``score(x) = 2x + 1`` over the integers
``0 .. N-1``: in stepflow a ``@step(foreach="items")`` step after a step that makes the list;
in joblib ``Memory(folder).cache(score)`` called once per item. Each phase runs in a fresh
process (the module imported before the clock starts), stepflow and joblib in turn, so the
ratio of each pair compares the two under the same machine state. Rows:

- first run: a brand-new home / cache folder;
- cached rerun: the same home / folder again, nothing changed;
- one item edited (stepflow only, for information): the list differs in one item, so one item
  runs and the others are read back from their own records;
- first run with ``--workers 2`` (stepflow only, for information): the items as tasks in two
  worker processes.

stepflow runs with its built-in plugins only (no entry-point plugins), as a plain install has.

    python benchmarks/bench_fanout.py [--items 10000] [--repeats 3] [--capture tee|quiet]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

MODULE = """
from stepflow import Pipeline, step

def score(x):
    return x * 2 + 1

@step
def items(n: int = 10000, edit: int = -1) -> list[int]:
    values = list(range(n))
    if edit >= 0:
        values[edit] = -values[edit] - 1
    return values

@step(foreach="items")
def scored(items: int) -> int:
    return score(items)

pipe = Pipeline("fan", [items, scored])
"""

MEASURE = """
import json, os, sys, time
sys.path.insert(0, {folder!r})
import fanbench as m
mode, place, n = {mode!r}, {place!r}, {n}
if mode == "joblib":
    t0 = time.perf_counter()
    from joblib import Memory  # inside the clock, as stepflow's run imports what it needs
    cached = Memory(place, verbose=0).cache(m.score)
    result = [cached(i) for i in range(n)]
    elapsed = time.perf_counter() - t0
    print(json.dumps({{"seconds": elapsed, "check": sum(result)}}))
else:
    from stepflow._pluginmanager import make_plugin_manager
    params = {{"n": n, "edit": {edit}}}
    t0 = time.perf_counter()
    # stepflow and its built-in plugins only: third-party plugins installed beside it (the
    # Dask or UI plugin) would add their own import time to every run of both rows.
    pm = make_plugin_manager(entrypoints=False)
    result = m.pipe.run(params=params, home=place, workers={workers}, plugin_manager=pm)
    elapsed = time.perf_counter() - t0
    report = result.steps["scored"]
    print(json.dumps({{
        "seconds": elapsed,
        "state": str(report.state),
        "items": dict(report.items),
        "check": sum(result["scored"]) if result.ok else None,
    }}))
"""


def _measure(
    folder: Path,
    mode: str,
    place: Path,
    n: int,
    *,
    edit: int = -1,
    workers: int = 1,
    capture: str = "tee",
) -> dict:
    code = MEASURE.format(
        folder=str(folder), mode=mode, place=str(place), n=n, edit=edit, workers=workers
    )
    # The run's capture mode comes from the project's pyproject.toml, as a user sets it.
    (folder / "pyproject.toml").write_text(f'[tool.stepflow]\ncapture = "{capture}"\n')
    # With a bytecode cache, as an installed stepflow and joblib have (this machine sets
    # PYTHONDONTWRITEBYTECODE, which would make every process compile them again).
    env = dict(os.environ, PYTHONPYCACHEPREFIX=str(folder.parent / "pyc"))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=folder, env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _summary(
    n: int,
    repeats: int,
    capture: str,
    rows: dict[str, list[float]],
    ratios: dict[str, list[float]],
    notes: dict[str, object],
) -> None:
    print()
    print(f"{n} items, median of {repeats} [min - max], capture={capture}")
    for name, values in rows.items():
        median = statistics.median(values)
        print(
            f"  {name:<34} {median:8.3f} s  [{min(values):.3f} - {max(values):.3f}]  "
            f"({median / n * 1e6:.0f} µs/item)"
        )
    for phase, values in ratios.items():
        verdict = "within" if statistics.median(values) <= 1.0 else "OVER"
        print(
            f"  stepflow / joblib, {phase:<5}            {statistics.median(values):8.3f}x "
            f"[{min(values):.3f} - {max(values):.3f}]  budget <= 1.0x: {verdict}"
        )
    print(f"  {notes}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--capture", choices=["tee", "quiet"], default="tee")
    args = parser.parse_args()
    n = args.items
    with tempfile.TemporaryDirectory(prefix="stepflow-bench-fanout-") as tmp:
        # The project folder holds only the module: each run records a snapshot of the
        # project's files, which must not walk the homes' and joblib's 10,000s of files.
        folder = Path(tmp) / "project"
        data = Path(tmp) / "data"
        folder.mkdir()
        data.mkdir()
        (folder / "fanbench.py").write_text(textwrap.dedent(MODULE))
        rows: dict[str, list[float]] = {}
        ratios: dict[str, list[float]] = {"first": [], "rerun": []}
        notes: dict[str, object] = {}
        # Warm the bytecode cache and the disk's metadata for both, outside the figures.
        _measure(folder, "stepflow", data / "warm", 10, capture=args.capture)
        _measure(folder, "joblib", data / "warm-joblib", 10)
        for rep in range(args.repeats):
            home = data / f"home{rep}"
            cache = data / f"joblib{rep}"
            sf_first = _measure(folder, "stepflow", home, n, capture=args.capture)
            jl_first = _measure(folder, "joblib", cache, n)
            sf_rerun = _measure(folder, "stepflow", home, n, capture=args.capture)
            jl_rerun = _measure(folder, "joblib", cache, n)
            edited = _measure(folder, "stepflow", home, n, edit=n // 2, capture=args.capture)
            parallel = _measure(
                folder, "stepflow", data / f"par{rep}", n, workers=2, capture=args.capture
            )
            assert sf_first["check"] == jl_first["check"] == n * n, (sf_first, jl_first)
            assert sf_rerun["state"] == "reused", sf_rerun
            notes["edited items"] = edited["items"]
            notes["rerun state"] = sf_rerun["state"]
            for name, value in (
                ("stepflow first run", sf_first["seconds"]),
                ("joblib first run", jl_first["seconds"]),
                ("stepflow cached rerun", sf_rerun["seconds"]),
                ("joblib cached rerun", jl_rerun["seconds"]),
                ("stepflow one item edited", edited["seconds"]),
                ("stepflow first run, --workers 2", parallel["seconds"]),
            ):
                rows.setdefault(name, []).append(value)
            ratios["first"].append(sf_first["seconds"] / jl_first["seconds"])
            ratios["rerun"].append(sf_rerun["seconds"] / jl_rerun["seconds"])
            print(f"repeat {rep + 1}: " + ", ".join(f"{k} {v[-1]:.3f}s" for k, v in rows.items()))
        # Before the temporary folder goes: removing 10,000s of files takes a while.
        _summary(n, args.repeats, args.capture, rows, ratios, notes)


if __name__ == "__main__":
    main()
