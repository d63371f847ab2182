"""``stepflow run`` reuse, ``--regenerate``, ``explain`` and ``cache`` through the CLI."""

from __future__ import annotations

import datetime
import json

#: a list this long is over 32 KiB once pickled: an object file, not bytes inside its record
BIG = 20_000

FLOW = """
from stepflow import Secret, step
import helpers

@step
def numbers(n: int = 4) -> list[int]:
    return list(range(n))

@step
def scaled(numbers: list[int], factor: int = 2) -> list[int]:
    return [helpers.times(x, factor) for x in numbers]

@step
def total(scaled: list[int], token: Secret[str] = "s3cr3t-value") -> int:
    return sum(scaled)
"""


def _project(runner, helper_body: str = "return x * k") -> None:
    runner.makepyfile(flow=FLOW, helpers=f"def times(x, k):\n    {helper_body}\n")


def assert_iso_utc(value: object) -> None:
    """``--json`` times are ISO 8601 strings with an explicit UTC offset, not epoch floats."""
    assert isinstance(value, str), value
    assert datetime.datetime.fromisoformat(value).utcoffset() == datetime.timedelta(0), value


class TestRunReuse:
    def test_second_run_reports_reused(self, stepflow_runner):
        """The report and summary say ``reused`` on a rerun."""
        _project(stepflow_runner)
        assert stepflow_runner.run("run", "flow.py").ret == 0
        out = stepflow_runner.run("run", "flow.py")
        assert out.ret == 0
        out.fnmatch_lines(["numbers *reused*", "total *reused*", "*= 3 reused in *"])

    def test_regenerate(self, stepflow_runner):
        """``--regenerate`` alone forces every step; with a name, that step and dependants."""
        _project(stepflow_runner)
        stepflow_runner.run("run", "flow.py")
        stepflow_runner.run("run", "flow.py", "--regenerate").fnmatch_lines(["*3 ran in*"])
        out = stepflow_runner.run("run", "flow.py", "--regenerate", "scaled")
        out.fnmatch_lines(["numbers *reused*", "scaled *ran*", "total *ran*"])

    def test_regenerate_unknown_step(self, stepflow_runner):
        """An unknown step to regenerate is a usage error."""
        _project(stepflow_runner)
        out = stepflow_runner.run("run", "flow.py", "--regenerate", "nope")
        assert out.ret == 2 and "unknown step 'nope'" in out.stderr


class TestExplain:
    def test_would_be_reused(self, stepflow_runner):
        """After a run, explain says the step would be reused."""
        _project(stepflow_runner)
        stepflow_runner.run("run", "flow.py")
        out = stepflow_runner.run("explain", "flow.py", "total")
        assert out.ret == 0
        out.fnmatch_lines(["step 'total' would be reused", "  - its key matches *"])

    def test_parameter_change(self, stepflow_runner):
        """A changed parameter is named with its old and new values."""
        _project(stepflow_runner)
        stepflow_runner.run("run", "flow.py")
        out = stepflow_runner.run("explain", "flow.py", "scaled", "--param", "factor=3")
        out.fnmatch_lines(["step 'scaled' would be run", "  - parameter 'factor' changed: 2 -> 3"])

    def test_secret_parameter_never_shown(self, stepflow_runner):
        """A secret's value appears nowhere, but its change is reported."""
        _project(stepflow_runner)
        stepflow_runner.run("run", "flow.py")
        out = stepflow_runner.run("explain", "flow.py", "total", "--param", "token=other")
        out.fnmatch_lines(["  - parameter 'token' (secret) changed"])
        assert "s3cr3t" not in out.stdout and "other" not in out.stdout

    def test_helper_code_change(self, stepflow_runner):
        """A changed helper in another module is named; downstream says why it would run."""
        _project(stepflow_runner)
        stepflow_runner.run("run", "flow.py")
        _project(stepflow_runner, "return x * k + 1")
        out = stepflow_runner.run("explain", "flow.py", "scaled")
        out.fnmatch_lines(["step 'scaled' would be run", "  - code: helpers.times changed"])
        out = stepflow_runner.run("explain", "flow.py", "total", "--json")
        data = json.loads(out.stdout)
        assert data["verdict"] == "run"
        assert any("comes from step 'scaled', which would run" in r for r in data["reasons"])

    def test_never_ran(self, stepflow_runner):
        """Without an earlier result, explain says so."""
        _project(stepflow_runner)
        out = stepflow_runner.run("explain", "flow.py", "numbers")
        out.fnmatch_lines(["  - there is no earlier result of step 'numbers'*"])

    def test_unknown_step(self, stepflow_runner):
        """An unknown step is a usage error listing the steps."""
        _project(stepflow_runner)
        out = stepflow_runner.run("explain", "flow.py", "nope")
        assert out.ret == 2 and "steps: numbers, scaled, total" in out.stderr


