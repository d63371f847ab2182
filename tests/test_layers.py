"""Arrows only point down (DESIGN §3): a test over stepflow's import graph.

Every module of ``stepflow/`` lives in exactly one layer. Bottom to top:

1. **infrastructure** -- ``errors``, ``_sentinels``, ``_slotted``, ``_version``, ``_humanize``,
   ``_config``, ``hookspecs``, ``_pluginmanager``: imports no other layer. The plugin manager
   names the built-in plugins by module path (strings), it does not import them.
2. **storage** -- ``_storage/``: datastore, serializers, cache index, run records, registries.
3. **authoring** -- ``_authoring/``: ``@step``, markers, parsing. Imports only infrastructure
   (storage sits beside it, not under it: authoring "talks to nothing below").
4. **planning** -- ``_planning/``: the DAG, plans, cache keys; reads storage.
5. **execution** -- ``_execution/`` and ``worker``: the run loop, pools, the worker.
6. **plugins** -- ``_plugins/``: the built-in plugins (backends, datastores and serializers,
   registry pins, the terminal reporter), which implement hooks on top of execution.
7. **api** -- the public façade: ``stepflow`` itself, ``_pipeline`` (``Pipeline.run`` drives
   execution), ``datasets``, ``models``.
8. **surfaces** -- ``_surfaces/`` (the CLI), ``testing``, ``__main__``: may import anything.

A module may import, at run time, only from its own layer and the layers its row allows below
it. "At run time" is any import not under ``if TYPE_CHECKING:`` -- imports inside functions
count, since they run too. Besides, no two packages (a subpackage or top-level module of
``stepflow``) may import each other at run time, whichever their layers.
"""

from __future__ import annotations

import ast
from pathlib import Path

import stepflow

LAYERS = (
    "infrastructure",
    "storage",
    "authoring",
    "planning",
    "execution",
    "plugins",
    "api",
    "surfaces",
)

#: module or package → layer; the longest matching prefix wins
LAYER_OF = {
    "stepflow.errors": "infrastructure",
    "stepflow._sentinels": "infrastructure",
    "stepflow._slotted": "infrastructure",
    "stepflow._version": "infrastructure",
    "stepflow._humanize": "infrastructure",
    "stepflow._config": "infrastructure",
    "stepflow.hookspecs": "infrastructure",
    "stepflow._pluginmanager": "infrastructure",
    "stepflow._storage": "storage",
    "stepflow._authoring": "authoring",
    "stepflow._planning": "planning",
    "stepflow._execution": "execution",
    "stepflow.worker": "execution",
    "stepflow._plugins": "plugins",
    "stepflow": "api",
    "stepflow._pipeline": "api",
    "stepflow.datasets": "api",
    "stepflow.models": "api",
    "stepflow.backends": "api",
    "stepflow._scheduling": "api",
    "stepflow.published": "api",
    "stepflow.schedules": "api",
    "stepflow._surfaces": "surfaces",
    "stepflow.testing": "surfaces",
    "stepflow.__main__": "surfaces",
}

#: the layers each layer may import at run time, besides its own: every layer below it,
#: except that authoring does not reach storage
ALLOWED = {layer: set(LAYERS[:i]) for i, layer in enumerate(LAYERS)}
ALLOWED["authoring"] = {"infrastructure"}


def layer_of(module: str) -> str | None:
    if module in LAYER_OF:
        return LAYER_OF[module]
    parts = module.split(".")
    # down to the subpackage: the package itself (its __init__) is matched exactly, above
    for n in range(len(parts) - 1, 1, -1):
        layer = LAYER_OF.get(".".join(parts[:n]))
        if layer is not None:
            return layer
    return None


def unit_of(module: str) -> str:
    """The package a module belongs to: ``stepflow._storage`` for ``stepflow._storage.index``,
    ``stepflow.worker`` for a top-level module."""
    return ".".join(module.split(".")[:2])


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the nodes under ``if TYPE_CHECKING:`` (not its ``else``)."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in (
            "TYPE_CHECKING",
            "typing.TYPE_CHECKING",
        ):
            for child in node.body:
                skipped.update(id(n) for n in ast.walk(child))
    return skipped


