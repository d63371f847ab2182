"""The ``stepflow`` command line."""

from __future__ import annotations

import argparse
import contextlib
import enum
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from stepflow._surfaces.lazycommands import LazySubParsersAction

if TYPE_CHECKING:
    import pluggy

__all__ = ["ExitCode", "main"]


class ExitCode(enum.IntEnum):
    """What ``stepflow`` exits with."""

    #: every step ran or was reused
    OK = 0
    #: at least one step failed (or was skipped because of a failure)
    STEP_FAILED = 1
    #: bad command line, target, parameter or pipeline definition; nothing ran
    USAGE_ERROR = 2
    #: every step ran or was reused (or the command did its work), but something could not
    #: be written to the home or store: a full disk, a read-only home, a locked index. The
    #: message names the path; the steps' results stand
    STORAGE_ERROR = 3
    #: stopped by Ctrl-C; what finished is kept
    INTERRUPTED = 130


def _plugin_args(argv: Sequence[str]) -> list[str]:
    """``-p NAME`` values, read before argparse so plugins can add options."""
    names = []
    it = iter(argv)
    for arg in it:
        if arg == "-p":
            value = next(it, None)
            if value is not None:
                names.append(value)
        elif arg.startswith("-p") and len(arg) > 2:
            names.append(arg[2:].lstrip("="))
    return names


class AddCommon(Protocol):
    """What the command modules (``runscmd``, ``registrycmd``, ...) are handed to finish
    each command's parser: ``_add_common``."""

    def __call__(self, parser: argparse.ArgumentParser, *, with_json: bool = False) -> None: ...


def _add_common(parser: argparse.ArgumentParser, *, with_json: bool = False) -> None:
    """The options every command takes (``-p``, ``--home``), after ``--json`` (print JSON)
    on a command that can print its answer as JSON (``with_json``)."""
    if with_json:
        parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument(
        "-p",
        dest="plugins",
        action="append",
        default=[],
        metavar="MODULE",
        help="load a plugin module (repeatable); -p no:NAME blocks one",
    )
    parser.add_argument("--home", help="the stepflow home folder (default: .stepflow)")


