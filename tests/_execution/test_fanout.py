"""Fan-out (``@step(foreach=...)``): one task per item, each with its own key, retries,
timeout and log; the output is the list of results in item order."""

from __future__ import annotations

import pytest

from stepflow import Pipeline, StepState, step
from stepflow.errors import StepTimeoutError

FAN = """
import os
from pathlib import Path
from typing import Annotated
from stepflow import Param, step

@step
def chunks(items: Param[str] = "1,2,3") -> list[int]:
    return [int(x) for x in items.split(",") if x]

@step(foreach="chunks")
def scored(chunks: int, calls: str = "") -> int:
    if calls:
        with open(calls, "a") as f:
            f.write(f"{chunks}\\n")
    print(f"scoring {chunks}")
    if chunks < 0:
        raise ValueError(f"negative item {chunks}")
    return chunks * 10

@step
def total(scored: list[int]) -> int:
    return sum(scored)

@step(foreach="chunks")
def pid(chunks: int, pause: float = 0.0) -> int:
    import time
    time.sleep(pause)
    return os.getpid()

@step(foreach="chunks", retries=2, retry_delay=0.01)
def flaky(chunks: int, counter_dir: str = "") -> int:
    path = Path(counter_dir) / str(chunks)
    n = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(n))
    if chunks == 2 and n < 3:
        raise ConnectionError(f"attempt {n} of item {chunks} failed")
    return chunks

@step(foreach="chunks", timeout=2)
def slow(chunks: int) -> int:
    import time
    if chunks == 2:
        time.sleep(60)
    return chunks

@step(foreach="chunks")
def split(chunks: int) -> tuple[Annotated[int, "lo"], Annotated[int, "hi"]]:
    return chunks - 1, chunks + 1

@step(foreach="chunks")
def shout(chunks: int) -> int:
    import subprocess, sys
    print(f"python {chunks}")
    subprocess.run([sys.executable, "-c", f"print('child {chunks}')"], check=True)
    return chunks

@step(foreach="chunks")
def notify(chunks: int, calls: str = "") -> None:
    with open(calls, "a") as f:
        f.write(f"{chunks}\\n")

@step
def not_a_list():
    return {"a": 1}

@step(foreach="not_a_list")
def over_dict(not_a_list: str) -> str:
    return not_a_list
"""


@pytest.fixture
def fan(make_module):
    return make_module("fan_steps", FAN)


def _calls(path) -> list[int]:
    return [int(x) for x in path.read_text().split()] if path.exists() else []


class TestResults:
    def test_list_in_item_order(self, fan, stepflow_home, tmp_path):
        calls = tmp_path / "calls"
        pipe = Pipeline("p", [fan.chunks, fan.scored, fan.total])
        result = pipe.run({"items": "3,1,2", "calls": str(calls)})
        assert result.ok, result.steps["scored"].error
        assert result["scored"] == [30, 10, 20]
        assert result["total"] == 60
        assert sorted(_calls(calls)) == [1, 2, 3]
        assert result.steps["scored"].items == {"ran": 3}

    def test_several_outputs_are_each_a_list(self, fan, stepflow_home):
        result = Pipeline("p", [fan.chunks, fan.split]).run()
        assert result["lo"] == [0, 1, 2]
        assert result["hi"] == [2, 3, 4]

    def test_empty_list(self, fan, stepflow_home):
        result = Pipeline("p", [fan.chunks, fan.scored, fan.total]).run({"items": ""})
        assert result.ok
        assert result["scored"] == [] and result["total"] == 0


