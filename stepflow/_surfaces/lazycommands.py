"""Sub-commands whose parsers are built when they are first looked up.

``stepflow --help`` lists every command from its name and one-line help alone, and a run
builds the parser of the one command it runs (importing that command's module) instead of
the ~30 parsers of every command: building a parser costs its ``argparse`` calls and a
``gettext`` look-up per string, and the commands' modules their imports.

Code that walks the parser tree (``choices.values()``, ``.items()``) gets every parser
built, as before.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator, Sequence
from typing import Any

__all__ = ["Build", "LazySubParsersAction"]

#: adds a deferred command's parser: calls ``subparsers.add_parser(NAME, ...)`` once
Build = Callable[["LazySubParsersAction"], None]

#: what a deferred command's entry holds until its parser is built
_DEFERRED: Any = object()


class _Parsers(dict[str, Any]):
    """``{command name or alias: parser}``, a deferred parser built on first look-up.

    Iteration, ``in`` and ``len`` see every name without building anything (``argparse``
    checks a chosen command with ``in`` and lists the names in its "invalid choice" error).
    """

    def __init__(self, action: LazySubParsersAction) -> None:
        super().__init__()
        self._action = action
        #: primary name -> the function that adds its parser
        self._builds: dict[str, Build] = {}
        #: name or alias -> primary name, for deferred entries
        self._primary: dict[str, str] = {}
        #: called once per parser on its first look-up, with the names it goes by
        self.finish: Callable[[argparse.ArgumentParser, list[str]], None] | None = None
        self._finished: set[int] = set()

    def defer(self, name: str, aliases: Sequence[str], build: Build) -> None:
        self._builds[name] = build
        for key in (name, *aliases):
            self._primary[key] = name
            dict.__setitem__(self, key, _DEFERRED)

    def __getitem__(self, name: str) -> argparse.ArgumentParser:
        parser = dict.__getitem__(self, name)
        if parser is _DEFERRED:
            parser = self._action._build(self._primary[name])
        if self.finish is not None and id(parser) not in self._finished:
            self._finished.add(id(parser))
            names = [key for key in self if dict.__getitem__(self, key) is parser]
            self.finish(parser, names)
        return parser

    def get(self, name: str, default: Any = None) -> Any:
        return self[name] if name in self else default

    def values(self) -> list[argparse.ArgumentParser]:
        return [self[name] for name in list(self)]

    def items(self) -> list[tuple[str, argparse.ArgumentParser]]:
        return [(name, self[name]) for name in list(self)]

    def __iter__(self) -> Iterator[str]:
        return iter(list(dict.keys(self)))


class LazySubParsersAction(argparse._SubParsersAction):
    """``add_subparsers()`` of a parser that registered it as its ``("action", "parsers")``;
    ``add_parser`` works as usual, ``add_lazy`` lists a command now and builds it later."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._name_parser_map = self.choices = _Parsers(self)
        self._building: str | None = None

    @property
    def parsers(self) -> _Parsers:
        return self._name_parser_map

    def add_lazy(self, name: str, *, help: str, build: Build, aliases: Sequence[str] = ()) -> None:
        """List command ``name`` (and its ``aliases``) with ``help``; ``build(self)`` adds its
        parser with ``self.add_parser(name, ...)`` when it is first looked up.

        :raises argparse.ArgumentError: the name or an alias is taken, as ``add_parser``.
        """
        for key in (name, *aliases):
            if key in self._name_parser_map:
                kind = "subparser" if key == name else "subparser alias"
                raise argparse.ArgumentError(self, f"conflicting {kind}: {key}")
        self._choices_actions.append(self._ChoicesPseudoAction(name, list(aliases), help))
        self.parsers.defer(name, aliases, build)

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        if name != self._building:
            return super().add_parser(name, **kwargs)
        # The deferred command's own parser: add_lazy listed it and its aliases already.
        if kwargs.get("prog") is None:
            kwargs["prog"] = f"{self._prog_prefix} {name}"
        kwargs.pop("help", None)
        aliases = kwargs.pop("aliases", ())
        parser = self._parser_class(**kwargs)
        for key in (name, *aliases):
            dict.__setitem__(self.parsers, key, parser)
        return parser

    def _build(self, name: str) -> argparse.ArgumentParser:
        build = self.parsers._builds.pop(name)
        self._building = name
        try:
            build(self)
        finally:
            self._building = None
        parser = dict.__getitem__(self.parsers, name)
        if parser is _DEFERRED:
            raise RuntimeError(f"{build!r} did not add the parser of command {name!r}")
        return parser
