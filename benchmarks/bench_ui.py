"""The web UI's pages with many runs and a big graph (DESIGN.md section 10, issue 18).

Builds one home with:

- a real run of a 2,000-step pipeline (40 layers of 50 steps, each step reading two steps of
  the layer before: 3,900 edges), through ``Pipeline.run``;
- 10,000 more runs of three small pipelines written through the run records' own API (start,
  five steps, finish), in several states, a fifth of them tagged with a schedule;

then starts ``stepflow ui --port 0`` on that home, in its own process as a user would, and
times each page and API answer over loopback HTTP (every request opens the records
read-only, queries, renders and answers; the browser's own drawing is not counted), median
of ``--repeats``.

    python benchmarks/bench_ui.py [--repeats 5]

It only measures; nothing passes or fails. The budget (issue 18): the runs page and the run
page of the 2,000-step run each answer in under a second.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LAYERS, WIDTH = 40, 50


def big_pipeline_source() -> str:
    lines = ["from stepflow import Pipeline, step", ""]
    names = []
    for layer in range(LAYERS):
        for i in range(WIDTH):
            name = f"s{layer}_{i}"
            names.append(name)
            if layer == 0:
                lines += ["@step", f"def {name}() -> int:", f"    return {i}", ""]
            else:
                a, b = f"s{layer - 1}_{i}", f"s{layer - 1}_{(i + 1) % WIDTH}"
                lines += [
                    "@step",
                    f"def {name}({a}: int, {b}: int) -> int:",
                    f"    return {a} + {b}",
                    "",
                ]
    lines.append(f"big = Pipeline('big', [{', '.join(names)}])")
    return "\n".join(lines) + "\n"


def write_runs(home: Path, count: int) -> None:
    from stepflow._storage.records import MetricRow, RunRecords, RunRow, StepIO, StepRow

    records = RunRecords(home / "runs.db")
    start = time.time() - count * 60
    states = ["succeeded"] * 7 + ["failed", "interrupted", "succeeded"]
    for n in range(count):
        rid = f"20260101-{n:06d}-bench"
        pipeline = ("train", "score", "report")[n % 3]
        tags = {"schedule": "nightly"} if n % 5 == 0 else {}
        steps = [f"step{i}" for i in range(5)]
        plan = {"steps": steps, "edges": [[a, b] for a, b in itertools.pairwise(steps)]}
        started = start + n * 60
        records.start_run(
            RunRow(id=rid, pipeline=pipeline, state="running", started=started, params={}),
            plan=plan,
        )
        state = states[n % len(states)]
        rows = [
            StepRow(
                name=s,
                state="ran" if n % 2 else "reused",
                started=started + i,
                finished=started + i + 0.5,
                duration=0.5,
                attempts=1,
                backend="local",
                cache_key=f"{n:08x}{i:024x}",
                io=(StepIO("out", s, f"{n:08x}{i:024x}.pickle", f"{n:08x}{i:024x}", 10),),
                metrics=(MetricRow("loss", 1.0 / (n + 1), 0, started),),
            )
            for i, s in enumerate(steps)
        ]
        records.finish_run(
            rid,
            state=state,
            counts={"ran": 5},
            tags=tags,
            steps=rows,
            finished=started + 5,
        )
    records.close()


def timed(base: str, url: str, repeats: int) -> tuple[float, int]:
    import urllib.request

    times, size = [], 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        with urllib.request.urlopen(base + url) as answer:
            body = answer.read()
        times.append(time.perf_counter() - t0)
        size = len(body)
    return statistics.median(times), size


def serve(home: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "stepflow", "ui", "--port", "0", "--home", str(home)],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    line = proc.stderr.readline()
    found = re.search(r"at (http://\S+)/ ", line)
    assert found, line
    return proc, found.group(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--runs", type=int, default=10_000)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="stepflow-bench-ui-") as tmp:
        folder = Path(tmp)
        os.chdir(folder)
        (folder / "big_pipeline.py").write_text(big_pipeline_source())
        sys.path.insert(0, str(folder))
        home = folder / "home"
        import big_pipeline

        t0 = time.perf_counter()
        result = big_pipeline.big.run(home=home)
        print(f"2,000-step run: {result.summary()} (wall {time.perf_counter() - t0:.1f} s)")
        t0 = time.perf_counter()
        write_runs(home, args.runs)
        print(f"{args.runs:,} more runs recorded in {time.perf_counter() - t0:.1f} s")

        rid = result.run_id
        pages = [
            ("runs page (newest 50 of all)", "/runs"),
            ("runs page, state=failed", "/runs?state=failed"),
            ("runs page, schedule=nightly", "/runs?schedule=nightly"),
            ("runs page, 5,000 runs back", "/runs?offset=5000"),
            ("/api/runs", "/api/runs"),
            ("run page, 2,000-step graph", f"/runs/{rid}"),
            ("/api/runs/{id}, 2,000 steps", f"/api/runs/{rid}"),
            ("graph.svg, 2,000 steps", f"/runs/{rid}/graph.svg"),
            ("step page in the 2,000-step run", f"/runs/{rid}/steps/s39_0"),
        ]
        print(
            f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
            f"Python {platform.python_version()}; median of {args.repeats}\n"
        )
        print(f"| {'page':<34} | {'time':>8} | {'bytes':>10} |")
        print(f"|{'-' * 36}|{'-' * 10}|{'-' * 12}|")
        proc, base = serve(home)
        try:
            for label, url in pages:
                took, size = timed(base, url, args.repeats)
                print(f"| {label:<34} | {took * 1000:6.0f}ms | {size:>10,} |")
        finally:
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    main()
