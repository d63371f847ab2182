"""The command line builds only the parser of the command that runs.

``stepflow --help`` lists the built-in commands from ``cli.BUILTIN_COMMANDS`` (names and
one-line helps); a command's parser, and its module, are built when argparse looks the command
up. These tests hold the lazy parsers to the parsers built all at once (as before), so the
static table cannot drift from them, and check what is (not) built and imported.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from typing import Any

import pytest

import stepflow
from stepflow._config import load_config
from stepflow._pluginmanager import make_plugin_manager
from stepflow._surfaces import cli
from stepflow._surfaces.lazycommands import LazySubParsersAction
from stepflow.errors import PluginError

#: the modules that build or run the built-in commands (none is needed to list them)
COMMAND_MODULES = (
    "stepflow._surfaces.cachecmd",
    "stepflow._surfaces.commands",
    "stepflow._surfaces.explain",
    "stepflow._surfaces.registrycmd",
    "stepflow._surfaces.resume",
    "stepflow._surfaces.runscmd",
    "stepflow._surfaces.schedcmd",
    "stepflow._surfaces.show",
    "stepflow._surfaces.sourcecmd",
    "stepflow._surfaces.table",
)


def _say_hi(args: argparse.Namespace, config: Any, pm: Any) -> int:
    return 0


class Recorder:
    """A plugin that adds a command with an alias, and an option to every command."""

    def __init__(self) -> None:
        self.addoption_calls: list[str] = []

    @stepflow.hookimpl
    def stepflow_add_commands(self, subparsers: argparse._SubParsersAction[Any]) -> None:
        hi = subparsers.add_parser("hi", aliases=["hey"], help="say hi")
        hi.add_argument("--loud", action="store_true")
        hi.set_defaults(handler=_say_hi)

    @stepflow.hookimpl
    def stepflow_addoption(self, parser: argparse.ArgumentParser, command: str) -> None:
        self.addoption_calls.append(command)
        parser.add_argument(f"--rec-{command}", action="store_true", help=f"for {command}")


def _plugin_manager() -> tuple[Any, Recorder]:
    """The plugins a command line would load here (installed ones included), plus a
    ``Recorder``."""
    pm = make_plugin_manager(load_config().plugins)
    recorder = Recorder()
    pm.register(recorder, name="recorder")
    return pm, recorder


def _commands(parser: argparse.ArgumentParser) -> argparse._SubParsersAction[Any]:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def _shape(parser: argparse.ArgumentParser) -> dict[str, Any]:
    """Everything argparse knows of a parser's own options, and its help text."""
    actions = []
    for action in parser._actions:
        sub = isinstance(action, argparse._SubParsersAction)
        actions.append(
            (
                "subparsers" if sub else type(action).__name__,
                action.option_strings,
                action.dest,
                action.nargs,
                action.const,
                action.default,
                action.type,
                list(action.choices) if sub else action.choices,
                action.required,
                action.help,
                action.metavar,
                [(c.dest, c.help, c.metavar) for c in action._get_subactions()] if sub else None,
            )
        )
    groups = [
        (g.title, [a.dest for a in g._group_actions]) for g in parser._mutually_exclusive_groups
    ]
    return {
        "prog": parser.prog,
        "description": parser.description,
        "defaults": parser._defaults,
        "actions": actions,
        "exclusive": groups,
        "help": parser.format_help(),
    }


