"""Framework overhead benchmarks for the budgets in DESIGN.md section 6.

Run from the repository root::

    python benchmarks/bench_overhead.py          # median of 5 repeats per figure
    python benchmarks/bench_overhead.py --quick  # median of 3, for a quick look

It measures stepflow against plain Python in the same process (or a fresh process, for the
start-up figures) and prints one table. It only measures: nothing here passes or fails, and
no test asserts these timings (DESIGN.md section 6: budgets are checked by ``benchmarks/``).

The pipelines are generated as module files in a temporary folder, because steps are wired by
parameter name and a 100-step chain or a 10,000-step graph is easiest to write as code.
Fresh processes run with a bytecode cache (``PYTHONPYCACHEPREFIX`` in a temporary folder) as a
normal install would; when the environment sets ``PYTHONDONTWRITEBYTECODE`` the start-up figures
are also given without it, since then every start recompiles stepflow's own modules.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib
import itertools
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import attrs

CHAIN = 100
FANOUT = 200
PLAN_STEPS = 10_000
PLAN_WIDTH = 100
SLEEPERS = 200
SLEEP_S = 0.1
SLEEP_WORKERS = 8

#: where ``fresh_home`` makes a new, empty STEPFLOW_HOME (set by ``main``)
HOMES: Path | None = None

# --- generated pipelines ------------------------------------------------------------------


def chain_source(n: int, *, decorated: bool = True) -> str:
    """``s0 -> s1 -> ... -> s{n-1}``; each step adds one to its input."""
    deco = "@step\n" if decorated else ""
    lines = ["from stepflow import step\n"] if decorated else []
    # ``seed`` lets a run make new results in a home that has run the chain before.
    lines.append(f"{deco}def s0(seed: int = 0) -> int:\n    return seed\n")
    for i in range(1, n):
        lines.append(f"{deco}def s{i}(s{i - 1}: int) -> int:\n    return s{i - 1} + 1\n")
    body = "\n".join(f"    v{i} = s{i}({f'v{i - 1}' if i else ''})" for i in range(n))
    lines.append(f"def plain() -> int:\n{body}\n    return v{n - 1}\n")
    lines.append('if __name__ == "__main__":\n    plain()\n')
    return "\n".join(lines)


def fanout_source(n: int) -> str:
    """One ``source`` step read by ``n`` independent consumers ``c0 .. c{n-1}``."""
    lines = [
        "from stepflow import step\n",
        "@step\ndef source(seed: int = 1) -> int:\n    return seed\n",
    ]
    for i in range(n):
        lines.append(f"@step\ndef c{i}(source: int) -> int:\n    return source + {i}\n")
    calls = "\n".join(f"    v{i} = c{i}(src)" for i in range(n))
    values = ", ".join(f"v{i}" for i in range(n))
    lines.append(f"def plain() -> tuple[int, ...]:\n    src = source()\n{calls}\n")
    lines[-1] += f"    return ({values},)\n"
    return "\n".join(lines)


def joblib_chain_source(n: int) -> str:
    """The chain's functions for the peer, ``joblib.Memory``: ``chain(wrap(memory))`` runs them
    through ``memory.cache``, each call's output the next one's input, as stepflow does."""
    lines = [f"def s{i}(x: int) -> int:\n    return x + 1\n" for i in range(n)]
    funcs = ", ".join(f"s{i}" for i in range(n))
    lines.append(f"FUNCS = ({funcs},)\n")
    lines.append(
        "def wrap(memory):\n    return [memory.cache(f) for f in FUNCS]\n\n"
        "def chain(cached, seed=0):\n    x = seed\n    for f in cached:\n"
        "        x = f(x)\n    return x\n"
    )
    return "\n".join(lines)


def layered_source(n: int, width: int) -> str:
    """``n`` steps in layers of ``width``; each step reads two steps of the layer before."""
    lines = ["from stepflow import step\n"]
    for k in range(n):
        layer, j = divmod(k, width)
        if layer == 0:
            lines.append(f"@step\ndef n{k}() -> int:\n    return {k}\n")
            continue
        a = k - width
        b = (layer - 1) * width + (j + 1) % width
        lines.append(f"@step\ndef n{k}(n{a}: int, n{b}: int) -> int:\n    return n{a} + n{b}\n")
    return "\n".join(lines)


def sleepers_source(n: int, seconds: float) -> str:
    """``n`` independent steps that each sleep ``seconds``."""
    lines = ["import time\n", "from stepflow import step\n"]
    for i in range(n):
        lines.append(f"@step\ndef z{i}() -> int:\n    time.sleep({seconds})\n    return {i}\n")
    lines.append(f"def z(i: int) -> int:\n    time.sleep({seconds})\n    return i\n")
    return "\n".join(lines)


# --- timing helpers -----------------------------------------------------------------------


def timed(fn: Callable[[], Any], repeats: int, *, number: int = 1) -> list[float]:
    """Seconds per call of ``fn``, one figure per repeat (each the mean of ``number`` calls)."""
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        out.append((time.perf_counter() - start) / number)
    return out


def timed_fast(fn: Callable[[], Any], repeats: int) -> list[float]:
    """Like ``timed`` for calls of a few microseconds: loop enough that a repeat takes ~50 ms."""
    number = 1
    while True:
        start = time.perf_counter()
        for _ in range(number):
            fn()
        if time.perf_counter() - start > 0.05:
            break
        number *= 4
    return timed(fn, repeats, number=number)


def timed_process(
    argv: Sequence[str] | Callable[[], Sequence[str]],
    repeats: int,
    *,
    env: Mapping[str, str],
    cwd: Path,
    home: Path | None = None,
) -> list[float]:
    """Wall seconds of a fresh process, one figure per repeat, after one untimed warm-up.

    Each process gets a fresh home unless ``home`` is given; ``argv`` may be a function that
    gives each process its own command line.
    """

    def once() -> None:
        args = list(argv() if callable(argv) else argv)
        proc = subprocess.run(
            args,
            cwd=cwd,
            env={**env, "STEPFLOW_HOME": str(home or fresh_home())},
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise SystemExit(
                f"benchmark command failed ({proc.returncode}): {' '.join(args)}\n{proc.stderr}"
            )

    once()
    return timed(once, repeats)


def fresh_home(under: Path | None = None) -> Path:
    """A new, empty stepflow home (in ``under``, or ``HOMES``), so that a "first run" never
    finds stored results."""
    assert HOMES is not None
    return Path(tempfile.mkdtemp(dir=under or HOMES))


def ensure_ok(result: Any, what: str) -> Any:
    # A failed run would time an error path; stop rather than print a meaningless figure.
    if not result.ok:
        failed = [r for r in result.steps.values() if r.error is not None]
        first = f"\nfirst error ({failed[0].name}): {failed[0].error}" if failed else ""
        raise SystemExit(f"{what}: the pipeline run failed\n{result.summary()}{first}")
    return result


# --- the table ----------------------------------------------------------------------------


class Row:
    def __init__(
        self,
        name: str,
        stepflow: str,
        plain: str = "-",
        ratio: str = "-",
        budget: str = "-",
        verdict: str = "-",
    ) -> None:
        self.cells = (name, stepflow, plain, ratio, budget, verdict)


def verdict(value: float, budget: float) -> str:
    return "within" if value <= budget else "over"


def ms(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    return f"{seconds * 1e3:.1f} ms" if seconds < 10 else f"{seconds:.1f} s"


def sec(seconds: float) -> str:
    return f"{seconds:.3f} s"


def spread(samples: Sequence[float], unit: Callable[[float], str]) -> str:
    """The median, then the range in brackets: on a shared machine the range matters."""
    low, high = unit(min(samples)).split()[0], unit(max(samples))
    return f"{unit(statistics.median(samples))} [{low}-{high}]"


def print_table(rows: list[Row]) -> None:
    header = ("benchmark", "stepflow", "plain/peer", "ratio or per-step", "budget", "verdict")
    widths = [max(len(r[i]) for r in [header, *(row.cells for row in rows)]) for i in range(6)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        cells = zip(row.cells, widths, strict=True)
        print("| " + " | ".join(c.ljust(w) for c, w in cells) + " |")


def machine() -> str:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        model = platform.processor() or "unknown"
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        load = "n/a"
    import stepflow

    return (
        f"cpu: {model}; cores: {os.cpu_count()} ({usable} usable); load average: {load}\n"
        f"python: {platform.python_implementation()} {platform.python_version()} on "
        f"{platform.platform()}; stepflow {stepflow.__version__}"
    )


# --- the benchmarks -----------------------------------------------------------------------


def import_generated(folder: Path, name: str, source: str) -> ModuleType:
    (folder / f"{name}.py").write_text(source)
    return importlib.import_module(name)


def per_step_rows(label: str, module: ModuleType, steps: int, repeats: int) -> list[Row]:
    from stepflow import Pipeline

    pipe = Pipeline.from_module(module)
    # Warm-up: the first run in a process imports the run machinery.
    ensure_ok(pipe.run(workers=1, home=fresh_home()), label)
    flow_samples = timed(lambda: ensure_ok(pipe.run(workers=1, home=fresh_home()), label), repeats)
    flow = statistics.median(flow_samples)
    plain = statistics.median(timed_fast(module.plain, repeats))
    per_step = (flow - plain) / steps

    # The same runs with the configuration and plugin manager made once, to separate what a
    # run pays once (finding plugins) from what each step pays.
    from stepflow._config import load_config
    from stepflow._pluginmanager import make_plugin_manager

    config = load_config(workers=1)
    pm = make_plugin_manager(config.plugins)

    def run_reused() -> None:
        fresh = attrs.evolve(config, home=fresh_home())
        ensure_ok(pipe.run(workers=1, config=fresh, plugin_manager=pm), label)

    reused = statistics.median(timed(run_reused, repeats))
    marginal = (reused - plain) / steps

    # New results in a home that has run the pipeline before (a changed parameter that
    # every step depends on): what a first run costs once the home exists.
    home = fresh_home()
    ensure_ok(pipe.run(workers=1, home=home, params={"seed": -1}), label)
    # Seeds far apart: every value, and so every stored object, is new. Seeds 1 apart would
    # make a chain step store a value an earlier run stored, which replaces that object.
    seeds = itertools.count(1_000_000, 1_000_000)

    def run_in_used_home() -> None:
        result = ensure_ok(pipe.run(workers=1, home=home, params={"seed": next(seeds)}), label)
        if any(r.state.value != "ran" for r in result.steps.values()):
            raise SystemExit(f"{label}: a step was reused although its input changed")

    used = statistics.median(timed(run_in_used_home, repeats))
    in_used_home = (used - plain) / steps
    return [
        Row(
            f"{label}: pipeline.run(workers=1), per step",
            spread(flow_samples, ms),
            ms(plain),
            f"+{per_step * 1e3:.3f} ms/step",
            "0.5 ms/step (aim 0.2)",
            verdict(per_step, 0.5e-3),
        ),
        Row(
            f"{label}: same, config + plugin manager reused (info)",
            ms(reused),
            ms(plain),
            f"+{marginal * 1e3:.3f} ms/step",
        ),
        Row(
            f"{label}: new results in a home used before (info)",
            ms(used),
            ms(plain),
            f"+{in_used_home * 1e3:.3f} ms/step",
        ),
    ]


def alternated(
    first: Callable[[], Any], second: Callable[[], Any], repeats: int
) -> tuple[list[float], list[float]]:
    """Seconds of ``first`` and ``second`` called in turn, ``repeats`` times each.

    This machine's speed drifts by 2x within minutes, so a comparison is fair only between
    runs made side by side: each pair gives one ratio.
    """
    a, b = [], []
    for _ in range(repeats):
        a += timed(first, 1)
        b += timed(second, 1)
    return a, b


def pair_ratios(a: Sequence[float], b: Sequence[float]) -> list[float]:
    """``a`` over ``b``, pair by pair, sorted."""
    return sorted(x / y for x, y in zip(a, b, strict=True))


def ratio_text(ratios: Sequence[float]) -> str:
    """The median of sorted ``ratios`` and their range."""
    return f"{statistics.median(ratios):.2f}x [{ratios[0]:.2f}-{ratios[-1]:.2f}]"


def peer_rows(
    label: str, module: ModuleType, peer: ModuleType, steps: int, repeats: int
) -> list[Row]:
    """stepflow next to the peer DESIGN.md section 6 names for reuse, ``joblib.Memory``, on
    the same chain, run in turn: first runs (stepflow in a home used before, joblib in a new
    cache folder) and fully cached reruns. The ratio is stepflow / joblib, pair by pair."""
    import joblib

    from stepflow import Pipeline

    assert HOMES is not None
    pipe = Pipeline.from_module(module)
    home = fresh_home()
    ensure_ok(pipe.run(workers=1, home=home), label)
    seeds = itertools.count(1_000_000_000, 1_000_000)

    def flow_first() -> None:
        ensure_ok(pipe.run(workers=1, home=home, params={"seed": next(seeds)}), label)

    def joblib_first() -> None:
        memory = joblib.Memory(tempfile.mkdtemp(dir=HOMES), verbose=0)
        peer.chain(peer.wrap(memory))

    joblib_first()  # warm-up: joblib's own imports
    flows, peers = alternated(flow_first, joblib_first, repeats)

    ensure_ok(pipe.run(workers=1, home=home), label)  # seed 0 again: all stored
    memory = joblib.Memory(tempfile.mkdtemp(dir=HOMES), verbose=0)
    cached = peer.wrap(memory)
    peer.chain(cached)
    flows_cached, peers_cached = alternated(
        lambda: ensure_ok(pipe.run(workers=1, home=home), label),
        lambda: peer.chain(cached),
        repeats,
    )
    cached_ratios = pair_ratios(flows_cached, peers_cached)
    return [
        Row(
            f"{label}, first run: stepflow (home used before) next to joblib.Memory (peer)",
            spread(flows, ms),
            f"joblib {ms(statistics.median(peers))}",
            f"{ratio_text(pair_ratios(flows, peers))} joblib's",
        ),
        Row(
            f"{label}, fully cached rerun: stepflow next to joblib.Memory (peer)",
            spread(flows_cached, ms),
            f"joblib {ms(statistics.median(peers_cached))}",
            f"{ratio_text(cached_ratios)} joblib's",
            "0.91x joblib's (0.1 vs 0.11 ms/step)",
            verdict(statistics.median(cached_ratios), 0.1 / 0.11),
        ),
    ]


def hamilton_rows(label: str, module: ModuleType, plain: ModuleType, repeats: int) -> list[Row]:
    """stepflow's first run next to Hamilton's uncached run of the same chain, in turn.

    DESIGN.md section 6 sets the first-run budget (0.5 ms/step) on a machine where Hamilton
    took 0.08-0.11 ms/step uncached. Hamilton here builds its driver from the module and
    executes the chain, each time: as stepflow plans and runs it each time. Hamilton is
    optional (``pip install sf-hamilton``); without it these rows are left out.
    """
    try:
        from hamilton import driver
    except ImportError:
        print("Hamilton is not installed (pip install sf-hamilton): its peer rows are left out")
        return []
    from stepflow import Pipeline

    pipe = Pipeline.from_module(module)
    last = f"s{CHAIN - 1}"

    def hamilton() -> None:
        dr = driver.Builder().with_modules(plain).build()
        dr.execute([last])

    def flow_new_home() -> None:
        ensure_ok(pipe.run(workers=1, home=fresh_home()), label)

    home = fresh_home()
    ensure_ok(pipe.run(workers=1, home=home), label)
    seeds = itertools.count(2_000_000_000, 1_000_000)

    def flow_used_home() -> None:
        ensure_ok(pipe.run(workers=1, home=home, params={"seed": next(seeds)}), label)

    hamilton()  # warm-up
    rows = []
    for what, flow in (("brand-new home", flow_new_home), ("home used before", flow_used_home)):
        flows, peers = alternated(flow, hamilton, repeats)
        ratios = pair_ratios(flows, peers)
        rows.append(
            Row(
                f"{label}, first run ({what}) next to Hamilton, uncached (peer)",
                spread(flows, ms),
                f"Hamilton {ms(statistics.median(peers))} "
                f"({statistics.median(peers) / CHAIN * 1e3:.3f} ms/step)",
                f"{ratio_text(ratios)} Hamilton's",
                "4.5x Hamilton's (0.5 vs 0.11 ms/step)",
                verdict(statistics.median(ratios), 0.5 / 0.11),
            )
        )
    return rows


def cached_rerun_row(label: str, module: ModuleType, steps: int, repeats: int) -> Row:
    """Rerun in the same home: every step should be reused once caching exists."""
    from stepflow import Pipeline, StepState

    pipe = Pipeline.from_module(module)
    home = fresh_home()
    ensure_ok(pipe.run(workers=1, home=home), label)
    rerun = ensure_ok(pipe.run(workers=1, home=home), label)
    name = f"{label}: fully cached rerun, per step"
    if any(r.state is not StepState.REUSED for r in rerun.steps.values()):
        return Row(name, "n/a: not every step reused (no cache yet)", budget="0.1 ms/step")
    samples = timed(lambda: ensure_ok(pipe.run(workers=1, home=home), label), repeats)
    per_step = statistics.median(samples) / steps
    return Row(
        name,
        spread(samples, ms),
        "-",
        f"{per_step * 1e3:.3f} ms/step",
        "0.1 ms/step",
        verdict(per_step, 0.1e-3),
    )


def file_costs(folder: Path, count: int = 400) -> tuple[float, float]:
    """Seconds per new small file (create, write, rename: how a result is stored) and per new
    folder, in ``folder``'s file system."""
    scratch = Path(tempfile.mkdtemp(dir=folder))
    try:
        start = time.perf_counter()
        for i in range(count):
            tmp = scratch / f".tmp-{i}"
            with open(tmp, "wb") as fh:
                fh.write(b"x" * 40)
            os.replace(tmp, scratch / f"o{i}")
        per_file = (time.perf_counter() - start) / count
        start = time.perf_counter()
        for i in range(count):
            (scratch / f"d{i}").mkdir()
        per_folder = (time.perf_counter() - start) / count
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return per_file, per_folder