LOADER_FLOW = """
from pathlib import Path
from stepflow import step

@step(cache=False)
def rows(path: str = "rows.txt") -> list[str]:
    return Path(path).read_text().split()

@step
def counted(rows: list[str]) -> int:
    return len(rows)

@step
def doubled(counted: int, factor: int = 2) -> int:
    return counted * factor
"""


class TestExplainAfterCacheFalse:
    """A ``cache=False`` step always runs; explain takes its output to be what it made when
    it last ran with the same key, and says so."""

    def _project(self, runner) -> None:
        runner.makepyfile(flow=LOADER_FLOW)
        (runner.path / "rows.txt").write_text("a b c\n")

    def test_consumers_predicted_reused_with_the_assumption_named(self, stepflow_runner):
        self._project(stepflow_runner)
        first = stepflow_runner.run("run", "flow.py")
        assert first.ret == 0
        loader_run = json.loads(stepflow_runner.run("runs", "list", "--json").stdout)[0]["id"]
        out = stepflow_runner.run("explain", "flow.py", "doubled", "--json")
        data = json.loads(out.stdout)
        assert data["verdict"] == "reuse"
        assert data["assumes"] == {"rows": loader_run}
        assert any(
            f"assuming step 'rows' makes the same output as in run {loader_run}" in r
            for r in data["reasons"]
        )
        # The prediction holds: the loader runs, makes the same rows, and the rest is reused.
        stepflow_runner.run("run", "flow.py").fnmatch_lines(
            ["rows *ran*", "counted *reused*", "doubled *reused*"]
        )
        # The loader itself always runs, and its own verdict assumes nothing.
        loader = json.loads(stepflow_runner.run("explain", "flow.py", "rows", "--json").stdout)
        assert loader["verdict"] == "run" and loader["assumes"] == {}

    def test_a_changed_parameter_downstream_is_named(self, stepflow_runner):
        """With the loader's output assumed, a step's own changes can be named."""
        self._project(stepflow_runner)
        stepflow_runner.run("run", "flow.py")
        out = stepflow_runner.run("explain", "flow.py", "doubled", "--param", "factor=3")
        out.fnmatch_lines(
            [
                "step 'doubled' would be run",
                "  - parameter 'factor' changed: 2 -> 3",
                "  - assuming step 'rows' makes the same output as in run *",
            ]
        )

    def test_no_assumption_when_the_loader_itself_changed(self, stepflow_runner):
        """A loader with another key (here a parameter) has no earlier output to assume."""
        self._project(stepflow_runner)
        (stepflow_runner.path / "other.txt").write_text("a b c\n")
        stepflow_runner.run("run", "flow.py")
        out = stepflow_runner.run("explain", "flow.py", "counted", "--param", "path=other.txt")
        out.fnmatch_lines(
            ["step 'counted' would be run", "  - input 'rows' comes from step 'rows', which would*"]
        )
        assert "assuming" not in out.stdout

    def test_without_run_records_nothing_is_assumed_and_none_are_made(self, stepflow_runner):
        self._project(stepflow_runner)
        stepflow_runner.run("run", "flow.py")
        for name in ("runs.db", "runs.db-wal", "runs.db-shm"):
            (stepflow_runner.home / name).unlink(missing_ok=True)
        out = stepflow_runner.run("explain", "flow.py", "counted")
        assert out.ret == 0
        out.fnmatch_lines(["step 'counted' would be run", "  - input 'rows' comes from*"])
        assert not (stepflow_runner.home / "runs.db").exists()