def build_parser(
    pm: pluggy.PluginManager | None = None, *, lazy: bool = True
) -> argparse.ArgumentParser:
    """The ``stepflow`` parser: the built-in commands, and with ``pm`` the plugins' ones.

    ``lazy``: a built-in command's parser is built (importing its module) when it is first
    looked up, which parsing does for the command given only, and so is the part plugins
    add to every command (``-p``, ``--home``, ``stepflow_addoption``). Without ``lazy``,
    every parser is built at once (the command line before it was lazy; tests compare the two).
    """
    parser = argparse.ArgumentParser(
        prog="stepflow",
        description="Run machine-learning pipelines made of plain Python functions.",
        # The plain `stepflow --help` loads no plugins (it must start fast).
        epilog="Plugins can add commands: `stepflow plugins` lists them, and "
        "`stepflow -p MODULE --help` shows them here.",
    )
    if lazy:
        parser.register("action", "parsers", LazySubParsersAction)
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument(
        "-p",
        dest="global_plugins",
        action="append",
        default=[],
        metavar="MODULE",
        help="load a plugin module (repeatable; also accepted after the command)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    if pm is None:
        # The fast path (``stepflow --help``): no plugins loaded, the built-in commands only.
        add_builtin_commands(sub)
        return parser
    from stepflow._surfaces import commands

    if pm.get_plugin(commands.PLUGIN_NAME) is None:
        pm.register(commands, name=commands.PLUGIN_NAME)
    owners = _add_plugin_commands(sub, pm)
    parser.set_defaults(command_plugins=owners)

    def finish(subparser: argparse.ArgumentParser, names: list[str]) -> None:
        _add_common_to_leaves(subparser)
        for name in names:
            _add_plugin_options(pm, subparser, name)

    if isinstance(sub, LazySubParsersAction):
        sub.parsers.finish = finish
    else:
        for subparser in {id(p): p for p in sub.choices.values()}.values():
            finish(subparser, [name for name, p in sub.choices.items() if p is subparser])
    return parser


def _add_plugin_commands(
    sub: argparse._SubParsersAction[Any], pm: pluggy.PluginManager
) -> dict[str, str]:
    """Every plugin's ``stepflow_add_commands``, the built-in commands' first; returns
    ``{command: plugin}``.

    :raises PluginError: two plugins add a command of the same name.
    """
    import re

    from stepflow._pluginmanager import implementations
    from stepflow.errors import PluginError

    owners: dict[str, str] = {}
    for plugin, add in implementations(pm, "stepflow_add_commands"):
        before = set(sub.choices)
        try:
            add(subparsers=sub)
        except argparse.ArgumentError as exc:
            match = re.search(r"conflicting subparser(?: alias)?: (\S+)", str(exc))
            other = owners.get(match[1]) if match else None
            both = f"{other!r} and {plugin!r}" if other else repr(plugin)
            raise PluginError(
                f"plugin {plugin!r}: stepflow_add_commands(): {exc}; the command is added by "
                f"{both}: uninstall one, or block it with -p no:NAME",
                plugin=plugin,
            ) from None
        for name in sub.choices:
            if name not in before:
                owners[name] = plugin
    return owners


def _add_plugin_options(
    pm: pluggy.PluginManager, parser: argparse.ArgumentParser, command: str
) -> None:
    """Every plugin's ``stepflow_addoption`` for ``command``.

    :raises PluginError: a plugin adds an option the command has already; it is named.
    """
    try:
        pm.hook.stepflow_addoption(parser=parser, command=command)
    except argparse.ArgumentError as exc:
        from stepflow.errors import PluginError

        # The plugin whose implementation raised: its function is on the traceback.
        impls = pm.hook.stepflow_addoption.get_hookimpls()
        owners = {impl.function.__code__: impl.plugin_name for impl in impls}
        plugin, tb = None, exc.__traceback__
        while tb is not None:
            plugin = owners.get(tb.tb_frame.f_code, plugin)
            tb = tb.tb_next
        raise PluginError(
            f"plugin {plugin or '?'!r}: stepflow_addoption(command={command!r}): {exc}; "
            f"give the option another name, or block the plugin with -p no:NAME",
            plugin=plugin,
        ) from None


def _add_common_to_leaves(parser: argparse.ArgumentParser) -> None:
    """``-p`` and ``--home`` on every command a plugin added (and its sub-commands)."""
    children = [
        action for action in parser._actions if isinstance(action, argparse._SubParsersAction)
    ]
    if not children:
        if "--home" not in parser._option_string_actions:
            _add_common(parser)
        return
    for action in children:
        for child in {id(p): p for p in action.choices.values()}.values():
            _add_common_to_leaves(child)


def _add_run(sub: argparse._SubParsersAction[Any]) -> None:
    run = sub.add_parser("run", help="run a pipeline", description="Run a pipeline.")
    run.add_argument(
        "target",
        metavar="TARGET",
        nargs="?",
        help="module:pipeline, file.py:pipeline, or a module (optional with --resume)",
    )
    run.add_argument(
        "--param",
        dest="params",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set a pipeline parameter, parsed by its type (repeatable)",
    )
    run.add_argument(
        "--target",
        dest="targets",
        action="append",
        default=[],
        metavar="STEP",
        help="run only this step (or output) and what it needs (repeatable)",
    )
    run.add_argument(
        "--from",
        dest="from_steps",
        action="append",
        default=[],
        metavar="STEP",
        help="run STEP and what depends on it, taking what it reads from other steps from "
        "their latest results in this home (repeatable)",
    )
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan (each step: run or reuse, and why) and run nothing",
    )
    run.add_argument("--workers", type=int, metavar="N", help="run up to N steps at once")
    run.add_argument(
        "--regenerate",
        nargs="*",
        metavar="STEP",
        help="recompute the named steps (all if none) even if stored results exist",
    )
    run.add_argument(
        "--backend",
        dest="backends",
        action="append",
        default=[],
        metavar="STEP=NAME",
        help="run STEP on backend NAME (repeatable)",
    )
    run.add_argument(
        "-x", "--exitfirst", action="store_true", help="stop at the first failing step"
    )
    run.add_argument(
        "--full-trace", action="store_true", help="do not cut stepflow's frames from tracebacks"
    )
    run.add_argument("-v", "--verbose", action="count", default=0, help="say more")
    run.add_argument(
        "--color",
        choices=["auto", "yes", "no"],
        default="auto",
        help="colour the report: auto (default) follows NO_COLOR, FORCE_COLOR and the terminal",
    )
    resume = run.add_mutually_exclusive_group()
    resume.add_argument(
        "--resume",
        metavar="RUN",
        help="rerun a recorded run with its parameters and targets, reusing what succeeded",
    )
    resume.add_argument(
        "--last-failed",
        action="store_true",
        help="resume the latest failed run (of TARGET's pipeline, if TARGET is given)",
    )
    run.add_argument(
        "--tick",
        metavar="SCHEDULE[@TIME]",
        help="run a published pipeline as a tick of SCHEDULE (the one due now, or at TIME), "
        "claiming it: a tick already run or running elsewhere is not run again",
    )
    run.add_argument(
        "--capture",
        choices=["tee", "quiet"],
        help="steps' output is always recorded; tee (default) also shows it as it happens, "
        "quiet shows it only for failed steps",
    )
    run.set_defaults(handler=_cmd_run)
    _add_common(run)