def file_cost_row(label: str, folder: Path, repeats: int) -> Row:
    costs = [file_costs(folder) for _ in range(repeats)]
    return Row(
        f"{label}: one new small file, created and renamed (info)",
        f"{statistics.median(c[0] for c in costs) * 1e6:.0f} us",
        "-",
        f"new folder {statistics.median(c[1] for c in costs) * 1e6:.0f} us",
    )


def filesystem_rows(module: ModuleType, steps: int, repeats: int) -> list[Row]:
    """What the homes' file system costs, and the chain's first run with homes in memory.

    Storing a result makes one new file (and, in a new home, often one new folder); on a disk
    where that alone takes a large part of the 0.5 ms budget, the tmpfs row shows what the
    framework itself adds.
    """
    from stepflow import Pipeline

    assert HOMES is not None
    rows = [file_cost_row("homes' file system", HOMES, repeats)]
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)) or shm.stat().st_dev == HOMES.stat().st_dev:
        print("no tmpfs at /dev/shm apart from the homes' file system: its rows are left out")
        return rows
    in_memory = Path(tempfile.mkdtemp(dir=shm, prefix="stepflow-bench-"))
    try:
        rows.append(file_cost_row("tmpfs (/dev/shm)", in_memory, repeats))
        pipe = Pipeline.from_module(module)
        label = f"{steps}-step chain, homes on tmpfs"

        def first_run() -> None:
            ensure_ok(pipe.run(workers=1, home=fresh_home(in_memory)), label)

        first_run()
        samples = timed(first_run, repeats)
        plain = statistics.median(timed_fast(module.plain, repeats))
    finally:
        shutil.rmtree(in_memory, ignore_errors=True)
    per_step = (statistics.median(samples) - plain) / steps
    rows.append(
        Row(
            f"{label}: pipeline.run(workers=1), per step (info)",
            spread(samples, ms),
            ms(plain),
            f"+{per_step * 1e3:.3f} ms/step",
        )
    )
    return rows


