"""Code fingerprints and cache keys, measured apart from the run loop.

The fixed cost of a fully cached rerun in a fresh process is mostly start-up work: importing
the run machinery, fingerprinting every step's code, opening the index. This script times
the parts that ``stepflow/_storage/fingerprint.py`` and ``stepflow/_planning/cachekey.py``
own, each in a fresh process (with a bytecode cache, as an installed stepflow has):

- importing ``stepflow._planning.cachekey`` (which imports the fingerprint and hashing
  modules), after the user's module and its libraries are imported;
- fingerprinting every step of two pipelines: the 100-step chain of ``bench_reuse.py``, and
  a 20-step flow whose steps use pandas and numpy and helpers from another module;
  "cold" is the first process with an empty stepflow home, "warm" a later process that finds
  what the first one kept there (the same figure twice when nothing is kept);
- ``plan_key`` for every step of the chain (fingerprint, parameters, environment), warm;
- the same calls again in the same process (what a second ``Pipeline.run`` pays).

    python benchmarks/bench_fingerprint.py [--repeats 7]

It only measures; nothing passes or fails.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHAIN = "\n".join(
    ["from stepflow import step, Pipeline", "", "@step", "def s0() -> int:", "    return 0"]
    + [f"@step\ndef s{i}(s{i - 1}: int) -> int:\n    return s{i - 1} + 1" for i in range(1, 100)]
    + ["chain = Pipeline('chain', [" + ", ".join(f"s{i}" for i in range(100)) + "])"]
)

HELPERS = """
import numpy as np

LIMIT = 3


def clip(x):
    return np.clip(x, -LIMIT, LIMIT)


class Scaler:
    def __init__(self, k):
        self.k = k

    def apply(self, frame):
        return frame * self.k
"""

WIDE = (
    "import numpy as np\nimport pandas as pd\nfrom stepflow import step, Pipeline\n"
    "import helpers\n\nSEED = 0\n\n"
    "@step\ndef w0() -> pd.DataFrame:\n"
    "    rng = np.random.default_rng(SEED)\n"
    "    return pd.DataFrame(rng.standard_normal((10, 3)), columns=list('abc'))\n"
    + "".join(
        f"\n@step\ndef w{i}(w{i - 1}: pd.DataFrame) -> pd.DataFrame:\n"
        f"    '''Step {i}.'''\n"
        f"    return helpers.Scaler({i}).apply(helpers.clip(w{i - 1}))\n"
        for i in range(1, 20)
    )
    + "\nwide = Pipeline('wide', ["
    + ", ".join(f"w{i}" for i in range(20))
    + "])\n"
)

MEASURE = """
import inspect, json, sys, time
from pathlib import Path
sys.path.insert(0, {folder!r})
import {module} as m  # the user's module and its libraries: not what is measured
pipe = m.{pipe}
home = Path({home!r})
t0 = time.perf_counter()
from stepflow._planning import cachekey
from stepflow._storage import fingerprint as fp
t1 = time.perf_counter()
kwargs = {{}}
if "cache_dir" in inspect.signature(fp.fingerprint).parameters:
    kwargs["cache_dir"] = home / "fingerprints"
funcs = [spec.func for spec in pipe._dag.steps.values()]
t2 = time.perf_counter()
for func in funcs:
    fp.fingerprint(func, **kwargs)
t3 = time.perf_counter()
for func in funcs:
    fp.fingerprint(func, **kwargs)
t4 = time.perf_counter()
out = {{"import": t1 - t0, "fingerprint": t3 - t2, "again": t4 - t3}}
if {keys!r}:
    from stepflow._storage.datastore import LocalDatastore
    from stepflow._storage.serializers import builtin_serializers
    store = LocalDatastore(home / "objects")
    plan = pipe.plan()
    serializers = builtin_serializers()
    def keys():
        hashes = {{}}
        for name in plan.steps:
            spec = plan.dag.steps[name]
            inputs = {{p.name: hashes[p.name] for p in spec.inputs if p.name in hashes}}
            key = cachekey.plan_key(
                plan, name, inputs=inputs, serializers=serializers, backend_env={{}}, home=home,
                store=store,
            )
            for port in spec.outputs:
                hashes[port.name] = key.digest
    t5 = time.perf_counter()
    keys()
    t6 = time.perf_counter()
    keys()
    t7 = time.perf_counter()
    out.update(plan_key=t6 - t5, plan_key_again=t7 - t6)
print(json.dumps(out))
"""


def measure(folder: Path, env: dict[str, str], module: str, pipe: str, home: Path) -> dict:
    code = MEASURE.format(
        folder=str(folder), module=module, pipe=pipe, home=str(home), keys=module == "flow_chain"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        cwd=folder,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def summary(values: list[float]) -> str:
    ms = sorted(v * 1000 for v in values)
    return f"{statistics.median(ms):7.2f} ms [{ms[0]:.2f}-{ms[-1]:.2f}]"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="stepflow-bench-fp-"))
    folder = root / "code"  # homes come and go beside the code, not in its folder
    folder.mkdir()
    (folder / "flow_chain.py").write_text(CHAIN)
    (folder / "flow_wide.py").write_text(WIDE)
    (folder / "helpers.py").write_text(HELPERS)
    env = dict(os.environ)
    # As an installed stepflow runs: with a bytecode cache (this machine disables it).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(root / "pycache")
    # Library versions are kept only under import-path folders unchanged for two seconds.
    time.sleep(2.1)
    print(f"python {sys.version.split()[0]}, repeats={args.repeats}, median [min-max]")
    for module, pipe, steps in (("flow_chain", "chain", 100), ("flow_wide", "wide", 20)):
        measure(folder, env, module, pipe, root / "warm-up")  # fills the bytecode cache
        cold, warm = [], []
        for i in range(args.repeats):
            home = root / f"home-{module}-{i}"
            cold.append(measure(folder, env, module, pipe, home))
            warm.append(measure(folder, env, module, pipe, home))
        print(f"{module} ({steps} steps)")
        print(f"  import cachekey + fingerprint     {summary([r['import'] for r in warm])}")
        print(f"  fingerprint all, cold home        {summary([r['fingerprint'] for r in cold])}")
        print(f"  fingerprint all, warm home        {summary([r['fingerprint'] for r in warm])}")
        print(f"  fingerprint all, again in process {summary([r['again'] for r in warm])}")
        if "plan_key" in warm[0]:
            again = summary([r["plan_key_again"] for r in warm])
            print(f"  plan_key all, warm home           {summary([r['plan_key'] for r in warm])}")
            print(f"  plan_key all, again in process    {again}")


if __name__ == "__main__":
    main()
