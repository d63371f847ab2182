"""Resolve ``stepflow run TARGET`` to a ``Pipeline``.

TARGET forms: ``package.module:pipeline``, ``path/to/file.py:pipeline``, or a module or file
alone (every step in it). Published names (``NAME[@VERSION]``) are resolved before this, by
:mod:`stepflow._surfaces.schedcmd`.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from stepflow._authoring.loader import import_module_or_path, looks_like_path
from stepflow._authoring.step import is_step
from stepflow._pipeline import Pipeline
from stepflow.errors import TargetNotFoundError

__all__ = ["load_target"]

_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")


def load_target(text: str) -> tuple[Pipeline, list[str]]:
    """Import what ``text`` names; return its pipeline and the steps it targets.

    ``module:step`` means every step of the module, targeting that step (and so running
    only what it needs); the other forms target everything (an empty list).
    """
    text = text.strip()
    if not text:
        raise TargetNotFoundError("empty TARGET; give module:pipeline or path/to/file.py")
    module_part, sep, attr = text.rpartition(":") if ":" in text[2:] else (text, "", "")
    if _DRIVE.match(text) and not sep:
        module_part, attr = text, ""
    if not module_part:
        raise TargetNotFoundError(f"TARGET {text!r} has no module before ':'")
    if not _exists(module_part):
        raise TargetNotFoundError(
            f"TARGET {text!r}: no module or file named {module_part!r}; use "
            f"package.module:pipeline, path/to/file.py:pipeline, a module alone, or a "
            f"published name (`stepflow published list`)"
        )
    module = import_module_or_path(module_part)
    if not attr:
        return Pipeline.from_module(module), []
    try:
        obj = getattr(module, attr)
    except AttributeError:
        found = sorted(n for n, v in vars(module).items() if isinstance(v, Pipeline))
        hint = f"pipelines in it: {', '.join(found)}" if found else "it defines no Pipeline"
        raise TargetNotFoundError(
            f"module {module.__name__!r} has no attribute {attr!r}; {hint}"
        ) from None
    if isinstance(obj, Pipeline):
        return obj, []
    if is_step(obj):
        return Pipeline.from_module(module), [obj.spec.name]
    if isinstance(obj, list | tuple) and obj and all(is_step(s) for s in obj):
        return Pipeline(attr, list(obj)), []
    raise TargetNotFoundError(
        f"{text!r} is a {type(obj).__name__}, not a Pipeline, a step or a list of steps"
    )


def _exists(module_part: str) -> bool:
    if looks_like_path(module_part):
        return Path(module_part).is_file()
    # The command line has put the project folder on sys.path already. find_spec imports
    # the packages above the module, so their own errors surface here.
    try:
        return importlib.util.find_spec(module_part) is not None
    except ModuleNotFoundError as exc:
        if exc.name and module_part.startswith(exc.name + "."):
            return False  # a package on the way is missing: the target names nothing
        raise  # a package's __init__ imports something missing: an error in user code
    except ValueError:
        return False
