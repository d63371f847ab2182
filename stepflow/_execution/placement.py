"""Where steps run and with what: each backend's slots and resource pools, and the steps a
backend refuses.

A backend's ``[tool.stepflow.backends.NAME]`` table may say how many steps it runs at once
(``workers``, default the run's ``--workers``) and what it lends them at once (``resources =
{gpus = 2, cpus = 8, memory = "16G"}``). The run loop keeps a step ready, holding nothing,
until its backend has a free slot and the resources it asks for; so a GPU step waits for a
GPU without holding a CPU step's slot. Before any step runs, every step is put to its
backend's ``refusal``: an ``env`` or ``resources`` it cannot provide fails the run at once
(DESIGN §8), naming the backends that could.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from stepflow._slotted import Frozen
from stepflow.errors import BackendUnavailableError

if TYPE_CHECKING:
    from stepflow._authoring.step import StepSpec
    from stepflow._config import Config
    from stepflow._execution.backend import Backend
    from stepflow._planning.plan import Plan

__all__ = ["Limits", "Placement", "check_placement", "limits_of", "run_workers_of"]

_RESOURCE_KEYS = ("cpus", "memory", "gpus")


class Limits(Frozen):
    """What one backend lends the run at once."""

    __slots__ = ("slots", "pools", "explicit_slots")

    #: steps in flight at once
    slots: int
    #: resource → capacity (memory in bytes)
    pools: Mapping[str, float]
    #: whether the table set ``workers`` itself
    explicit_slots: bool

    def __init__(
        self,
        slots: int,
        pools: Mapping[str, float] | None = None,
        explicit_slots: bool = False,
    ) -> None:
        init = object.__setattr__
        init(self, "slots", slots)
        init(self, "pools", {} if pools is None else pools)
        init(self, "explicit_slots", explicit_slots)


def limits_of(name: str, table: Mapping[str, Any], default_workers: int) -> Limits:
    """The ``workers`` and ``resources`` of backend ``name``'s table.

    :raises BackendUnavailableError: either is not what it must be, saying how to write it.
    """
    where = f"[tool.stepflow.backends.{name}]"
    slots = table.get("workers", default_workers)
    if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
        raise BackendUnavailableError(
            f"backend {name!r}: option workers={slots!r} must be a whole number >= 1 "
            f"(how many steps it runs at once; in {where})"
        )
    raw = table.get("resources", {})
    if not isinstance(raw, Mapping):
        raise BackendUnavailableError(
            f"backend {name!r}: resources must be a table such as "
            f'resources = {{gpus = 2, cpus = 8, memory = "16G"}} in {where}'
        )
    pools: dict[str, float] = {}
    for key, value in raw.items():
        if key not in _RESOURCE_KEYS:
            raise BackendUnavailableError(
                f"backend {name!r}: unknown resource {key!r} in resources of {where}; use "
                f"{', '.join(_RESOURCE_KEYS)}"
            )
        try:
            pools[key] = amount(key, value)
        except ValueError as exc:
            raise BackendUnavailableError(
                f"backend {name!r}: resources.{key} in {where}: {exc}"
            ) from None
    return Limits(slots=slots, pools=pools, explicit_slots="workers" in table)


def amount(key: str, value: Any) -> float:
    """``value`` of resource ``key`` as a number (memory in bytes).

    :raises ValueError: it is not a non-negative number (or size, for memory).
    """
    if key == "memory":
        from stepflow._humanize import parse_size

        return float(parse_size(value))
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"{value!r} is not a number >= 0")
    return float(value)


def run_workers_of(workers: int, limits: Iterable[Limits]) -> int:
    """How many steps the run executes at once: 1 (one after another, in the calling
    thread) when ``--workers`` is 1 and no backend's table asks for more, else the sum of
    the backends' slots."""
    limits = list(limits)
    if workers == 1 and not any(lim.explicit_slots and lim.slots > 1 for lim in limits):
        return 1
    return max(1, sum(lim.slots for lim in limits))


def needs_of(spec: StepSpec, pooled: Iterable[str]) -> dict[str, float]:
    """What step ``spec`` takes from the ``pooled`` resources of its backend.

    :raises BackendUnavailableError: an amount it asks for is not a number (or a size).
    """
    from stepflow._execution.backend import step_resources

    needs = {}
    for key, value in step_resources(spec).items():
        if key in pooled:
            try:
                needs[key] = amount(key, value)
            except ValueError as exc:
                raise BackendUnavailableError(
                    f"step {spec.name!r}: resources {key}={value!r}: {exc}"
                ) from None
    return needs