def _add_show(sub: argparse._SubParsersAction[Any]) -> None:
    show = sub.add_parser("show", help="show a pipeline's steps and graph")
    show.add_argument("target", metavar="TARGET")
    show.add_argument("--format", choices=["text", "dot", "mermaid", "json", "svg"], default="text")
    show.set_defaults(handler=_cmd_show)
    _add_common(show)


def _add_explain(sub: argparse._SubParsersAction[Any]) -> None:
    explain = sub.add_parser(
        "explain",
        help="say whether a step (or each step) would be reused, and what changed if not",
        description="Say whether STEP would be reused; if not, which part of its cache key "
        "changed since its last result (code of which function, which input, which "
        "parameter, which environment item). Without STEP: the whole plan, each step run "
        "or reuse and why (what `stepflow run --dry-run` prints).",
    )
    explain.add_argument("target", metavar="TARGET")
    explain.add_argument("step", metavar="STEP", nargs="?")
    explain.add_argument(
        "--param", dest="params", action="append", default=[], metavar="NAME=VALUE"
    )
    explain.set_defaults(handler=_cmd_explain)
    _add_common(explain, with_json=True)


def _add_cache(sub: argparse._SubParsersAction[Any]) -> None:
    cache = sub.add_parser("cache", help="list, inspect and prune stored results")
    cache.set_defaults(handler=_cmd_cache)
    cache_sub = cache.add_subparsers(dest="cache_command", metavar="ACTION", required=True)
    cache_ls = cache_sub.add_parser(
        "ls",
        help="list stored results",
        description="List the stored results, oldest first: a short cache key, the pipeline, "
        "the step, the age, the size of the outputs and the run that made them.",
    )
    cache_ls.add_argument("--pipeline", help="only this pipeline's results")
    cache_ls.add_argument("--step", help="only this step's results")
    _add_common(cache_ls, with_json=True)
    cache_info = cache_sub.add_parser(
        "info",
        help="sizes and counts of the store, or one stored result",
        description="Without KEY: the store's location, its numbers of results and objects "
        "and their size. With KEY: that stored result, its outputs and the parts of its "
        "cache key.",
    )
    cache_info.add_argument(
        "key",
        metavar="KEY",
        nargs="?",
        help="a cache key, or a unique prefix of one (4 or more hex digits) as `cache ls` shows it",
    )
    _add_common(cache_info, with_json=True)
    cache_prune = cache_sub.add_parser(
        "prune",
        help="remove stored results by age, pipeline or size budget",
        description="Remove stored results, then the objects nothing refers to any more. "
        "Objects that registered data sets or models need are always kept.",
    )
    cache_prune.add_argument("--older-than", metavar="AGE", help="e.g. 7d, 12h, 30m")
    cache_prune.add_argument("--max-size", metavar="SIZE", help="keep at most this, e.g. 10G")
    cache_prune.add_argument("--pipeline", help="remove this pipeline's results")
    cache_prune.add_argument("--all", action="store_true", help="remove every result")
    cache_prune.add_argument("--dry-run", action="store_true", help="only say what would go")
    _add_common(cache_prune, with_json=True)


