"""``stepflow cache ls|info|prune`` on a store shared by two homes (S3 on a moto server)."""

from __future__ import annotations

from pathlib import Path

import pytest

from stepflow import Pipeline, StepState
from stepflow._config import load_config
from stepflow._surfaces import cachecmd
from stepflow.errors import StepflowWarning

FLOWS = """
from stepflow import step

@step
def base(offset: int = 0) -> list:
    return [offset + i for i in range(4)]

@step
def doubled(base: list) -> list:
    return [2 * x for x in base]
"""


def config_for(tmp_path: Path, s3, home: str):
    project = tmp_path / "project"
    project.mkdir(exist_ok=True)
    (project / "pyproject.toml").write_text(s3.pyproject())
    return load_config(project, home=tmp_path / home, environ={})


@pytest.fixture
def two_pipelines(make_module):
    mod = make_module("shared_flows", FLOWS)
    # Different parameters, so the two pipelines make different objects.
    return Pipeline("p1", [mod.base, mod.doubled]), Pipeline("p2", [mod.base, mod.doubled])


def objects(s3) -> set[str]:
    """Object names in the bucket, read behind the datastore's back."""
    found = s3.fs().find(f"{s3.bucket}/stepflow/objects")
    return {p.split("/")[-2] + p.split("/")[-1] for p in found}


def per_result(stored: str) -> int:
    """Objects per result: small outputs kept inside their records have none."""
    return 1 if stored == "file" else 0


class TestSharedStore:
    def test_ls_and_info_in_another_home(self, s3_server, tmp_path, two_pipelines, stored):
        p1, _ = two_pipelines
        a = config_for(tmp_path, s3_server, "a")
        assert p1.run(config=a).ok
        b = config_for(tmp_path, s3_server, "b")
        records = cachecmd.list_records(b)
        assert sorted(r.step for r in records) == ["base", "doubled"]
        assert {r.pipeline for r in records} == {"p1"}
        info = cachecmd.cache_info(b)
        assert info["shared"] is True and info["store"] == s3_server.url()
        assert info["results"] == 2 and info["objects"] == 2 * per_result(stored)
        assert info["inline_outputs"] == 2 - 2 * per_result(stored)
        assert info["unreferenced_objects"] == 0

    def test_prune_keeps_what_other_homes_records_need(
        self, s3_server, tmp_path, two_pipelines, stored
    ):
        """Home B prunes its pipeline: its shared records and objects go; the objects of
        home A's records, which B's own index never saw, stay, and A still reuses them."""
        p1, p2 = two_pipelines
        a = config_for(tmp_path, s3_server, "a")
        b = config_for(tmp_path, s3_server, "b")
        assert p1.run(config=a).ok
        before = objects(s3_server)
        assert p2.run({"offset": 100}, config=b).ok
        assert len(objects(s3_server)) == 4 * per_result(stored)

        report = cachecmd.prune(b, pipeline="p2")
        assert (report.removed_results, report.removed_objects) == (2, 2 * per_result(stored))
        assert objects(s3_server) == before
        assert {r.pipeline for r in cachecmd.list_records(b)} == {"p1"}
        assert {r.pipeline for r in cachecmd.list_records(a)} == {"p1"}

        rerun = p1.run(config=a)
        assert {s.state for s in rerun.steps.values()} == {StepState.REUSED}

    def test_prune_everything_then_the_other_home_recomputes(
        self, s3_server, tmp_path, two_pipelines, stored
    ):
        """A result pruned through another home is a miss (with a warning), never a wrong
        answer: home A's local record points at objects that are gone, so it recomputes.
        A record of A that holds its outputs' bytes is whole: A reuses it, rightly."""
        p1, _ = two_pipelines
        a = config_for(tmp_path, s3_server, "a")
        assert p1.run(config=a).ok
        report = cachecmd.prune(config_for(tmp_path, s3_server, "b"), older_than=0.0)
        assert (report.removed_results, report.removed_objects) == (2, 2 * per_result(stored))
        assert objects(s3_server) == set()
        assert s3_server.fs().find(f"{s3_server.bucket}/stepflow/refs/index") == []

        if stored == "file":
            with pytest.warns(StepflowWarning, match="incomplete"):
                rerun = p1.run(config=a)
            assert {s.state for s in rerun.steps.values()} == {StepState.RAN}
        else:
            rerun = p1.run(config=a)
            assert {s.state for s in rerun.steps.values()} == {StepState.REUSED}
        assert rerun.ok and rerun["doubled"] == [0, 2, 4, 6]

    def test_dry_run_changes_nothing(self, s3_server, tmp_path, two_pipelines, stored):
        p1, _ = two_pipelines
        a = config_for(tmp_path, s3_server, "a")
        assert p1.run(config=a).ok
        before = objects(s3_server)
        report = cachecmd.prune(a, older_than=0.0, dry_run=True)
        expected = (2, 2 * per_result(stored), True)
        assert (report.removed_results, report.removed_objects, report.dry_run) == expected
        assert objects(s3_server) == before
        assert len(cachecmd.list_records(config_for(tmp_path, s3_server, "b"))) == 2

    def test_pinned_objects_survive(self, s3_server, tmp_path, two_pipelines, monkeypatch):
        from stepflow._storage import artifacts

        monkeypatch.setattr(artifacts, "INLINE_LIMIT", 0)  # objects, to pin
        p1, _ = two_pipelines
        a = config_for(tmp_path, s3_server, "a")
        assert p1.run(config=a).ok
        records = cachecmd.list_records(a)
        pinned = {r.outputs["doubled"].name for r in records if r.step == "doubled"}
        report = cachecmd.prune(a, older_than=0.0, pinned=pinned)
        assert report.kept_pinned == 1
        assert objects(s3_server) == pinned


