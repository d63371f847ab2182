"""Fan-out through the command line: the report's item counts, per-item logs, and
``explain`` counting the items that would run."""

from __future__ import annotations

import json

FAN = """
import os
from stepflow import Pipeline, step

@step
def chunks(n: int = 5) -> list[int]:
    return list(range(n))

@step(foreach="chunks")
def scored(chunks: int) -> int:
    print(f"scoring item {chunks}")
    if chunks == 3 and not os.environ.get("FIXED"):
        raise ValueError("item 3 is broken")
    return chunks * 10

@step
def total(scored: list[int]) -> int:
    return sum(scored)

pipe = Pipeline("fan", [chunks, scored, total])
"""


def test_failed_item_then_fix(stepflow_runner):
    stepflow_runner.makepyfile(fan=FAN)
    first = stepflow_runner.run("run", "fan.py:pipe", "--capture", "quiet")
    assert first.ret == 1
    first.assert_outcomes(ran=1, failed=1, skipped=1)
    first.fnmatch_lines(
        [
            "scored *failed*[[]5 items: 4 ran, 1 failed[]]*1 of 5 item(s) of step 'scored' "
            "failed (item 3)*"
        ]
    )
    # The failed item's own output is shown with its failure.
    first.fnmatch_lines(["*captured item 3 stdout*", "scoring item 3"])

    plan = stepflow_runner.run("explain", "fan.py:pipe")
    assert plan.ret == 0, plan.stderr
    assert (
        "1 of its 5 items would run (no stored result for their keys); the other 4 would be "
        "reused" in plan.stdout
    )

    fixed = stepflow_runner.run("run", "fan.py:pipe", env={"FIXED": "1"})
    assert fixed.ret == 0, fixed.stderr
    fixed.assert_outcomes(ran=2, reused=1)
    fixed.fnmatch_lines(["scored *ran*[[]5 items: 1 ran, 4 reused[]]"])

    runs = json.loads(stepflow_runner.run("runs", "list", "--json").stdout)
    logs = stepflow_runner.run("logs", runs[0]["id"], "scored", "--stream", "stdout")
    assert logs.ret == 0, logs.stderr
    assert "----- scored: item 3 stdout -----" in logs.stdout
    assert "scoring item 3" in logs.stdout
    assert "scoring item 2" not in logs.stdout  # reused: it did not run again

    again = stepflow_runner.run("run", "fan.py:pipe", env={"FIXED": "1"})
    again.assert_outcomes(reused=3)


def test_show_and_bad_foreach_name(stepflow_runner):
    stepflow_runner.makepyfile(fan=FAN)
    shown = stepflow_runner.run("show", "fan.py:pipe")
    assert "scored(chunks) -> scored: list[int]  [foreach=chunks]" in shown.stdout
    stepflow_runner.makepyfile(bad=FAN.replace('foreach="chunks"', 'foreach="chunk"'))
    bad = stepflow_runner.run("run", "bad.py:pipe")
    assert bad.ret == 2
    assert "foreach='chunk' names no parameter of the function" in bad.stderr