def _add_plugins(sub: argparse._SubParsersAction[Any]) -> None:
    plugins = sub.add_parser("plugins", help="list the plugins loaded and what they provide")
    plugins.set_defaults(handler=_cmd_plugins)
    _add_common(plugins, with_json=True)


def _add_runs(sub: argparse._SubParsersAction[Any]) -> None:
    from stepflow._surfaces import runscmd

    runscmd.add_runs(sub, _add_common).set_defaults(handler=_cmd_runs)


def _add_logs(sub: argparse._SubParsersAction[Any]) -> None:
    from stepflow._surfaces import runscmd

    runscmd.add_logs(sub, _add_common).set_defaults(handler=_cmd_runs)


def _add_datasets(sub: argparse._SubParsersAction[Any]) -> None:
    from stepflow._surfaces import registrycmd

    registrycmd.add_datasets(sub, _add_common).set_defaults(handler=_cmd_registry)


def _add_models(sub: argparse._SubParsersAction[Any]) -> None:
    from stepflow._surfaces import registrycmd

    registrycmd.add_models(sub, _add_common).set_defaults(handler=_cmd_registry)


def _schedcmd_adds(name: str) -> Callable[[argparse._SubParsersAction[Any]], None]:
    """The function that adds ``schedcmd``'s command ``name`` (imported only then)."""

    def add(sub: argparse._SubParsersAction[Any]) -> None:
        from stepflow._surfaces import schedcmd

        schedcmd.ADDS[name](sub, _add_common).set_defaults(handler=schedcmd.run_command)

    add.__qualname__ = f"_add_{name}"
    return add


#: The built-in commands in the order ``stepflow --help`` lists them: the name, the one-line
#: help that listing shows, and the function that adds the command's parser (and imports its
#: module) when the command runs or its own help is asked for. Each function gives
#: ``add_parser`` the same help; ``tests/_surfaces/test_lazy_cli.py`` checks that this table
#: and the parsers it builds agree with the parsers built one by one.
BUILTIN_COMMANDS: tuple[tuple[str, str, Callable[[argparse._SubParsersAction[Any]], None]], ...] = (
    ("run", "run a pipeline", _add_run),
    ("show", "show a pipeline's steps and graph", _add_show),
    (
        "explain",
        "say whether a step (or each step) would be reused, and what changed if not",
        _add_explain,
    ),
    ("cache", "list, inspect and prune stored results", _add_cache),
    ("runs", "list, show and compare recorded runs", _add_runs),
    ("logs", "print what a run's steps wrote (stdout, stderr, logging)", _add_logs),
    ("plugins", "list the plugins loaded and what they provide", _add_plugins),
    ("datasets", "register, list and show versioned data sets", _add_datasets),
    ("models", "list and show registered models; move aliases", _add_models),
    ("publish", "publish a pipeline as a named, numbered version", _schedcmd_adds("publish")),
    ("published", "list and show published pipelines", _schedcmd_adds("published")),
    ("schedule", "create, show and manage schedules", _schedcmd_adds("schedule")),
    ("scheduler", "the scheduling daemon", _schedcmd_adds("scheduler")),
)


