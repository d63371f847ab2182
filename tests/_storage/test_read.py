"""The read API: runs, logs, metrics, lineage, comparison, cache listings and registries of a
home, as plain values, without writing to the home."""

from __future__ import annotations

import socket
import sqlite3
import time
from pathlib import Path

import pytest

import stepflow
from stepflow import Pipeline
from stepflow._config import load_config
from stepflow._storage.index import CacheRecord
from stepflow._storage.read import CacheEntry, LogEntry, ReadAPI
from stepflow._storage.records import MetricRow, RunRecords, RunRow, StepRow
from stepflow._storage.registry import DatasetVersion, ModelVersion
from stepflow.errors import NotRegisteredError, UsageError

FLOWS = """
import stepflow
from stepflow import step

@step
def numbers(n: int = 3) -> list:
    print("making", n)
    return list(range(n))

@step
def total(numbers: list) -> int:
    stepflow.context().log_metric("total", float(sum(numbers)))
    return sum(numbers)
"""


@pytest.fixture
def config(tmp_path: Path):
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'p'\n")
    return load_config(tmp_path, home=tmp_path / "home", environ={})


@pytest.fixture
def home(config, make_module):
    """Three runs: flows n=3, flows n=4 (a new result for each step), other n=3."""
    mod = make_module("read_flows", FLOWS)
    flows = Pipeline("flows", [mod.numbers, mod.total])
    other = Pipeline("other", [mod.numbers])
    ids = []
    for pipeline, n in ((flows, 3), (flows, 4), (other, 3)):
        result = pipeline.run({"n": n}, config=config)
        assert result.ok
        ids.append(result.run_id)
    return config, ids


@pytest.fixture
def api(home):
    config, _ = home
    with ReadAPI(config) as reader:
        yield reader


class TestRuns:
    def test_runs_are_run_rows_newest_first(self, api, home) -> None:
        _, ids = home
        found = api.runs()
        assert [r.id for r in found] == ids[::-1]
        assert all(isinstance(r, RunRow) for r in found)

    def test_filters(self, api, home) -> None:
        _, ids = home
        assert [r.id for r in api.runs(pipeline="flows")] == [ids[1], ids[0]]
        assert [r.id for r in api.runs(pipeline="flows", limit=1)] == [ids[1]]
        assert api.runs(state="failed") == []
        assert api.runs(since=time.time() + 3600) == []

    def test_run_by_prefix_and_last(self, api, home) -> None:
        _, ids = home
        assert api.run(ids[0][:-2]).id == ids[0]
        assert api.run("last").id == ids[2]
        assert api.run(api.run("last")).id == ids[2]  # a RunRow is taken as it is

    def test_a_missing_run_is_the_usage_error_of_the_records(self, api, config) -> None:
        with pytest.raises(UsageError, match=r"no run 'nope' in .*runs\.db; see `stepflow runs"):
            api.run("nope")

    def test_a_home_without_records_is_a_usage_error(self, tmp_path: Path) -> None:
        (tmp_path / "pyproject.toml").write_text("[project]\nname = 'p'\n")
        empty = load_config(tmp_path, home=tmp_path / "empty", environ={})
        with ReadAPI(empty) as api, pytest.raises(UsageError, match="no run records in"):
            api.runs()
        assert not (tmp_path / "empty" / "runs.db").exists()

    def test_steps_metrics_and_logs(self, api, home) -> None:
        _, ids = home
        steps = api.steps(ids[0])
        assert [s.name for s in steps] == ["numbers", "total"]
        assert all(isinstance(s, StepRow) for s in steps)
        metrics = api.metrics(ids[0])
        assert [(m.name, m.value) for m in metrics["total"]] == [("total", 3.0)]
        assert isinstance(metrics["total"][0], MetricRow)
        assert api.metrics(ids[0], "numbers") == {}
        assert list(api.metrics(ids[0], "total")) == ["total"]
        logs = api.step_log(ids[0], "numbers")
        assert logs == [LogEntry("numbers", 1, "stdout", "making 3\n")]
        assert api.step_log(ids[0], "numbers", stream="stderr") == []

    def test_logs_of_an_unknown_step_name_the_steps(self, api, home) -> None:
        _, ids = home
        with pytest.raises(UsageError, match=r"has no step 'nmbers'; steps: numbers, total"):
            api.step_log(ids[0], "nmbers")

    def test_compare(self, api, home) -> None:
        _, ids = home
        data = api.compare(ids[0], ids[1])
        assert data["params"] == {"n": [3, 4]}
        assert data["metrics"] == {"total.total": [3.0, 6.0]}
        assert set(data["steps"]) == {"numbers", "total"}
        assert data["steps"]["numbers"]["why"] == "different cache key"

    def test_lineage_of_a_run_output(self, api, home) -> None:
        _, ids = home
        node = api.lineage(f"{ids[1]}:total")
        assert (node["run"], node["step"], node["state"]) == (ids[1], "total", "ran")
        [child] = node["inputs"]
        assert (child["input"], child["run"], child["step"]) == ("numbers", ids[1], "numbers")
        with pytest.raises(UsageError, match="no recorded run produced"):
            api.lineage("0123456789abcdef")


