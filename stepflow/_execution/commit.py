"""A run's outputs and the cache index: what to reuse, what to commit, what to drop.

Every output made or reused during the run is held here (in memory, stored, or both), with
each step's cache key. A step that succeeded is committed to the index at once, so a failure
later loses nothing computed; the "last result" pointers ``explain`` reads are written at the
end of the run in one transaction. What could not be recorded after its step succeeded (a
full disk, a read-only home, a locked index) fails nothing: the step stays ``ran`` and the
user is told.
"""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from stepflow._execution.result import StepReport, StepState
from stepflow._planning.cachekey import CacheKey, describe_value
from stepflow._planning.reuse import Decision, decide
from stepflow._sentinels import MISSING
from stepflow._storage.artifacts import ArtifactIO, ArtifactRef
from stepflow._storage.datastore import CorruptedObjectError
from stepflow._storage.index import CacheIndex, CacheRecord
from stepflow.errors import StepflowWarning, StorageError, StorageWarning

if TYPE_CHECKING:
    from stepflow._execution.setup import RunSetup

__all__ = ["Artifact", "RunOutputs"]


class Artifact:
    """One output during a run: an in-memory value, a stored reference, or both."""

    def __init__(
        self, content_hash: str, value: Any = MISSING, ref: ArtifactRef | None = None
    ) -> None:
        self.content_hash = content_hash
        self.value = value
        self.ref = ref
        self._lock = threading.Lock()

    def load(self, io: ArtifactIO) -> Any:
        with self._lock:
            if self.value is MISSING:
                assert self.ref is not None
                self.value = io.load(self.ref)
            return self.value