def add_builtin_commands(sub: argparse._SubParsersAction[Any]) -> None:
    """The built-in commands, each with its ``handler``; registered through the
    ``stepflow_add_commands`` hook (``stepflow._surfaces.commands``) like a plugin's.

    Into the sub-parsers of :func:`build_parser` they go listed only, each parser built when
    it is first looked up; into any other sub-parsers, built at once.
    """
    for name, text, add in BUILTIN_COMMANDS:
        if isinstance(sub, LazySubParsersAction):
            sub.add_lazy(name, help=text, build=add)
        else:
            add(sub)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``stepflow`` command; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        # The fast path: no plugins needed to print the top-level help.
        build_parser().parse_args(argv or ["--help"])
        return ExitCode.OK
    from stepflow.errors import StepflowError, StorageError

    try:
        with _sigterm_interrupts():
            return _main(argv)
    except StorageError as exc:
        print(f"stepflow: error: {exc}", file=sys.stderr)
        return ExitCode.STORAGE_ERROR
    except StepflowError as exc:
        print(f"stepflow: error: {exc}", file=sys.stderr)
        return ExitCode.USAGE_ERROR
    except KeyboardInterrupt:
        print("\nstepflow: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    except BrokenPipeError:
        # `stepflow run ... | head`: the reader left; say nothing more.
        sys.stdout = None  # type: ignore[assignment]
        return ExitCode.OK
    except Exception as exc:
        from stepflow._storage.faults import is_known_fault, storage_error

        # The last net under every write not already named by the code that made it: a
        # full disk or a read-only home is the user's to fix, not a stepflow bug.
        if not is_known_fault(exc):
            raise
        path = getattr(exc, "filename", None) or "the stepflow home"
        error = storage_error(exc, path=path, what="files")
        print(f"stepflow: error: {error}", file=sys.stderr)
        return ExitCode.STORAGE_ERROR


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """Handle SIGTERM (``kill``, a scheduler, a container stop) like Ctrl-C (DESIGN §4).

    The run then cancels its workers, records itself ``interrupted``, prints its report and
    exits with 130; a second SIGTERM is not caught, so it ends the process at once. The
    previous handler comes back afterwards (``main`` may be called inside another program).
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def interrupt(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _main(argv: list[str]) -> int:
    from stepflow._config import load_config
    from stepflow._pluginmanager import make_plugin_manager

    if argv == ["--version"]:
        import stepflow

        print(f"stepflow {stepflow.__version__}")
        return ExitCode.OK
    config = load_config(plugins=tuple(_plugin_args(argv)))
    # Like `python -m`: plugin and pipeline modules in the project folder are importable.
    for folder in (str(config.rootdir), os.getcwd()):
        if folder not in sys.path:
            sys.path.insert(0, folder)
    # The scan of installed plugins is kept in an existing home only: a command run in some
    # other folder must not leave a .stepflow behind.
    keep = None
    if config.home.is_dir():
        from stepflow._storage.kept import kept_in_home

        keep = kept_in_home(config.home)
    pm = make_plugin_manager(config.plugins, keep=keep)
    parser = build_parser(pm)
    args = parser.parse_args(argv)
    if args.version:
        import stepflow

        print(f"stepflow {stepflow.__version__}")
        return ExitCode.OK
    if args.command is None:
        parser.print_help()
        return ExitCode.USAGE_ERROR
    config = load_config(
        home=args.home,
        plugins=tuple(config.plugins),
        workers=getattr(args, "workers", None),
        options=vars(args),
    )
    handler = getattr(args, "handler", None)
    if handler is None:
        from stepflow.errors import PluginError

        owner = args.command_plugins.get(args.command, "?")
        raise PluginError(
            f"plugin {owner!r}: command {args.command!r} has no handler; in "
            f"stepflow_add_commands call parser.set_defaults(handler=fn), where "
            f"fn(args, config, pm) returns the exit code",
            plugin=owner,
        )
    pm.hook.stepflow_configure(config=config)
    try:
        code = handler(args, config, pm)
        return ExitCode.OK if code is None else int(code)
    finally:
        pm.hook.stepflow_unconfigure(config=config)


def _cmd_runs(args: argparse.Namespace, config: Any, pm: pluggy.PluginManager) -> int:
    if args.command == "runs" and args.runs_command == "source":
        from stepflow._surfaces import sourcecmd

        return sourcecmd.run_command(args, config, pm)
    from stepflow._surfaces.runscmd import run_command

    return run_command(args, config)


def _cmd_cache(args: argparse.Namespace, config: Any, pm: pluggy.PluginManager) -> int:
    from stepflow._surfaces.cachecmd import run_command

    return run_command(args, config, pm)


def _cmd_registry(args: argparse.Namespace, config: Any, pm: pluggy.PluginManager) -> int:
    from stepflow._surfaces.registrycmd import run_command

    return run_command(args, config)


def _load(target: str, *, full_trace: bool = False) -> tuple[Any, list[str]]:
    from stepflow._authoring.loader import user_code_traceback
    from stepflow._surfaces.target import load_target
    from stepflow.errors import StepflowError, TargetNotFoundError

    try:
        return load_target(target)
    except StepflowError:
        raise
    except Exception as exc:
        # The user's module raised while importing (a SyntaxError, an ImportError of its
        # own, any exception at module level): show it cut to the user's code, like a
        # failing step's traceback.
        if full_trace:
            import traceback  # here: 4 ms of `stepflow --help` otherwise

            body = "".join(traceback.format_exception(exc))
        else:
            body = user_code_traceback(exc)
        raise TargetNotFoundError(
            f"importing {target!r} raised {type(exc).__name__}:\n{body.rstrip()}"
        ) from exc


def _split_pairs(values: list[str], flag: str) -> dict[str, str]:
    from stepflow._authoring.parse import split_assignment
    from stepflow.errors import UsageError

    pairs = {}
    for text in values:
        try:
            key, value = split_assignment(text)
        except ValueError:
            raise UsageError(f"{flag} {text!r}: write {flag} NAME=VALUE") from None
        pairs[key] = value
    return pairs


def _cmd_run(args: argparse.Namespace, config: Any, pm: pluggy.PluginManager) -> int:
    import attrs

    if args.resume or args.last_failed:
        from stepflow._surfaces.resume import prepare_resume

        args = prepare_resume(args, config)
        config = attrs.evolve(config, options={**config.options, **vars(args)})
    elif args.target is None:
        from stepflow.errors import UsageError

        raise UsageError("stepflow run needs a TARGET (module:pipeline), or --resume RUN")
    if args.tick or (":" not in args.target and not args.target.endswith(".py")):
        # Maybe a published name (NAME[@V]), run from its stored code; --tick claims a tick.
        from stepflow._surfaces.schedcmd import run_published

        return run_published(args, config, pm, _run_target)
    return _run_target(args, config, pm, args.target)[0]


def _run_target(
    args: argparse.Namespace, config: Any, pm: pluggy.PluginManager, target: str
) -> tuple[int, Any]:
    """Run ``target``; returns the exit code and the ``RunResult``."""
    from stepflow.errors import StorageWarning

    pipeline, default_targets = _load(target, full_trace=args.full_trace)
    params = {**getattr(args, "resumed_params", {}), **_parse_params(pipeline, args.params)}
    if getattr(args, "resumed_params", None) is not None:
        from stepflow._surfaces.resume import check_resumed

        params = check_resumed(args, pipeline, params)
    backends = _split_pairs(args.backends, "--backend")
    regenerate: Any = None
    if args.regenerate is not None:
        regenerate = args.regenerate or True
    if args.dry_run:
        code = _dry_run(args, pipeline, params, default_targets, backends, regenerate, config, pm)
        return code, None
    # The terminal reporter is the built-in plugin stepflow._plugins.terminal, configured
    # for this command by stepflow_configure.
    with warnings.catch_warnings():
        # Said once, after the summary line, from result.storage_errors.
        warnings.simplefilter("ignore", StorageWarning)
        result = pipeline.run(
            params,
            targets=args.targets or default_targets or None,
            workers=config.workers,
            fail_fast=args.exitfirst,
            regenerate=regenerate,
            backends=backends,
            config=config,
            plugin_manager=pm,
            start=args.from_steps or None,
        )
    for error in result.storage_errors:
        # After the summary line: the run's outcome is shown first, and stands.
        print(f"stepflow: error: {error}", file=sys.stderr)
    if result.interrupted:
        return ExitCode.INTERRUPTED, result
    if not result.ok:
        return ExitCode.STEP_FAILED, result
    return ExitCode.STORAGE_ERROR if result.storage_errors else ExitCode.OK, result


def _dry_run(
    args: argparse.Namespace,
    pipeline: Any,
    params: dict[str, Any],
    default_targets: list[str],
    backends: dict[str, str],
    regenerate: Any,
    config: Any,
    pm: pluggy.PluginManager,
) -> int:
    """``stepflow run --dry-run``: the plan ``explain`` makes, with the run's own choices."""
    from stepflow._surfaces.explain import explain_plan

    targets = args.targets or default_targets or None
    plan = pipeline.plan(
        params,
        targets=targets,
        backends=backends,
        default_backend=config.default_backend,
        start=args.from_steps or None,
    )
    result = explain_plan(
        pipeline,
        params=params,
        config=config,
        pm=pm,
        targets=targets,
        start=args.from_steps or None,
        regenerate=pipeline.regenerated(regenerate, plan),
        backends=backends,
    )
    sys.stdout.write(result.text())
    return ExitCode.OK


def _parse_params(pipeline: Any, texts: list[str]) -> dict[str, Any]:
    from stepflow._authoring.parse import parse_value, split_assignment
    from stepflow._planning.plan import _unknown_message
    from stepflow.errors import UsageError

    params: dict[str, Any] = {}
    for text in texts:
        name, raw = split_assignment(text)
        if name not in pipeline.params:
            raise UsageError(_unknown_message("parameter", name, list(pipeline.params)))
        spec = pipeline.params[name]
        params[name] = parse_value(name, raw, spec.annotation, secret=spec.secret)
    return params


def _cmd_explain(args: argparse.Namespace, config: Any, pm: pluggy.PluginManager) -> int:
    from stepflow._surfaces.explain import explain, explain_plan

    pipeline, default_targets = _load(args.target)
    params = _parse_params(pipeline, args.params)
    result: Any
    if args.step is None:
        result = explain_plan(
            pipeline, params=params, config=config, pm=pm, targets=default_targets or None
        )
    else:
        result = explain(pipeline, args.step, params=params, config=config, pm=pm)
    if args.json:
        import json  # here: `stepflow --help` needs no json

        print(json.dumps(result.to_dict(), indent=2))
    else:
        sys.stdout.write(result.text())
    return ExitCode.OK


def _cmd_show(args: argparse.Namespace, config: Any, pm: pluggy.PluginManager) -> int:
    from stepflow._surfaces.show import render

    pipeline = _load(args.target)[0]
    sys.stdout.write(render(pipeline, args.format, default_backend=config.default_backend))
    return ExitCode.OK


def _cmd_plugins(args: argparse.Namespace, config: Any, pm: pluggy.PluginManager) -> int:
    commands: dict[str, list[str]] = {}
    for command, owner in getattr(args, "command_plugins", {}).items():
        commands.setdefault(owner, []).append(command)
    rows = []
    dists = {id(plugin): dist for plugin, dist in pm.list_plugin_distinfo()}
    for name, plugin in pm.list_name_plugin():
        if plugin is None:
            continue
        backends: list[str] = []
        impl = getattr(plugin, "stepflow_backend_types", None)
        if impl is not None:
            backends = sorted(impl() or {})
        hooks = sorted(
            h.name for h in (pm.get_hookcallers(plugin) or []) if h.name.startswith("stepflow_")
        )
        dist = dists.get(id(plugin))
        rows.append(
            {
                "name": name,
                "module": getattr(plugin, "__name__", type(plugin).__name__),
                "distribution": f"{dist.project_name} {dist.version}" if dist else None,
                "backends": backends,
                "commands": sorted(commands.get(name, [])),
                "hooks": hooks,
            }
        )
    if args.json:
        import json

        print(json.dumps(rows, indent=2))
        return ExitCode.OK
    for row in rows:
        origin = f" ({row['distribution']})" if row["distribution"] else ""
        print(f"{row['name']}{origin}")
        if row["backends"]:
            print(f"  backends: {', '.join(row['backends'])}")
        if row["commands"]:
            print(f"  commands: {', '.join(row['commands'])}")
        print(f"  hooks: {', '.join(row['hooks'])}")
    return ExitCode.OK
