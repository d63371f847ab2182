"""Set-up of a run: everything opened and resolved before the first step runs.

The home is checked, the datastore, cache index and backends opened, registry references
resolved: a missing data set, an unsafe home or an unknown backend is an error that costs
no step. What is opened here is closed by the run (``RunSetup.close``), or here when set-up
itself fails.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any

from stepflow._execution.backend import Backend, open_backends
from stepflow._execution.result import RunInfo
from stepflow._execution.store import open_configured_store
from stepflow._pluginmanager import serializers_of
from stepflow._sentinels import MISSING
from stepflow._slotted import Frozen
from stepflow._storage.artifacts import ArtifactIO, ArtifactRef
from stepflow._storage.home import check_home, make_private_dirs
from stepflow._storage.index import CacheIndex

if TYPE_CHECKING:
    import pluggy

    from stepflow._config import Config
    from stepflow._planning.plan import Plan
    from stepflow._storage.datastore import Datastore
    from stepflow._storage.serializers import Serializer

__all__ = ["RunSetup", "new_run_id", "open_run"]


def new_run_id() -> str:
    """Sortable and unique: ``20261123-051200-a1b2c3``."""
    now = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{now}-{os.urandom(3).hex()}"  # secrets.token_hex(3), without its imports


class RunSetup(Frozen):
    """What a run works with, fixed for its whole length."""

    __slots__ = (
        "run_id",
        "pipeline",
        "plan",
        "config",
        "pm",
        "workers",
        "fail_fast",
        "regenerate",
        "info",
        "serializers",
        "io",
        "index",
        "backends",
        "references",
        "has_references",
        "echo",
        "secret_values",
        "given",
    )
    __eq__ = object.__eq__  # compared and hashed by identity
    __hash__ = object.__hash__

    run_id: str
    pipeline: str
    plan: Plan
    config: Config
    pm: pluggy.PluginManager
    workers: int
    fail_fast: bool
    #: steps whose stored results are ignored (``--regenerate``)
    regenerate: frozenset[str]
    info: RunInfo
    serializers: tuple[Serializer, ...]
    io: ArtifactIO
    index: CacheIndex
    #: backend name → the open backend
    backends: Mapping[str, Backend]
    #: step → parameter → the data-set or model version it reads: resolved before any step
    #: runs, so a missing one is a usage error that costs nothing
    references: Mapping[str, Mapping[str, Any]]
    #: whether any selected step reads or registers a data set or model (the registry code
    #: is imported only then)
    has_references: bool
    #: whether steps' output is also shown as it happens (not ``--capture=quiet``)
    echo: bool
    #: parameter values to mask as ``***`` in everything recorded
    secret_values: tuple[str, ...]
    #: outputs the run takes from outside (``plan.given``): output → ``(stored result, value
    #: in memory or MISSING)``, from earlier results (``--from``) or stubs
    given: Mapping[str, tuple[ArtifactRef, Any]]

    def __init__(
        self,
        run_id: str,
        pipeline: str,
        plan: Plan,
        config: Config,
        pm: pluggy.PluginManager,
        workers: int,
        fail_fast: bool,
        regenerate: frozenset[str],
        info: RunInfo,
        serializers: tuple[Serializer, ...],
        io: ArtifactIO,
        index: CacheIndex,
        backends: Mapping[str, Backend],
        references: Mapping[str, Mapping[str, Any]],
        has_references: bool,
        echo: bool,
        secret_values: tuple[str, ...],
        given: Mapping[str, tuple[ArtifactRef, Any]] | None = None,
    ) -> None:
        init = object.__setattr__
        init(self, "run_id", run_id)
        init(self, "pipeline", pipeline)
        init(self, "plan", plan)
        init(self, "config", config)
        init(self, "pm", pm)
        init(self, "workers", workers)
        init(self, "fail_fast", fail_fast)
        init(self, "regenerate", regenerate)
        init(self, "info", info)
        init(self, "serializers", serializers)
        init(self, "io", io)
        init(self, "index", index)
        init(self, "backends", backends)
        init(self, "references", references)
        init(self, "has_references", has_references)
        init(self, "echo", echo)
        init(self, "secret_values", secret_values)
        init(self, "given", {} if given is None else given)

    def backend_of(self, step: str) -> Backend:
        return self.backends[self.plan.backends[step]]

    def open_store(self) -> Datastore:
        """A handle of its own on the run's datastore, for work that may outlive the run's
        (the code snapshot, stored in the background)."""
        return open_configured_store(self.config, self.pm)


def open_run(
    plan: Plan,
    *,
    pipeline: str,
    config: Config,
    pm: pluggy.PluginManager,
    workers: int,
    fail_fast: bool,
    regenerate: Collection[str],
) -> RunSetup:
    """Check the home, open the store, index and backends, resolve references.

    :raises BackendUnavailableError: a backend is unknown or its check fails.
    :raises UsageError: a data set or model a step reads is missing.
    """
    run_id = new_run_id()
    check_home(config.home)  # before anything is made there
    make_private_dirs(config.home)
    serializers = tuple(serializers_of(pm))
    store = open_configured_store(config, pm)
    has_references = any(
        port.reference is not None
        for name in plan.steps
        for port in (*plan.dag.steps[name].inputs, *plan.dag.steps[name].outputs)
    )
    references: dict[str, dict[str, Any]] = {}
    if has_references:
        from stepflow._execution.references import resolve_references

        try:
            references = resolve_references(plan, store)
        except BaseException:
            store.close()
            raise
    index = CacheIndex(config.home / "index", store=store)
    io = ArtifactIO(store, serializers)
    try:
        given = _given(plan, pipeline=pipeline, index=index, io=io)
        backends = open_backends(plan, config, pm, workers=workers, run_id=run_id)
    except BaseException:
        index.close()
        raise
    # Steps' output is recorded, and also shown as it happens unless the user asked for
    # quiet ("--capture=quiet"); then the report shows it for failed steps only.
    capture = config.options.get("capture") or config.settings.get("capture", "tee")
    return RunSetup(
        run_id=run_id,
        pipeline=pipeline,
        plan=plan,
        config=config,
        pm=pm,
        workers=workers,
        fail_fast=fail_fast,
        regenerate=frozenset(regenerate),
        info=RunInfo(
            run_id=run_id,
            pipeline=pipeline,
            steps=plan.steps,
            params={k: ("***" if k in plan.secret_params else v) for k, v in plan.params.items()},
            workers=workers,
            fail_fast=fail_fast,
        ),
        serializers=serializers,
        io=io,
        index=index,
        backends=backends,
        references=references,
        has_references=has_references,
        echo=capture != "quiet",
        secret_values=tuple(
            str(v) for k, v in plan.params.items() if k in plan.secret_params and str(v)
        ),
        given=given,
    )


def _given(
    plan: Plan, *, pipeline: str, index: CacheIndex, io: ArtifactIO
) -> dict[str, tuple[ArtifactRef, Any]]:
    """The outputs the run does not make: earlier results (``--from``; a missing one is a
    usage error naming it) and stubs, stored like any output so every backend can read them.
    """
    if not plan.given:
        return {}
    from stepflow._planning.reuse import earlier_results
    from stepflow._storage.hashing import hash_value

    given: dict[str, tuple[ArtifactRef, Any]] = {}
    for output, ref in earlier_results(plan, pipeline=pipeline, index=index, io=io).items():
        given[output] = (ref, MISSING)
    for output in plan.given:
        if output in plan.stubs:
            value = plan.stubs[output]
            given[output] = (io.save(value, hash_value(value)), value)
    return given
