"""Import user code named on the command line: ``pkg.module``, ``path/to/file.py``.

Files are imported the way pytest's ``prepend`` import mode does it: the folder that holds
the file (or the top of its package) goes first on ``sys.path`` and the module is imported
by its dotted name, so worker processes can import it again by that name.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from pathlib import Path
from types import ModuleType

from stepflow.errors import TargetNotFoundError

__all__ = ["import_module_or_path", "looks_like_path", "user_code_traceback"]

# Frames in these files are the import machinery, never the user's code.
_STEPFLOW_DIR = str(Path(__file__).resolve().parent.parent) + os.sep
_IMPORTLIB_DIR = str(Path(importlib.__file__).resolve().parent) + os.sep


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
        # Only the target itself (or a package above it) missing is a bad target; a module
        # that the user's code imports and that is missing is an error in that code.
        if exc.name and (text == exc.name or text.startswith(exc.name + ".")):
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


def user_code_traceback(exc: BaseException) -> str:
    """``exc`` formatted from the first frame of the user's code on.

    Importing a pipeline runs stepflow's loader and importlib before the user's module; those
    frames say nothing about the user's mistake, so they are cut, as a failing step's
    traceback is cut to the step function. A ``SyntaxError`` is raised by the compiler inside
    importlib, so it keeps no frame at all and shows its file, line and caret. When no frame
    of user code is found and stepflow itself raised, the whole traceback is kept: that is
    stepflow's bug, and its frames are the evidence.
    """
    te = traceback.TracebackException.from_exception(exc)
    frames = list(te.stack)
    first_user = next((i for i, f in enumerate(frames) if not _is_internal(f.filename)), None)
    if first_user is not None:
        frames = frames[first_user:]
    elif frames and frames[-1].filename.startswith(_STEPFLOW_DIR):
        return "".join(te.format())
    else:
        frames = []
    te.stack = traceback.StackSummary.from_list(frames)
    # Chained exceptions keep their own frames; only importlib's bootstrap frames are noise.
    seen: set[int] = {id(te)}
    chained = te.__cause__ or te.__context__
    while chained is not None and id(chained) not in seen:
        seen.add(id(chained))
        chained.stack = traceback.StackSummary.from_list(
            [f for f in chained.stack if not f.filename.startswith("<frozen importlib")]
        )
        chained = chained.__cause__ or chained.__context__
    return "".join(te.format())


def _is_internal(filename: str) -> bool:
    return filename.startswith((_STEPFLOW_DIR, _IMPORTLIB_DIR)) or filename.startswith(
        "<frozen importlib"
    )
