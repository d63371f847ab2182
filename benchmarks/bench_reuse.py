"""Reuse budgets of DESIGN.md section 6, measured against plain Python and joblib.Memory.

Prints a table: a fully cached rerun of a 100-step chain; a first run and a fully cached
rerun of a step that makes a 10,000,000 x 5 float64 DataFrame consumed by a step that sums
it, with peak memory; each case in a fresh process (the user's module, and with it pandas,
imported before the clock starts), median [min-max] of N, wall-clock and CPU time. The
"again in process" rows time a second ``Pipeline.run`` in the same process.

Fresh processes run with a bytecode cache (``PYTHONPYCACHEPREFIX`` in the temporary folder), as
an installed stepflow does; ``--no-bytecode`` keeps ``PYTHONDONTWRITEBYTECODE`` as this machine
sets it, so that every process compiles stepflow's modules again (about 40 ms).

    python benchmarks/bench_reuse.py [--repeats 5] [--rows 10000000] [--no-bytecode]
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
import time
from pathlib import Path

CHAIN = "\n".join(
    ["from stepflow import step, Pipeline", "", "@step", "def s0() -> int:", "    return 0"]
    + [f"@step\ndef s{i}(s{i - 1}: int) -> int:\n    return s{i - 1} + 1" for i in range(1, 100)]
    + ["chain = Pipeline('chain', [" + ", ".join(f"s{i}" for i in range(100)) + "])"]
)

FRAME = """
import sys, time
import numpy as np, pandas as pd
from stepflow import step, Pipeline
ROWS = {rows}

# Seconds spent in the user's code go to a list on the sys module: a module-level list here
# would be part of the steps' code fingerprints, and a list that a run appends to changes
# the keys of the steps after it, so nothing would ever be reused.

def make():
    start = time.perf_counter()
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.standard_normal((ROWS, 5)), columns=list("abcde"))
    sys.stepflow_bench_inside.append(time.perf_counter() - start)
    return frame

def summed(frame):
    start = time.perf_counter()
    value = float(frame.to_numpy().sum())
    sys.stepflow_bench_inside.append(time.perf_counter() - start)
    return value

@step
def frame() -> pd.DataFrame:
    return make()

@step
def total(frame: pd.DataFrame) -> float:
    return summed(frame)

pipe = Pipeline("frame", [frame, total])
"""

MEASURE = """
import json, resource, sys, time
sys.path.insert(0, {folder!r})
mode = {mode!r}
sys.stepflow_bench_inside = []
import {module} as m  # imports are not what is measured
if mode == "stepflow_again":
    m.{pipe}.run(home={home!r})
t0, c0 = time.perf_counter(), time.process_time()
if mode == "plain":
    m.summed(m.make())
elif mode == "joblib":
    import joblib
    mem = joblib.Memory({home!r}, verbose=0)
    f = mem.cache(m.make)
    @mem.cache
    def total_of(df):
        return m.summed(df)
    total_of(f())
elif mode in ("stepflow", "stepflow_again"):
    m.{pipe}.run(home={home!r})
elif mode == "plain_chain":
    x = m.s0()
    for i in range(1, 100):
        x = getattr(m, f"s{{i}}")(x)
