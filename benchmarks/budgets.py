"""Every core budget of DESIGN.md section 6, side by side with its peers, in one run.

Run from the repository root::

    python benchmarks/budgets.py              # the budgets' workloads, median of 3
    python benchmarks/budgets.py --repeats 1  # one pass (the foreach rows take minutes)
    python benchmarks/budgets.py --quick      # tiny workloads: proves the script works

It prints one table: each figure, stepflow's time, each peer's time, stepflow's ratio against
the peer the budget names, the budget and a verdict. It only measures (DESIGN.md section 6:
budgets are checked by ``benchmarks/``, never by timed tests).

How it measures, so that the ratios compare like with like:

- every phase is a **fresh process** (``python -c``), and the tools run **in turn**, phase by
  phase: this machine's speed drifts 2x within minutes, so each ratio is taken within one
  round and the table gives the median of the rounds' ratios;
- the clock starts after the interpreter and the *user's* heavy libraries (numpy, pandas) are
  up, and **before the framework is imported** (``import stepflow``, ``import joblib``,
  ``from hamilton import driver``): a fresh-process rerun pays its framework's imports;
- "first run" is a brand-new stepflow home, a new ``joblib.Memory`` folder, a new Hamilton
  cache folder; "cached rerun" is the same place again, in a new process, nothing changed;
- stepflow runs with its built-in plugins only (``make_plugin_manager(entrypoints=False)``):
  plugins other work installed into a shared environment (Dask, UI) would add their imports;
- processes get a bytecode cache (``PYTHONPYCACHEPREFIX``), as an installed package has, even
  where the environment sets ``PYTHONDONTWRITEBYTECODE``; one untimed warm-up per tool fills it.

Peers: ``joblib.Memory`` (a dependency of stepflow) and Hamilton with
``Builder().with_cache()`` (optional: ``pip install sf-hamilton``; its columns say "absent"
without it). Hamilton has no counterpart to ``foreach`` over a list without its parallel
executors, so the fan-out rows compare with joblib.Memory only, as DESIGN.md section 6 does.

``--quick`` shrinks every workload (a 20-step chain, a 20,000-row frame, 50 items, a
1,000-step plan, 16 short sleeps): its verdicts are not the budgets' and are printed as "-".
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_fanout import MODULE as FANOUT_MODULE  # noqa: E402  (the same foreach workload)
from bench_overhead import layered_source, sleepers_source  # noqa: E402


@dataclass(frozen=True)
class Sizes:
    chain: int = 100
    rows: int = 10_000_000
    items: int = 10_000
    plan: int = 10_000
    plan_width: int = 100
    sleepers: int = 200
    sleep_s: float = 0.1
    workers: int = 8


FULL = Sizes()
QUICK = Sizes(chain=20, rows=20_000, items=50, plan=1_000, plan_width=50, sleepers=16,
              sleep_s=0.01, workers=2)  # fmt: skip

# --- the workloads, as module files -------------------------------------------------------


def chain_plain(n: int) -> str:
    """The chain as plain functions: Hamilton wires them by parameter name, joblib calls
    ``_FUNCS`` in order (names with ``_`` are not Hamilton nodes)."""
    lines = ["def s0() -> int:\n    return 0\n"]
    lines += [f"def s{i}(s{i - 1}: int) -> int:\n    return s{i - 1} + 1\n" for i in range(1, n)]
    lines.append("_FUNCS = (" + ", ".join(f"s{i}" for i in range(n)) + ",)\n")
    lines.append(
        "def _run(wrap=lambda f: f):\n    x = wrap(s0)()\n    for f in _FUNCS[1:]:\n"
        "        x = wrap(f)(x)\n    return x\n"
    )
    return "\n".join(lines)


def chain_flow(n: int) -> str:
    lines = ["from stepflow import Pipeline, step\n", "@step\ndef s0() -> int:\n    return 0\n"]
    lines += [
        f"@step\ndef s{i}(s{i - 1}: int) -> int:\n    return s{i - 1} + 1\n" for i in range(1, n)
    ]
    lines.append("pipe = Pipeline('chain', [" + ", ".join(f"s{i}" for i in range(n)) + "])\n")
    return "\n".join(lines)


FRAME_BODY = """
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(rng.standard_normal(({rows}, 5)), columns=list("abcde"))

