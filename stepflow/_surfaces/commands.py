"""The built-in commands (``run``, ``show``, ``runs``, ``cache``, ...) as a plugin of the
``stepflow_add_commands`` hook, the way a third party adds its own."""

from __future__ import annotations

import argparse
from typing import Any

from stepflow._surfaces import cli
from stepflow.hookspecs import hookimpl

#: the name ``stepflow plugins`` lists the built-in commands under
PLUGIN_NAME = "stepflow.commands"


@hookimpl(tryfirst=True)
def stepflow_add_commands(subparsers: argparse._SubParsersAction[Any]) -> None:
    cli.add_builtin_commands(subparsers)
