"""Hook specifications: everything a plugin can add to or observe in stepflow.

A plugin is a module or object with functions named after these hooks and decorated with
``stepflow.hookimpl``. Plugins load from the ``stepflow`` entry-point group, from ``-p MODULE``
on the command line, and from ``plugins = [...]`` in ``[tool.stepflow]``. A function named
``stepflow_*`` that matches no hook below is an error at start-up, so typos fail loudly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import argparse

    from stepflow._config import Config
    from stepflow._execution.backend import BackendFactory
    from stepflow._execution.result import RunInfo, RunResult, StepReport
    from stepflow._storage.serializers import Serializer

hookspec = pluggy.HookspecMarker("stepflow")
hookimpl = pluggy.HookimplMarker("stepflow")

# -------------------------------------------------------------------------------------------
# Registration hooks: what a plugin provides
# -------------------------------------------------------------------------------------------


@hookspec
def stepflow_backend_types() -> Mapping[str, BackendFactory]:
    """Return the backend kinds this plugin provides, by kind name.

    Each value is a ``stepflow.Backend`` subclass (or any callable with the same
    signature, ``factory(name, options, context)``). A step selects a backend by name:
    ``[tool.stepflow.backends.NAME]`` gives ``plugin = "KIND"`` and the options, and a bare
    kind name works as a backend name with no options.

    A backend is transport: it runs ``python -m stepflow.worker`` where the step should run.
    What it needs (worker processes with their own ``argv`` and ``env``, the frame codec,
    ready-made results for a timeout or a lost worker) is in ``stepflow.backends``; see
    ``docs/how-to/write-a-backend.md``.

    Use in plugins::

        @stepflow.hookimpl
        def stepflow_backend_types():
            return {"docker": DockerBackend}
    """


@hookspec
def stepflow_serializer_types() -> Sequence[Serializer]:
    """Return serializer instances (``stepflow.Serializer`` subclasses).

    For each output, the first serializer whose ``can_dump`` accepts it is used; the
    built-in cloudpickle serializer is the last resort.
    """


@hookspec
def stepflow_datastore_types() -> Mapping[str, Any]:
    """Return datastore factories by URL scheme or kind name (``{"s3": factory}``)."""


@hookspec
def stepflow_scheduler_types() -> Mapping[str, Any]:
    """Return scheduler factories by name (cron export, systemd timers, a daemon...)."""


@hookspec
def stepflow_cache_pinned(config: Config) -> Iterable[str]:
    """Return datastore object names that ``stepflow cache prune`` must keep.

    A registry plugin returns the objects its registered data sets and models point to, so
    pruning the cache never breaks them.
    """


# -------------------------------------------------------------------------------------------
# Configuration hooks
# -------------------------------------------------------------------------------------------


@hookspec
def stepflow_addoption(parser: argparse.ArgumentParser, command: str) -> None:
    """Add command-line options to a ``stepflow`` sub-command.

    :param parser: the sub-command's ``argparse`` parser; add options with
        ``parser.add_argument``. Parsed values reach ``stepflow_configure`` through
        ``config.options``.
    :param command: the sub-command's name (``"run"``, ``"show"``, ...).

    Called once per sub-command when the command line is built.
    """


@hookspec
def stepflow_configure(config: Config) -> None:
    """Called once the configuration is loaded, before any pipeline is loaded or run.

    :param config: the merged configuration (``[tool.stepflow]``, ``STEPFLOW_*``
        variables, then command-line flags). Read plugin-specific keys from
        ``config.settings``.
    """


@hookspec
def stepflow_unconfigure(config: Config) -> None:
    """Called before the process exits; release what ``stepflow_configure`` took."""


# -------------------------------------------------------------------------------------------
# Run lifecycle hooks: observe a run (the terminal reporter is a plugin of these)
# -------------------------------------------------------------------------------------------


@hookspec
def stepflow_run_start(run: RunInfo) -> None:
    """A run starts; the plan is final and every backend has passed its check.

    :param run: the run's id, pipeline name, parameters and the steps it will execute.
    """


@hookspec
def stepflow_step_start(run: RunInfo, step: str, attempt: int) -> None:
    """A step's attempt is dispatched to its backend.

    :param step: the step's name.
    :param attempt: 1 for the first attempt, 2 for the first retry, ...
    """


@hookspec
def stepflow_step_retry(run: RunInfo, report: StepReport, delay: float) -> None:
    """A step's attempt failed and it will be retried after ``delay`` seconds.

    :param report: the failed attempt, with its error.
    """


@hookspec
def stepflow_step_finish(run: RunInfo, report: StepReport) -> None:
    """A step reached its final state: ``ran``, ``reused``, ``failed`` or ``skipped``.

    :param report: the step's state, timings, attempts and error.
    """


@hookspec
def stepflow_run_finish(run: RunInfo, result: RunResult) -> None:
    """A run ended, successfully or not (also after Ctrl-C).

    :param result: the run's outcome; ``result.interrupted`` is true after Ctrl-C.
    """
