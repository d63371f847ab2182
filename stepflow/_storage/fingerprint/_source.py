"""What source code says: a file's functions and classes, parsed and normalized.

Independent of what any name is bound to, so that the result follows from a file's text alone
and can be kept on disk under a hash of that text (``_store``).
"""

from __future__ import annotations

import ast
import threading
import types
from typing import Any

import xxhash

#: Changes whenever the algorithm does, so keys made by an older stepflow never match.
_ALGORITHM = "stepflow-code-fingerprint-2"


def _hash(text: str) -> str:
    # surrogatepass: string constants may hold lone surrogates, which plain UTF-8 rejects.
    return xxhash.xxh3_128_hexdigest(text.encode("utf-8", "surrogatepass"))


# The records below are plain slotted classes, not NamedTuples: a NamedTuple costs about a
# quarter of a millisecond to define, and this package is imported on every run.


class _Import:
    """An import statement inside a function or class: it binds a name there, not globally."""

    __slots__ = ("attr", "bound", "level", "module", "top")

    def __init__(self, bound: str, module: str, attr: str, level: int, top: bool = False) -> None:
        #: the name it binds
        self.bound = bound
        #: the module it imports (relative to the package when ``level`` > 0)
        self.module = module
        #: ``from module import attr``; empty for ``import module``
        self.attr = attr
        self.level = level
        #: ``import a.b`` binds the top-level package ``a``
        self.top = top


class _Static:
    """What a function or class's code says, independent of what its names are bound to."""

    __slots__ = ("content", "imports", "refs", "source")

    def __init__(
        self,
        content: str,
        refs: tuple[tuple[str, ...], ...],
        source: bool,
        imports: tuple[_Import, ...] = (),
    ) -> None:
        #: digest of the normalized AST (or of the code object, when there is no source)
        self.content = content
        #: dotted names read by the code, e.g. ("helpers", "clean"), sorted
        self.refs = refs
        #: False when the code object stood in for missing source
        self.source = source
        #: imports inside the code; the names they bind resolve through them, not the globals
        self.imports = imports


class _NodeStatic:
    """What one function definition says, from the file's text alone (so it can be kept on
    disk under a hash of that text); ``_ast_static`` completes it with the compiled code."""

    __slots__ = ("body", "content", "head", "imports")

    def __init__(
        self,
        content: str,
        head: tuple[tuple[str, ...], ...],
        body: tuple[tuple[str, ...], ...],
        imports: tuple[_Import, ...],
    ) -> None:
        #: digest of the normalized AST
        self.content = content
        #: dotted names read outside the body (decorators, defaults, annotations), sorted
        self.head = head
        #: dotted names read in the body, sorted; only the compiled code can tell which of
        #: them are globals or closure variables rather than locals
        self.body = body
        self.imports = imports


class _FunctionEntry:
    """A function definition in a file."""

    __slots__ = ("as_helper", "as_root", "params")

    def __init__(
        self, params: tuple[str, ...], as_root: _NodeStatic, as_helper: _NodeStatic
    ) -> None:
        #: parameter names in ``co_varnames`` order, to tell same-named definitions apart
        self.params = params
        #: normalized as the step being fingerprinted: all its decorators dropped
        self.as_root = as_root
        #: normalized as a helper: only ``@step`` decorators dropped
        self.as_helper = as_helper


class _FileIndex:
    """A source file's function and class definitions, normalized, by position and name."""

    __slots__ = ("classes", "digest", "functions", "lines", "saved")

    def __init__(
        self,
        lines: list[str],
        digest: str,
        functions: dict[tuple[int, str], list[_FunctionEntry]],
        classes: dict[str, _Static],
    ) -> None:
        #: linecache's list for the file: a new list means new text
        self.lines = lines
        #: hash of the text (and of the analysis version) the entries were made from
        self.digest = digest
        #: (first line, name) -> the definitions there; a decorated one starts at its decorator
        self.functions = functions
        #: qualified name -> the class's normalized source (every definition of that name)
        self.classes = classes
        #: folders of the _Stores that hold this index already
        self.saved: set[str] = set()