def total(frame: pd.DataFrame) -> float:
    return float(frame.to_numpy().sum())
"""


def frame_plain(rows: int) -> str:
    return "import numpy as np\nimport pandas as pd\n" + FRAME_BODY.format(rows=rows)


def frame_flow(rows: int) -> str:
    body = FRAME_BODY.format(rows=rows).replace("def ", "@step\ndef ")
    return (
        "import numpy as np\nimport pandas as pd\nfrom stepflow import Pipeline, step\n"
        + body
        + "\npipe = Pipeline('frame', [frame, total])\n"
    )


FAN_PLAIN = """
def score(x):
    return x * 2 + 1
"""

# One script measures one phase of one tool in a fresh process and prints a JSON line.
MEASURE = r"""
import json, resource, sys, time
a = json.loads(sys.argv[1])
sys.path.insert(0, a["folder"])
for name in a.get("preload", []):
    __import__(name)  # the user's own libraries: not what is measured
for name in a.get("framework", []):
    # Every module this tool's cached rerun imports, the deferred ones too ("after every
    # import" rows): what is left on the clock is the rerun itself.
    try:
        __import__(name)
    except Exception:
        pass
t0 = time.perf_counter()
tool, work, place = a["tool"], a["work"], a["place"]
out = {}
if tool == "plain":
    if work == "frame":
        import frame_plain as m
        out["imports"] = time.perf_counter() - t0
        out["value"] = m.total(m.frame())
    elif work == "fan":
        import fan_plain as m
        out["value"] = sum(m.score(i) for i in range(a["n"]))
    elif work == "sleep":
        import concurrent.futures, flow_sleep as m
        with concurrent.futures.ProcessPoolExecutor(a["workers"]) as ex:
            out["value"] = len(list(ex.map(m.z, range(a["n"]))))
elif tool == "stepflow":
    if work == "plan":
        import flow_plan as m
        from stepflow import Pipeline
        t0 = time.perf_counter()  # the plan only: decorating 10,000 functions is the import
        Pipeline("plan", m.STEPS).plan()
    else:
        from stepflow._pluginmanager import make_plugin_manager
        m = __import__("flow_" + work)
        pipe = getattr(m, "pipe", None)
        if pipe is None:
            from stepflow import Pipeline
            pipe = Pipeline.from_module(m)
        out["imports"] = time.perf_counter() - t0
        pm = make_plugin_manager(entrypoints=False)
        r = pipe.run(home=place, workers=a.get("workers", 1), plugin_manager=pm,
                     params=a.get("params") or None)
        if not r.ok:
            raise SystemExit(r.summary())
        out["states"] = sorted({str(s.state) for s in r.steps.values()})
        out["step_seconds"] = sum(s.duration or 0.0 for s in r.steps.values())
elif tool == "joblib":
    import joblib
    mem = joblib.Memory(place, verbose=0)
    if work == "chain":
        import chain_plain as m
        out["imports"] = time.perf_counter() - t0
        out["value"] = m._run(mem.cache)
    elif work == "frame":
        import frame_plain as m
        out["imports"] = time.perf_counter() - t0
        out["value"] = mem.cache(m.total)(mem.cache(m.frame)())
    elif work == "fan":
        import fan_plain as m
        cached = mem.cache(m.score)
        out["value"] = sum(cached(i) for i in range(a["n"]))
elif tool == "hamilton":
    from hamilton import driver
    m = __import__(work + "_plain")
    out["imports"] = time.perf_counter() - t0
    dr = driver.Builder().with_modules(m).with_cache(path=place).build()
    out["value"] = dr.execute([a["final"]])[a["final"]]