def fixed_cost_row(folder: Path, repeats: int) -> Row:
    """A 1-step pipeline: what every run pays before and after its steps."""
    from stepflow import Pipeline

    module = import_generated(folder, "bench_one", chain_source(1))
    pipe = Pipeline.from_module(module)
    ensure_ok(pipe.run(workers=1, home=fresh_home()), "1-step pipeline")
    flow = statistics.median(timed(lambda: pipe.run(workers=1, home=fresh_home()), repeats))
    plain = statistics.median(timed_fast(module.plain, repeats))
    return Row("fixed cost of one run (1-step pipeline)", ms(flow), ms(plain))


def build_row(label: str, module: ModuleType, repeats: int) -> Row:
    from stepflow import Pipeline

    build = statistics.median(timed(lambda: Pipeline.from_module(module), repeats))
    return Row(f"{label}: Pipeline.from_module (info)", ms(build))


def plan_rows(repeats: int) -> list[Row]:
    from stepflow import Pipeline

    source = layered_source(PLAN_STEPS, PLAN_WIDTH)
    start = time.perf_counter()
    code = compile(source, "<bench_plan10k>", "exec")
    compile_s = time.perf_counter() - start

    def define() -> list[Any]:
        namespace: dict[str, Any] = {"__name__": "bench_plan10k"}
        exec(code, namespace)
        return [namespace[f"n{k}"] for k in range(PLAN_STEPS)]

    decorate = statistics.median(timed(define, repeats))
    steps = define()

    def build_and_plan() -> None:
        Pipeline("plan10k", steps).plan()

    plan_samples = timed(build_and_plan, repeats)
    planned = statistics.median(plan_samples)
    return [
        Row(
            f"{PLAN_STEPS:,}-step DAG: Pipeline(...) + .plan()",
            spread(plan_samples, sec),
            "-",
            f"{planned / PLAN_STEPS * 1e6:.0f} us/step",
            "1 s",
            verdict(planned, 1.0),
        ),
        Row(
            f"{PLAN_STEPS:,}-step DAG: @step on every function (info)",
            sec(decorate),
            f"compile {sec(compile_s)}",
            f"{decorate / PLAN_STEPS * 1e6:.0f} us/step",
        ),
    ]