class TestReuse:
    def test_same_list_reuses_the_whole_step(self, fan, stepflow_home, tmp_path):
        calls = tmp_path / "calls"
        pipe = Pipeline("p", [fan.chunks, fan.scored, fan.total])
        pipe.run({"calls": str(calls)})
        result = pipe.run({"calls": str(calls)})
        assert result.steps["scored"].state is StepState.REUSED
        assert result["scored"] == [10, 20, 30]
        assert len(_calls(calls)) == 3

    def test_edit_one_item_reruns_only_that_item(self, fan, stepflow_home, tmp_path):
        calls = tmp_path / "calls"
        pipe = Pipeline("p", [fan.chunks, fan.scored, fan.total])
        pipe.run({"items": "1,2,3,4", "calls": str(calls)})
        result = pipe.run({"items": "1,2,7,4,5", "calls": str(calls)})
        assert result.steps["scored"].state is StepState.RAN
        assert result["scored"] == [10, 20, 70, 40, 50]
        # The first run made 1..4; the second only the new items 7 and 5.
        assert _calls(calls)[4:] == [7, 5]
        assert result.steps["scored"].items == {"ran": 2, "reused": 3}

    def test_reordered_items_are_all_reused(self, fan, stepflow_home, tmp_path):
        calls = tmp_path / "calls"
        pipe = Pipeline("p", [fan.chunks, fan.scored])
        pipe.run({"items": "1,2,3", "calls": str(calls)})
        result = pipe.run({"items": "3,2,1", "calls": str(calls)})
        assert result["scored"] == [30, 20, 10]
        assert len(_calls(calls)) == 3
        assert result.steps["scored"].items == {"reused": 3}

    def test_identical_items_run_once(self, fan, stepflow_home, tmp_path):
        calls = tmp_path / "calls"
        result = Pipeline("p", [fan.chunks, fan.scored]).run(
            {"items": "4,4,4,5", "calls": str(calls)}
        )
        assert result["scored"] == [40, 40, 40, 50]
        assert sorted(_calls(calls)) == [4, 5]

    def test_items_over_several_batches(self, fan, stepflow_home, tmp_path):
        """Small results are stored in batches (one object per 512 items); each item is still
        found by its own key."""
        calls = tmp_path / "calls"
        pipe = Pipeline("p", [fan.chunks, fan.scored])
        items = [str(i) for i in range(600)]
        pipe.run({"items": ",".join(items), "calls": str(calls)})
        items[550] = "9999"
        result = pipe.run({"items": ",".join(items), "calls": str(calls)})
        assert result.steps["scored"].items == {"ran": 1, "reused": 599}
        assert result["scored"][549:552] == [5490, 99990, 5510]
        assert _calls(calls)[600:] == [9999]

    def test_damaged_batch_reruns_its_items(self, fan, stepflow_home, tmp_path):
        """A batch object that fails its check is a miss for its items: they run again."""
        from stepflow._storage.index import CacheIndex

        calls = tmp_path / "calls"
        pipe = Pipeline("p", [fan.chunks, fan.scored])
        pipe.run({"items": "1,2,3", "calls": str(calls)})
        index = CacheIndex(stepflow_home / "index")
        item_records = [r for r in index.records() if r.step == "scored" and "part" in r.components]
        assert len(item_records) == 3
        batch = item_records[0].outputs["scored"].name
        assert {r.outputs["scored"].name for r in item_records} == {batch}
        stored = next(stepflow_home.rglob(batch[2:]))
        data = bytearray(stored.read_bytes())
        data[-2] ^= 0xFF
        stored.write_bytes(bytes(data))
        result = pipe.run({"items": "1,2,3,4", "calls": str(calls)})
        assert result.ok, result.steps["scored"].error
        assert result["scored"] == [10, 20, 30, 40]
        assert result.steps["scored"].items == {"ran": 4}
        assert sorted(_calls(calls)[3:]) == [1, 2, 3, 4]

    def test_sink_items_are_kept_too(self, fan, stepflow_home, tmp_path):
        """A fan-out step that returns nothing still records each item: a longer list runs
        only the new items."""
        calls = tmp_path / "calls"
        pipe = Pipeline("p", [fan.chunks, fan.notify])
        pipe.run({"items": "1,2", "calls": str(calls)})
        result = pipe.run({"items": "1,2,3", "calls": str(calls)})
        assert result.steps["notify"].items == {"ran": 1, "reused": 2}
        assert _calls(calls) == [1, 2, 3]

    def test_regenerate_reruns_every_item(self, fan, stepflow_home, tmp_path):
        calls = tmp_path / "calls"
        pipe = Pipeline("p", [fan.chunks, fan.scored])
        pipe.run({"calls": str(calls)})
        pipe.run({"calls": str(calls)}, regenerate=["scored"])
        assert len(_calls(calls)) == 6