def _tree(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> dict[tuple, Any]:
    """``{command path: shape}`` for the parser and every sub-command under it."""
    shapes = {path: _shape(parser)}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                shapes.update(_tree(child, (*path, name)))
    return shapes


@pytest.fixture(autouse=True)
def _wide_help(monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")


class TestSameParsersAsBuiltAtOnce:
    def test_every_command_and_option_with_plugins(self):
        """Each command's lazily built parser (looked up as argparse does, one command per
        command line) equals the one built at once: options, defaults, handlers, help."""
        eager_pm, eager_rec = _plugin_manager()
        eager_parser = cli.build_parser(eager_pm, lazy=False)
        eager = _tree(eager_parser)
        names = list(_commands(eager_parser).choices)
        # installed plugins' commands (stepflow-ui's ``ui``) are compared too, when present
        assert {"run", "runs", "schedule", "hi", "hey"} <= set(names)
        lazy: dict[tuple, Any] = {}
        for name in names:
            pm, recorder = _plugin_manager()
            parser = cli.build_parser(pm)
            top = _shape(parser)
            assert top == eager[()]
            subtree = _tree(_commands(parser).choices[name], (name,))
            assert recorder.addoption_calls == (["hi", "hey"] if name in ("hi", "hey") else [name])
            lazy.update(subtree)
        lazy[()] = eager[()]
        assert lazy.keys() == eager.keys()
        for path, shape in eager.items():
            assert lazy[path] == shape, path
        # the recorder's option reached every command, built at once too
        assert eager_rec.addoption_calls == names

    def test_the_static_table_is_the_listing_built_at_once(self):
        """``BUILTIN_COMMANDS`` (name and help) is what the parsers' own ``add_parser`` calls
        list, in the same order, and ``stepflow --help`` prints the same text either way."""
        plain = argparse.ArgumentParser(prog="stepflow")
        sub = plain.add_subparsers()
        cli.add_builtin_commands(sub)
        listed = [(c.dest, c.help, c.metavar) for c in sub._get_subactions()]
        assert [(name, text) for name, text, _ in listed] == [
            (name, text) for name, text, _ in cli.BUILTIN_COMMANDS
        ]
        lazy = _commands(cli.build_parser())
        assert [(c.dest, c.help, c.metavar) for c in lazy._get_subactions()] == listed
        assert list(sub.choices) == [name for name, _, _ in cli.BUILTIN_COMMANDS]
        assert cli.build_parser().format_help() == cli.build_parser(lazy=False).format_help()

    @pytest.mark.parametrize(
        "argv",
        [
            ["run", "f.py:p", "--param", "a=1", "-x", "--workers", "3", "--regenerate"],
            ["run", "--resume", "last", "--capture", "quiet", "--backend", "s=process"],
            ["explain", "f.py:p", "s", "--json", "--home", "h"],
            ["cache", "prune", "--all", "--dry-run"],
            ["runs", "list", "--json", "--state", "failed", "-p", "m"],
            ["runs", "source", "last", "--to", "d", "--force"],
            ["logs", "r", "s", "--stream", "log"],
            ["models", "alias", "m", "production", "3"],
            ["schedule", "create", "n", "--pipeline", "p@2", "--cron", "* * * * *"],
            ["scheduler", "serve", "--once"],
            ["hey", "--loud", "--rec-hey"],
        ],
    )
    def test_parses_the_same(self, argv):
        """A command line parses to the same values either way."""
        pm, _ = _plugin_manager()
        eager = vars(cli.build_parser(pm, lazy=False).parse_args(argv))
        pm, _ = _plugin_manager()
        assert vars(cli.build_parser(pm).parse_args(argv)) == eager


class TestOnlyWhatRuns:
    def test_plain_help_imports_no_command_module(self):
        """``stepflow --help`` builds one parser from the table: no command's module."""
        code = (
            "import sys\n"
            "from stepflow._surfaces.cli import main\n"
            "try:\n"
            "    main(['--help'])\n"
            "except SystemExit:\n"
            "    pass\n"
            f"print(sorted(set({COMMAND_MODULES!r}) & set(sys.modules)), file=sys.stderr)\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
        assert "run a pipeline" in done.stdout and "the scheduling daemon" in done.stdout
        assert done.stderr.strip() == "[]"

    def test_a_command_imports_its_module_only(self, tmp_path):
        """``stepflow show --help`` builds ``show``'s parser; the modules of ``runs``,
        ``datasets`` and ``schedule`` stay unimported."""
        code = (
            "import sys\n"
            "from stepflow._surfaces.cli import main\n"
            "try:\n"
            "    main(['show', '--help'])\n"
            "except SystemExit:\n"
            "    pass\n"
            f"print(sorted(set({COMMAND_MODULES!r}) & set(sys.modules)), file=sys.stderr)\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path
        )
        assert "--format {text,dot,mermaid,json,svg}" in done.stdout, done.stderr
        assert done.stderr.strip() == "['stepflow._surfaces.commands']"

    def test_plugins_add_options_to_the_command_that_runs(self):
        """``stepflow_addoption`` is called for the command being parsed, not the others."""
        pm, recorder = _plugin_manager()
        args = cli.build_parser(pm).parse_args(["runs", "--rec-runs", "list"])
        assert args.rec_runs is True and args.runs_command == "list"
        assert recorder.addoption_calls == ["runs"]

    def test_walking_the_tree_builds_every_parser(self):
        """Code that walks the parsers (``choices.items()``) gets them all, finished."""
        pm, recorder = _plugin_manager()
        choices = _commands(cli.build_parser(pm)).choices
        parsers = dict(choices.items())
        assert all(isinstance(p, argparse.ArgumentParser) for p in parsers.values())
        assert choices.get("run") is parsers["run"] and choices.get("nope") is None
        assert "--home" in parsers["hi"]._option_string_actions
        assert sorted(recorder.addoption_calls) == sorted(parsers)


class Clash:
    """A plugin whose option for ``run`` is one ``run`` has already."""

    @stepflow.hookimpl
    def stepflow_addoption(self, parser: argparse.ArgumentParser, command: str) -> None:
        if command == "run":
            parser.add_argument("--workers")


class TestPluginOptionClash:
    def test_the_plugin_is_named_for_the_command_it_breaks(self):
        """An option clash is a ``PluginError`` naming the plugin, the command and the fix
        (it was argparse's traceback for every command); other commands still work."""
        pm = make_plugin_manager(load_config().plugins)
        pm.register(Clash(), name="clash")
        with pytest.raises(PluginError) as caught:
            cli.build_parser(pm).parse_args(["run", "f.py:p"])
        assert caught.value.plugin == "clash"
        assert str(caught.value) == (
            "plugin 'clash': stepflow_addoption(command='run'): argument --workers: "
            "conflicting option string: --workers; give the option another name, or block the "
            "plugin with -p no:NAME"
        )
        assert cli.build_parser(pm).parse_args(["show", "f.py:p"]).target == "f.py:p"


class TestLazySubParsers:
    def _sub(self) -> LazySubParsersAction:
        parser = argparse.ArgumentParser(prog="tool")
        parser.register("action", "parsers", LazySubParsersAction)
        return parser.add_subparsers(dest="command")

    def test_a_name_taken_is_refused_either_way(self):
        sub = self._sub()
        sub.add_lazy("go", help="go", build=lambda s: s.add_parser("go"), aliases=["g"])
        with pytest.raises(argparse.ArgumentError, match="conflicting subparser: go"):
            sub.add_parser("go")
        with pytest.raises(argparse.ArgumentError, match="conflicting subparser alias: g"):
            sub.add_parser("other", aliases=["g"])
        sub.add_parser("stay")
        with pytest.raises(argparse.ArgumentError, match="conflicting subparser: stay"):
            sub.add_lazy("stay", help="x", build=lambda s: None)

    def test_an_alias_builds_the_same_parser_once(self):
        sub = self._sub()
        built = []

        def build(s: LazySubParsersAction) -> None:
            built.append(1)
            s.add_parser("go", aliases=["g"]).add_argument("--far", action="store_true")

        sub.add_lazy("go", help="go", build=build, aliases=["g"])
        assert sub.choices["g"] is sub.choices["go"] and built == [1]
        assert sub.choices["go"].prog == "tool go"

    def test_a_build_that_adds_no_parser_is_named(self):
        sub = self._sub()
        sub.add_lazy("go", help="go", build=lambda s: None)
        with pytest.raises(RuntimeError, match="did not add the parser of command 'go'"):
            sub.choices["go"]
