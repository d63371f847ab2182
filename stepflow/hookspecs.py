"""Hook specifications: everything a plugin can add to or observe in stepflow.

A plugin is a module or object with functions named after these hooks and decorated with
``stepflow.hookimpl``. Plugins load from the ``stepflow`` entry-point group, from ``-p MODULE``
on the command line, and from ``plugins = [...]`` in ``[tool.stepflow]``. A function named
``stepflow_*`` that matches no hook below is an error at start-up, so typos fail loudly.

Every hook collects the answers of all plugins (none is ``firstresult``: each one registers
or observes, and no hook asks for one plugin's answer). The registration hooks are checked
when they are read: a value of the wrong kind is a ``PluginError`` naming the plugin and the
hook, and two plugins giving the same backend kind, datastore kind, serializer name, hasher
class or command name is a ``PluginError`` naming both (block one with ``-p no:NAME``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import argparse

    from stepflow._config import Config
    from stepflow._execution.backend import BackendFactory
    from stepflow._execution.result import RunInfo, RunResult, StepReport
    from stepflow._storage.hashing import Hasher
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
    built-in cloudpickle serializer is the last resort. Each ``name`` belongs to one plugin.

    Use in plugins::

        @stepflow.hookimpl
        def stepflow_serializer_types():
            return [ArrowSerializer()]
    """


@hookspec
def stepflow_datastore_types() -> Mapping[str, Any]:
    """Return datastore factories by URL scheme or kind name (``{"s3": factory}``).

    ``factory(uri, *, home, options)`` returns a ``stepflow`` ``Datastore`` for ``store =
    "SCHEME://..."`` in ``[tool.stepflow]`` (``options`` from ``store_options``). The
    built-in storage plugin gives ``local`` (a folder, used for a plain path or no
    ``store``) and ``s3``.

    Use in plugins::

        @stepflow.hookimpl
        def stepflow_datastore_types():
            return {"webdav": lambda uri, *, home, options: WebDavStore(uri, **options)}
    """


@hookspec
def stepflow_scheduler_types() -> Mapping[str, Any]:
    """Return scheduler factories by name (cron export, systemd timers, a daemon...).

    Use in plugins::

        @stepflow.hookimpl
        def stepflow_scheduler_types():
            return {"systemd": SystemdTimers}
    """


@hookspec
def stepflow_hashers() -> Mapping[type, Callable[[Any, Hasher], None]]:
    """Return ``{class: fn(obj, hasher)}``: how instances of a class count in cache keys.

    Each pair is registered with ``stepflow.register_hasher`` when the plugin manager is
    made, so values of the class hash by content instead of by pickle. A class belongs to
    one plugin; the built-in encodings (numbers, strings, arrays, frames...) cannot be
    replaced.

    Use in plugins::

        @stepflow.hookimpl
        def stepflow_hashers():
            return {Point: lambda p, hasher: hasher.add((p.x, p.y))}
    """


@hookspec
def stepflow_cache_pinned(config: Config) -> Iterable[str]:
    """Return datastore object names that ``stepflow cache prune`` must keep.

    A registry plugin returns the objects its registered data sets and models point to, so
    pruning the cache never breaks them.

    :param config: the configuration of the home being pruned.

    Use in plugins::

        @stepflow.hookimpl
        def stepflow_cache_pinned(config):
            return my_registry(config.home).object_names()
    """


# -------------------------------------------------------------------------------------------
# Command-line and configuration hooks
# -------------------------------------------------------------------------------------------