class RunOutputs:
    """The run's outputs and keys, and everything it tells the cache index."""

    def __init__(self, setup: RunSetup) -> None:
        self.setup = setup
        self.plan = setup.plan
        self.io = setup.io
        self.index = setup.index
        #: output → the artifact made or reused for it
        self.artifacts: dict[str, Artifact] = {}
        #: step → its cache key, once computed
        self.keys: dict[str, CacheKey] = {}
        #: steps whose "last result" pointer is written at the end of the run, in one
        #: transaction (for `explain`; a run killed before then keeps the earlier pointers)
        self._touched: list[tuple[str, str, str]] = []
        self._lock = threading.Lock()
        #: what could not be recorded after the steps it is about succeeded
        self.storage_errors: list[StorageError] = []
        for output, (ref, value) in setup.given.items():
            # Made before this run (``--from``) or given by a test (stubs).
            self.artifacts[output] = Artifact(ref.content_hash, value=value, ref=ref)

    # --- deciding ---------------------------------------------------------------------------

    def decide(self, name: str, *, quick: bool = False) -> Decision:
        """Step ``name``'s key and whether a stored result of it can be reused."""
        setup = self.setup
        spec = self.plan.dag.steps[name]
        producers = self.plan.dag.producers
        # The records of the pipeline's latest results, read together the first time: an
        # unchanged step then finds its record without a query of its own.
        self.index.read_last(setup.pipeline)
        inputs = {
            p.name: self.artifacts[p.name].content_hash for p in spec.inputs if p.name in producers
        }
        decision = decide(
            self.plan,
            name,
            inputs=inputs,
            references=setup.references.get(name),
            serializers=setup.serializers,
            backend_env=setup.backend_of(name).step_environment(spec),
            home=setup.config.home,
            index=self.index,
            io=self.io,
            regenerate=setup.regenerate,
            quick=quick,
        )
        self.keys[name] = decision.key
        return self.usable(decision)

    def usable(self, decision: Decision) -> Decision:
        """``decision``, after dropping a stored result that is incomplete (said once)."""
        if decision.record is not None and not decision.available:
            warnings.warn(
                StepflowWarning(
                    f"stored result of step {decision.record.step!r} is incomplete (an object "
                    f"is missing or damaged); recomputing it"
                ),
                stacklevel=1,
            )
            self.index.delete(decision.key.digest)
        return decision

    def forget(self, key: CacheKey) -> None:
        """Drop the index entry of ``key``: a stored output of it failed verification."""
        self.index.delete(key.digest)

    # --- reusing and committing -------------------------------------------------------------

    def reuse(self, name: str, record: CacheRecord) -> StepReport:
        for out, ref in record.outputs.items():
            self.artifacts[out] = Artifact(ref.content_hash, ref=ref)
        with self._lock:
            self._touched.append((self.setup.pipeline, name, record.key))
        spec = self.plan.dag.steps[name]
        return StepReport(
            name,
            StepState.REUSED,
            backend=self.plan.backends[name],
            outputs=tuple(p.name for p in spec.outputs),
        )

    def made(
        self, outputs: Mapping[str, ArtifactRef], values: Mapping[str, Any] | None = None
    ) -> None:
        """Outputs an attempt stored (``values``: those also held in memory)."""
        held = values or {}
        for out, ref in outputs.items():
            self.artifacts[out] = Artifact(ref.content_hash, value=held.get(out, MISSING), ref=ref)

    def stored(self, output: str) -> ArtifactRef:
        ref = self.artifacts[output].ref
        assert ref is not None, "every output is stored when it is made"
        return ref

    def commit(self, name: str, key: CacheKey) -> None:
        """Record step ``name``'s outputs under ``key`` in the index."""
        setup = self.setup
        spec = self.plan.dag.steps[name]
        outputs = {port.name: self.stored(port.name) for port in spec.outputs}
        params = self.plan.step_params[name]
        record = CacheRecord(
            key=key.digest,
            step=name,
            pipeline=setup.pipeline,
            run_id=setup.run_id,
            created=time.time(),
            outputs=outputs,
            components=key.components,
            param_values={
                k: ("***" if k in self.plan.secret_params else describe_value(v))
                for k, v in params.items()
            },
        )
        # Committed before the step's lease is released, so a run that waited for the lease
        # finds the record.
        try:
            self.index.put(record, last=False)
        except StorageError as exc:
            # The step succeeded and its outputs are stored: only its reuse by later runs is
            # lost (it runs again then), and that is no reason to report it failed.
            self.bookkeeping_failed(exc)
            return
        with self._lock:
            self._touched.append((setup.pipeline, name, key.digest))

    def bookkeeping_failed(self, error: StorageError) -> None:
        """Something about a finished step could not be recorded: say so, fail nothing."""
        with self._lock:
            self.storage_errors.append(error)
        warnings.warn(StorageWarning(error), stacklevel=2)

    def close(self) -> None:
        """Write the "last result" pointers and close the index."""
        try:
            self.index.touch_many(self._touched)
        except StorageError as exc:
            # The results are committed; only the "latest result" pointers are stale.
            self.bookkeeping_failed(exc)
        finally:
            self.index.close()

    # --- after the run ----------------------------------------------------------------------

    def load_output(self, output: str) -> Any:
        """An output for ``RunResult``; one that fails its check is dropped, so that the
        next run computes it again instead of reusing it.

        A missing object needs nothing: the next run's availability check misses. A
        corrupted one keeps its size and passes that check, so its index entry is dropped
        here, and the object too, which makes it a miss for every home sharing the store
        (an output kept inline in the record goes with the record).
        """
        artifact = self.artifacts[output]
        try:
            return artifact.load(self.io)
        except CorruptedObjectError as exc:
            producer = self.plan.dag.producers[output]
            key = self.keys.get(producer)
            if key is not None:
                # A fresh handle: the run's own may have been closed since the run ended.
                CacheIndex(self.setup.config.home / "index", store=self.io.store).delete(key.digest)
            if artifact.ref is not None and not artifact.ref.inline:
                self.io.store.delete(artifact.ref.name)
            raise CorruptedObjectError(
                f"output {output!r} of step {producer!r} cannot be loaded: {exc}. Its stored "
                f"result was dropped from the cache, so the next run computes it again."
            ) from exc

    def publish(self, reports: Mapping[str, StepReport]) -> None:
        """Register outputs marked as data sets (``register_on_complete``); see registry."""
        setup = self.setup
        if not setup.has_references:
            return
        from stepflow._execution.references import OutputValue, publish_outputs

        ok = (StepState.RAN, StepState.REUSED)
        if not all(reports[n].state in ok for n in self.plan.steps):
            return  # only a run that succeeded registers its outputs
        io = self.io
        publish_outputs(
            self.plan,
            {
                out: OutputValue(a.content_hash, a.ref, lambda a=a: a.load(io))
                for out, a in self.artifacts.items()
            },
            store=io.store,
            serializers=setup.serializers,
            run_id=setup.run_id,
            pipeline=setup.pipeline,
        )
