"""Plans before running: ``stepflow run --dry-run``, ``stepflow explain TARGET`` without a
step, and ``stepflow run --from STEP``; black-box through ``stepflow_runner``."""

from __future__ import annotations

import json

FLOW = """
from stepflow import Pipeline, step

@step
def numbers(n: int = 3) -> list[int]:
    print("NUMBERS RAN")
    return list(range(n))

@step
def doubled(numbers: list[int]) -> list[int]:
    print("DOUBLED RAN")
    return [2 * x for x in numbers]

@step
def total(doubled: list[int], offset: int = 0) -> int:
    print(f"TOTAL RAN {sum(doubled) + offset}")
    return sum(doubled) + offset

pipe = Pipeline("flow", [numbers, doubled, total])
"""


def _plan_lines(outcome):
    """``{step: (verdict, first reason)}`` from the plan's text."""
    rows = {}
    for line in outcome.lines[1:]:
        parts = line.split(maxsplit=2)
        if parts and parts[0] in ("run", "reuse"):
            rows[parts[1]] = (parts[0], parts[2] if len(parts) > 2 else "")
    return rows


class TestDryRun:
    def test_nothing_runs_on_an_empty_home(self, stepflow_runner):
        stepflow_runner.makepyfile(flow=FLOW)
        outcome = stepflow_runner.run("run", "flow.py:pipe", "--dry-run")
        assert outcome.ret == 0, outcome.stderr
        assert outcome.lines[0] == "plan of pipeline flow: 3 run, 0 reuse (nothing has run)"
        rows = _plan_lines(outcome)
        assert rows["numbers"] == (
            "run",
            "there is no earlier result of step 'numbers' in this stepflow home",
        )
        assert rows["doubled"][0] == "run" and "which would run" in rows["doubled"][1]
        assert "RAN" not in outcome.stdout
        # Still nothing stored: a real run now runs every step.
        stepflow_runner.run("run", "flow.py:pipe").assert_outcomes(ran=3)

    def test_says_why_each_step_runs_or_is_reused(self, stepflow_runner):
        stepflow_runner.makepyfile(flow=FLOW)
        stepflow_runner.run("run", "flow.py:pipe").assert_outcomes(ran=3)
        outcome = stepflow_runner.run("run", "flow.py:pipe", "--dry-run", "--param", "offset=4")
        assert outcome.ret == 0, outcome.stderr
        rows = _plan_lines(outcome)
        assert rows["numbers"][0] == rows["doubled"][0] == "reuse"
        assert rows["numbers"][1].startswith("its key matches the result stored by run ")
        assert rows["total"] == ("run", "parameter 'offset' changed: 0 -> 4")
        assert outcome.lines[0] == "plan of pipeline flow: 1 run, 2 reuse (nothing has run)"

    def test_regenerate_and_target(self, stepflow_runner):
        stepflow_runner.makepyfile(flow=FLOW)
        stepflow_runner.run("run", "flow.py:pipe").assert_outcomes(ran=3)
        outcome = stepflow_runner.run(
            "run", "flow.py:pipe", "--dry-run", "--regenerate", "numbers", "--target", "doubled"
        )
        rows = _plan_lines(outcome)
        assert set(rows) == {"numbers", "doubled"}
        assert rows["numbers"][1].startswith("asked to regenerate it")
        assert rows["doubled"][1].startswith("asked to regenerate it")

    def test_code_edit_is_named(self, stepflow_runner):
        stepflow_runner.makepyfile(flow=FLOW)
        stepflow_runner.run("run", "flow.py:pipe").assert_outcomes(ran=3)
        stepflow_runner.makepyfile(flow=FLOW.replace("2 * x", "3 * x"))
        rows = _plan_lines(stepflow_runner.run("run", "flow.py:pipe", "--dry-run"))
        assert rows["doubled"] == ("run", "code: flow.doubled changed")
        assert rows["total"][0] == "run" and "early cutoff" in rows["total"][1]