class TestFailures:
    def test_failed_item_keeps_the_others(self, fan, stepflow_home, tmp_path):
        """One failing item fails the step, names the item; the other items are stored,
        so the run after the fix runs the fixed item only."""
        calls = tmp_path / "calls"
        pipe = Pipeline("p", [fan.chunks, fan.scored, fan.total])
        result = pipe.run({"items": "1,-2,3", "calls": str(calls)})
        report = result.steps["scored"]
        assert report.state is StepState.FAILED
        assert result.steps["total"].state is StepState.SKIPPED
        message = str(report.error)
        assert "1 of 3 item(s) of step 'scored' failed (item 1)" in message
        assert "ValueError: negative item -2" in message
        assert "negative item -2" in report.error.traceback
        assert report.logs == {"item 1 stdout": "scoring -2\n"}
        assert report.items == {"ran": 2, "failed": 1}
        result = pipe.run({"items": "1,2,3", "calls": str(calls)})
        assert result.ok
        assert result["scored"] == [10, 20, 30]
        assert _calls(calls)[3:] == [2]

    def test_retries_per_item(self, fan, stepflow_home, tmp_path):
        result = Pipeline("p", [fan.chunks, fan.flaky]).run({"counter_dir": str(tmp_path)})
        assert result.ok, result.steps["flaky"].error
        assert result["flaky"] == [1, 2, 3]
        assert (tmp_path / "2").read_text() == "3"
        assert (tmp_path / "1").read_text() == "1"
        assert result.steps["flaky"].attempts == 3

    def test_timeout_per_item(self, fan, stepflow_home):
        result = Pipeline("p", [fan.chunks, fan.slow]).run()
        report = result.steps["slow"]
        assert report.state is StepState.FAILED
        assert isinstance(report.error, StepTimeoutError)
        assert "(item 1)" in str(report.error)
        # The others finished and are stored: a rerun does not run them again.
        assert report.items == {"ran": 2, "failed": 1}

    def test_damaged_list_is_made_again(self, fan, stepflow_home, tmp_path, stored, damage):
        """A stored list that fails its check when the fan-out reads it (in its object
        file, or inside its index record) makes its producer run again; the items then run
        from the good list."""
        from stepflow._storage.index import CacheIndex

        calls = tmp_path / "calls"
        pipe = Pipeline("p", [fan.chunks, fan.scored])
        pipe.run({"calls": str(calls)})
        record = CacheIndex(stepflow_home / "index").last("p", "chunks")
        assert record.outputs["chunks"].inline is (stored == "inline")
        # Same size, different bytes: only the digest check sees it.
        damage(stepflow_home, record, "flip")
        with pytest.warns(
            UserWarning, match=r"stored output 'chunks' of step 'chunks' is unusable"
        ):
            result = pipe.run({"calls": str(calls)}, regenerate=["scored"])
        assert result.ok, result.steps["scored"].error
        assert result.steps["chunks"].state is StepState.RAN
        assert result["scored"] == [10, 20, 30]

    def test_not_a_sequence(self, fan, stepflow_home):
        result = Pipeline("p", [fan.not_a_list, fan.over_dict]).run()
        error = result.steps["over_dict"].error
        assert result.steps["over_dict"].state is StepState.FAILED
        assert "has foreach='not_a_list', but 'not_a_list' is a builtins.dict" in str(error)
        assert "make its producer return a list" in str(error)


class TestLogs:
    def test_item_and_child_process_output_is_kept(self, fan, stepflow_home):
        """Each item's Python output is its own log; what child processes print is in the
        step's log (captured at the descriptor level), so nothing printed is lost."""
        from stepflow._config import load_config
        from stepflow._storage.read import ReadAPI

        result = Pipeline("p", [fan.chunks, fan.shout]).run({"items": "1,2"})
        assert result.ok, result.steps["shout"].error
        with ReadAPI(load_config(home=stepflow_home)) as api:
            entries = api.step_log(result.run_id, "shout")
        by_stream = {e.stream: e.text for e in entries}
        assert by_stream["item 0 stdout"] == "python 1\n"
        assert by_stream["item 1 stdout"] == "python 2\n"
        assert "child 1" in by_stream["stdout"] and "child 2" in by_stream["stdout"]


class TestWorkers:
    def test_items_spread_over_worker_processes(self, fan, stepflow_home):
        """With two workers, the items of one step run in both worker processes."""
        result = Pipeline("p", [fan.chunks, fan.pid]).run(
            {"items": ",".join(str(i) for i in range(8)), "pause": 0.2}, workers=2
        )
        assert result.ok, result.steps["pid"].error
        pids = result["pid"]
        assert len(pids) == 8
        assert len(set(pids)) == 2

    def test_worker_items_are_kept_inside_their_own_records(self, fan, stepflow_home, tmp_path):
        """Items run in worker processes come back one by one, each small result inside its
        own index record (no object file at all here); a longer list reuses them."""
        from stepflow._storage.index import CacheIndex

        calls = tmp_path / "calls"
        pipe = Pipeline("p", [fan.chunks, fan.scored])
        assert pipe.run({"items": "5,6,7", "calls": str(calls)}, workers=2).ok
        records = [r for r in CacheIndex(stepflow_home / "index").records() if r.step == "scored"]
        assert len(records) == 4  # three items and the whole list
        assert all(ref.inline for r in records for ref in r.outputs.values())
        assert [p for p in (stepflow_home / "objects").rglob("*") if p.is_file()] == []
        again = pipe.run({"items": "5,6,7,8", "calls": str(calls)}, workers=2)
        assert again["scored"] == [50, 60, 70, 80]
        assert again.steps["scored"].items == {"ran": 1, "reused": 3}

    def test_results_match_inline(self, fan, stepflow_home, tmp_path):
        result = Pipeline("p", [fan.chunks, fan.scored, fan.total]).run(
            {"items": "5,6,7"}, workers=2
        )
        assert result["scored"] == [50, 60, 70]
        assert result["total"] == 180


def test_plain_call_is_one_item():
    """The decorated function is still plain: one item in, one result out."""

    @step(foreach="xs")
    def double(xs: int) -> int:
        return 2 * xs

    assert double(4) == 8