#: One parse at a time: CPython 3.11 keeps the AST conversion's recursion depth in state that
#: threads share, and two threads parsing at once (steps keyed in parallel) can fail with
#: "SystemError: AST constructor recursion depth mismatch".
_PARSE_LOCK = threading.Lock()


def _analyse(filename: str, text: str, lines: list[str], digest: str) -> _FileIndex | None:
    """Parse a file and normalize every function and class in it.

    All of them at once, not only those asked for: the result is kept on disk per file, and a
    later process then parses nothing.
    """
    try:
        with _PARSE_LOCK:
            tree = ast.parse(text, filename)
    except (SyntaxError, ValueError):
        return None
    functions: dict[tuple[int, str], list[_FunctionEntry]] = {}
    classes: dict[str, list[ast.ClassDef]] = {}

    def index(body: list[ast.stmt], prefix: str) -> None:
        for node in body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                # co_firstlineno of a decorated function is its first decorator's line.
                first = min([d.lineno for d in node.decorator_list] + [node.lineno])
                functions.setdefault((first, node.name), []).append(_function_entry(node))
                index(node.body, f"{prefix}{node.name}.<locals>.")
            elif isinstance(node, ast.ClassDef):
                classes.setdefault(f"{prefix}{node.name}", []).append(node)
                index(node.body, f"{prefix}{node.name}.")
            else:
                # Definitions nested in if/for/with/try blocks keep the same qualname prefix.
                for field in ("body", "orelse", "finalbody", "handlers", "cases"):
                    inner = getattr(node, field, None)
                    if isinstance(inner, list):
                        index(inner, prefix)

    index(tree.body, "")
    class_statics = {name: _class_node_static(nodes) for name, nodes in classes.items()}
    return _FileIndex(lines, digest, functions, class_statics)


def _is_docstring(stmt: ast.stmt) -> bool:
    return (
        isinstance(stmt, ast.Expr)
        and isinstance(stmt.value, ast.Constant)
        and isinstance(stmt.value.value, str)
    )


def _is_step_decorator(node: ast.expr) -> bool:
    # ``@step``, ``@step(...)``, ``@stepflow.step(...)``: the step's options are not its code
    # (options that change results are keyed elsewhere). The storage layer cannot import the
    # authoring layer, hence the name test.
    if isinstance(node, ast.Call):
        node = node.func
    return (isinstance(node, ast.Name) and node.id == "step") or (
        isinstance(node, ast.Attribute) and node.attr == "step"
    )