class TestCacheCommands:
    def test_ls_info_prune(self, stepflow_runner):
        """ls lists results, info counts them, prune --all empties the store. The two
        lists are objects (over 32 KiB); the total is kept inside its record."""
        _project(stepflow_runner)
        stepflow_runner.run("run", "flow.py", "--param", f"n={BIG}")
        rows = json.loads(stepflow_runner.run("cache", "ls", "--json").stdout)
        assert sorted(r["step"] for r in rows) == ["numbers", "scaled", "total"]
        assert all("s3cr3t" not in json.dumps(r) for r in rows)
        assert {r["step"]: r["outputs"][r["step"]]["inline"] for r in rows} == {
            "numbers": False,
            "scaled": False,
            "total": True,
        }
        assert_iso_utc(rows[0]["created"])
        text = stepflow_runner.run("cache", "ls", "--step", "total").stdout
        assert "total" in text and "numbers" not in text
        info = json.loads(stepflow_runner.run("cache", "info", "--json").stdout)
        assert info["results"] == 3 and info["objects"] == 2 and info["inline_outputs"] == 1
        assert info["bytes"] > info["inline_bytes"] > 0
        dry = stepflow_runner.run("cache", "prune", "--all", "--dry-run")
        assert "would remove 3 results and 2 objects" in dry.stdout
        assert json.loads(stepflow_runner.run("cache", "info", "--json").stdout)["results"] == 3
        out = stepflow_runner.run("cache", "prune", "--all")
        assert "removed 3 results and 2 objects" in out.stdout
        info = json.loads(stepflow_runner.run("cache", "info", "--json").stdout)
        assert info["results"] == 0 and info["objects"] == 0 and info["inline_outputs"] == 0
        stepflow_runner.run("run", "flow.py", "--param", f"n={BIG}").fnmatch_lines(["*3 ran in*"])

    def test_prune_by_pipeline_drops_inline_outputs_with_their_records(self, stepflow_runner):
        """Pruning small results removes no object (there is none) and counts their bytes."""
        _project(stepflow_runner)
        stepflow_runner.run("run", "flow.py")
        out = stepflow_runner.run("cache", "prune", "--pipeline", "flow")
        out.fnmatch_lines(["removed 3 results and 0 objects (* B)"])
        assert "(0 B)" not in out.stdout
        stepflow_runner.run("run", "flow.py").fnmatch_lines(["*3 ran in*"])

    def test_info_of_one_result(self, stepflow_runner):
        """info KEY shows one result: what made it, its outputs, its key's parts."""
        _project(stepflow_runner)
        stepflow_runner.run("run", "flow.py")
        (row,) = json.loads(stepflow_runner.run("cache", "ls", "--step", "total", "--json").stdout)
        stored = row["outputs"]["total"]
        assert_iso_utc(row["created"])
        out = stepflow_runner.run("cache", "info", row["key"][:6])
        assert out.ret == 0
        assert stored["inline"] is True and "data" not in stored  # its bytes are not shown
        out.fnmatch_lines(
            [
                f"key: {row['key']}",
                "step: total",
                f"run: {row['run_id']}",
                "outputs:",
                f"  total: * B, {stored['serializer']}, inline in the cache index "
                f"({stored['name']}), content hash *",
                "code:",
                "  flow.total: *",
                "inputs:",
                "  scaled: *",
                "params:",
                "  token: ***",
                "env:",
            ]
        )
        assert "s3cr3t" not in out.stdout and "MISSING" not in out.stdout
        data = json.loads(stepflow_runner.run("cache", "info", row["key"], "--json").stdout)
        assert data["key"] == row["key"] and data["present"] == {"total": True}
        assert data["created"] == row["created"]

    def test_info_of_one_result_says_a_missing_object(self, stepflow_runner):
        """A result whose object was deleted is shown with its output marked missing."""
        _project(stepflow_runner)
        stepflow_runner.run("run", "flow.py", "--param", f"n={BIG}")
        (row,) = json.loads(stepflow_runner.run("cache", "ls", "--step", "scaled", "--json").stdout)
        name = row["outputs"]["scaled"]["name"]
        (stepflow_runner.home / "objects" / name[:2] / name[2:]).unlink()
        out = stepflow_runner.run("cache", "info", row["key"])
        out.fnmatch_lines(["  scaled: *, object *MISSING from the store*"])
        data = json.loads(stepflow_runner.run("cache", "info", row["key"], "--json").stdout)
        assert data["present"] == {"scaled": False}

    def test_info_of_one_result_says_damaged_inline_bytes(self, stepflow_runner, damage):
        """An output kept inline whose bytes fail their digest is shown as damaged; a run
        that needs it computes it again."""
        from stepflow._storage.index import CacheIndex

        _project(stepflow_runner)
        stepflow_runner.run("run", "flow.py")
        listed = stepflow_runner.run("cache", "ls", "--step", "numbers", "--json")
        (row,) = json.loads(listed.stdout)
        record = CacheIndex(stepflow_runner.home / "index").get(row["key"])
        damage(stepflow_runner.home, record, "flip")
        out = stepflow_runner.run("cache", "info", row["key"])
        out.fnmatch_lines(["  numbers: *, inline in the cache index (*)*DAMAGED*"])
        data = json.loads(stepflow_runner.run("cache", "info", row["key"], "--json").stdout)
        assert data["present"] == {"numbers": False}
        # scaled must run (a new factor) and reads the damaged list: numbers runs again.
        rerun = stepflow_runner.run("run", "flow.py", "--param", "factor=3")
        assert rerun.ret == 0 and "'numbers' is unusable" in rerun.stderr
        rerun.fnmatch_lines(["numbers *ran*", "scaled *ran*", "total *ran*"])
        again = stepflow_runner.run("run", "flow.py", "--param", "factor=3")
        again.fnmatch_lines(["*3 reused in*"])

    def test_info_of_a_bad_key(self, stepflow_runner):
        """Too short, not hex, or matching nothing: a usage error that says what to give."""
        _project(stepflow_runner)
        stepflow_runner.run("run", "flow.py")
        for key, says in (
            ("ab", "give a key, or the first 4 or more of its hex digits"),
            ("nothex", "give a key, or the first 4 or more of its hex digits"),
            ("ffffffffffffffff", "no stored result has a cache key starting with"),
        ):
            out = stepflow_runner.run("cache", "info", key)
            assert out.ret == 2, key
            assert says in out.stderr and "stepflow cache ls" in out.stderr, key

    def test_filters_that_match_nothing_say_what_would(self, stepflow_runner):
        """A misspelt --pipeline or --step names the pipelines or steps that have results."""
        _project(stepflow_runner)
        stepflow_runner.run("run", "flow.py")
        out = stepflow_runner.run("cache", "ls", "--pipeline", "flwo")
        assert out.ret == 0
        out.fnmatch_lines(["no stored results", "no results of pipeline 'flwo'; *: flow"])
        out = stepflow_runner.run("cache", "ls", "--pipeline", "flow", "--step", "totl")
        out.fnmatch_lines(
            ["no results of step 'totl' of pipeline 'flow'; *: numbers, scaled, total"]
        )
        out = stepflow_runner.run("cache", "prune", "--pipeline", "flwo")
        assert out.ret == 0
        out.fnmatch_lines(["removed 0 results*", "no results of pipeline 'flwo'; *: flow"])
        assert json.loads(stepflow_runner.run("cache", "info", "--json").stdout)["results"] == 3

    def test_prune_by_age_keeps_recent(self, stepflow_runner):
        """--older-than keeps results younger than the age."""
        _project(stepflow_runner)
        stepflow_runner.run("run", "flow.py")
        out = stepflow_runner.run("cache", "prune", "--older-than", "1d")
        assert "removed 0 results and 0 objects" in out.stdout

    def test_prune_by_size(self, stepflow_runner):
        """--max-size removes the oldest results until the rest fit."""
        _project(stepflow_runner)
        stepflow_runner.run("run", "flow.py")
        out = stepflow_runner.run("cache", "prune", "--max-size", "0")
        assert "removed 3 results" in out.stdout

    def test_prune_keeps_pinned(self, stepflow_runner):
        """Objects a plugin pins (registered data sets, models) survive any prune."""
        _project(stepflow_runner)
        stepflow_runner.run("run", "flow.py")
        rows = json.loads(stepflow_runner.run("cache", "ls", "--json").stdout)
        pinned = next(r for r in rows if r["step"] == "total")["outputs"]["total"]["name"]
        stepflow_runner.makepyfile(
            pinplugin=f"""
            from stepflow import hookimpl

            @hookimpl
            def stepflow_cache_pinned(config):
                return [{pinned!r}]
            """
        )
        out = stepflow_runner.run("-p", "pinplugin", "cache", "prune", "--all", "-p", "pinplugin")
        assert "removed 2 results" in out.stdout and "kept 1 pinned" in out.stdout
        out = stepflow_runner.run("run", "flow.py", "--target", "total")
        out.fnmatch_lines(["total *reused*"])

    def test_prune_needs_a_criterion(self, stepflow_runner):
        """prune without criteria is a usage error, so nothing is removed by accident."""
        out = stepflow_runner.run("cache", "prune")
        assert out.ret == 2 and "--older-than" in out.stderr