class TestExplainWithoutStep:
    def test_whole_plan_as_json(self, stepflow_runner):
        stepflow_runner.makepyfile(flow=FLOW)
        stepflow_runner.run("run", "flow.py:pipe").assert_outcomes(ran=3)
        outcome = stepflow_runner.run("explain", "flow.py:pipe", "--json", "--param", "n=4")
        assert outcome.ret == 0, outcome.stderr
        doc = json.loads(outcome.stdout)
        assert doc["pipeline"] == "flow"
        assert [(s["step"], s["verdict"]) for s in doc["steps"]] == [
            ("numbers", "run"),
            ("doubled", "run"),
            ("total", "run"),
        ]
        assert doc["steps"][0]["reasons"] == ["parameter 'n' changed: 3 -> 4"]

    def test_text_is_the_dry_run_plan(self, stepflow_runner):
        stepflow_runner.makepyfile(flow=FLOW)
        stepflow_runner.run("run", "flow.py:pipe").assert_outcomes(ran=3)
        explained = stepflow_runner.run("explain", "flow.py:pipe")
        dry = stepflow_runner.run("run", "flow.py:pipe", "--dry-run")
        assert explained.stdout == dry.stdout
        assert explained.lines[0] == "plan of pipeline flow: 0 run, 3 reuse (nothing has run)"


class TestFrom:
    def test_runs_step_and_dependants_with_earlier_upstream(self, stepflow_runner):
        """--from doubled after an edit of numbers: numbers does not run; its earlier result
        feeds doubled, which runs because its own code changed."""
        stepflow_runner.makepyfile(flow=FLOW)
        stepflow_runner.run("run", "flow.py:pipe").assert_outcomes(ran=3)
        edited = FLOW.replace("list(range(n))", "list(range(n + 100))").replace("2 * x", "3 * x")
        stepflow_runner.makepyfile(flow=edited)
        dry = stepflow_runner.run("run", "flow.py:pipe", "--from", "doubled", "--dry-run")
        assert "  given   numbers: the earlier result of run " in dry.stdout
        assert set(_plan_lines(dry)) == {"doubled", "total"}
        outcome = stepflow_runner.run("run", "flow.py:pipe", "--from", "doubled")
        assert outcome.ret == 0, outcome.stderr
        outcome.assert_outcomes(ran=2)
        assert "NUMBERS RAN" not in outcome.stdout
        # sum(3 * x for x in range(3)) = 9: made from the earlier numbers, not the edited.
        assert "TOTAL RAN 9" in outcome.stdout

    def test_missing_upstream_result_is_named(self, stepflow_runner):
        stepflow_runner.makepyfile(flow=FLOW)
        outcome = stepflow_runner.run("run", "flow.py:pipe", "--from", "total")
        assert outcome.ret == 2
        assert (
            "--from total: no earlier result of step 'doubled' in this stepflow home"
            in outcome.stderr
        )
        assert "run the pipeline once without --from" in outcome.stderr
        assert "RAN" not in outcome.stdout

    def test_unknown_step(self, stepflow_runner):
        stepflow_runner.makepyfile(flow=FLOW)
        outcome = stepflow_runner.run("run", "flow.py:pipe", "--from", "totl")
        assert outcome.ret == 2
        assert "unknown step 'totl'; did you mean 'total'?" in outcome.stderr


def test_assumption_is_said_once(stepflow_runner):
    """A cache=False step's assumed output is noted once, not under every step after it."""
    stepflow_runner.makepyfile(
        flow=FLOW.replace("@step\ndef numbers", "@step(cache=False)\ndef numbers")
    )
    stepflow_runner.run("run", "flow.py:pipe").assert_outcomes(ran=3)
    outcome = stepflow_runner.run("run", "flow.py:pipe", "--dry-run", "--param", "offset=1")
    notes = [line for line in outcome.lines if line.startswith("  note    assuming step")]
    assert len(notes) == 1, outcome.stdout
    assert "assuming step 'numbers' makes the same output as in run " in notes[0]
    rows = _plan_lines(outcome)
    assert rows["numbers"] == ("run", "it has cache=False, so it always runs")
    assert rows["doubled"][0] == "reuse"
    assert rows["total"] == ("run", "parameter 'offset' changed: 0 -> 1")
