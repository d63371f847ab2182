"""The hand-written value classes of the run path behave as the attrs classes they replace."""

from __future__ import annotations

import copy
import pickle

import cloudpickle
import pytest

from stepflow._execution.journal import _StepFacts
from stepflow._planning.reuse import Decision
from stepflow._slotted import FrozenError
from stepflow._storage.artifacts import ArtifactRef
from stepflow._storage.fingerprint import Fingerprint
from stepflow._storage.index import CacheRecord
from stepflow._storage.records import RunRow
from stepflow._storage.source import SourceSnapshot


def record(**changes: object) -> CacheRecord:
    ref = ArtifactRef("e" * 32 + ".joblib", "e" * 32, "joblib", 12, "f" * 32)
    fields = {"key": "k", "step": "s", "pipeline": "p", "run_id": "r", "created": 1.5}
    return CacheRecord(**{**fields, "outputs": {"s": ref}, **changes})  # type: ignore[arg-type]


class TestFrozen:
    def test_fields_cannot_be_set_or_deleted(self):
        """Assigning a field raises an AttributeError naming the class and the field."""
        rec = record()
        with pytest.raises(FrozenError, match="CacheRecord is frozen: cannot set 'key'"):
            rec.key = "other"  # type: ignore[misc]
        with pytest.raises(AttributeError, match="cannot delete 'step'"):
            del rec.step  # type: ignore[misc]
        with pytest.raises(AttributeError):
            rec.unknown = 1  # type: ignore[attr-defined]
        assert rec.key == "k"

    def test_defaults_are_fresh_per_instance(self):
        """``factory=dict`` fields: each instance gets its own empty mapping."""
        a, b = record(), record()
        assert a.components == {} and a.param_values == {}
        assert a.components is not b.components

    def test_equality_and_repr_go_field_by_field(self):
        assert record() == record()
        assert record() != record(step="t")
        assert record() != "not a record"
        assert repr(Decision(None, None, False, "why")) == (  # type: ignore[arg-type]
            "Decision(key=None, record=None, available=False, reason='why')"
        )

    def test_hash_leaves_out_the_mappings_attrs_left_out(self):
        """``Fingerprint.parts`` (``hash=False`` before) does not enter the hash; the
        ``converter=dict`` still copies it."""
        parts = {"f": "1"}
        a, b = Fingerprint("d", parts), Fingerprint("d", {"g": "2"})
        assert hash(a) == hash(b) and a != b
        assert a.parts == parts and a.parts is not parts
        assert hash(SourceSnapshot("h", {"a.py": "1"})) == hash(SourceSnapshot("h", {}))

    @pytest.mark.parametrize("dumps", [pickle.dumps, cloudpickle.dumps])
    def test_round_trips_through_pickle_and_copy(self, dumps):
        rec = record(components={"code": {"f": "1"}})
        assert pickle.loads(dumps(rec)) == rec
        assert copy.copy(rec) == rec and copy.deepcopy(rec) == rec
        row = RunRow("r1", "p", "running", 1.0, targets=("a",), tags={"t": "1"})
        assert pickle.loads(dumps(row)).to_dict() == row.to_dict()


class TestSlotted:
    def test_mutable_and_unhashable(self):
        """Like ``attrs.define``: fields can be set, equality by fields, no hash."""
        facts = _StepFacts()
        facts.started = 2.0
        facts.logs.append((1, "out", "x"))
        assert facts == _StepFacts(started=2.0, logs=[(1, "out", "x")])
        assert _StepFacts().logs is not _StepFacts().logs
        with pytest.raises(TypeError, match="unhashable"):
            hash(facts)
        with pytest.raises(AttributeError):
            facts.other = 1  # type: ignore[attr-defined]


def test_run_row_to_dict_is_what_attrs_asdict_gave():
    """Field order and collection types kept, mappings copied (``runs --json`` prints
    this)."""
    params = {"n": {"json": 3}}
    row = RunRow(
        "r1", "p", "succeeded", 1.0, finished=3.5, params=params, secret_params=("s",),
        targets=("a", "b"), source_files={"f.py": "h"},
    )  # fmt: skip
    data = row.to_dict(with_files=True)
    assert list(data) == [*RunRow.__slots__, "duration"]
    assert data["targets"] == ("a", "b") and data["secret_params"] == ("s",)
    assert data["params"] == {"n": 3, "s": "***"}
    assert data["duration"] == 2.5 and data["source_files"] == {"f.py": "h"}
    assert data["counts"] == {} and data["counts"] is not row.counts
    assert "source_files" not in row.to_dict()