class TestReadOnly:
    def test_the_records_are_opened_read_only(self, api) -> None:
        api.runs()
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            api.records._db.execute("DELETE FROM runs")

    def test_a_dead_run_of_this_host_is_still_shown_interrupted(self, home) -> None:
        config, _ = home
        records = RunRecords(config.home / "runs.db")
        dead = RunRow(
            id="dead", pipeline="p", state="running", started=time.time(),
            host=socket.gethostname(), pid=2**22 + 12345,
        )  # fmt: skip
        records.start_run(dead)
        records.close()
        with ReadAPI(config) as api:
            assert api.run("dead").state == "interrupted"

    def test_a_home_another_user_could_change_is_refused_to_readers_too(
        self, config, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from stepflow._storage import home
        from stepflow.errors import UnsafeHomeError

        RunRecords(config.home / "runs.db").close()
        config.home.chmod(0o777)
        monkeypatch.setattr(home, "_checked", set())  # checked once per process: forget it
        with ReadAPI(config) as api, pytest.raises(UnsafeHomeError, match="world-writable"):
            api.runs()


class TestCache:
    def test_entries_are_cache_records_oldest_first_and_filtered(self, api) -> None:
        every = api.cache_entries()
        assert all(isinstance(r, CacheRecord) for r in every)
        assert [r.created for r in every] == sorted(r.created for r in every)
        # flows made numbers and total twice (n=3, n=4); other reused numbers for n=3.
        assert sorted((r.pipeline, r.step) for r in every) == [
            ("flows", "numbers"),
            ("flows", "numbers"),
            ("flows", "total"),
            ("flows", "total"),
        ]
        assert len(api.cache_entries(pipeline="flows", step="total")) == 2
        assert api.cache_entries(pipeline="other") == []

    def test_entry_by_key_prefix(self, api) -> None:
        record = api.cache_entries(step="total")[0]
        entry = api.cache_entry(record.key[:8].upper())
        assert entry == CacheEntry(record, {"total": True})
        with pytest.raises(UsageError, match="give a key, or the first 4 or more"):
            api.cache_entry("xyz")
        with pytest.raises(UsageError, match="no stored result has a cache key starting with"):
            api.cache_entry("ffffffffffff" if not record.key.startswith("f") else "000000000")

    def test_summary(self, api, home) -> None:
        config, _ = home
        summary = api.cache_summary()
        assert summary["home"] == str(config.home)
        # Small outputs live inside their records: no object files.
        assert (summary["results"], summary["objects"], summary["unreferenced_objects"]) == (
            4,
            0,
            0,
        )
        assert summary["inline_outputs"] == 4 and summary["bytes"] == summary["inline_bytes"] > 0
        assert summary["pipelines"] == ["flows"]


class TestRegistries:
    @pytest.fixture
    def registered(self, config, tmp_path: Path):
        data = tmp_path / "prices.csv"
        data.write_text("price\n1\n")
        stepflow.datasets.register("prices", data, config=config)
        data.write_text("price\n2\n")
        stepflow.datasets.register("prices", data, config=config)
        stepflow.models.register("scorer", {"w": 1}, metrics={"r2": 0.5}, config=config)
        stepflow.models.register("scorer", {"w": 2}, metrics={"r2": 0.7}, config=config)
        stepflow.models.set_alias("scorer", "production", 1, config=config)
        return config

    def test_datasets(self, registered) -> None:
        with ReadAPI(registered) as api:
            [latest] = api.datasets()
            assert isinstance(latest, DatasetVersion)
            assert (latest.name, latest.version) == ("prices", 2)
            assert [v.version for v in api.dataset_versions("prices")] == [1, 2]
            assert api.dataset("prices", 1).version == 1
            with pytest.raises(NotRegisteredError, match="no data set named 'price'"):
                api.dataset("price")

    def test_models(self, registered) -> None:
        with ReadAPI(registered) as api:
            [latest] = api.models()
            assert isinstance(latest, ModelVersion)
            assert (latest.name, latest.version, latest.metrics) == ("scorer", 2, {"r2": 0.7})
            assert api.model_aliases("scorer") == {"production": 1}
            assert [v.aliases for v in api.model_versions("scorer")] == [("production",), ()]
            assert api.model("scorer", alias="production").version == 1
            with pytest.raises(NotRegisteredError, match="has no version 9"):
                api.model("scorer", 9)
