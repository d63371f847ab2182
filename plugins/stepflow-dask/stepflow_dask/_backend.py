"""``DaskBackend``: each attempt of a step is one Dask task on a cluster.

The run's side. It connects to a running scheduler (``address``) or starts a cluster
(``cluster``, ``cluster_options``, ``adapt``), checks before any step that a worker runs
stepflow's probe and reads the run's datastore, and submits every attempt as one future whose
key is the attempt's identity. What runs inside the Dask worker is in ``_remote``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import secrets
import threading
from collections.abc import Mapping
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from stepflow.backends import Backend, BackendContext, Task, TaskResult
from stepflow.errors import BackendUnavailableError
from stepflow_dask._options import DaskOptions, parse_options

if TYPE_CHECKING:
    import distributed

    from stepflow import Resources, StepSpec
    from stepflow._config import Config
    from stepflow_dask._live import LiveRelay

__all__ = ["DaskAttempt", "DaskBackend", "attempt_key", "dask_resources"]

#: the Dask worker resource each of ``@step(resources=...)``'s keys asks for; workers offer
#: them with ``dask worker --resources "GPU=1,CPU=8,MEMORY=64e9"``
RESOURCE_NAMES = {"gpus": "GPU", "cpus": "CPU", "memory": "MEMORY"}


def attempt_key(task: Task) -> str:
    """The Dask key of ``task``'s attempt: its identity ``(run, step, attempt)``.

    Submitting a key the client already holds reattaches to that future; it never starts
    the attempt a second time.
    """
    return f"stepflow-{task.run_id}-{task.step}-{task.attempt}"


def dask_resources(resources: Resources) -> dict[str, float]:
    """``@step(resources=...)`` as Dask worker resources (``gpus=1`` → ``{"GPU": 1}``).

    :raises ValueError: ``memory`` is not a size such as ``"4 GiB"``.
    """
    wanted: dict[str, float] = {}
    if resources.gpus:
        wanted["GPU"] = resources.gpus
    if resources.cpus:
        wanted["CPU"] = resources.cpus
    if resources.memory:
        from dask.utils import parse_bytes

        try:
            wanted["MEMORY"] = parse_bytes(resources.memory)
        except (ValueError, TypeError):
            raise ValueError(
                f"resources memory={resources.memory!r} is not a size: write it like "
                f'"512 MiB" or "4GB"'
            ) from None
    return wanted


class DaskAttempt(Future):  # type: ignore[type-arg]  # Future[TaskResult] at run time too
    """The future of one attempt, a plain ``concurrent.futures.Future[TaskResult]``.

    It is running from the start (the task belongs to Dask) and always ends with a
    ``TaskResult``: a lost Dask worker, an error of Dask itself and a cancel come back as
    failed results, never as exceptions. ``cancel()`` stops the attempt on the cluster (its
    process tree is killed there) and returns ``False``, as for any running future; the
    result then says it was cancelled. Its done-callbacks run in the Dask client's event loop
    thread: keep them short, and never wait there for Dask.
    """

    def __init__(self, task: Task, dask_future: distributed.Future) -> None:
        super().__init__()
        self.set_running_or_notify_cancel()
        self.task = task
        #: the Dask key: ``attempt_key(task)``
        self.key = str(dask_future.key)
        self.dask_future: distributed.Future | None = dask_future

    def cancel(self) -> bool:
        dask_future = self.dask_future
        if dask_future is not None:
            with contextlib.suppress(Exception):
                dask_future.cancel()
        self.settle(TaskResult.cancelled(self.task))
        return False

    def settle(self, result: TaskResult) -> None:
        """Give the attempt its result, unless it has one already."""
        with contextlib.suppress(Exception):  # InvalidStateError: it has one
            self.set_result(result)

    async def collect(self) -> None:
        """Wait for the Dask future in the client's event loop, then give its outcome as the
        attempt's result.

        Run as a coroutine in the loop (not in a thread blocking on ``result()``), so that
        many attempts' results are fetched at once rather than one after another.
        """
        dask_future = self.dask_future
        if dask_future is None:
            return
        try:
            result = await dask_future
        except asyncio.CancelledError:
            result = TaskResult.cancelled(self.task)
        except Exception as exc:
            result = self._failure(exc)
        self.dask_future = None
        # Frees the (small) result on the cluster now, not when the garbage collector runs.
        with contextlib.suppress(Exception):
            dask_future.release()
        self.settle(result)

    def _failure(self, exc: Exception) -> TaskResult:
        from distributed.scheduler import KilledWorker

        task = self.task
        if isinstance(exc, KilledWorker):
            return TaskResult.lost(
                task, f"was lost with its Dask worker ({exc}); Dask did not run it again"
            )
        return TaskResult.failed(
            task,
            f"Dask could not run step {task.step!r} (key {self.key}): {type(exc).__name__}: {exc}",
        )


class DaskBackend(Backend):
    """Runs each attempt as one Dask task; see ``docs/how-to/scale-out-with-dask.md``.

    Options (``[tool.stepflow.backends.NAME]`` with ``plugin = "dask"``): ``address`` of a
    running scheduler, or ``cluster`` (a class path, such as
    ``"dask.distributed.LocalCluster"`` or ``"dask_jobqueue.SLURMCluster"``) with
    ``cluster_options`` (its keyword arguments) and ``adapt`` (``true``, or the keyword
    arguments of ``cluster.adapt``); ``connect_timeout`` and ``probe_timeout`` in seconds.
    A cluster stepflow starts is closed at the end of the run; one given by address is left
    running.
    """

    kind = "dask"
    #: what ``@step(resources=...)`` may ask for: Dask worker resources GPU, CPU, MEMORY
    supported_resources = frozenset({"cpus", "memory", "gpus"})

    def __init__(self, name: str, options: Mapping[str, Any], context: BackendContext) -> None:
        super().__init__(name, options, context)
        self.settings: DaskOptions = parse_options(name, self.options)
        #: held while connecting, probing and submitting (network calls)
        self._lock = threading.RLock()
        #: guards ``_attempts`` and ``_stopped`` only, never held across a network call:
        #: attempts are settled in the client's event loop, which must never wait for a
        #: thread that waits for the event loop
        self._state = threading.Lock()
        self._client: distributed.Client | None = None
        self._cluster: Any = None
        #: key → attempt in flight
        self._attempts: dict[str, DaskAttempt] = {}
        #: what the probe found on a worker (``_remote.describe``)
        self._probed: dict[str, Any] | None = None
        self._environment: dict[str, str] | None = None
        #: the resources each worker offers, as last asked of the scheduler
        self._offers: list[dict[str, float]] | None = None
        self._stopped = False
        #: publishes the attempts' output as their Dask workers send it, and the topic they
        #: send it under (``None``: not listening, the log shows when the attempt ends)
        self._relay: LiveRelay | None = None
        self._live_topic: str | None = None

    # --- connecting -----------------------------------------------------------------------

    @property
    def where(self) -> str:
        """The cluster, for messages: its scheduler's address, or the class stepflow started."""
        if self.settings.address is not None:
            return f"at {self.settings.address}"
        if self._client is not None:
            return f"{self.settings.cluster} at {self._client.scheduler.address}"
        return str(self.settings.cluster)

    @property
    def client(self) -> distributed.Client:
        """The client, connected (and the cluster started) on first use.

        :raises BackendUnavailableError: Dask is not installed, no scheduler answers, or the
            cluster cannot start.
        """
        with self._lock:
            if self._client is None:
                client = self._connect()
                self._listen(client)
                self._client = client
            return self._client

    def _listen(self, client: distributed.Client) -> None:
        """Receive what the attempts print while they run (``_live``): events of a topic
        named after this client, which the scheduler clears once the client has gone
        (``distributed.scheduler.events-cleanup-delay``, an hour by default)."""
        from stepflow_dask._live import LiveRelay

        self._relay = LiveRelay(self._attempts, self._state)
        try:
            client.subscribe_topic(client.id, self._relay)
        except Exception:  # a client that cannot subscribe shows the log at the end only
            self._relay = None
            return
        self._live_topic = client.id

    def _connect(self) -> distributed.Client:
        try:
            import dask
            from distributed import Client
        except ImportError as exc:
            raise BackendUnavailableError(
                f"backend {self.name!r} needs Dask's distributed package ({exc}): "
                f"pip install 'stepflow[dask]'"
            ) from None
        timeout = self.settings.connect_timeout
        if self.settings.address is not None:
            try:
                return Client(self.settings.address, timeout=timeout, set_as_default=False)
            except (OSError, TimeoutError, ValueError) as exc:
                raise BackendUnavailableError(
                    f"backend {self.name!r}: no Dask scheduler answers at "
                    f"{self.settings.address} within {timeout:g}s ({type(exc).__name__}: "
                    f"{exc}). Start one with `dask scheduler` and workers with `dask worker "
                    f"{self.settings.address}`, or set cluster = "
                    f'"dask.distributed.LocalCluster" to let stepflow start one'
                ) from None
        cls = self._cluster_class()
        # stepflow retries a step itself (@step(retries=...)); a task whose worker died is
        # reported lost at once instead of being run again behind the run's back.
        with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
            try:
                self._cluster = cls(**_cluster_kwargs(cls, self.settings.cluster_options))
            except Exception as exc:
                raise BackendUnavailableError(
                    f"backend {self.name!r}: {self.settings.cluster}(**cluster_options) failed: "
                    f"{type(exc).__name__}: {exc}. Check [tool.stepflow.backends.{self.name}] "
                    f"cluster_options = {dict(self.settings.cluster_options)!r}"
                ) from exc
        try:
            if self.settings.adapt is not None:
                self._cluster.adapt(**self.settings.adapt)
            return Client(self._cluster, timeout=timeout, set_as_default=False)
        except Exception as exc:
            self._close_cluster()
            raise BackendUnavailableError(
                f"backend {self.name!r}: cannot use the {self.settings.cluster} it started: "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    def _cluster_class(self) -> type:
        path = str(self.settings.cluster)
        module_name, _, attr = path.replace(":", ".").rpartition(".")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            hint = {
                "dask_jobqueue": " (pip install dask-jobqueue)",
                "dask_kubernetes": " (pip install dask-kubernetes)",
            }.get(module_name.split(".")[0], "")
            raise BackendUnavailableError(
                f"backend {self.name!r}: cannot import {module_name!r} for cluster = "
                f"{path!r}{hint}: {exc}"
            ) from None
        cls = getattr(module, attr, None)
        if not callable(cls):
            raise BackendUnavailableError(
                f"backend {self.name!r}: cluster = {path!r}: module {module_name!r} has no "
                f"class {attr!r}"
            )
        return cls

    # --- the checks before the run --------------------------------------------------------

    def check(self) -> None:
        """Connect (or start the cluster), then run the probe step on a worker.

        :raises BackendUnavailableError: no scheduler, no worker within ``probe_timeout``,
            workers without stepflow-dask or with another stepflow, or workers that cannot
            read the run's datastore; each message says how to fix it.
        """
        self._probe()

    def refusal(self, spec: StepSpec) -> str | None:
        """Why this backend cannot run ``spec``, or ``None``: called before the run starts.

        Memory must be a size. Once the cluster is connected (``check()`` ran), a fixed-size
        cluster must have a worker that offers the step's resources; an adaptive one may
        start such a worker later.
        """
        base = getattr(super(), "refusal", None)
        reason = base(spec) if base is not None else None
        if reason is not None:
            return reason
        try:
            wanted = dask_resources(spec.options.resources)
        except ValueError as exc:
            return f"step {spec.name!r}: {exc}"
        if self._client is None:
            return None
        return self._unmet(spec.name, wanted)

    def _probe(self) -> dict[str, Any]:
        with self._lock:
            if self._probed is not None:
                return self._probed
            client = self.client
            from stepflow.worker import open_store
            from stepflow_dask import _remote
            from stepflow_dask._probe import read_marker

            token = secrets.token_hex(16)
            marker = f"dask-probe/{self.context.run_id}-{token}"
            task = Task(
                run_id=self.context.run_id,
                step="stepflow-dask-probe",
                attempt=0,
                ref=read_marker.spec.ref,
                inputs={},
                params={"marker": marker, "expected": token},
                **_store_fields(self.context.config),
            )
            # Opened the way a worker opens it, from what the task carries.
            store = open_store(task)
            store.put_doc(marker, token.encode())
            try:
                future = client.submit(
                    _remote.describe,
                    task,
                    key=f"stepflow-{self.context.run_id}-dask-probe-{token[:8]}",
                    pure=False,
                    retries=0,
                )
                info = self._probe_answer(future)
            finally:
                with contextlib.suppress(Exception):
                    store.delete_doc(marker)
                store.close()
            self._check_probe(info, task.store_uri)
            self._probed = info
            return info

    def _probe_answer(self, future: distributed.Future) -> dict[str, Any]:
        import distributed

        seconds = self.settings.probe_timeout
        try:
            return future.result(timeout=seconds)
        except (TimeoutError, distributed.TimeoutError):
            future.cancel()
            workers = len(self.client.scheduler_info()["workers"])
            raise BackendUnavailableError(
                f"backend {self.name!r}: no worker of the Dask cluster {self.where} ran "
                f"stepflow's probe within {seconds:g}s (the scheduler has {workers} "
                f"worker(s)). Start workers with `dask worker SCHEDULER_ADDRESS`, or give "
                f"the cluster more time with probe_timeout"
            ) from None
        except Exception as exc:
            raise BackendUnavailableError(
                f"backend {self.name!r}: the Dask workers {self.where} cannot run stepflow's "
                f"probe: {type(exc).__name__}: {exc}. Install the same stepflow and "
                f"stepflow-dask where the workers run (pip install 'stepflow[dask]')"
            ) from None

    def _check_probe(self, info: dict[str, Any], store_uri: str) -> None:
        import stepflow
        from stepflow_dask._remote import interpreter

        where = f"backend {self.name!r}: the Dask worker {info['worker']}"
        if info["stepflow"] != stepflow.__version__:
            raise BackendUnavailableError(
                f"{where} runs stepflow {info['stepflow']} ({info['executable']}), but this "
                f"run uses stepflow {stepflow.__version__}: install stepflow "
                f"{stepflow.__version__} where the workers run"
            )
        result: TaskResult = info["result"]
        if result.error is not None:
            error = result.error
            if error.exc_type == "stepflow.errors.BackendError":
                # The stepflow worker itself failed: another version, a crash, lost.
                raise BackendUnavailableError(
                    f"{where} cannot run stepflow's probe step: {error.message}"
                )
            why = f"{error.exc_type.rsplit('.', 1)[-1]}: {error.message}"
            raise BackendUnavailableError(
                f"{where} cannot read the run's datastore at {store_uri} ({why}). Every "
                f"worker must reach the store: a shared folder mounted at the same path on "
                f"every machine, or an object store ([tool.stepflow] store = "
                f'"s3://BUCKET/PREFIX")'
            )
        own = interpreter()
        same = (info["python"], info["packages"]) == (own["python"], own["packages"])
        # The cache key already holds this interpreter's Python and the versions of the
        # packages a step uses: only workers with other ones change what results depend on.
        self._environment = {} if same else {"python": info["python"], "packages": info["packages"]}

    def environment(self) -> dict[str, str]:
        """``{}`` when the workers run this interpreter's Python and packages; else their
        Python version and a digest of their installed distributions (found by the probe)."""
        if self._environment is None:
            self._probe()
        assert self._environment is not None
        return self._environment

    def _unmet(self, step: str, wanted: Mapping[str, float]) -> str | None:
        """Why no worker can take a task that needs ``wanted``, or ``None``."""
        if not wanted or self.settings.adapt is not None:
            return None
        for refresh in (False, True):
            if refresh or self._offers is None:
                workers = self.client.scheduler_info()["workers"].values()
                self._offers = [dict(w.get("resources") or {}) for w in workers]
            if any(all(o.get(k, 0) >= v for k, v in wanted.items()) for o in self._offers):
                return None
        asked = ",".join(f"{k}={v:g}" for k, v in wanted.items())
        offered = sorted({",".join(f"{k}={v:g}" for k, v in o.items()) for o in self._offers})
        return (
            f"step {step!r} asks for Dask worker resources {asked}, and no worker of the "
            f"Dask cluster {self.where} offers them (workers offer: "
            f"{'; '.join(o or 'none' for o in offered) or 'no workers'}). Start a worker "
            f'with `dask worker SCHEDULER_ADDRESS --resources "{asked}"`, or give the '
            f"cluster's workers those resources"
        )

    # --- running --------------------------------------------------------------------------

    def submit(self, task: Task) -> Future[TaskResult]:
        """Submit ``task`` as one Dask task keyed by its attempt identity (``attempt_key``).

        ``pure=False`` and no Dask retries: stepflow decides reuse and retries itself. The
        step's resources become Dask worker resources. The future is a
        ``concurrent.futures.Future`` that always ends with a ``TaskResult``.
        """
        key = attempt_key(task)
        try:
            wanted = dask_resources(task.resources)
        except ValueError as exc:
            return _done(TaskResult.failed(task, f"step {task.step!r}: {exc}"))
        with self._lock:  # one submission at a time: the same attempt twice finds the first
            with self._state:
                attempt = self._attempts.get(key)
                if self._stopped or attempt is not None:
                    # Reattach to the same attempt, never relaunch it.
                    return attempt or _done(TaskResult.cancelled(task))
            unmet = self._unmet(task.step, wanted)
            if unmet is not None:
                return _done(TaskResult.failed(task, unmet))
            from stepflow_dask import _remote

            client = self.client
            dask_future = client.submit(
                _remote.run_attempt,
                task,
                self._live_topic,
                _remote.process_origin(),
                key=key,
                pure=False,
                retries=0,
                resources=wanted or None,
            )
            attempt = DaskAttempt(task, dask_future)
            with self._state:
                self._attempts[key] = attempt
        attempt.add_done_callback(self._forget)
        client.loop.add_callback(attempt.collect)
        return attempt

    def _forget(self, attempt: Future[TaskResult]) -> None:
        # Runs in the client's event loop (or wherever the attempt was settled).
        with self._state:
            if isinstance(attempt, DaskAttempt):
                self._attempts.pop(attempt.key, None)
                if self._relay is not None:
                    self._relay.seen.pop(attempt.key, None)

    def execute(self, task: Task, *, timeout: float | None) -> TaskResult:
        """``submit(task)`` and wait for its result (the step's ``timeout`` applies on the
        worker, where it kills the step's process tree)."""
        if timeout != task.timeout:
            import attrs

            task = attrs.evolve(task, timeout=timeout)
        return self.submit(task).result()

    def cancel(self) -> None:
        """Cancel every attempt in flight (Ctrl-C, fail-fast): their process trees are killed
        on the workers, and their results say they were cancelled. No new attempt starts."""
        with self._state:
            self._stopped = True
        self._cancel_all(self._client)

    def _cancel_all(self, client: distributed.Client | None) -> None:
        with self._state:
            attempts = list(self._attempts.values())
        futures = [a.dask_future for a in attempts if a.dask_future is not None]
        if client is not None and futures:
            with contextlib.suppress(Exception):
                client.cancel(futures, reason="stepflow run cancelled")
        for attempt in attempts:
            attempt.settle(TaskResult.cancelled(attempt.task))

    def close(self) -> None:
        """Cancel what is left, stop the workers' idle stepflow processes, disconnect, and
        close the cluster if stepflow started it (one given by address keeps running)."""
        with self._state:
            self._stopped = True
        with self._lock:
            client, self._client = self._client, None
        self._cancel_all(client)
        if client is not None:
            from stepflow_dask import _remote

            with contextlib.suppress(Exception):
                client.run(_remote.close_idle, on_error="ignore")
            if self._live_topic is not None:
                # Before leaving: the scheduler logs the client's departure under its topic,
                # and writing that to a client already gone is an error in its log.
                with contextlib.suppress(Exception):
                    client.unsubscribe_topic(self._live_topic)
            with contextlib.suppress(Exception):
                client.close()
        self._close_cluster()
        super().close()

    def _close_cluster(self) -> None:
        cluster, self._cluster = self._cluster, None
        if cluster is not None:
            with contextlib.suppress(Exception):
                cluster.close()


def _cluster_kwargs(cls: type, options: Mapping[str, Any]) -> dict[str, Any]:
    """``cluster_options``, plus the preload that keeps a ``LocalCluster``'s worker
    processes out of the terminal's process group (see ``_detach``)."""
    kwargs = dict(options)
    from distributed import LocalCluster

    if issubclass(cls, LocalCluster) and kwargs.get("processes", True):
        preload = kwargs.get("preload") or []
        preload = [preload] if isinstance(preload, str) else list(preload)
        kwargs["preload"] = [*preload, "stepflow_dask._detach"]
    return kwargs


def _store_fields(config: Config) -> dict[str, Any]:
    """The run's datastore as a ``Task`` names it (what ``run.py`` puts in every task)."""
    uri = config.store or str(config.home / "objects")
    kind = uri.split("://", 1)[0].lower() if "://" in uri else "local"
    return {
        "store_uri": uri if kind != "local" else os.path.abspath(uri),
        "store_kind": kind,
        "store_options": dict(config.store_options),
        "home": str(config.home),
    }


def _done(result: TaskResult) -> Future[TaskResult]:
    future: Future[TaskResult] = Future()
    future.set_result(result)
    return future
