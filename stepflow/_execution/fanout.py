"""Fan-out: a ``@step(foreach="chunks")`` runs once per item of its input (DESIGN §1).

Each item is a task of its own: its own cache key (the step's key with the item's content
hash in place of the whole list's, ``cachekey.item_key``), its own retries, timeout and log,
and, on a backend that does not run steps inline, its own ``Task``, sent to whichever worker is
free, so the items spread over every worker. Identical items share a key and run once.

The step's output is the list of the items' results in item order, stored and committed
under the whole step's key like any output: a rerun with the same list reuses it with one
look-up and reads no item. When the list changed (one item edited, some added), only the
items whose keys have no stored result run; the others are read back from their records.
Items that succeeded are committed as they finish, in batches, also when another item fails,
so a failure loses nothing computed and the next run retries only the failed items.

Imported only when a fan-out step runs.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Generator, Iterable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any

import attrs

from stepflow._execution.attempt import run_attempt, step_error
from stepflow._execution.capture import inline_fd_output, step_output
from stepflow._execution.context import activate
from stepflow._execution.flow import Flow, drive, drive_all, pause
from stepflow._execution.result import StepReport, StepState
from stepflow._execution.step import overrides_submit, run_task
from stepflow._planning.cachekey import CacheKey, describe_value, item_keys
from stepflow._sentinels import MISSING
from stepflow._storage.datastore import ArtifactMissingError
from stepflow._storage.hashing import UnhashableValueError, hash_value
from stepflow._storage.index import CacheRecord
from stepflow.errors import StepFailedError, StorageError

if TYPE_CHECKING:
    from stepflow._execution.backend import Backend
    from stepflow._execution.step import StepRunner
    from stepflow._execution.task import TaskError
    from stepflow._storage.artifacts import ArtifactRef

__all__ = ["run_foreach"]

#: items whose results are stored together, in one object per output, and committed in one
#: index transaction: a file per small result cost more than the work of most items. A
#: batch stays a file even when it is small: kept inline, its bytes would be copied into
#: each of its items' records, or each item's result pickled on its own (up to 512 pickles)
#: to save the one file per batch. (Items run by workers come back one by one, each result
#: inline in its own record when small, as any step's output.)
_BATCH = 512
#: the record component that says where an item's results are in its batch's objects
PART = "part"
_MAX_RETRY_DELAY = 60.0


@attrs.define(eq=False)
class _Item:
    """One distinct item (by content) and what became of it."""

    #: its first position in the list
    index: int
    value: Any
    key: CacheKey
    #: output → stored result, once made or found
    outputs: dict[str, ArtifactRef] | None = None
    #: output → the value, when it was made in this process
    values: Mapping[str, Any] = attrs.field(factory=dict)
    error: StepFailedError | None = None
    attempts: int = 0
    #: what its last attempt wrote, by stream
    logs: Mapping[str, str] = attrs.field(factory=dict)
    ran: bool = False
    #: where its results are in ``outputs``' objects when those hold a batch of items' results
    #: (a list; ``PART`` in its record says where); -1: each object is this item's alone
    part: int = -1


class _NotASequence(TypeError):
    pass


def run_foreach(steps: StepRunner, name: str, key: CacheKey) -> StepReport:
    """Run fan-out step ``name`` (whose whole key is ``key``) item by item; never raises
    for an item's own failure."""
    return _FanOut(steps, name, key).run()


