"""The cache index: which stored outputs a cache key stands for (diskcache on SQLite).

The index is the one commit point: an output becomes visible to later runs only when its
record is written here, after its objects are safely in the datastore. Records are plain
dicts on disk, so a newer stepflow can read what an older one wrote.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs

from stepflow._sentinels import MISSING
from stepflow._storage.artifacts import ArtifactRef
from stepflow._storage.datastore import Datastore

__all__ = ["CacheIndex", "CacheRecord", "NullIndex"]

#: bump when the record layout changes; older records are then ignored (a miss)
RECORD_VERSION = 1


@attrs.frozen
class CacheRecord:
    """What a step produced for one cache key, and what went into that key."""

    key: str
    step: str
    pipeline: str
    run_id: str
    created: float
    outputs: Mapping[str, ArtifactRef]
    #: ``{"code": {...}, "inputs": {...}, "params": {...}, "env": {...}}``, for ``explain``
    components: Mapping[str, Mapping[str, str]] = attrs.field(factory=dict)
    #: readable parameter values (secrets masked), for ``explain``
    param_values: Mapping[str, str] = attrs.field(factory=dict)

    @property
    def size(self) -> int:
        return sum(ref.size for ref in self.outputs.values())

    def to_dict(self) -> dict[str, Any]:
        data = attrs.asdict(self, recurse=True)
        data["version"] = RECORD_VERSION
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CacheRecord | None:
        if not isinstance(data, Mapping) or data.get("version") != RECORD_VERSION:
            return None
        fields = {k: v for k, v in data.items() if k != "version"}
        fields["outputs"] = {k: ArtifactRef(**v) for k, v in fields["outputs"].items()}
        return cls(**fields)


# Keys are strings: diskcache stores those as they are, while tuples would be pickled (and
# pickle-optimized) on every lookup, which dominated a fully cached rerun.
def _result(key: str) -> str:
    return f"result:{key}"


def _last(pipeline: str, step: str) -> str:
    return f"last:{pipeline}\x00{step}"


class CacheIndex:
    """Cache key → ``CacheRecord``, plus the last record of each (pipeline, step)."""

    def __init__(self, directory: Path, store: Datastore | None = None) -> None:
        import diskcache

        #: the datastore whose results this index records; a ``shared`` store also
        #: carries the records, so that other homes pointed at it can reuse them
        self.store = store
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        # No eviction: dropping a record is the job of `stepflow cache prune`, never a side
        # effect of a size limit the user did not set.
        self._cache = diskcache.Cache(str(directory), eviction_policy="none", timeout=60)

    def get(self, key: str) -> CacheRecord | Any:
        data = self._cache.get(_result(key), default=MISSING)
        if data is MISSING:
            return MISSING
        record = CacheRecord.from_dict(data)
        return MISSING if record is None else record

    def put(self, record: CacheRecord) -> None:
        self._cache.set(_result(record.key), record.to_dict())
        self._cache.set(_last(record.pipeline, record.step), record.key)

    def touch_last(self, pipeline: str, step: str, key: str) -> None:
        """Remember ``key`` as the latest result of a step (also when it was reused)."""
        self.touch_many([(pipeline, step, key)])

    def touch_many(self, entries: list[tuple[str, str, str]]) -> None:
        """``touch_last`` for many steps in one transaction (one disk sync, not one each)."""
        if not entries:
            return
        with self._cache.transact():
            for pipeline, step, key in entries:
                if self._cache.get(_last(pipeline, step)) != key:
                    self._cache.set(_last(pipeline, step), key)

    def last(self, pipeline: str, step: str) -> CacheRecord | Any:
        key = self._cache.get(_last(pipeline, step), default=MISSING)
        return MISSING if key is MISSING else self.get(key)

    def delete(self, key: str) -> None:
        self._cache.delete(_result(key))

    def records(self) -> Iterator[CacheRecord]:
        for entry in list(self._cache.iterkeys()):
            if isinstance(entry, str) and entry.startswith("result:"):
                record = self.get(entry[len("result:") :])
                if record is not MISSING:
                    yield record

    def close(self) -> None:
        self._cache.close()


class NullIndex:
    """An index that remembers nothing: every lookup misses (caching switched off)."""

    def get(self, key: str) -> Any:
        return MISSING

    def put(self, record: CacheRecord) -> None:
        return None

    def touch_last(self, pipeline: str, step: str, key: str) -> None:
        return None

    def touch_many(self, entries: list[tuple[str, str, str]]) -> None:
        return None

    def last(self, pipeline: str, step: str) -> Any:
        return MISSING

    def delete(self, key: str) -> None:
        return None

    def records(self) -> Iterator[CacheRecord]:
        return iter(())

    def close(self) -> None:
        return None