class _Dumper:
    """Writes an AST like ``ast.dump(annotate_fields=False, include_attributes=False)``, without
    docstrings, and collects the dotted names the code reads."""

    def __init__(self) -> None:
        self.out: list[str] = []
        self.refs: list[tuple[str, ...]] = []
        self.imports: list[_Import] = []

    def node(self, node: ast.AST, record: bool = True) -> None:
        # Hot in a fresh process (every step's AST goes through it): exact type tests and
        # one method call per node.
        out = self.out
        kind = type(node)
        if kind in _CONTEXTS:
            out.append(_CONTEXTS[kind])
            return
        out.append(kind.__name__)
        out.append("(")
        if record:
            if kind is ast.Name:
                if type(node.ctx) is ast.Load:  # type: ignore[attr-defined]
                    self.refs.append((node.id,))  # type: ignore[attr-defined]
            elif kind is ast.Attribute:
                chain: list[str] = [node.attr]  # type: ignore[attr-defined]
                base = node.value  # type: ignore[attr-defined]
                while type(base) is ast.Attribute:
                    chain.append(base.attr)
                    base = base.value
                if type(base) is ast.Name:
                    chain.append(base.id)
                    self.refs.append(tuple(reversed(chain)))
                    record = False  # the rest of the chain is recorded already
        if kind is ast.Import:
            for alias in node.names:  # type: ignore[attr-defined]
                # ``import a.b`` binds ``a`` (after importing a.b); ``import a.b as x``, a.b.
                bound = alias.asname or alias.name.partition(".")[0]
                self.imports.append(_Import(bound, alias.name, "", 0, alias.asname is None))
        elif kind is ast.ImportFrom:
            for alias in node.names:  # type: ignore[attr-defined]
                bound = alias.asname or alias.name
                module = node.module or ""  # type: ignore[attr-defined]
                self.imports.append(_Import(bound, module, alias.name, node.level))  # type: ignore[attr-defined]
        defines = kind in _DEFINITIONS
        for field in node._fields:
            value = getattr(node, field, None)
            if type(value) is list:
                if defines and field == "body" and value and _is_docstring(value[0]):
                    value = value[1:]
                elif defines and field == "decorator_list":
                    value = [d for d in value if not _is_step_decorator(d)]
                out.append("[")
                for item in value:
                    if isinstance(item, ast.AST):
                        self.node(item, record)
                    else:
                        out.append(repr(item))
                    out.append(",")
                out.append("],")
            elif isinstance(value, ast.AST):
                self.node(value, record)
                out.append(",")
            else:
                out.append(repr(value))
                out.append(",")
        out.append(")")

    def value(self, value: Any) -> None:
        if isinstance(value, ast.AST):
            self.node(value)
        elif isinstance(value, list):
            self.out.append("[")
            for item in value:
                self.value(item)
                self.out.append(",")
            self.out.append("]")
        else:
            self.out.append(repr(value))


_CONTEXTS = {ast.Load: "Load()", ast.Store: "Store()", ast.Del: "Del()"}
_DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def _code_names(code: types.CodeType) -> set[str]:
    """Every global or attribute name in ``code`` and the code nested in it."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _code_names(const)
    return names


def _function_entry(node: ast.FunctionDef | ast.AsyncFunctionDef) -> _FunctionEntry:
    args = node.args
    # co_varnames order: positional and keyword-only parameters, then *args, then **kwargs.
    params = [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)]
    params += [a.arg for a in (args.vararg, args.kwarg) if a is not None]
    as_root = _node_static(node, root=True)
    # Only a decorator other than @step makes the two forms differ.
    helper_differs = any(not _is_step_decorator(d) for d in node.decorator_list)
    as_helper = _node_static(node, root=False) if helper_differs else as_root
    return _FunctionEntry(tuple(params), as_root, as_helper)


def _node_static(node: ast.FunctionDef | ast.AsyncFunctionDef, root: bool) -> _NodeStatic:
    dumper = _Dumper()
    out = dumper.out
    out.append(f"{type(node).__name__}(")
    body_refs: list[tuple[str, ...]] = []
    for field in node._fields:
        value = getattr(node, field, None)
        if field == "decorator_list":
            # The step's own decorators are @step and its options, not code.
            value = [] if root else [d for d in value if not _is_step_decorator(d)]
        if field == "body":
            if value and _is_docstring(value[0]):
                value = value[1:]
            outer, dumper.refs = dumper.refs, body_refs
            dumper.value(value)
            dumper.refs = outer
        else:
            dumper.value(value)
        out.append(",")
    out.append(")")
    return _NodeStatic(
        _hash("".join(out)),
        tuple(sorted(set(dumper.refs))),
        tuple(sorted(set(body_refs))),
        tuple(dumper.imports),
    )


def _class_node_static(nodes: list[ast.ClassDef]) -> _Static:
    # A class defined twice under one name (in if/else branches) counts both ways: the
    # surplus can only cause a miss.
    dumper = _Dumper()
    for node in nodes:
        dumper.node(node)
    refs = tuple(sorted(set(dumper.refs)))
    return _Static(_hash("".join(dumper.out)), refs, source=True, imports=tuple(dumper.imports))
