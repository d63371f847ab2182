"""``Pipeline``: a named, validated set of steps that can be planned and run."""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

from stepflow._authoring.step import StepSpec, is_step
from stepflow._planning.dag import DAG, ParamSpec, build_dag
from stepflow._planning.plan import Plan, make_plan
from stepflow.errors import PipelineDefinitionError, UsageError

if TYPE_CHECKING:
    import pluggy

    from stepflow._config import Config
    from stepflow._execution.result import RunResult

__all__ = ["Pipeline"]

_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


class Pipeline:
    """A named set of steps whose graph is inferred and checked when it is constructed.

    >>> from stepflow import step, Pipeline
    >>> @step
    ... def numbers(n: int = 3) -> list[int]:
    ...     return list(range(n))
    >>> @step
    ... def total(numbers: list[int]) -> int:
    ...     return sum(numbers)
    >>> pipe = Pipeline("sums", [numbers, total])
    >>> pipe.run(params={"n": 5})["total"]
    10
    """

    def __init__(self, name: str, steps: Sequence[object]) -> None:
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise PipelineDefinitionError(
                f"pipeline name {name!r} is not valid; use letters, digits, '_', '-' and '.'"
            )
        self.name = name
        self._dag = build_dag(steps)

    @classmethod
    def from_module(
        cls, module: ModuleType | str | os.PathLike[str], name: str | None = None
    ) -> Pipeline:
        """Collect every step in a module, the way pytest collects tests.

        :param module: a module object, a dotted module name or the path of a ``.py`` file.
        :param name: the pipeline's name (default: the module's last name part).
        """
        from stepflow._authoring.loader import import_module_or_path

        if not isinstance(module, ModuleType):
            module = import_module_or_path(os.fspath(module))
        steps = [obj for obj in vars(module).values() if is_step(obj)]
        if not steps:
            raise PipelineDefinitionError(
                f"module {module.__name__!r} defines no steps; decorate functions with @step"
            )
        return cls(name or module.__name__.rsplit(".", 1)[-1], steps)

    # --- introspection ----------------------------------------------------------------------

    @property
    def dag(self) -> DAG:
        """The validated graph."""
        return self._dag

    @property
    def steps(self) -> Mapping[str, StepSpec]:
        """Step name → spec, in execution order."""
        return self._dag.steps

    @property
    def params(self) -> Mapping[str, ParamSpec]:
        """Pipeline parameter name → its type and per-step defaults."""
        return self._dag.params

    @property
    def outputs(self) -> Mapping[str, str]:
        """Output name → producing step."""
        return self._dag.producers

    def __repr__(self) -> str:
        return f"<Pipeline {self.name!r}: {len(self.steps)} steps>"

    # --- notebooks: the graph, drawn by the renderer of `show --format svg` and the UI ----

    def _repr_svg_(self) -> str:
        from stepflow._planning.svg import render_svg

        edges = [(e.producer, e.consumer) for e in self._dag.edges]
        return render_svg(list(self.steps), edges, title=f"pipeline {self.name}")

    def _repr_html_(self) -> str:
        from html import escape

        return (
            f'<div class="stepflow-pipeline"><div>pipeline <b>{escape(self.name)}</b>: '
            f"{len(self.steps)} steps</div>{self._repr_svg_()}</div>"
        )

    # --- running ------------------------------------------------------------------------------

    def plan(
        self,
        params: Mapping[str, Any] | None = None,
        *,
        targets: Iterable[str] | str | None = None,
        backends: Mapping[str, str] | None = None,
        default_backend: str = "local",
        start: Iterable[str] | str | None = None,
        stub: Mapping[str, Any] | None = None,
    ) -> Plan:
        """Decide what a run would do, without running anything."""
        if isinstance(targets, str):
            targets = [targets]
        if isinstance(start, str):
            start = [start]
        return make_plan(
            self._dag,
            params=params,
            targets=targets,
            backends=backends,
            default_backend=default_backend,
            start=start,
            stubs=stub,
        )

    def regenerated(self, regenerate: bool | Iterable[str] | None, plan: Plan) -> set[str]:
        """The steps ``regenerate`` forces to run: all of the plan's for ``True``, else the
        named steps and everything that depends on them.

        :raises UsageError: an unknown step name.
        """
        if regenerate is True:
            return set(plan.steps)
        if regenerate in (None, False):
            return set()
        assert regenerate is not None and not isinstance(regenerate, bool)
        names = [regenerate] if isinstance(regenerate, str) else list(regenerate)
        for name in names:
            if name not in self.steps:
                raise UsageError(
                    f"--regenerate: unknown step {name!r}; steps: {', '.join(self.steps)}"
                )
        # A regenerated step's dependants run again too, whatever early cutoff would say.
        return self._dag.descendants(names)

    def run(
        self,
        params: Mapping[str, Any] | None = None,
        *,
        targets: Iterable[str] | str | None = None,
        workers: int | None = None,
        fail_fast: bool = False,
        regenerate: bool | Iterable[str] | None = None,
        backends: Mapping[str, str] | None = None,
        home: str | os.PathLike[str] | None = None,
        plugins: Iterable[str] = (),
        config: Config | None = None,
        plugin_manager: pluggy.PluginManager | None = None,
        start: Iterable[str] | str | None = None,
        stub: Mapping[str, Any] | None = None,
    ) -> RunResult:
        """Run the pipeline and return a ``RunResult``; step failures do not raise.

        :param params: pipeline parameter overrides, checked against their annotations.
        :param targets: step or output names; only what they need runs.
        :param workers: how many steps run at once (in worker processes when more than 1).
        :param fail_fast: stop dispatching at the first failure (``-x``).
        :param regenerate: ``True`` (every step) or step names to recompute, with everything
            that depends on them, even if stored results exist.
        :param backends: step name → backend name, overriding ``@step(backend=...)``.
        :param home: the stepflow home (default ``[tool.stepflow] home`` or ``.stepflow``).
        :param plugins: extra plugin modules to load (like ``-p``).
        :param config: the configuration to use instead of loading it from the project.
        :param plugin_manager: a plugin manager the caller made and configured (the command
            line does); by default one is made, and its plugins' ``stepflow_configure`` and
            ``stepflow_unconfigure`` are called before and after the run.
        :param start: step names (``--from``): run them and what depends on them, taking
            what they read from other steps from those steps' latest results in this home.
        :param stub: output name → value (for tests): the value stands in for the output,
            and its producer, with whatever only it needed, does not run.
        :raises UsageError: unknown parameters, targets or steps; nothing has run.
        :raises BackendUnavailableError: a backend cannot be used; nothing has run.
        """
        from stepflow._config import load_config
        from stepflow._execution.run import run_plan
        from stepflow._pluginmanager import make_plugin_manager

        if config is None:
            config = load_config(home=home, plugins=tuple(plugins), workers=workers)
        if workers is None:
            workers = config.workers
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise UsageError(f"workers must be a whole number >= 1, got {workers!r}")
        plan = self.plan(
            params,
            targets=targets,
            backends=backends,
            default_backend=config.default_backend,
            start=start,
            stub=stub,
        )
        run = functools.partial(
            run_plan,
            plan,
            pipeline=self.name,
            config=config,
            workers=workers,
            fail_fast=fail_fast,
            regenerate=self.regenerated(regenerate, plan),
        )
        if plugin_manager is not None:
            # The caller made the plugin manager (the command line): it configured it.
            return run(pm=plugin_manager)
        from stepflow._storage.kept import kept_in_home

        pm = make_plugin_manager(config.plugins, keep=kept_in_home(config.home))
        # As the command line does: plugins read their own settings (``[tool.stepflow.NAME]``)
        # in ``stepflow_configure``, and a run from Python must see them too.
        pm.hook.stepflow_configure(config=config)
        try:
            return run(pm=pm)
        finally:
            pm.hook.stepflow_unconfigure(config=config)
