"""Import user code named on the command line: ``pkg.module``, ``path/to/file.py``.

Files are imported the way pytest's ``prepend`` import mode does it: the folder that holds
the file (or the top of its package) goes first on ``sys.path`` and the module is imported
by its dotted name, so worker processes can import it again by that name.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

from stepflow.errors import TargetNotFoundError

__all__ = ["import_module_or_path", "looks_like_path"]


def looks_like_path(text: str) -> bool:
    return text.endswith(".py") or "/" in text or "\\" in text


def import_module_or_path(text: str) -> ModuleType:
    """Import a module by dotted name or by the path of its ``.py`` file."""
    if looks_like_path(text):
        return _import_path(Path(text))
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        # Like ``python -m``: modules in the working folder are importable.
        sys.path.insert(0, str(Path.cwd()))
    try:
        return importlib.import_module(text)
    except ModuleNotFoundError as exc:
        if exc.name and text.startswith(exc.name) and Path(text.replace(".", "/") + ".py"):
            raise TargetNotFoundError(
                f"cannot import module {text!r}: {exc}; check the name, or give a file path "
                f"such as path/to/{text.split('.')[-1]}.py"
            ) from exc
        raise


def _import_path(path: Path) -> ModuleType:
    path = path.resolve()
    if not path.is_file():
        raise TargetNotFoundError(f"file not found: {path}")
    if path.suffix != ".py":
        raise TargetNotFoundError(f"{path} is not a Python file (.py)")
    parts = [path.stem]
    folder = path.parent
    while (folder / "__init__.py").is_file():
        parts.insert(0, folder.name)
        folder = folder.parent
    name = ".".join(parts)
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    existing = sys.modules.get(name)
    if existing is not None and Path(getattr(existing, "__file__", "") or "").resolve() != path:
        raise TargetNotFoundError(
            f"cannot import {path} as module {name!r}: another module of that name is already "
            f"imported from {existing.__file__}; rename the file"
        )
    return importlib.import_module(name)