class _FanOut:
    def __init__(self, steps: StepRunner, name: str, key: CacheKey) -> None:
        self.steps = steps
        self.setup = steps.setup
        self.name = name
        self.key = key
        self.spec = steps.dag.steps[name]
        self.foreach = self.spec.options.foreach
        assert self.foreach is not None
        self.backend: Backend = self.setup.backend_of(name)
        self.io = self.setup.io
        self.params = self.setup.plan.step_params[name]
        self.refs = self.setup.references.get(name, {})
        #: the step's other inputs made by steps (the same for every item)
        self.edges = [
            p.name
            for p in self.spec.inputs
            if p.name in steps.dag.producers and p.name != self.foreach
        ]
        #: finished items not yet committed
        self._pending: list[_Item] = []
        self._lock = threading.Lock()
        #: object name → its value, or the error loading it gave (batches are read once)
        self._loaded: dict[str, Any] = {}
        self._available: dict[str, bool] = {}

    # --- the whole step -------------------------------------------------------------------

    def run(self) -> StepReport:
        setup = self.setup
        name = self.name
        setup.pm.hook.stepflow_step_start(run=setup.info, step=name, attempt=1)
        started = time.perf_counter()
        self.steps.journal.attempt_started(name)
        try:
            values = self._load_list()
        except _NotASequence as exc:
            return self._failed(started, StepFailedError(str(exc), step=name, exc_type="TypeError"))
        except StepFailedError as exc:
            return self._failed(started, exc)
        try:
            positions, items = self._distinct(values)
        except UnhashableValueError as exc:
            error = StepFailedError(
                f"step {name!r} has foreach={self.foreach!r}, but an item of {self.foreach!r} "
                f"cannot be hashed, so it can have no cache key: {exc}",
                step=name,
                exc_type="stepflow.errors.UnhashableValueError",
            )
            return self._failed(started, error)
        todo = self._look_up(items)
        try:
            self._execute(todo)
            # A stored item that turns out unreadable now runs again, once.
            again = self._assemble_missing(items)
            if again:
                self._execute(again)
                todo += again
        finally:
            self._flush()
        failed = sorted((i for i in items if i.error is not None), key=lambda i: i.index)
        ran = {id(i) for i in todo if i.ran}
        counts = {
            "ran": sum(1 for i in positions if id(i) in ran),
            "reused": sum(1 for i in positions if id(i) not in ran and i.error is None),
            "failed": sum(1 for i in positions if i.error is not None),
        }
        counts = {k: v for k, v in counts.items() if v}
        if failed:
            return self._failed(started, self._item_error(failed, len(positions)), counts, failed)
        try:
            self._store(positions)
        except StepFailedError as exc:
            return self._failed(started, exc, counts)
        if self.spec.options.cache:
            self.steps.outputs.commit(name, self.key)
        return StepReport(
            name,
            StepState.RAN,
            duration=time.perf_counter() - started,
            attempts=max((i.attempts for i in todo), default=1) or 1,
            backend=self.backend.name,
            outputs=tuple(p.name for p in self.spec.outputs),
            items=counts,
        )

    def _failed(
        self,
        started: float,
        error: StepFailedError,
        counts: Mapping[str, int] | None = None,
        failed: Iterable[_Item] = (),
    ) -> StepReport:
        logs = {
            f"item {item.index} {stream}": text
            for item in failed
            for stream, text in item.logs.items()
        }
        return StepReport(
            self.name,
            StepState.FAILED,
            duration=time.perf_counter() - started,
            attempts=1,
            backend=self.backend.name,
            error=error,
            logs=logs,
            items=dict(counts or {}),
        )

    def _item_error(self, failed: list[_Item], total: int) -> StepFailedError:
        first = failed[0]
        error = first.error
        assert error is not None
        which = ", ".join(str(i.index) for i in failed[:10]) + (", ..." if len(failed) > 10 else "")
        message = (
            f"{len(failed)} of {total} item(s) of step {self.name!r} failed (item {which}); "
            f"item {first.index} after {first.attempts} attempt(s): {error}. The items that "
            f"succeeded are stored, so the next run runs only the failed ones."
        )
        return type(error)(
            message,
            step=self.name,
            exc_type=error.exc_type,
            traceback=error.traceback,
            full_traceback=error.full_traceback,
        )

    def _load_list(self) -> list[Any]:
        """The items: the input as a list. A stored list that fails its check makes its
        producer run again, once."""
        assert self.foreach is not None
        artifact = self.steps.outputs.artifacts[self.foreach]
        try:
            value = artifact.load(self.io)
        except ArtifactMissingError as exc:
            # In the fan-out's own thread: it may wait as long as the producer runs.
            failure = drive(self.steps._recompute(self.foreach, str(exc)), self.steps.cancelled)
            if failure is not None:
                raise StepFailedError(
                    f"input {self.foreach!r} had to be recomputed and its step failed: {failure}",
                    step=self.name,
                    exc_type=failure.exc_type,
                    traceback=failure.traceback,
                ) from None
            try:
                value = self.steps.outputs.artifacts[self.foreach].load(self.io)
            except ArtifactMissingError as again:
                raise StepFailedError(
                    f"input {self.foreach!r} failed its check again right after it was "
                    f"recomputed ({again}); the store at {self.io.store.uri} is damaged or "
                    f"changing under the run: check its disk or bucket",
                    step=self.name,
                    exc_type="stepflow._storage.datastore.ArtifactMissingError",
                ) from None
        return _as_items(self.name, self.foreach, value)

    def _distinct(self, values: list[Any]) -> tuple[list[_Item], list[_Item]]:
        """Per position, its item; and the distinct items (equal content runs once)."""
        assert self.foreach is not None
        by_hash: dict[str, _Item] = {}
        positions = []
        key_of = item_keys(self.key, self.foreach)
        for index, value in enumerate(values):
            content = hash_value(value)
            item = by_hash.get(content)
            if item is None:
                item = by_hash[content] = _Item(index, value, key_of(content))
            positions.append(item)
        return positions, list(by_hash.values())

    def _look_up(self, items: list[_Item]) -> list[_Item]:
        """Fill in the stored items; return those that must run."""
        if not self.spec.options.cache or self.name in self.setup.regenerate:
            return list(items)
        index = self.setup.index
        todo = []
        for item in items:
            record = index.get(item.key.digest)
            if record is not MISSING and all(
                self._is_available(r) for r in record.outputs.values()
            ):
                item.outputs = dict(record.outputs)
                item.part = int(record.components.get(PART, {}).get("index", -1))
            else:
                todo.append(item)
        return todo

    def _is_available(self, ref: ArtifactRef) -> bool:
        found = self._available.get(ref.name)
        if found is None:
            found = self._available[ref.name] = self.io.available(ref)
        return found

    def _load(self, ref: ArtifactRef, part: int) -> Any:
        """One item's result: the object's value, or element ``part`` of a batch's list.

        :raises ArtifactMissingError: missing, damaged, or not the batch the record says.
        """
        if ref.name not in self._loaded:
            try:
                self._loaded[ref.name] = self.io.load(ref)
            except ArtifactMissingError as exc:
                self._loaded[ref.name] = exc
        value = self._loaded[ref.name]
        if isinstance(value, ArtifactMissingError):
            raise value
        if part < 0:
            return value
        if not isinstance(value, list) or part >= len(value):
            raise ArtifactMissingError(f"object {ref.name} does not hold item result {part}")
        return value[part]

    def _assemble_missing(self, items: list[_Item]) -> list[_Item]:
        """Load every item's results (kept on the item); those that cannot be read are
        dropped from the index and returned, to run again."""
        again = []
        for item in items:
            if item.error is not None or item.outputs is None or item.values:
                continue
            try:
                item.values = {out: self._load(ref, item.part) for out, ref in item.outputs.items()}
            except ArtifactMissingError:
                self.steps.outputs.forget(item.key)
                item.outputs = None
                again.append(item)
        return again

    def _store(self, positions: list[_Item]) -> None:
        """Each output: the list of the items' results in item order, stored."""
        made: dict[str, ArtifactRef] = {}
        values: dict[str, Any] = {}
        for port in self.spec.outputs:
            result = [item.values[port.name] for item in positions]
            try:
                # Committed in the step's record: inline there when small.
                made[port.name] = self.io.save(result, hash_value(result), inline=True)
            except StorageError:
                raise
            except Exception as exc:
                raise self._broke(
                    f"output {port.name!r} of step {self.name!r} (the list of the items' "
                    "results) could not be stored",
                    exc,
                ) from exc
            values[port.name] = result
        self.steps.outputs.made(made, values)

    # --- the items ------------------------------------------------------------------------

    def _execute(self, todo: list[_Item]) -> None:
        if not todo:
            return
        if self.backend.runs_inline(self.spec):
            try:
                shared = self._shared_inputs()
            except Exception as exc:
                error = self._broke(f"the inputs of step {self.name!r} could not be loaded", exc)
                for item in todo:
                    item.error = error
                return
            self._inline_items(todo, shared)
            return
        # Every item is a Task of its own; as many in flight as the run has workers, so the
        # backend's workers (processes, containers, hosts, a cluster) all take items.
        from stepflow._execution.task import by_value

        stored = {e: self.steps.outputs.stored(e) for e in self.edges}
        func = by_value(self.spec)
        attempt_flow = functools.partial(self._remote_attempt, stored, func)
        # As many items in flight as the backend has slots (its table's ``workers``, else
        # the run's); its own pool of processes, containers or hosts bounds them too.
        context = getattr(self.backend, "context", None)
        slots = max(1, getattr(context, "workers", 0) or self.setup.workers)
        if overrides_submit(self.backend):
            # An engine with futures: this thread waits on all the items' futures at once.
            drive_all(
                ((item, self._run_item(item, attempt_flow)) for item in self._started(todo)),
                at_once=slots,
                cancelled=self.steps.cancelled,
                done=lambda item, _: self._done(item),
            )
            return
        pool = ThreadPoolExecutor(slots, thread_name_prefix=f"stepflow-{self.name}")
        running: dict[Future[None], _Item] = {}
        queue = list(todo)
        try:
            while queue or running:
                while queue and len(running) < slots:
                    item = queue.pop(0)
                    if self._stopped():
                        self._cancel(item)
                        continue
                    flow = self._run_item(item, attempt_flow)
                    running[pool.submit(drive, flow, self.steps.cancelled)] = item
                if not running:
                    break
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    item = running.pop(future)
                    future.result()
                    self._done(item)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def _started(self, todo: list[_Item]) -> Iterator[_Item]:
        """The items to start, in order; once the run stops, the rest did not run."""
        for item in todo:
            if self._stopped():
                self._cancel(item)
            else:
                yield item

    def _inline_items(self, todo: list[_Item], shared: Mapping[str, Any]) -> None:
        """The items in this process, one after another.

        Each item's Python-level output (``print``, ``logging``) is captured alone, as its
        log. Output below Python (child processes, C code) is captured once for all the items
        at the descriptor level, as the step's own log, so nothing printed is lost: switching
        descriptors for every item cost more than a small item's work. With ``--capture tee``
        that step log has the items' output too, in the order it was written.
        """
        setup = self.setup
        ctx = self.steps._context(self.name, 1)
        whole: Any = None
        try:
            with (
                activate(ctx),
                step_output(echo=setup.echo, secrets=setup.secret_values) as whole,
                inline_fd_output(),
            ):
                attempt = functools.partial(self._inline_attempt, shared)
                for item in todo:
                    if self._stopped():
                        self._cancel(item)
                        continue
                    drive(self._run_item(item, attempt), self.steps.cancelled)
                    self._done(item)
        finally:
            self.steps.journal.attempt_output(self.name, 1, whole, ctx)

    def _shared_inputs(self) -> dict[str, Any]:
        """What every item gets besides its item, loaded once: the other inputs, and the
        registered models or data sets the step reads."""
        shared = {e: self.steps.outputs.artifacts[e].load(self.io) for e in self.edges}
        if self.refs:
            from stepflow._execution.references import load_reference

            for param, version in self.refs.items():
                shared[param] = load_reference(
                    version,
                    self.spec.input(param).annotation,
                    store=self.io.store,
                    serializers=self.io.serializers,
                    home=self.setup.config.home,
                )
        return shared

    def _stopped(self) -> bool:
        return self.steps.cancelled.is_set()

    def _cancel(self, item: _Item) -> None:
        item.error = StepFailedError(
            f"item {item.index} of step {self.name!r} did not run: the run was stopped",
            step=self.name,
            exc_type="KeyboardInterrupt",
        )

    def _run_item(self, item: _Item, attempt_fn: Any) -> Flow[None]:
        """Attempts at one item until one succeeds, retries run out or the run stops;
        ``attempt_fn(item, attempt)`` is a flow, or (in this process) a plain call."""
        options = self.spec.options
        attempt = 1
        while True:
            item.attempts = attempt
            error = attempt_fn(item, attempt)
            if isinstance(error, Generator):
                error = yield from error
            if error is None:
                item.error = None
                item.ran = True
                return
            item.error = error
            if attempt > options.retries or self._stopped():
                return
            delay = min(options.retry_delay * 2 ** (attempt - 1), _MAX_RETRY_DELAY)
            yield from pause(delay)
            if self._stopped():
                return
            attempt += 1

    def _inline_attempt(
        self, shared: Mapping[str, Any], item: _Item, attempt: int
    ) -> StepFailedError | None:
        setup = self.setup
        assert self.foreach is not None
        inputs = {e: functools.partial(_value, v) for e, v in shared.items()}
        inputs[self.foreach] = functools.partial(_value, item.value)
        with step_output(echo=setup.echo, secrets=setup.secret_values) as captured:
            outcome = run_attempt(
                self.spec,
                step=self.name,
                inputs=inputs,
                references={},  # loaded once, in ``shared``
                params=self.params,
                io=self.io,
                home=setup.config.home,
                output=contextlib.nullcontext,
                # Stored with the other items of its batch (``_flush``).
                store=False,
            )
        item.logs = captured.texts(setup.secret_values)
        self.steps.journal.item_output(self.name, item.index, attempt, item.logs)
        if outcome.error is not None:
            return self._error(outcome.error)
        item.values = dict(outcome.values)
        return None

    def _remote_attempt(
        self, stored: Mapping[str, ArtifactRef], func: bytes, item: _Item, attempt: int
    ) -> Flow[StepFailedError | None]:
        from stepflow._execution.task import Task

        setup = self.setup
        assert self.foreach is not None
        # A small item travels in the task itself, as a parameter value does; a larger one
        # through the store, as every input does (DESIGN §8: data moves through the store).
        inputs = dict(stored)
        params = dict(self.params)
        if _small(item.value):
            params[self.foreach] = item.value
        else:
            inputs[self.foreach] = self.io.save(
                item.value, item.key.components["inputs"][self.foreach]
            )
        task_step = f"{self.name}.{item.index}"
        task = Task(
            run_id=setup.run_id,
            step=task_step,
            attempt=attempt,
            ref=self.spec.ref,
            func=func,
            inputs=inputs,
            references=self.refs,
            params=params,
            store_uri=self.io.store.uri,
            store_kind=self.io.store.kind,
            store_options=setup.config.store_options,
            home=str(setup.config.home),
            pipeline=setup.pipeline,
            secret_params=tuple(sorted(setup.plan.secret_params)),
            echo=setup.echo,
            serializers=setup.serializers,
            sys_path=self.steps._user_sys_path,
            env=self.spec.options.env,
            resources=self.spec.options.resources,
            timeout=self.spec.options.timeout,
        )
        try:
            result = yield from run_task(self.backend, task)
        except Exception as exc:
            return self._broke(
                f"backend {self.backend.name!r} failed to run item {item.index} of step "
                f"{self.name!r}",
                exc,
            )
        if (result.step, result.attempt) != (task_step, attempt) or result.run_id not in (
            "",
            setup.run_id,
        ):
            return StepFailedError(
                f"backend {self.backend.name!r} answered attempt {attempt} of item "
                f"{item.index} of step {self.name!r} with the result of another task "
                f"({result.step!r}, attempt {result.attempt}); it was rejected and nothing "
                f"was stored. Check the backend plugin.",
                step=self.name,
                exc_type="stepflow.errors.BackendError",
            )
        item.logs = dict(result.logs)
        self.steps.journal.item_output(self.name, item.index, attempt, item.logs)
        if result.error is not None:
            return self._error(result.error)
        item.outputs = dict(result.outputs)
        return None

    def _error(self, error: TaskError) -> StepFailedError:
        return step_error(self.name, error)

    def _broke(self, what: str, exc: Exception) -> StepFailedError:
        """The step's failure when ``what`` went wrong around its code (loading, running,
        storing) with ``exc``, which the message names."""
        return StepFailedError(
            f"{what}: {type(exc).__name__}: {exc}", step=self.name, exc_type=type(exc).__name__
        )

    # --- committing -----------------------------------------------------------------------

    def _done(self, item: _Item) -> None:
        """A finished item; committed with its batch."""
        if item.error is not None or not item.ran:
            return
        with self._lock:
            self._pending.append(item)
            full = len(self._pending) >= _BATCH
        if full:
            self._flush()

    def _flush(self) -> None:
        """Store the results of the pending items that ran here (one object per output, the
        list of their results) and commit a record per item, in one transaction."""
        with self._lock:
            items, self._pending = self._pending, []
        if not self.spec.options.cache:
            return  # nothing to keep: the values are in memory until the list is stored
        batch = [item for item in items if item.outputs is None]
        if batch:
            for item in batch:
                item.outputs = {}  # also for a step that returns nothing
            try:
                for port in self.spec.outputs:
                    values = [item.values[port.name] for item in batch]
                    ref = self.io.save(values, hash_value(values))
                    for part, item in enumerate(batch):
                        item.outputs[port.name] = ref
                        item.part = part
            except StorageError:
                raise
            except Exception as exc:
                error = self._broke(
                    f"the results of {len(batch)} item(s) of step {self.name!r} could not be "
                    "stored",
                    exc,
                )
                for item in batch:
                    item.error, item.outputs = error, None
                return
        setup = self.setup
        params = {
            k: ("***" if k in setup.plan.secret_params else describe_value(v))
            for k, v in self.params.items()
        }
        records = []
        for item in items:
            if item.outputs is None:
                continue
            components = item.key.components
            if item.part >= 0:
                components = {**components, PART: {"index": str(item.part)}}
            records.append(
                CacheRecord(
                    key=item.key.digest,
                    step=self.name,
                    pipeline=setup.pipeline,
                    run_id=setup.run_id,
                    created=time.time(),
                    outputs=item.outputs,
                    components=components,
                    param_values=params,
                )
            )
        try:
            self.setup.index.put_many(records)
        except StorageError as exc:
            # The items succeeded: only their reuse by later runs is lost.
            self.steps.outputs.bookkeeping_failed(exc)


def _value(value: Any) -> Any:
    return value


#: an item whose pickle is at most this big is sent inside its task
_SMALL = 32 * 1024


def _small(value: Any) -> bool:
    import pickle

    try:
        return len(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)) <= _SMALL
    except Exception:  # not picklable by pickle: the store's serializers may still manage
        return False


def _as_items(step: str, name: str, value: Any) -> list[Any]:
    """``value`` as the list of items to run over; a value that is no sequence is refused."""
    kind = type(value)
    where = f"{kind.__module__}.{kind.__qualname__}"
    if kind.__module__.partition(".")[0] == "pandas":
        raise _NotASequence(
            f"step {step!r} has foreach={name!r}, but {name!r} is a {where}, whose iteration "
            f"gives column labels, not rows; make its producer return a list of parts, e.g. "
            f"[frame.iloc[i:i + 1000] for i in range(0, len(frame), 1000)]"
        )
    if isinstance(value, str | bytes | bytearray | Mapping) or not isinstance(value, Iterable):
        raise _NotASequence(
            f"step {step!r} has foreach={name!r}, but {name!r} is a {where}, not a list of "
            f"items; make its producer return a list (or tuple) of the items to run over"
        )
    return list(value)