class TestFindRecord:
    """``stepflow cache info KEY`` picks one result by a key prefix (a local home)."""

    @pytest.fixture
    def config(self, tmp_path):
        from stepflow._storage.artifacts import ArtifactRef
        from stepflow._storage.index import CacheIndex, CacheRecord

        (tmp_path / "pyproject.toml").write_text("[project]\nname = 'p'\n")
        config = load_config(tmp_path, home=tmp_path / "home", environ={})
        index = CacheIndex(config.home / "index")
        ref = ArtifactRef("0" * 32 + ".joblib", "0" * 32, "joblib", 5, "1" * 32)
        for key, step in (("abcd1" + "0" * 27, "one"), ("abcd2" + "0" * 27, "two")):
            index.put(CacheRecord(key, step, "p", "run-1", 0.0, {step: ref}))
        index.close()
        return config

    def test_unique_prefix(self, config):
        record, present = cachecmd.find_record(config, "ABCD2")
        assert record.step == "two"
        # Nothing was ever written to the store: the output is reported missing.
        assert present == {"two": False}
        assert "two: 5 B, joblib, object " in cachecmd.format_record(record, present)
        assert "MISSING" in cachecmd.format_record(record, present)

    def test_ambiguous_prefix_names_the_candidates(self, config):
        from stepflow.errors import UsageError

        with pytest.raises(UsageError, match=r"'abcd' is ambiguous \(abcd1.* \(p:one\), abcd2"):
            cachecmd.find_record(config, "abcd")


def test_ls_shows_long_names_whole():
    """``cache ls`` never cuts a pipeline or step name: the columns widen instead."""
    from stepflow._storage.index import CacheRecord

    step = "load_the_customer_transactions_table"
    pipeline = "nightly.customer-scoring.v2"
    records = [
        CacheRecord("a" * 32, step, pipeline, "run-1", 0.0, {}),
        CacheRecord("b" * 32, "short", "p", "run-2", 0.0, {}),
    ]
    lines = cachecmd.format_records(records).splitlines()
    assert lines[1].split()[:3] == ["a" * 12, pipeline, step]
    assert lines[2].split()[:3] == ["b" * 12, "p", "short"]
    # The columns still line up: the run column starts at the same place on every line.
    assert lines[0].rindex("run") == lines[1].index("run-1") == lines[2].index("run-2")
