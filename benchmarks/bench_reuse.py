"""Reuse budgets of DESIGN.md section 6, measured against plain Python and joblib.Memory.

Prints a table: a fully cached rerun of a 100-step chain; a first run and a fully cached
rerun of a step that makes a 10,000,000 x 5 float64 DataFrame consumed by a step that sums
it, with peak memory; each case in a fresh process, median of N.

    python benchmarks/bench_reuse.py [--repeats 5] [--rows 10000000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

CHAIN = "\n".join(
    ["from stepflow import step, Pipeline", "", "@step", "def s0() -> int:", "    return 0"]
    + [f"@step\ndef s{i}(s{i - 1}: int) -> int:\n    return s{i - 1} + 1" for i in range(1, 100)]
    + ["chain = Pipeline('chain', [" + ", ".join(f"s{i}" for i in range(100)) + "])"]
)

FRAME = """
import numpy as np, pandas as pd
from stepflow import step, Pipeline
ROWS = {rows}

def make():
    rng = np.random.default_rng(0)
    return pd.DataFrame(rng.standard_normal((ROWS, 5)), columns=list("abcde"))

@step
def frame() -> pd.DataFrame:
    return make()

@step
def total(frame: pd.DataFrame) -> float:
    return float(frame.to_numpy().sum())

pipe = Pipeline("frame", [frame, total])
"""

MEASURE = """
import json, resource, sys, time
sys.path.insert(0, {folder!r})
mode = {mode!r}
import {module} as m  # imports are not what is measured
t0 = time.perf_counter()
if mode == "plain":
    float(m.make().to_numpy().sum())
elif mode == "joblib":
    import joblib
    mem = joblib.Memory({home!r}, verbose=0)
    f = mem.cache(m.make)
    @mem.cache
    def total_of(df):
        return float(df.to_numpy().sum())
    total_of(f())
elif mode == "stepflow":
    m.{pipe}.run(home={home!r})
elif mode == "plain_chain":
    x = m.s0()
    for i in range(1, 100):
        x = getattr(m, f"s{{i}}")(x)
t1 = time.perf_counter()
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({{"seconds": t1 - t0, "rss_mb": rss}}))
"""


def run(
    folder: Path, mode: str, home: Path, module: str = "flow_frame", pipe: str = "pipe"
) -> dict:
    code = MEASURE.format(folder=str(folder), mode=mode, home=str(home), module=module, pipe=pipe)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def median(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rows", type=int, default=10_000_000)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="stepflow-bench-"))
    (folder / "flow_chain.py").write_text(CHAIN)
    (folder / "flow_frame.py").write_text(textwrap.dedent(FRAME.format(rows=args.rows)))
    rows = []

    def fresh(name: str) -> Path:
        path = folder / name
        subprocess.run(["rm", "-rf", str(path)], check=True)
        return path

    # 100-step chain: fully cached rerun (the time inside the process, imports excluded).
    home = fresh("home-chain")
    run(folder, "stepflow", home, "flow_chain", "chain")
    cached = [run(folder, "stepflow", home, "flow_chain", "chain") for _ in range(args.repeats)]
    plain = [run(folder, "plain_chain", home, "flow_chain") for _ in range(args.repeats)]
    rows.append(
        (
            "100-step chain, fully cached rerun",
            median(cached, "seconds"),
            median(plain, "seconds"),
            "10 ms (0.1 ms/step)",
        )
    )

    # The DataFrame step: plain, first run, cached rerun, joblib first and cached.
    plain = [run(folder, "plain", fresh("x")) for _ in range(args.repeats)]
    first, rerun, jfirst, jrerun = [], [], [], []
    for _ in range(args.repeats):
        home = fresh("home-frame")
        first.append(run(folder, "stepflow", home, "flow_frame", "pipe"))
        rerun.append(run(folder, "stepflow", home, "flow_frame", "pipe"))
        jhome = fresh("joblib")
        jfirst.append(run(folder, "joblib", jhome))
        jrerun.append(run(folder, "joblib", jhome))
    p = median(plain, "seconds")
    rows.append(
        (f"{args.rows:,} x 5 frame: first run", median(first, "seconds"), p, "<= 1.3x plain")
    )
    rows.append(("  joblib.Memory first run", median(jfirst, "seconds"), p, "peer"))
    rows.append(("  fully cached rerun", median(rerun, "seconds"), p, "< 50 ms"))
    rows.append(("  joblib.Memory cached rerun", median(jrerun, "seconds"), p, "peer"))
    prss = median(plain, "rss_mb")
    print(f"python {sys.version.split()[0]}, repeats={args.repeats}")
    print(f"{'benchmark':<42} {'stepflow s':>11} {'plain s':>9} {'ratio':>7}  budget")
    for name, value, base, budget in rows:
        print(f"{name:<42} {value:>11.4f} {base:>9.4f} {value / base:>7.2f}  {budget}")
    print(
        f"peak RSS MB: plain {prss:.0f}, stepflow first run {median(first, 'rss_mb'):.0f} "
        f"({median(first, 'rss_mb') / prss:.2f}x), joblib first run "
        f"{median(jfirst, 'rss_mb'):.0f} ({median(jfirst, 'rss_mb') / prss:.2f}x); budget 1.2x"
    )


if __name__ == "__main__":
    main()
