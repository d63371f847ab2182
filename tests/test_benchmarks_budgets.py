"""``benchmarks/budgets.py`` runs end to end (tiny workloads) and prints its table of ratios.

No timing is asserted (DESIGN.md section 6: budgets are read from ``benchmarks/``, not tested):
these tests check that each phase ran in its own process, that the cached rerun really was
reused (the script stops otherwise) and that every row has its peer and ratio.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "budgets.py"


def _run(*args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, TMPDIR=str(tmp_path))
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
        check=False,
    )


@pytest.mark.slow
def test_quick_chain_prints_each_ratio_against_its_budget(tmp_path: Path) -> None:
    done = _run("--quick", "--only", "chain", "--no-hamilton", tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr
    rows = {
        line.split("|")[1].strip(): [c.strip() for c in line.split("|")[1:-1]]
        for line in done.stdout.splitlines()
        if line.startswith("| 20-step chain")
    }
    assert set(rows) == {
        "20-step chain, cached rerun, fresh process, after imports",
        "20-step chain, first run",
        "20-step chain, first run (again)",
        "20-step chain, cached rerun, fresh process",
        "20-step chain, cached rerun, fresh process, after every import",
    }
    rerun = rows["20-step chain, cached rerun, fresh process"]
    # figure, stepflow, plain, joblib, stepflow / plain, stepflow / joblib, budget, verdict
    assert re.fullmatch(r"\d+(\.\d+)? (ms|s)", rerun[1]), rerun
    assert re.fullmatch(r"\d+(\.\d+)? (ms|s)", rerun[3]), rerun
    assert re.fullmatch(r"\d+\.\d\dx", rerun[5]), rerun
    assert rerun[6] == "<= 1.0x joblib"
    assert rerun[7] == "-"  # quick workloads give no verdict
    # The rerun with every module imported first has its joblib column and ratio too.
    warm = rows["20-step chain, cached rerun, fresh process, after every import"]
    assert re.fullmatch(r"\d+(\.\d+)? (ms|s)", warm[3]) and re.fullmatch(r"\d+\.\d\dx", warm[5])
    # A run's fixed cost, measured with the chain's first runs, against its own budget.
    fixed = next(
        [c.strip() for c in line.split("|")[1:-1]]
        for line in done.stdout.splitlines()
        if line.startswith("| a run's fixed cost")
    )
    assert re.fullmatch(r"-?\d+(\.\d+)? (ms|s)", fixed[1]), fixed
    assert fixed[6] == "< 20 ms"
    assert "load average" in done.stdout and "commit" in done.stdout
    # Nothing is left behind: every home and cache folder was under the temporary folder.
    assert not any(tmp_path.iterdir())


def test_an_unknown_group_is_refused_with_the_choices(tmp_path: Path) -> None:
    done = _run("--only", "chains", tmp_path=tmp_path)
    assert done.returncode == 2
    assert "invalid choice: 'chains'" in done.stderr
    assert "chain" in done.stderr and "foreach" in done.stderr
