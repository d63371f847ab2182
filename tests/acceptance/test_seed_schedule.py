"""The seed's scenario end to end (DESIGN §9): train and register the house-prices model,
publish ``batch_scoring``, schedule it at 01:30 and 13:30 (Azure ML's
``ScheduleRecurrence(frequency="Day", interval=1, hours=[1, 13], minutes=[30])``), and drive a
test clock over two days with ``stepflow scheduler serve --once --now``: four runs, four
predictions files.

The two days are 28 and 29 March 2026 in Europe/London, across the spring-forward: on the
29th, 01:30 does not exist and the tick fires at 02:00 BST (01:00 UTC).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "house_prices"

#: (the test clock, the tick it runs); clock instants between ticks run nothing
CLOCK = [
    ("2026-03-28T00:10Z", None),
    ("2026-03-28T01:31Z", "2026-03-28T01:30:00Z"),
    ("2026-03-28T13:31Z", "2026-03-28T13:30:00Z"),
    ("2026-03-28T18:00Z", None),
    ("2026-03-29T01:01Z", "2026-03-29T01:00:00Z"),  # 01:30 local does not exist: 02:00 BST
    ("2026-03-29T12:31Z", "2026-03-29T12:30:00Z"),  # 13:30 BST
    ("2026-03-29T12:40Z", None),
]


@pytest.fixture
def project(stepflow_runner):
    """A project holding the example, as a user's repository would."""
    shutil.copytree(EXAMPLE, stepflow_runner.path / "examples" / "house_prices",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    (stepflow_runner.path / "pyproject.toml").write_text('[project]\nname = "scoring"\n')
    return stepflow_runner


def ok(out):
    assert out.ret == 0, f"exit {out.ret}\nstdout:\n{out.stdout}\nstderr:\n{out.stderr}"
    return out


@pytest.mark.slow
def test_twice_a_day_for_two_days(project):
    ok(project.run("run", "examples/house_prices/pipeline.py:training",
                   "--param", "n_estimators=40"))  # fmt: skip
    published = ok(project.run("publish", "examples/house_prices/pipeline.py:batch_scoring",
                               "--name", "batch_scoring"))  # fmt: skip
    assert published.stdout.strip() == "batch_scoring@1"
    ok(
        project.run(
            "schedule", "create", "twice_daily", "--pipeline", "batch_scoring",
            "--frequency", "Day", "--interval", "1", "--hours", "1,13", "--minutes", "30",
            "--time-zone", "Europe/London", "--start", "2026-03-28T00:00",
            "--param", "output_dir=predictions/{tick}",
        )
    )  # fmt: skip
    # Editing the working tree does not change what the published version runs.
    pipeline = project.path / "examples" / "house_prices" / "pipeline.py"
    pipeline.write_text(pipeline.read_text().replace('"PredictedSalePrice"', '"Edited"'))

    for now, tick in CLOCK:
        out = ok(project.run("scheduler", "serve", "--once", "--now", now))
        if tick is None:
            assert "started" not in out.stdout, now
        else:
            assert f"tick {tick} started" in out.stdout, out.stdout

    files = sorted((project.path / "predictions").glob("*/latest_predictions.csv"))
    assert [f.parent.name for f in files] == [
        "20260328T0130Z", "20260328T1330Z", "20260329T0100Z", "20260329T1230Z",
    ]  # fmt: skip
    for path in files:
        frame = pd.read_csv(path)
        assert len(frame) == 10
        assert frame.columns[-1] == "PredictedSalePrice"
        assert frame["PredictedSalePrice"].between(10_000, 1_000_000).all()

    runs = json.loads(ok(project.run("runs", "list", "--json")).stdout)
    scored = [r for r in runs if r["pipeline"] == "batch_scoring"]
    assert len(scored) == 4
    assert all(r["state"] == "succeeded" and r["target"] == "batch_scoring" for r in scored)
    assert sorted(r["tags"]["tick"] for r in scored) == [t for _, t in CLOCK if t]
    shown = json.loads(ok(project.run("schedule", "show", "twice_daily", "--json")).stdout)
    assert [t["state"] for t in shown["last_runs"]] == ["succeeded"] * 4