@hookspec
def stepflow_add_commands(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add sub-commands to ``stepflow``, as the built-in ``run``, ``runs`` or ``cache`` are.

    :param subparsers: the ``argparse`` sub-parsers of ``stepflow``; add one with
        ``subparsers.add_parser(NAME, help=...)`` and give it a handler with
        ``parser.set_defaults(handler=fn)``. ``fn(args, config, pm)`` gets the parsed
        ``argparse.Namespace``, the loaded configuration and the plugin manager, and
        returns the exit code. ``-p`` and ``--home`` are added to every command.

    A command name belongs to one plugin. ``stepflow COMMAND --help`` and ``stepflow
    plugins`` show plugin commands; the plain ``stepflow --help`` lists the built-in
    ones (it loads no plugins, to stay fast), ``stepflow -p MODULE --help`` all of them.

    Use in plugins::

        @stepflow.hookimpl
        def stepflow_add_commands(subparsers):
            hello = subparsers.add_parser("hello", help="greet")
            hello.add_argument("--name", default="world")
            hello.set_defaults(handler=lambda args, config, pm: print("hi", args.name) or 0)
    """


@hookspec
def stepflow_addoption(parser: argparse.ArgumentParser, command: str) -> None:
    """Add command-line options to a ``stepflow`` sub-command.

    :param parser: the sub-command's ``argparse`` parser; add options with
        ``parser.add_argument``. Parsed values reach ``stepflow_configure`` through
        ``config.options``.
    :param command: the sub-command's name (``"run"``, ``"show"``, ...).

    Called once per sub-command when its parser is built: for the command that runs (or
    whose ``--help`` is shown), as the other commands' parsers are not built.

    Use in plugins::

        @stepflow.hookimpl
        def stepflow_addoption(parser, command):
            if command == "run":
                parser.add_argument("--echo-tag", metavar="TAG")
    """


@hookspec
def stepflow_configure(config: Config) -> None:
    """Called once the configuration is loaded, before any pipeline is loaded or run.

    The command line calls it once per invocation; ``Pipeline.run`` called from Python
    calls it before each run (and ``stepflow_unconfigure`` after), unless it is given a
    plugin manager that its caller configured.

    :param config: the merged configuration (``[tool.stepflow]``, ``STEPFLOW_*``
        variables, then command-line flags). Read plugin-specific keys from
        ``config.settings``.

    Use in plugins::

        @stepflow.hookimpl
        def stepflow_configure(config):
            global TAG
            TAG = config.options.get("echo_tag") or config.settings.get("echo_tag")
    """


@hookspec
def stepflow_unconfigure(config: Config) -> None:
    """Called before the process exits; release what ``stepflow_configure`` took.

    Use in plugins::

        @stepflow.hookimpl
        def stepflow_unconfigure(config):
            CONNECTIONS.close_all()
    """


# -------------------------------------------------------------------------------------------
# Run lifecycle hooks: observe a run (the terminal reporter is a plugin of these)
# -------------------------------------------------------------------------------------------


@hookspec
def stepflow_run_start(run: RunInfo) -> None:
    """A run starts; the plan is final and every backend has passed its check.

    :param run: the run's id, pipeline name, parameters and the steps it will execute.

    Use in plugins::

        @stepflow.hookimpl
        def stepflow_run_start(run):
            print(f"run {run.run_id} of {run.pipeline} starts")
    """


@hookspec
def stepflow_step_start(run: RunInfo, step: str, attempt: int) -> None:
    """A step's attempt is dispatched to its backend.

    :param step: the step's name.
    :param attempt: 1 for the first attempt, 2 for the first retry, ...

    Use in plugins::

        @stepflow.hookimpl
        def stepflow_step_start(run, step, attempt):
            print(f"{step}: attempt {attempt}")
    """


@hookspec
def stepflow_step_retry(run: RunInfo, report: StepReport, delay: float) -> None:
    """A step's attempt failed and it will be retried after ``delay`` seconds.

    :param report: the failed attempt, with its error.
    :param delay: seconds until the next attempt starts.

    Use in plugins::

        @stepflow.hookimpl
        def stepflow_step_retry(run, report, delay):
            print(f"{report.name} failed ({report.error}); again in {delay:.0f}s")
    """


@hookspec
def stepflow_step_finish(run: RunInfo, report: StepReport) -> None:
    """A step reached its final state: ``ran``, ``reused``, ``failed`` or ``skipped``.

    :param report: the step's state, timings, attempts and error, and the metrics the
        step logged with ``stepflow.context().log_metric`` (``report.metrics``, in logged
        order, each with ``name``, ``value``, ``step`` and ``timestamp``; empty for a
        reused step).

    Use in plugins::

        @stepflow.hookimpl
        def stepflow_step_finish(run, report):
            for metric in report.metrics:
                tracker.log(run.run_id, report.name, metric.name, metric.value, metric.step)
    """


@hookspec
def stepflow_run_finish(run: RunInfo, result: RunResult) -> None:
    """A run ended, successfully or not (also after Ctrl-C).

    :param result: the run's outcome; ``result.interrupted`` is true after Ctrl-C.

    Use in plugins::

        @stepflow.hookimpl
        def stepflow_run_finish(run, result):
            notify(f"{run.pipeline}: {'ok' if result.ok else 'failed'}")
    """