def sleepers_rows(folder: Path, repeats: int) -> list[Row]:
    from stepflow import Pipeline

    module = import_generated(folder, "bench_sleep", sleepers_source(SLEEPERS, SLEEP_S))
    pipe = Pipeline.from_module(module)
    flow_samples = timed(
        lambda: ensure_ok(pipe.run(workers=SLEEP_WORKERS, home=fresh_home()), "sleepers"),
        repeats,
    )
    flow = statistics.median(flow_samples)

    def pool() -> None:
        with concurrent.futures.ProcessPoolExecutor(SLEEP_WORKERS) as executor:
            list(executor.map(module.z, range(SLEEPERS)))

    peer = statistics.median(timed(pool, repeats))
    ideal = SLEEPERS * SLEEP_S / SLEEP_WORKERS
    return [
        Row(
            f"{SLEEPERS} x {SLEEP_S} s sleeps, workers={SLEEP_WORKERS}",
            spread(flow_samples, sec),
            f"{sec(peer)} ProcessPool",
            f"{flow / ideal:.2f}x ideal {ideal:.1f} s",
            "3.5 s",
            verdict(flow, 3.5),
        )
    ]


def process_rows(folder: Path, repeats: int, *, env: Mapping[str, str], tag: str) -> list[Row]:
    exe = Path(sys.executable)
    script = exe.parent / "stepflow"
    if not script.exists():
        # Not every install puts the console script next to the interpreter.
        found = shutil.which("stepflow")
        if found is None:
            raise SystemExit("the `stepflow` console script is not installed; pip install -e .")
        script = Path(found)
    floor = statistics.median(timed_process([str(exe), "-c", "pass"], repeats, env=env, cwd=folder))
    help_samples = timed_process([str(script), "--help"], repeats, env=env, cwd=folder)
    helped = statistics.median(help_samples)
    run_samples = timed_process(
        [str(script), "run", "bench_chain.py"], repeats, env=env, cwd=folder
    )
    ran = statistics.median(run_samples)
    plain = statistics.median(
        timed_process([str(exe), "plain_chain.py"], repeats, env=env, cwd=folder)
    )
    # The everyday case: a home that has run the chain, and a parameter that every step
    # depends on changed (seeds far apart, so every value is new).
    seeds = itertools.count(1_000_000, 1_000_000)
    used_samples = timed_process(
        lambda: [str(script), "run", "bench_chain.py", "--param", f"seed={next(seeds)}"],
        repeats,
        env=env,
        cwd=folder,
        home=fresh_home(),
    )
    return [
        Row(
            f"`stepflow --help`, fresh process{tag}",
            spread(help_samples, sec),
            f"{sec(floor)} python -c pass",
            f"{helped / floor:.2f}x",
            "0.15 s",
            verdict(helped, 0.15),
        ),
        Row(
            f"`stepflow run` {CHAIN}-step chain, fresh process{tag}",
            spread(run_samples, sec),
            f"{sec(plain)} python plain.py",
            f"+{(ran - plain) * 1e3:.0f} ms",
            "0.3 s",
            verdict(ran, 0.3),
        ),
        Row(
            f"same, in a home used before, new results (info){tag}",
            spread(used_samples, sec),
            f"{sec(plain)} python plain.py",
            f"+{(statistics.median(used_samples) - plain) * 1e3:.0f} ms",
        ),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="median of 3 repeats, not 5")
    args = parser.parse_args(argv)
    repeats = 3 if args.quick else 5

    with tempfile.TemporaryDirectory(prefix="stepflow-bench-") as tmp:
        root = Path(tmp)
        folder = root / "modules"
        folder.mkdir()
        global HOMES
        HOMES = root / "homes"
        HOMES.mkdir()
        # Every run gets a fresh home; this default only guards against a run that does not.
        os.environ["STEPFLOW_HOME"] = str(root / "home")
        sys.path.insert(0, str(folder))
        importlib.invalidate_caches()
        # Worker processes start in the working folder, where `python -m` puts it first on
        # sys.path; a folder of our own keeps them (and pyproject.toml look-ups) independent of
        # where the script is started.
        here = os.getcwd()
        os.chdir(folder)

        original_env = dict(os.environ)
        cached_env = dict(os.environ)
        cached_env.pop("PYTHONDONTWRITEBYTECODE", None)
        cached_env["PYTHONPYCACHEPREFIX"] = str(root / "pycache")
        # Worker processes of the workers=8 run inherit this, so they start from bytecode too.
        os.environ.clear()
        os.environ.update(cached_env)

        print(machine())
        print(f"repeats: median of {repeats}\n", flush=True)

        rows: list[Row] = []
        chain = import_generated(folder, "bench_chain", chain_source(CHAIN))
        (folder / "plain_chain.py").write_text(chain_source(CHAIN, decorated=False))
        fanout = import_generated(folder, "bench_fanout", fanout_source(FANOUT))

        rows += per_step_rows(f"{CHAIN}-step chain", chain, CHAIN, repeats)
        rows += filesystem_rows(chain, CHAIN, repeats)
        rows += per_step_rows(f"{FANOUT}-wide fan-out", fanout, FANOUT + 1, repeats)
        rows.append(fixed_cost_row(folder, repeats))
        rows.append(build_row(f"{CHAIN}-step chain", chain, repeats))
        rows += plan_rows(repeats)
        rows += process_rows(folder, repeats, env=cached_env, tag="")
        if original_env.get("PYTHONDONTWRITEBYTECODE"):
            rows += process_rows(
                folder, repeats, env=original_env, tag=" (PYTHONDONTWRITEBYTECODE set)"
            )
        rows += sleepers_rows(folder, repeats)
        rows.append(cached_rerun_row(f"{CHAIN}-step chain", chain, CHAIN, repeats))
        peer = import_generated(folder, "joblib_chain", joblib_chain_source(CHAIN))
        rows += peer_rows(f"{CHAIN}-step chain", chain, peer, CHAIN, repeats)
        plain_chain = importlib.import_module("plain_chain")
        rows += hamilton_rows(f"{CHAIN}-step chain", chain, plain_chain, repeats)

        print_table(rows)
        print(
            "\nper step = (stepflow - plain) / steps, so it includes the fixed cost of a run;"
            "\nfirst runs use a fresh STEPFLOW_HOME each; budgets: DESIGN.md section 6."
        )
        os.chdir(here)
    return 0


if __name__ == "__main__":
    sys.exit(main())