out["seconds"] = time.perf_counter() - t0
out["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
if a.get("list_modules"):
    out["modules"] = sorted(n for n in sys.modules if n != "__main__")
print(json.dumps(out, default=str))
"""


# --- running phases -----------------------------------------------------------------------


@dataclass
class Bench:
    root: Path
    env: dict[str, str]
    count: int = 0

    @property
    def code(self) -> Path:
        return self.root / "code"

    def place(self, name: str) -> Path:
        """A path that does not exist yet: a brand-new home, cache folder or Memory folder."""
        self.count += 1
        return self.root / "data" / f"{name}-{self.count}"

    def phase(self, tool: str, work: str, place: Path | None = None, **extra: object) -> dict:
        preload = ["numpy", "pandas"] if work == "frame" else []
        args = {"tool": tool, "work": work, "folder": str(self.code), "preload": preload}
        args |= {"place": str(place or self.place("scratch")), **extra}
        done = subprocess.run(
            [sys.executable, "-c", MEASURE, json.dumps(args)],
            cwd=self.code,
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise SystemExit(f"{tool} / {work} failed ({done.returncode}):\n{done.stderr}")
        return json.loads(done.stdout.strip().splitlines()[-1])

    def wall(self, argv: Sequence[str]) -> float:
        """Wall seconds of a whole fresh process, interpreter start included."""
        env = dict(self.env, STEPFLOW_HOME=str(self.place("home")))
        start = time.perf_counter()
        done = subprocess.run(argv, cwd=self.code, env=env, capture_output=True, check=False)
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed:\n{done.stderr.decode()}")
        return seconds


@dataclass
class Figure:
    """One row: stepflow's samples, each peer's samples (same rounds), the budget."""

    name: str
    budget: str
    limit: float | None = None  # the verdict's bound on ``measure``
    against: str | None = None  # the peer whose ratio the budget bounds; None: absolute
    unit: str = "s"
    stepflow: list[float] = field(default_factory=list)
    peers: dict[str, list[float]] = field(default_factory=dict)
    note: str = ""

    def ratios(self, peer: str) -> list[float]:
        pairs = zip(self.stepflow, self.peers.get(peer, []), strict=False)
        return sorted(s / p for s, p in pairs if p > 0)

    def measure(self) -> float | None:
        if self.against is None:
            return statistics.median(self.stepflow) if self.stepflow else None
        found = self.ratios(self.against)
        return statistics.median(found) if found else None


def show(values: Sequence[float], unit: str) -> str:
    if not values:
        return "absent"
    mid = statistics.median(values)
    if unit == "MB":
        return f"{mid:.0f} MB"
    text = f"{mid * 1e3:.1f} ms" if mid < 1 else f"{mid:.2f} s"
    return text if len(values) == 1 else f"{text} [{min(values):.3g}-{max(values):.3g}]"


def ratio_cell(figure: Figure, peer: str) -> str:
    found = figure.ratios(peer)
    if not found:
        return "-"
    mid = statistics.median(found)
    return f"{mid:.2f}x" if len(found) == 1 else f"{mid:.2f}x [{found[0]:.2f}-{found[-1]:.2f}]"


def print_table(figures: list[Figure], peers: Sequence[str], quick: bool) -> None:
    header = ["figure", "stepflow", *peers, *(f"stepflow / {p}" for p in peers)]
    header += ["budget", "verdict"]
    rows = []
    for f in figures:
        value = f.measure()
        if quick or f.limit is None or value is None:
            verdict = "-"
        else:
            verdict = "within" if value <= f.limit else "OVER"
        cells = [f.name, show(f.stepflow, f.unit)]
        cells += [show(f.peers[p], f.unit) if p in f.peers else "-" for p in peers]
        cells += [ratio_cell(f, p) for p in peers]
        rows.append([*cells, f.budget, verdict])
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    for f in figures:
        if f.note:
            print(f"- {f.name}: {f.note}")


# --- the budgets --------------------------------------------------------------------------


def chain_figures(b: Bench, s: Sizes, repeats: int, peers: list[str]) -> list[Figure]:
    final = f"s{s.chain - 1}"
    first = Figure(f"{s.chain}-step chain, first run", "<= 1.0x joblib", 1.0, "joblib")
    half = Figure(
        f"{s.chain}-step chain, first run (again)", "<= 0.5x Hamilton cached", 0.5, "hamilton"
    )
    rerun = Figure(
        f"{s.chain}-step chain, cached rerun, fresh process", "<= 1.0x joblib", 1.0, "joblib"
    )
    bare = Figure(
        f"{s.chain}-step chain, cached rerun, fresh process, after imports",
        "<= 1.0x joblib",
        1.0,
        "joblib",
    )
    bare.note = "the clock starts once the framework and the user's module are imported"
    ran = Figure(
        f"{s.chain}-step chain, cached rerun, fresh process, after every import",
        "(info)",
    )
    ran.note = (
        "every module the tool's cached rerun imports (its deferred imports too) is imported "
        "before the clock: the rerun's own work"
    )
    modules = {}
    for tool in ["stepflow", *peers]:  # warm-up: the bytecode cache, the disk's metadata
        place = b.place("warm")
        b.phase(tool, "chain", place, final=final)
        modules[tool] = b.phase(tool, "chain", place, final=final, list_modules=True)["modules"]
    for _ in range(repeats):
        places = {tool: b.place(tool) for tool in ["stepflow", *peers]}
        got = {t: b.phase(t, "chain", p, final=final) for t, p in places.items()}
        again = {t: b.phase(t, "chain", p, final=final) for t, p in places.items()}
        if again["stepflow"]["states"] != ["reused"]:
            raise SystemExit(f"the chain's rerun was not fully reused: {again['stepflow']}")
        for fig, found in ((first, got), (half, got), (rerun, again)):
            fig.stepflow.append(found["stepflow"]["seconds"])
            for peer in peers:
                fig.peers.setdefault(peer, []).append(found[peer]["seconds"])
        bare.stepflow.append(after_imports(again["stepflow"]))
        for peer in peers:
            bare.peers.setdefault(peer, []).append(after_imports(again[peer]))
        warm = {
            t: b.phase(t, "chain", p, final=final, framework=modules[t]) for t, p in places.items()
        }
        if warm["stepflow"]["states"] != ["reused"]:
            raise SystemExit(f"the chain's rerun was not fully reused: {warm['stepflow']}")
        ran.stepflow.append(after_imports(warm["stepflow"]))
        for peer in peers:
            ran.peers.setdefault(peer, []).append(after_imports(warm[peer]))
    return [first, half, rerun, bare, ran]


ONE_STEP = """
from stepflow import Pipeline, step

@step
def one() -> int:
    return 1

pipe = Pipeline("one", [one])
"""


def fixed_figures(b: Bench, repeats: int) -> list[Figure]:
    """DESIGN's "a run's fixed cost (a brand-new home included) under 20 ms": a 1-step
    pipeline's first run in a brand-new home, every module imported before the clock, less
    the step's own reported duration."""
    fixed = Figure(
        "a run's fixed cost: 1-step first run, brand-new home, after every import",
        "< 20 ms",
        0.02,
    )
    fixed.note = (
        "the step's reported duration (its call, output capture and commit) is taken off; "
        "what is left is the run's set-up, records, index and home"
    )
    warm = b.place("warm")
    b.phase("stepflow", "one", warm)
    modules = b.phase("stepflow", "one", b.place("warm"), list_modules=True)["modules"]
    for _ in range(repeats):
        got = b.phase("stepflow", "one", b.place("stepflow"), framework=modules)
        if got["states"] != ["ran"]:
            raise SystemExit(f"the 1-step first run did not run its step: {got}")
        fixed.stepflow.append(after_imports(got) - float(got["step_seconds"]))
    return [fixed]


def after_imports(found: dict) -> float:
    return float(found["seconds"]) - float(found["imports"])


def frame_figures(b: Bench, s: Sizes, repeats: int, peers: list[str]) -> list[Figure]:
    label = f"{s.rows:,} x 5 frame"
    first = Figure(f"{label}, first run", "<= 1.3x plain", 1.3, "plain")
    rerun = Figure(f"{label}, cached rerun, fresh process", "(info)")
    bare = Figure(f"{label}, cached rerun, fresh process, after imports", "< 50 ms", 0.05)
    bare.note = (
        "the clock starts once the framework and the user's module (with pandas) are imported;"
        " DESIGN's 50 ms is a metadata-only rerun, imports apart (bench_reuse.py measures so)"
    )
    peak = Figure(f"{label}, first run, peak memory", "<= 1.2x plain", 1.2, "plain", unit="MB")
    ran = Figure(f"{label}, cached rerun, fresh process, after every import", "< 50 ms", 0.05)
    ran.note = (
        "stepflow's deferred imports (the run loop, records, index) also before the clock: "
        "the rerun's own work, which reads no data"
    )
    modules: list[str] = []
    for tool in ["stepflow", *peers]:
        place = b.place("warm")
        b.phase(tool, "frame", place, final="total")
        if tool == "stepflow":
            modules = b.phase(tool, "frame", place, final="total", list_modules=True)["modules"]
    for _ in range(repeats):
        plain = b.phase("plain", "frame")
        places = {tool: b.place(tool) for tool in ["stepflow", *peers]}
        got = {t: b.phase(t, "frame", p, final="total") for t, p in places.items()}
        again = {t: b.phase(t, "frame", p, final="total") for t, p in places.items()}
        if again["stepflow"]["states"] != ["reused"]:
            raise SystemExit(f"the frame's rerun was not fully reused: {again['stepflow']}")
        first.stepflow.append(got["stepflow"]["seconds"])
        rerun.stepflow.append(again["stepflow"]["seconds"])
        bare.stepflow.append(after_imports(again["stepflow"]))
        warm = b.phase("stepflow", "frame", places["stepflow"], final="total", framework=modules)
        if warm["states"] != ["reused"]:
            raise SystemExit(f"the frame's rerun was not fully reused: {warm}")
        ran.stepflow.append(after_imports(warm))
        peak.stepflow.append(got["stepflow"]["rss_mb"])
        first.peers.setdefault("plain", []).append(plain["seconds"])
        peak.peers.setdefault("plain", []).append(plain["rss_mb"])
        for peer in peers:
            first.peers.setdefault(peer, []).append(got[peer]["seconds"])
            rerun.peers.setdefault(peer, []).append(again[peer]["seconds"])
            bare.peers.setdefault(peer, []).append(after_imports(again[peer]))
            peak.peers.setdefault(peer, []).append(got[peer]["rss_mb"])
    return [first, rerun, bare, ran, peak]


def fan_figures(b: Bench, s: Sizes, repeats: int) -> list[Figure]:
    label = f"foreach over {s.items:,} items"
    first = Figure(f"{label}, first run", "<= 1.0x joblib", 1.0, "joblib")
    rerun = Figure(f"{label}, cached rerun, fresh process", "<= 1.0x joblib", 1.0, "joblib")
    params = {"n": s.items}
    b.phase("stepflow", "fan", b.place("warm"), params={"n": 5})
    b.phase("joblib", "fan", b.place("warm"), n=5)
    for _ in range(repeats):
        home, folder = b.place("stepflow"), b.place("joblib")
        got = b.phase("stepflow", "fan", home, params=params)
        jgot = b.phase("joblib", "fan", folder, n=s.items)
        again = b.phase("stepflow", "fan", home, params=params)
        jagain = b.phase("joblib", "fan", folder, n=s.items)
        if again["states"] != ["reused"]:
            raise SystemExit(f"the foreach rerun was not reused: {again}")
        first.stepflow.append(got["seconds"])
        first.peers.setdefault("joblib", []).append(jgot["seconds"])
        rerun.stepflow.append(again["seconds"])
        rerun.peers.setdefault("joblib", []).append(jagain["seconds"])
    return [first, rerun]


def startup_figures(b: Bench, s: Sizes, repeats: int) -> list[Figure]:
    script = Path(sys.executable).parent / "stepflow"
    found = str(script) if script.exists() else shutil.which("stepflow")
    if found is None:
        raise SystemExit("the `stepflow` console script is not installed: pip install -e .")
    helped = Figure("`stepflow --help`, fresh process", "< 0.15 s", 0.15)
    plan = Figure(f"{s.plan:,}-step plan: Pipeline(...).plan()", "< 1 s", 1.0)
    sleep = Figure(
        f"{s.sleepers} x {s.sleep_s} s sleeping steps, {s.workers} workers", "< 3.5 s", 3.5
    )
    sleep.note = (
        f"ideal {s.sleepers * s.sleep_s / s.workers:.2f} s; the peer is a ProcessPoolExecutor"
        f"({s.workers}) of the same sleeps, fresh process too"
    )
    b.wall([found, "--help"])
    b.phase("stepflow", "plan")
    for _ in range(repeats):
        helped.stepflow.append(b.wall([found, "--help"]))
        helped.peers.setdefault("plain", []).append(b.wall([sys.executable, "-c", "pass"]))
        plan.stepflow.append(b.phase("stepflow", "plan")["seconds"])
        sleep.stepflow.append(
            b.phase("stepflow", "sleep", b.place("stepflow"), workers=s.workers)["seconds"]
        )
        found_pool = b.phase("plain", "sleep", n=s.sleepers, workers=s.workers)
        sleep.peers.setdefault("plain", []).append(found_pool["seconds"])
    helped.note = "the plain column is `python -c pass`, for the interpreter's own start"
    return [helped, plan, sleep]


# --- main ---------------------------------------------------------------------------------


def write_code(code: Path, s: Sizes) -> None:
    code.mkdir(parents=True)
    files = {
        "chain_plain.py": chain_plain(s.chain),
        "flow_chain.py": chain_flow(s.chain),
        "flow_one.py": ONE_STEP,
        "frame_plain.py": frame_plain(s.rows),
        "flow_frame.py": frame_flow(s.rows),
        "fan_plain.py": FAN_PLAIN,
        "flow_fan.py": textwrap.dedent(FANOUT_MODULE),
        "flow_sleep.py": sleepers_source(s.sleepers, s.sleep_s),
        "flow_plan.py": layered_source(s.plan, s.plan_width)
        + f"\nSTEPS = [globals()[f'n{{k}}'] for k in range({s.plan})]\n",
    }
    for name, text in files.items():
        (code / name).write_text(text)


def machine() -> str:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        load = "n/a"
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=HERE,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return (
        f"cpu: {model}, {os.cpu_count()} cores; load average: {load}; python "
        f"{platform.python_version()}; commit {commit or 'n/a'}{' (modified)' if dirty else ''}"
    )


def hamilton_present() -> bool:
    try:
        from hamilton import driver  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny workloads, 1 round")
    parser.add_argument("--repeats", type=int, default=3, help="rounds per figure (3)")
    parser.add_argument("--no-hamilton", action="store_true", help="leave Hamilton out")
    parser.add_argument(
        "--only",
        choices=["chain", "frame", "foreach", "startup"],
        action="append",
        help="run these groups only (repeatable)",
    )
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    repeats = 1 if args.quick else args.repeats
    groups = args.only or ["chain", "frame", "foreach", "startup"]
    with_hamilton = not args.no_hamilton and hamilton_present()
    peers = ["joblib"] + (["hamilton"] if with_hamilton else [])
    print(machine())
    before = (
        " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc").exists() else ""
    )
    if not args.no_hamilton and not with_hamilton:
        print("Hamilton is absent (pip install sf-hamilton): its columns are left out")
    with tempfile.TemporaryDirectory(prefix="stepflow-budgets-") as tmp:
        root = Path(tmp)
        env = dict(os.environ, PYTHONPYCACHEPREFIX=str(root / "pyc"))
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        # Hamilton reports usage over the network by default; here no network answers, and
        # each process would wait for it (12-15 s a run measured so), which is not its cost.
        env["HAMILTON_TELEMETRY_ENABLED"] = "false"
        # Hamilton also imports every integration whose library is installed (mlflow, sklearn
        # here: 10 s of imports in this shared environment); a plain install has none.
        env["HAMILTON_AUTOLOAD_EXTENSIONS"] = "0"
        # Each run snapshots the project folder: the code's folder holds only the modules.
        env["STEPFLOW_HOME"] = str(root / "default-home")
        bench = Bench(root, env)
        write_code(bench.code, sizes)
        # Library versions are kept only under import-path folders unchanged for two seconds
        # (stepflow/_storage/fingerprint.py); a real project is rarely younger than that.
        time.sleep(2.1)
        figures: list[Figure] = []
        if "chain" in groups:
            figures += chain_figures(bench, sizes, repeats, peers)
            figures += fixed_figures(bench, repeats)
        if "frame" in groups:
            figures += frame_figures(bench, sizes, repeats, peers)
        if "foreach" in groups:
            figures += fan_figures(bench, sizes, repeats)
        if "startup" in groups:
            figures += startup_figures(bench, sizes, repeats)
    after = (
        " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc").exists() else ""
    )
    print(f"rounds: {repeats}{' (quick workloads)' if args.quick else ''}; load average "
          f"before {before}, after {after}")  # fmt: skip
    print_table(figures, ["plain", *peers], args.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