class Placement:
    """The slots and pools of a run's backends while it runs: which ready step may start."""

    def __init__(self, plan: Plan, backends: Mapping[str, Backend]) -> None:
        self.plan = plan
        self._free_slots = {name: b.context.workers for name, b in backends.items()}
        self._free = {name: dict(b.context.resources) for name, b in backends.items()}
        #: step → what it takes from its backend's pools (only pooled resources)
        self._needs = {
            step: needs_of(plan.dag.steps[step], self._free[plan.backends[step]])
            for step in plan.steps
        }
        self._lock = threading.Lock()

    @property
    def slots(self) -> int:
        return sum(self._free_slots.values())

    def has_room(self, step: str) -> bool:
        """Whether ``step``'s backend has a free slot (read without the lock: a hint)."""
        return self._free_slots[self.plan.backends[step]] > 0

    @property
    def full(self) -> bool:
        """Whether every backend's slots are taken (read without the lock: a hint)."""
        return not any(n > 0 for n in self._free_slots.values())

    def take(self, step: str) -> bool:
        """Take a slot and the resources of ``step`` if all are free; else take nothing."""
        backend = self.plan.backends[step]
        needs = self._needs[step]
        with self._lock:
            free = self._free[backend]
            if self._free_slots[backend] < 1 or any(free[k] < v for k, v in needs.items()):
                return False
            self._free_slots[backend] -= 1
            for k, v in needs.items():
                free[k] -= v
            return True

    def give_back(self, step: str) -> None:
        backend = self.plan.backends[step]
        with self._lock:
            self._free_slots[backend] += 1
            free = self._free[backend]
            for k, v in self._needs[step].items():
                free[k] += v


def check_placement(
    plan: Plan, backends: Mapping[str, Backend], config: Config, kinds: Mapping[str, Any]
) -> None:
    """Refuse, before any step runs, every step its backend cannot run as declared.

    :raises BackendUnavailableError: one paragraph per refused step: what it asked for, why
        its backend refuses it, and the backends that could run it.
    """
    problems = []
    for step in plan.steps:
        spec = plan.dag.steps[step]
        backend = backends[plan.backends[step]]
        reason = backend.refusal(spec)
        if reason is None:
            reason = _beyond_pool(spec, backend)
        if reason is not None:
            problems.append(_refused(step, spec, backend, reason, config, kinds))
    if problems:
        raise BackendUnavailableError("\n".join(problems))


def _beyond_pool(spec: StepSpec, backend: Backend) -> str | None:
    """A step asking more than its backend's pool holds would wait forever."""
    pools = backend.context.resources
    if not pools:
        return None
    for key, need in needs_of(spec, pools).items():
        if need > pools[key]:
            return (
                f"it asks {key}={_shown(key, need)} but its pool lends at most "
                f"{_shown(key, pools[key])} at once (resources.{key} in "
                f"[tool.stepflow.backends.{backend.name}])"
            )
    return None


def _shown(key: str, value: float) -> str:
    if key == "memory":
        from stepflow._humanize import human_size

        return human_size(value)
    return f"{value:g}"


def _asked(spec: StepSpec) -> str:
    from stepflow._execution.backend import step_resources

    parts = []
    if spec.options.env:
        parts.append(f"env={dict(spec.options.env)!r}")
    resources = step_resources(spec)
    if resources:
        parts.append(f"resources={resources!r}")
    return " and ".join(parts) or "nothing special"


def _refused(
    step: str,
    spec: StepSpec,
    backend: Backend,
    reason: str,
    config: Config,
    kinds: Mapping[str, Any],
) -> str:
    could = _could_run(spec, backend.name, config, kinds)
    if could:
        hint = (
            f"configured backends that could run it: {', '.join(could)}; choose one with "
            f"@step(backend=...) or --backend {step}=NAME"
        )
    else:
        able = _kinds_able(spec, kinds)
        if able:
            hint = (
                f"no configured backend can; installed kinds that could: {', '.join(able)} "
                f'(configure one as [tool.stepflow.backends.NAME] with plugin = "KIND")'
            )
        else:
            hint = (
                "no configured backend or installed plugin can; install a backend plugin "
                "that provides it (stepflow[docker], stepflow[ssh], stepflow[dask]) or drop "
                "what the step asks for"
            )
    return (
        f"step {step!r} asks {_asked(spec)}; backend {backend.name!r} cannot run step "
        f"{step!r}: {reason}. {hint[0].upper()}{hint[1:]}."
    )


def _covers(cls: Any, spec: StepSpec, pooled: Iterable[str] = ()) -> bool:
    """Whether backend class ``cls`` declares every key ``spec`` asks for."""
    from stepflow._execution.backend import step_resources

    env = getattr(cls, "supported_env", None)
    res = getattr(cls, "supported_resources", None)
    if env is None or res is None:
        return False  # a factory, not a Backend class: nothing to go by
    return set(spec.options.env) <= set(env) and set(step_resources(spec)) <= (
        set(res) | set(pooled)
    )


def _could_run(
    spec: StepSpec, refusing: str, config: Config, kinds: Mapping[str, Any]
) -> list[str]:
    """Configured backends (by name) whose kind declares what ``spec`` asks for."""
    names = []
    for name, table in config.backends.items():
        if name == refusing:
            continue
        cls = kinds.get(table.get("plugin", name))
        pooled = table.get("resources", {})
        if _covers(cls, spec, pooled if isinstance(pooled, Mapping) else ()):
            names.append(f"{name!r} ({table.get('plugin')})")
    return names


def _kinds_able(spec: StepSpec, kinds: Mapping[str, Any]) -> list[str]:
    return sorted(kind for kind, cls in kinds.items() if _covers(cls, spec))