t1, c1 = time.perf_counter(), time.process_time()
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
inside = sum(sys.stepflow_bench_inside)
print(json.dumps({{"seconds": t1 - t0, "cpu": c1 - c0, "rss_mb": rss, "inside": inside}}))
"""

ENV: dict[str, str] = {}


def run(
    folder: Path, mode: str, home: Path, module: str = "flow_frame", pipe: str = "pipe"
) -> dict:
    code = MEASURE.format(folder=str(folder), mode=mode, home=str(home), module=module, pipe=pipe)
    # Run from the code's folder, as `stepflow run` from a project folder does.
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=ENV or None, cwd=folder
    )
    if out.returncode != 0:
        raise SystemExit(f"{mode} run of {module} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def median(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def spread(rows: list[dict], key: str = "seconds") -> str:
    values = sorted(r[key] for r in rows)
    return f"[{values[0]:.4f}-{values[-1]:.4f}]"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--no-bytecode", action="store_true")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="stepflow-bench-"))
    # The code in a folder of its own: homes come and go beside it, not in it.
    folder = root / "code"
    folder.mkdir()
    (folder / "flow_chain.py").write_text(CHAIN)
    (folder / "flow_frame.py").write_text(textwrap.dedent(FRAME.format(rows=args.rows)))
    ENV.update(os.environ)
    if not args.no_bytecode:
        ENV.pop("PYTHONDONTWRITEBYTECODE", None)
        ENV["PYTHONPYCACHEPREFIX"] = str(root / "pycache")
    # Library versions are kept only under import-path folders that have been unchanged for
    # two seconds (stepflow/_storage/fingerprint.py: _Store); a project is rarely younger.
    time.sleep(2.1)
    rows = []

    def fresh(name: str) -> Path:
        path = root / name
        subprocess.run(["rm", "-rf", str(path)], check=True)
        return path

    # 100-step chain: fully cached rerun (the time inside the process, imports excluded).
    home = fresh("home-chain")
    run(folder, "stepflow", home, "flow_chain", "chain")
    run(folder, "stepflow", home, "flow_chain", "chain")  # warm: bytecode, kept analysis
    cached = [run(folder, "stepflow", home, "flow_chain", "chain") for _ in range(args.repeats)]
    again = [
        run(folder, "stepflow_again", home, "flow_chain", "chain") for _ in range(args.repeats)
    ]
    plain = [run(folder, "plain_chain", home, "flow_chain") for _ in range(args.repeats)]
    p = median(plain, "seconds")
    rows.append(("100-step chain, fully cached rerun", cached, p, "10 ms (0.1 ms/step)"))
    rows.append(("  again in process", again, p, "10 ms (0.1 ms/step)"))

    # The DataFrame step: plain, first run, cached rerun, joblib first and cached. Plain runs
    # just before each first run, so that each ratio compares runs under the same load.
    plain, first, rerun, again, jfirst, jrerun = [], [], [], [], [], []
    for _ in range(args.repeats):
        plain.append(run(folder, "plain", fresh("x")))
        home = fresh("home-frame")
        first.append(run(folder, "stepflow", home, "flow_frame", "pipe"))
        rerun.append(run(folder, "stepflow", home, "flow_frame", "pipe"))
        again.append(run(folder, "stepflow_again", home, "flow_frame", "pipe"))
        jhome = fresh("joblib")
        jfirst.append(run(folder, "joblib", jhome))
        jrerun.append(run(folder, "joblib", jhome))
    p = median(plain, "seconds")
    rows.append((f"{args.rows:,} x 5 frame: first run", first, p, "<= 1.3x plain"))
    rows.append(("  joblib.Memory first run", jfirst, p, "peer"))
    rows.append(("  fully cached rerun", rerun, p, "< 50 ms"))
    rows.append(("  again in process", again, p, "< 50 ms"))
    if any(r["inside"] for r in rerun):
        print("warning: a 'fully cached' rerun ran user code; its figures are not a rerun's")
    rows.append(("  joblib.Memory cached rerun", jrerun, p, "peer"))
    prss = median(plain, "rss_mb")
    print(
        f"python {sys.version.split()[0]}, repeats={args.repeats}, "
        f"bytecode cache {'off' if args.no_bytecode else 'on'}; plain {p:.4f} s "
        f"{spread(plain)}"
    )
    print(
        f"{'benchmark':<36} {'stepflow s':>10} {'[min-max]':>17} {'cpu s':>7} {'ratio':>6}  budget"
    )
    for name, found, base, budget in rows:
        value = median(found, "seconds")
        print(
            f"{name:<36} {value:>10.4f} {spread(found):>17} {median(found, 'cpu'):>7.4f} "
            f"{f'{value / base:.2f}' if base >= 0.001 else '-':>6}  {budget}"
        )
    for name, found in (("stepflow", first), ("joblib.Memory", jfirst)):
        # The plain run's time varies by a factor of two here (page faults of 800 MB of new
        # memory), so also compare each run with the time its own user code took.
        paired = sorted(f["seconds"] / p["seconds"] for f, p in zip(found, plain, strict=True))
        inside = sorted(f["seconds"] / f["inside"] for f in found)
        extra = sorted(f["seconds"] - f["inside"] for f in found)
        print(
            f"{name} first run: / plain run just before it {statistics.median(paired):.2f} "
            f"[{paired[0]:.2f}-{paired[-1]:.2f}]; / its own time in user code "
            f"{statistics.median(inside):.2f} [{inside[0]:.2f}-{inside[-1]:.2f}]; "
            f"time outside user code {statistics.median(extra):.3f} s "
            f"[{extra[0]:.3f}-{extra[-1]:.3f}]"
        )
    print(
        f"peak RSS MB: plain {prss:.0f}, stepflow first run {median(first, 'rss_mb'):.0f} "
        f"({median(first, 'rss_mb') / prss:.2f}x), joblib first run "
        f"{median(jfirst, 'rss_mb'):.0f} ({median(jfirst, 'rss_mb') / prss:.2f}x); budget 1.2x"
    )


if __name__ == "__main__":
    main()