def runtime_imports(root: Path, path: Path) -> list[tuple[int, str]]:
    """(line, imported stepflow module) for each run-time import in the file at ``path``."""
    importer = module_name(root, path)
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    skipped = _type_checking_nodes(tree)
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = importer.split(".")
                if not is_package:
                    base.pop()
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            for alias in node.names:
                # `from stepflow import hookspecs` imports the module stepflow.hookspecs;
                # `from stepflow import Pipeline` goes through the package's __init__.
                sub = root.parent.joinpath(*f"{target}.{alias.name}".split("."))
                if sub.with_suffix(".py").is_file() or (sub / "__init__.py").is_file():
                    found.append((node.lineno, f"{target}.{alias.name}"))
                else:
                    found.append((node.lineno, target))
    return [(line, name) for line, name in found if name.split(".")[0] == root.name]


def violations(root: Path) -> list[str]:
    """Every upward import, unknown module and pair of packages importing each other."""
    problems = []
    edges: dict[tuple[str, str], str] = {}
    for path in sorted(root.rglob("*.py")):
        importer = module_name(root, path)
        layer = layer_of(importer)
        if layer is None:
            problems.append(
                f"{path}: module {importer} is in no layer; add it to LAYER_OF in "
                f"tests/test_layers.py (and to the layers in docs/explanation/concepts.md)"
            )
            continue
        for line, target in runtime_imports(root, path):
            where = f"{path.relative_to(root.parent)}:{line}"
            target_layer = layer_of(target)
            if target_layer is not None and target_layer != layer:
                if target_layer not in ALLOWED[layer]:
                    allowed = ", ".join(x for x in LAYERS if x in ALLOWED[layer]) or "nothing"
                    problems.append(
                        f"{where}: {importer} ({layer} layer) imports {target} "
                        f"({target_layer} layer) at run time; {layer} may import only: "
                        f"{allowed}. Import it under `if TYPE_CHECKING:`, or move the code "
                        f"that needs it up a layer"
                    )
            a, b = unit_of(importer), unit_of(target)
            if a != b and a != root.name and b != root.name:
                edges.setdefault((a, b), where)
    for (a, b), where in sorted(edges.items()):
        if a < b and (b, a) in edges:
            problems.append(
                f"packages {a} and {b} import each other at run time ({where} and "
                f"{edges[b, a]}); one of them must not depend on the other"
            )
    return problems


def test_arrows_only_point_down() -> None:
    root = Path(stepflow.__file__).parent
    problems = violations(root)
    assert not problems, "imports against the layers (DESIGN §3):\n" + "\n".join(problems)


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "stepflow"
    for name, text in {"__init__.py": "", **files}.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_a_function_local_upward_import_is_named_with_its_line_and_layers(tmp_path: Path) -> None:
    root = _package(
        tmp_path,
        {
            "_planning/__init__.py": "",
            "_planning/p.py": "def run():\n    from stepflow._execution import r\n",
            "_execution/__init__.py": "",
            "_execution/r.py": "",
        },
    )
    [problem] = violations(root)
    assert problem.startswith("stepflow/_planning/p.py:2: stepflow._planning.p (planning layer)")
    assert "imports stepflow._execution.r (execution layer) at run time" in problem


def test_type_checking_imports_are_free(tmp_path: Path) -> None:
    root = _package(
        tmp_path,
        {
            "_storage/__init__.py": "",
            "_storage/s.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n"
                "    from stepflow._execution.r import R\n"
            ),
            "_execution/__init__.py": "",
            "_execution/r.py": "from stepflow._storage import s\n",
        },
    )
    assert violations(root) == []


def test_two_packages_importing_each_other_are_named(tmp_path: Path) -> None:
    root = _package(
        tmp_path,
        {
            "worker.py": "from stepflow._execution.pool import Pool\n",
            "_execution/__init__.py": "",
            "_execution/pool.py": "import stepflow.worker\nclass Pool: ...\n",
        },
    )
    [problem] = violations(root)
    assert problem.startswith("packages stepflow._execution and stepflow.worker import each")


def test_a_module_in_no_layer_is_named(tmp_path: Path) -> None:
    root = _package(tmp_path, {"_new.py": ""})
    [problem] = violations(root)
    assert "module stepflow._new is in no layer" in problem
