"""Code fingerprints: the part of a step's cache key that says what its code is.

A step's fingerprint covers its function's normalized AST (comments, docstrings, formatting and
line numbers do not count; type annotations do, since they define ports) and, transitively, the
user-code functions, classes, modules and module-level values it references. Third-party code
counts by its distribution's version (``dist:pandas``), the standard library by the Python version
(``python:3.11``), builtins not at all. stepflow itself counts as third party, by its version.

What the fingerprint is made of
    Everything that goes in is a *piece*: a user function or class (its normalized AST), a user
    module referenced as a whole (its source text), a value (a canonical encoding), or an
    external library. Pieces reference each other through *edges*: the dotted name written in the
    code (``helpers.clean``) and what it resolved to. ``Fingerprint.parts`` maps each piece's
    qualified name to its own digest (a version for libraries), so ``stepflow explain`` can say
    which function, constant or library changed. A lambda is named after the global (or
    member) it is reached through: ``pkg.helpers.TRANSFORM``, not ``pkg.helpers.<lambda>``.
    ``Fingerprint.digest`` hashes the whole graph in discovery order with pieces numbered
    rather than named, so importing the same files under other module names (``flow`` or
    ``pkg.flow``) gives the same digest.

Known limits, each erring towards a miss rather than a wrong hit where it can
    - Renaming a local variable changes the fingerprint: names are part of the AST, and telling
      a rename from a change of meaning is not worth the risk.
    - A name that is local in one nested scope and global in another is resolved as a global
      too, which can only add dependencies.
    - Values count by content, never by ``repr`` (which elides the middle of a large array or
      frame, and shows an address for an object without a repr of its own). Simple constants
      (None, bool, int, float, complex, str, bytes, and tuples, lists, dicts, sets of them)
      by a canonical encoding, the cheap path: every NaN alike, ``-0.0`` apart from ``0.0``.
      Lists, tuples and dicts of up to 64 other items, and instances of user classes, member
      by member (each member a value, function or class of its own, named ``TABLES['a']``,
      ``CONFIG.k``). Anything else (arrays, frames, numpy scalars, larger containers, sets,
      library objects) by ``hashing.hash_value``, like an input, plus its library's version;
      there, a function inside counts by reference (pickled by name), not by its code. Data
      globals are hashed again on each reuse check within a process, so a large one costs its
      hashing time per step per run: pass data as inputs or parameters, not as globals.
    - Code referred to as a value (a bound method, a ``functools.partial``, a builtin, a
      wrapper, an enum member) counts by its type and ``repr`` with addresses removed, plus
      edges to what it refers to; so does an object that cannot be hashed by content (a lock,
      an open file).
    - Function default values and decorators count by their source text, not by the values
      computed when the ``def`` ran.
    - Lambdas and functions without source (``exec``, some REPLs) count by their code object,
      which changes across Python versions (the Python version is in the key anyway), and which
      resolves every global name the code uses, attribute names included.
    - Source is read through :mod:`linecache`; a file edited after its module was imported, in
      the same process, can be read in its new form.
    - A module found in site-packages without distribution metadata counts as ``unknown``.
    - A class counts by its source: methods replaced on a class object at run time are not seen.
    - Imports inside a function are followed too. A library imported there is only located,
      never imported (a fully cached run must not pay for importing pandas); a user module
      imported there is imported while fingerprinting, as running the step would.

Reuse within a process
    Each function's normalized AST and the names it reads are cached with the function (and
    its ``__code__``), each file's parsed tree by file, library versions once. A whole result is
    reused while every lookup it made still finds the same object (globals, closure cells,
    module attributes, local imports) and every mutable value it encoded still encodes the
    same; so a global rebound in a running process (a notebook cell that sets
    ``THRESHOLD = 4``) or a list changed in place is seen on the next call.

Reuse across processes
    Given ``cache_dir`` (``<home>/fingerprints``, passed by the cache-key code), the parts that
    follow from files alone are kept there: every function and class of a source file,
    normalized, under a hash of the file's text, and library versions under a signature of
    the import path (see ``_Store``). A later process then reads a file's text and hashes it
    instead of parsing it. Everything that resolves names (globals, module constants, closure
    variables, which file an import finds) is done again in each process: a constant that a
    module computes from an environment variable must count by this process's value.
"""

from __future__ import annotations

import ast
import contextvars
import enum
import functools
import importlib.util
import linecache
import logging
import os
import re
import site
import struct
import sys
import sysconfig
import threading
import types
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import attrs
import xxhash

from stepflow._storage.hashing import hash_value
from stepflow._storage.kept import KeptFiles, import_path_signature

if TYPE_CHECKING:
    import importlib.metadata

__all__ = ["Fingerprint", "fingerprint"]

#: Changes whenever the algorithm does, so keys made by an older stepflow never match.
_ALGORITHM = "stepflow-code-fingerprint-2"


@attrs.frozen
class Fingerprint:
    """The code fingerprint of a step function."""

    #: hex digest of everything below, the value that goes into the cache key
    digest: str
    #: qualified name -> digest of each piece that went in (a version for ``dist:`` and
    #: ``python:`` pieces), in discovery order starting with the function itself
    parts: Mapping[str, str] = attrs.field(converter=dict, hash=False)


def _hash(text: str) -> str:
    # surrogatepass: string constants may hold lone surrogates, which plain UTF-8 rejects.
    return xxhash.xxh3_128_hexdigest(text.encode("utf-8", "surrogatepass"))


# --- where code comes from ---------------------------------------------------------------

_USER = "user"
_NOTHING = "nothing"
#: an external piece: (label, version) pairs, e.g. (("dist:pandas", "2.2.2"),)
_External = tuple[tuple[str, str], ...]
_Kind = str | _External

_STEPFLOW_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@functools.cache
def _roots() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Folder prefixes of installed packages and of the standard library."""
    paths = sysconfig.get_paths()
    installed = {paths["purelib"], paths["platlib"]}
    # Some virtualenv versions ship a ``site`` without these functions.
    if hasattr(site, "getsitepackages"):
        installed.update(site.getsitepackages())
    if hasattr(site, "getusersitepackages"):
        installed.add(site.getusersitepackages())
    # Distributions that patch sys.path (Debian's dist-packages) are still installed code.
    installed.update(
        p for p in sys.path if os.path.basename(p) in ("site-packages", "dist-packages")
    )
    stdlib = {paths["stdlib"], paths["platstdlib"]}

    def prefixes(dirs: Iterable[str]) -> tuple[str, ...]:
        return tuple(sorted({_norm(d) + os.sep for d in dirs if d}))

    return prefixes(installed), prefixes(stdlib)


@functools.lru_cache(maxsize=4096)
def _norm(path: str) -> str:
    return os.path.normcase(os.path.realpath(path))


@functools.lru_cache(maxsize=4096)
def _path_kind(path: str) -> str:
    """``stepflow``, ``installed``, ``stdlib`` or ``user`` for a source file."""
    real = _norm(path)
    if real.startswith(_norm(_STEPFLOW_DIR) + os.sep):
        return "stepflow"
    installed, stdlib = _roots()
    # Installed packages first: site-packages usually lies inside the stdlib folder.
    if real.startswith(installed):
        return "installed"
    if real.startswith(stdlib):
        return "stdlib"
    return _USER


@functools.lru_cache(maxsize=4096)
def _installed_distributions(path: str) -> _External:
    """The distributions of an installed file, from its top-level folder under site-packages."""
    real = _norm(path)
    for prefix in _roots()[0]:
        if real.startswith(prefix):
            first = real[len(prefix) :].split(os.sep, 1)[0]
            # six.py, _cffi_backend.cpython-311-x86_64-linux-gnu.so -> six, _cffi_backend
            return _distributions(first.split(".", 1)[0])
    return _distributions(os.path.basename(real).split(".", 1)[0])


def _python() -> _External:
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    return ((f"python:{version}", version),)


@functools.cache
def _packages_distributions() -> Mapping[str, list[str]]:
    import importlib.metadata

    # Scans every installed distribution (about a quarter of a second), so only as a fallback.
    return importlib.metadata.packages_distributions()


@functools.cache
def _distributions(top: str) -> _External:
    """The distributions that provide the top-level import name ``top``, with versions."""
    store = _active_store.get()
    if store is None:
        return _find_distributions(top)
    # Before reading any metadata: an install that lands after this changes the signature.
    signature, settled = import_path_signature()
    found = store.distributions(signature, top)
    if found is None:
        found = _find_distributions(top)
        if settled:
            store.add_distributions(signature, top, found)
    return found


def _find_distributions(top: str) -> _External:
    if top == "stepflow":
        from stepflow._version import __version__

        return (("dist:stepflow", __version__),)
    # Reads installed metadata (a few milliseconds per library): persisted by _Store.
    import importlib.metadata

    try:
        # Fast path: most distributions are named like their import (pandas, numpy, joblib).
        dist = importlib.metadata.distribution(top)
    except importlib.metadata.PackageNotFoundError:
        dist = None
    if dist is not None and _provides(dist, top):
        return ((f"dist:{dist.metadata['Name']}", dist.version),)
    names = sorted(set(_packages_distributions().get(top, ())))
    if not names:
        return ((f"dist:{top}", "unknown"),)
    return tuple((f"dist:{name}", importlib.metadata.version(name)) for name in names)


def _provides(dist: importlib.metadata.Distribution, top: str) -> bool:
    # A distribution named like the import might be an unrelated one (PyPI's ``attr`` is not
    # ``attrs``), so check that it really installs that top-level name.
    listed = dist.read_text("top_level.txt")
    if listed is not None:
        return top in listed.split()
    record = "\n" + (dist.read_text("RECORD") or "")
    return f"\n{top}/" in record or f"\n{top}." in record


def _module_kind(name: str) -> _Kind:
    """How code from the module called ``name`` counts: user code, external, or nothing."""
    module = sys.modules.get(name)
    if module is None:
        # Not imported (a pickled function's home, say): not cached, it may be imported later.
        return _uncached_module_kind(name, None)
    file = getattr(module, "__file__", None)
    # Keyed by file too: one name can be imported from different places in one process.
    return _cached_module_kind(name, file if isinstance(file, str) else None)


@functools.lru_cache(maxsize=4096)
def _cached_module_kind(name: str, file: str | None) -> _Kind:
    return _uncached_module_kind(name, file)


def _uncached_module_kind(name: str, file: str | None) -> _Kind:
    top = name.partition(".")[0]
    if top == "stepflow":
        return _distributions("stepflow")
    if name == "builtins":
        return _NOTHING
    module = sys.modules.get(name)
    if file is not None:
        kind = _path_kind(file)
    elif name in sys.builtin_module_names or top in sys.stdlib_module_names:
        return _python()
    elif module is not None and getattr(module, "__path__", None):
        # A namespace package: where its folders are tells.
        kind = _path_kind(next(iter(module.__path__)))
    else:
        # Not imported: a function's code is then judged by its own file.
        return _USER
    if kind == "installed":
        return _installed_distributions(file) if file is not None else _distributions(top)
    if kind == "stdlib":
        return _python()
    if kind == "stepflow":
        return _distributions("stepflow")
    return _USER


def _function_kind(func: types.FunctionType) -> _Kind:
    file = func.__code__.co_filename
    if not file.startswith("<"):
        kind = _path_kind(file)
        if kind == _USER:
            return _USER
        if kind == "stdlib":
            return _python()
        if kind == "stepflow":
            return _distributions("stepflow")
        # By the file, not __module__: a library's wrapper copies its __module__ from the user
        # function it wraps (functools.wraps).
        return _installed_distributions(file)
    # Code without a file (``exec``, generated code): its module tells which library.
    module = func.__module__
    return _module_kind(module) if isinstance(module, str) else _USER


# --- source, normalized ------------------------------------------------------------------


class _Import(NamedTuple):
    """An import statement inside a function or class: it binds a name there, not globally."""

    #: the name it binds
    bound: str
    #: the module it imports (relative to the package when ``level`` > 0)
    module: str
    #: ``from module import attr``; empty for ``import module``
    attr: str
    level: int
    #: ``import a.b`` binds the top-level package ``a``
    top: bool = False


class _Static(NamedTuple):
    """What a function or class's code says, independent of what its names are bound to."""

    #: digest of the normalized AST (or of the code object, when there is no source)
    content: str
    #: dotted names read by the code, e.g. ("helpers", "clean"), sorted
    refs: tuple[tuple[str, ...], ...]
    #: False when the code object stood in for missing source
    source: bool
    #: imports inside the code; the names they bind resolve through them, not the globals
    imports: tuple[_Import, ...] = ()


class _NodeStatic(NamedTuple):
    """What one function definition says, from the file's text alone (so it can be kept on
    disk under a hash of that text); ``_ast_static`` completes it with the compiled code."""

    #: digest of the normalized AST
    content: str
    #: dotted names read outside the body (decorators, defaults, annotations), sorted
    head: tuple[tuple[str, ...], ...]
    #: dotted names read in the body, sorted; only the compiled code can tell which of them
    #: are globals or closure variables rather than locals
    body: tuple[tuple[str, ...], ...]
    imports: tuple[_Import, ...]


class _FunctionEntry(NamedTuple):
    """A function definition in a file."""

    #: parameter names in ``co_varnames`` order, to tell same-named definitions apart
    params: tuple[str, ...]
    #: normalized as the step being fingerprinted: all its decorators dropped
    as_root: _NodeStatic
    #: normalized as a helper: only ``@step`` decorators dropped
    as_helper: _NodeStatic


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


_files: dict[str, _FileIndex] = {}


def _file_index(filename: str, module_globals: Mapping[str, Any] | None) -> _FileIndex | None:
    linecache.checkcache(filename)
    lines = linecache.getlines(filename, module_globals)
    if not lines:
        return None
    store = _active_store.get()
    found = _files.get(filename)
    # linecache replaces the list when the file changes, so identity says "same text".
    if found is None or found.lines is not lines:
        text = "".join(lines)
        digest = _text_digest(text)
        found = store.source(digest, lines) if store is not None else None
        if found is None:
            found = _analyse(filename, text, lines, digest)
            if found is None:
                return None
        _files[filename] = found
    if store is not None and store.folder not in found.saved:
        store.save_source(found)
    return found


#: One parse at a time: CPython 3.11 keeps the AST conversion's recursion depth in state that
#: threads share, and two threads parsing at once (steps keyed in parallel) can fail with
#: "SystemError: AST constructor recursion depth mismatch".
_PARSE_LOCK = threading.Lock()


def _text_digest(text: str) -> str:
    # The analysis depends on the text, the algorithm and the ast module of this Python.
    return _hash(f"{_ALGORITHM}|{_STORE_FORMAT}|{sys.implementation.cache_tag}|{text}")


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


def _function_source(func: types.FunctionType) -> _FunctionEntry | None:
    """The definition of ``func`` in its source file, or None when there is none to trust."""
    code = func.__code__
    if code.co_name == "<lambda>" or code.co_filename.startswith("<"):
        # Several lambdas can share a line, and exec'd code has no file: no reliable source.
        return None
    index = _file_index(code.co_filename, func.__globals__)
    if index is None:
        return None
    flags = code.co_flags
    count = (
        code.co_argcount
        + code.co_kwonlyargcount
        + bool(flags & 0x04)  # CO_VARARGS
        + bool(flags & 0x08)  # CO_VARKEYWORDS
    )
    expected = code.co_varnames[:count]
    for entry in index.functions.get((code.co_firstlineno, code.co_name), ()):
        # The file may have changed since the module was imported; a different signature
        # means this definition is not the running code.
        if entry.params == expected:
            return entry
    return None


_function_statics: weakref.WeakKeyDictionary[
    types.FunctionType, dict[bool, tuple[types.CodeType, _Static]]
] = weakref.WeakKeyDictionary()


def _function_static(func: types.FunctionType, root: bool) -> _Static:
    per_function = _function_statics.setdefault(func, {})
    cached = per_function.get(root)
    if cached is not None and cached[0] is func.__code__:
        return cached[1]
    entry = _function_source(func)
    if entry is None:
        static = _code_static(func)
    else:
        static = _ast_static(func, entry.as_root if root else entry.as_helper)
    per_function[root] = (func.__code__, static)
    return static


def _ast_static(func: types.FunctionType, node: _NodeStatic) -> _Static:
    # Decorators, defaults and annotations run in the enclosing scope; the body's names are
    # globals or closure variables only if the compiled code looks them up as such.
    known = _code_names(func.__code__) | set(func.__code__.co_freevars)
    known.update(imp.bound for imp in node.imports)
    refs = set(node.head) | {ref for ref in node.body if ref[0] in known}
    return _Static(node.content, tuple(sorted(refs)), source=True, imports=node.imports)


def _code_static(func: types.FunctionType) -> _Static:
    # No usable source (lambdas, exec, REPLs): the code object instead. It is just as blind to
    # comments and formatting, but it is Python-version specific and sees only names, not
    # dotted chains, so every global name it mentions counts.
    doc = func.__doc__
    out: list[str] = []
    _dump_code(func.__code__, out, doc)
    refs = {(name,) for name in _code_names(func.__code__)}
    refs.update((name,) for name in func.__code__.co_freevars)
    return _Static(_hash("".join(out)), tuple(sorted(refs)), source=False)


def _dump_code(code: types.CodeType, out: list[str], doc: str | None = None) -> None:
    consts = code.co_consts
    # The docstring is co_consts[0] when there is one; identity with __doc__ proves it is.
    # None is what that slot holds without a docstring (Python 3.11).
    if doc is not None and consts and consts[0] is doc:
        consts = (None, *consts[1:])
    out.append(
        f"code({code.co_argcount},{code.co_posonlyargcount},{code.co_kwonlyargcount},"
        f"{code.co_flags},{code.co_code.hex()},{code.co_names!r},{code.co_varnames!r},"
        f"{code.co_freevars!r},{code.co_cellvars!r},["
    )
    for const in consts:
        if isinstance(const, types.CodeType):
            _dump_code(const, out)
        else:
            out.append(_encode(const) or repr(const))
        out.append(",")
    out.append("])")


_class_statics: weakref.WeakKeyDictionary[type, _Static | None] = weakref.WeakKeyDictionary()


def _class_static(cls: type) -> _Static | None:
    """The class's normalized source and names, or None when its source cannot be found."""
    try:
        return _class_statics[cls]
    except KeyError:
        pass
    static = None
    module = sys.modules.get(cls.__module__)
    file = getattr(module, "__file__", None)
    if isinstance(file, str) and module is not None:
        index = _file_index(file, vars(module))
        if index is not None:
            static = index.classes.get(cls.__qualname__)
    _class_statics[cls] = static
    return static


# --- values ------------------------------------------------------------------------------


def _encode(value: Any, _active: set[int] | None = None) -> str | None:
    """A canonical encoding of a simple constant, or None for anything else.

    Exact builtin types only: a subclass (a namedtuple, an IntEnum) may behave differently from
    its base and is handled as an object.
    """
    kind = type(value)
    if value is None:
        return "N"
    if kind is bool:
        return "T" if value else "F"
    if kind is int:
        return f"i{value}"
    if kind is float:
        return "f" + _float_hex(value)
    if kind is complex:
        return "c" + _float_hex(value.real) + _float_hex(value.imag)
    if kind is str:
        return f"s{len(value)}:{value}"
    if kind is bytes or kind is bytearray:
        return f"{'b' if kind is bytes else 'B'}{len(value)}:{value.hex()}"
    if kind not in (tuple, list, dict, set, frozenset):
        return None
    active = _active if _active is not None else set()
    if id(value) in active:
        return None  # a container that contains itself
    active.add(id(value))
    try:
        if kind is dict:
            items = []
            for key, item in value.items():
                ekey, eitem = _encode(key, active), _encode(item, active)
                if ekey is None or eitem is None:
                    return None
                items.append(f"{ekey}={eitem}")
            # Sorted: insertion order does not change what a dict means.
            return f"d{len(items)}[" + ",".join(sorted(items)) + "]"
        encoded = [_encode(item, active) for item in value]
        if any(e is None for e in encoded):
            return None
        if kind is set or kind is frozenset:
            # Sorted: iteration order of a set depends on hashing, not on its contents.
            encoded.sort()  # type: ignore[arg-type]
        tag = {tuple: "t", list: "l", set: "S", frozenset: "Z"}[kind]
        return f"{tag}{len(encoded)}[" + ",".join(encoded) + "]"  # type: ignore[arg-type]
    finally:
        active.discard(id(value))


def _float_hex(value: float) -> str:
    # The bytes, not repr: -0.0 differs from 0.0 (copysign and 1/x tell them apart); but every
    # NaN is one value, whatever its payload or sign bits (hashing.py's rule for inputs).
    return "nan" if value != value else struct.pack("<d", value).hex()


def _immutable(value: Any) -> bool:
    """True for simple constants that cannot change in place (checked after _encode)."""
    kind = type(value)
    if kind is tuple or kind is frozenset:
        return all(_immutable(item) for item in value)
    return kind is not list and kind is not dict and kind is not set and kind is not bytearray


_ADDRESS = re.compile(r"0x[0-9a-fA-F]{4,}")


def _is_reference(value: Any) -> bool:
    """True for objects that name code rather than hold data (a bound method, a partial, a
    builtin function, a wrapper, an enum member, a logger): they count by what they refer to,
    through their type and ``repr`` and the edges ``expand_object`` adds."""
    if isinstance(value, _REFERENCE_TYPES):
        return True
    try:
        wrapped = getattr(value, "__wrapped__", None)
    except Exception:  # a proxy whose __getattr__ fails in its own way wraps nothing
        return False
    return wrapped is not None and wrapped is not value


_REFERENCE_TYPES = (
    types.MethodType,
    types.BuiltinFunctionType,
    types.BuiltinMethodType,
    types.MethodWrapperType,
    types.WrapperDescriptorType,
    types.MethodDescriptorType,
    types.ClassMethodDescriptorType,
    functools.partial,
    enum.Enum,
    logging.Logger,
)


def _members(value: Any) -> list[tuple[str, str, Any]] | None:
    """The parts of a value that is fingerprinted member by member, as (name in the digest,
    name for ``explain``, member), or None for a value that is not.

    Lists, tuples and dicts (with simple keys) whose items are not all simple constants, and
    instances of classes written in user code only: each member then counts as a reference of
    its own, so a function in a dict counts by its code, an array in a list by its content, and
    ``explain`` can name ``CONFIG.weights`` or ``TABLES['a']``.
    """
    kind = type(value)
    if kind is list or kind is tuple or kind is dict:
        if len(value) > _MEMBERS_MAX:
            return None  # a large container counts as a whole, by content
    if kind is list or kind is tuple:
        return [(f"[{i}]", f"[{i}]", item) for i, item in enumerate(value)]
    if kind is dict:
        keyed = []
        for key, item in value.items():
            encoded = _encode(key)
            if encoded is None:
                return None  # counted as a whole, by content
            keyed.append((f"[{encoded}]", f"[{key!r}]", item))
        keyed.sort(key=_first)  # insertion order does not change what a dict means
        return keyed
    if not _user_instance(kind):
        return None
    found: list[tuple[str, str, Any]] = []
    state = getattr(value, "__dict__", None)
    if isinstance(state, dict):
        for name in sorted(state):
            if type(name) is str:
                found.append((f".{name}", f".{name}", state[name]))
    for cls in kind.__mro__:
        slots = vars(cls).get("__slots__", ())
        for name in (slots,) if isinstance(slots, str) else slots:
            if name in ("__dict__", "__weakref__"):
                continue
            try:
                item = getattr(value, name)
            except AttributeError:
                continue  # a slot not assigned yet; the names below still say which are
            except Exception:  # a __getattr__ of its own: count the object as a whole
                return None
            found.append((f".{cls.__qualname__}.{name}", f".{name}", item))
    return found


#: containers longer than this count as a whole: a piece per item would swell every record
_MEMBERS_MAX = 64


def _first(item: tuple[str, str, Any]) -> str:
    return item[0]


@functools.lru_cache(maxsize=1024)
def _user_instance(kind: type) -> bool:
    """True for a class built from user classes alone (and object): all of its instances'
    state is then in ``__dict__`` and slots, which ``_members`` reads."""
    return kind is not object and all(
        cls is object or _module_kind(cls.__module__) == _USER for cls in kind.__mro__
    )


def _content(value: Any) -> str | None:
    """A digest of a value's content, the way inputs are hashed (``hashing.hash_value``), or
    None when it cannot be hashed that way (a lock, an open file)."""
    try:
        return _hash(f"content:{hash_value(value)}")
    except Exception:  # whatever fails to hash falls back to its repr, as before
        return None


def _describe(value: Any) -> str:
    """Type and ``repr`` of an object that neither holds data nor can be hashed by content."""
    kind = type(value)
    if isinstance(value, logging.Logger):
        # Loggers are used in steps all the time, and their repr shows the level, which is
        # configuration (a -v flag), not code.
        return f"logging.Logger:{value.name}"
    try:
        text = repr(value)
    except Exception:  # a broken __repr__ must not break the run
        text = "<repr failed>"
    # An address in a repr is identity, not value, and differs in every process.
    return f"{kind.__module__}.{kind.__qualname__}:{_ADDRESS.sub('0x?', text)}"


# --- the graph ---------------------------------------------------------------------------


class _Piece:
    __slots__ = ("content", "edges", "kind", "label", "obj")

    def __init__(self, kind: str, label: str, content: str, obj: Any = None) -> None:
        self.kind = kind
        self.label = label
        #: the piece's own content digest, or the version of an external piece
        self.content = content
        #: the object to expand (a function, class or value), or None when there is no more
        self.obj = obj
        #: (name as written, target piece index or -1, detail) for each reference
        self.edges: list[tuple[str, int, str]] = []


class _Graph:
    def __init__(self) -> None:
        self.pieces: list[_Piece] = []
        self.keys: dict[Any, int] = {}
        self.labels: set[str] = set()
        # Objects are keyed by id(); holding them keeps ids unique until the graph is done.
        self.hold: list[Any] = []
        #: the function being fingerprinted; its decorators are all dropped
        self.root: Any = None
        #: every lookup and value the result depends on, to reuse it while none has changed
        self.witnesses: list[tuple[Any, ...]] = []
        #: False when something was read that witnesses cannot watch
        self.cacheable = True

    def add(self, key: Any, make: Callable[[], _Piece]) -> int:
        index = self.keys.get(key)
        if index is not None:
            return index
        piece = make()
        label, n = piece.label, 2
        # Distinct pieces can share a name (two closures made by one factory).
        while piece.label in self.labels:
            piece.label = f"{label}#{n}"
            n += 1
        self.labels.add(piece.label)
        index = len(self.pieces)
        self.pieces.append(piece)
        self.keys[key] = index
        return index

    # --- what an object is --------------------------------------------------------------

    def external(self, kind: _External, detail: str) -> tuple[int, str]:
        first = -1
        for label, version in kind:
            index = self.add(
                ("ext", label), lambda label=label, version=version: _Piece("ext", label, version)
            )
            first = index if first < 0 else first
        # Several distributions for one import name (namespace packages) all count: the
        # edge names the first, and the others are pieces of the graph all the same.
        return first, detail

    def visit(self, obj: Any, label: str) -> tuple[int, str]:
        """The piece index for ``obj`` (-1 when it counts as nothing) and an edge detail."""
        self.hold.append(obj)
        if isinstance(obj, _Unimported):
            return self.external(obj.kind, obj.name)
        if isinstance(obj, types.ModuleType):
            kind = _module_kind(obj.__name__)
            if kind == _NOTHING:
                return -1, obj.__name__
            if kind != _USER:
                return self.external(kind, obj.__name__)  # type: ignore[arg-type]
            return self.add(("id", id(obj)), lambda: _Piece("module", obj.__name__, "", obj)), ""
        if isinstance(obj, types.FunctionType):
            # From the code and its globals: functools.wraps copies a wrapped function's
            # __module__ and __qualname__ onto the wrapper, which would name the wrong code.
            name = f"{obj.__globals__.get('__name__', obj.__module__)}.{obj.__code__.co_qualname}"
            if obj.__code__.co_name == "<lambda>" and label:
                # A lambda has no name of its own: the global (or member) it is bound to is
                # what ``explain`` can point the user to.
                name = label
            kind = _function_kind(obj)
            if kind == _USER:
                return self.add(("id", id(obj)), lambda: _Piece("function", name, "", obj)), ""
            if kind == _NOTHING:
                return -1, name
            return self.external(kind, name)  # type: ignore[arg-type]
        if isinstance(obj, type):
            name = f"{obj.__module__}.{obj.__qualname__}"
            kind = _module_kind(obj.__module__)
            if kind == _USER:
                return self.add(("id", id(obj)), lambda: _Piece("class", name, "", obj)), ""
            if kind == _NOTHING:
                return -1, name
            return self.external(kind, name)  # type: ignore[arg-type]
        encoded = None if isinstance(obj, enum.Enum) else _encode(obj)
        if encoded is not None:
            content = _hash(encoded)
            if not _immutable(obj):
                # A list, dict or set can be changed in place, under the same name.
                self.witnesses.append((_VALUE, obj, content))
            return self.add(("value", label, content), lambda: _Piece("value", label, content)), ""
        if not _is_reference(obj):
            # Data counts by content, never by repr: a repr elides the middle of a large array
            # or frame, and shows an address (identity, different in every process) for an
            # object without a repr of its own.
            members = _members(obj)
            if members is not None:
                names = ",".join(written for written, _, _ in members)
                kind = type(obj)
                content = _hash(f"members:{kind.__module__}.{kind.__qualname__}:{names}")
                self.witnesses.append((_MEMBERS, obj, members))
                return (
                    self.add(("id", id(obj)), lambda: _Piece("members", label, content, obj)),
                    "",
                )
            digest = _content(obj)
            if digest is not None:
                self.witnesses.append((_CONTENT, obj, digest))
                return (
                    self.add(("value", label, digest), lambda: _Piece("data", label, digest, obj)),
                    "",
                )
        # Code referred to (a method, a partial, a wrapper), or an object that cannot be hashed
        # by content: its type and repr, with edges to whatever it wraps.
        content = _hash(_describe(obj))
        self.witnesses.append((_OBJECT, obj, content))
        return (
            self.add(("id", id(obj)), lambda: _Piece("object", label, content, obj)),
            "",
        )

    # --- expanding pieces ---------------------------------------------------------------

    def expand(self, index: int) -> None:
        piece = self.pieces[index]
        obj = piece.obj
        if piece.kind == "function":
            self.expand_function(piece, obj, root=obj is self.root)
        elif piece.kind == "class":
            static = _class_static(obj)
            if static is None:
                self.expand_class_without_source(piece, obj)
            else:
                piece.content = static.content
                module = sys.modules.get(obj.__module__)
                namespace = vars(module) if module is not None else {}
                self.link(piece, static, namespace, {}, "")
                self.class_closures(piece, obj)
        elif piece.kind == "module":
            lines = linecache.getlines(getattr(obj, "__file__", None) or "", vars(obj))
            # A module used as a whole (passed around, getattr by name) counts by its text.
            piece.content = _hash("".join(lines)) if lines else _hash(f"module:{obj.__name__}")
        elif piece.kind == "object":
            self.expand_object(piece, obj)
        elif piece.kind == "data":
            # What the value means can depend on its library's version (a fitted model).
            self.edge(piece, "<type>", type(obj), "")
        elif piece.kind == "members":
            if _user_instance(type(obj)):
                self.edge(piece, "<type>", type(obj), "")
            for written, shown, member in _members(obj) or ():
                self.edge(piece, written, member, f"{piece.label}{shown}")

    def expand_function(self, piece: _Piece, func: types.FunctionType, root: bool) -> None:
        static = _function_static(func, root)
        piece.content = static.content
        self.witnesses.append((_ATTR, func, "__code__", func.__code__))
        cells: dict[str, Any] = {}
        for name, cell in zip(func.__code__.co_freevars, func.__closure__ or (), strict=False):
            contents = _cell_contents(cell)
            self.witnesses.append((_CELL, cell, contents))
            if contents is not _MISSING:  # an empty cell: the variable is not assigned yet
                cells[name] = contents
        self.link(piece, static, func.__globals__, cells, piece.label)
        if not static.source:
            # Without source, defaults and annotations are not in the code object.
            self.witnesses.append((_ATTR, func, "__defaults__", func.__defaults__))
            self.witnesses.append((_ATTR, func, "__kwdefaults__", func.__kwdefaults__))
            for i, default in enumerate(func.__defaults__ or ()):
                self.edge(piece, f"<default {i}>", default, f"{piece.label}.<default {i}>")
            for key, default in sorted((func.__kwdefaults__ or {}).items()):
                self.edge(piece, f"<default {key}>", default, f"{piece.label}.<default {key}>")

    def class_closures(self, piece: _Piece, cls: type) -> None:
        """Variables that methods capture from where the class was made (a class defined in a
        function): the same class source can then mean different things."""
        for key, member in sorted(vars(cls).items()):
            if isinstance(member, staticmethod | classmethod):
                member = member.__func__
            if isinstance(member, property):
                accessors = (member.fget, member.fset, member.fdel)
            else:
                accessors = (member,)
            for func in accessors:
                if not isinstance(func, types.FunctionType) or not func.__closure__:
                    continue
                for name, cell in zip(func.__code__.co_freevars, func.__closure__, strict=False):
                    if name == "__class__":
                        continue  # the class itself, for super()
                    contents = _cell_contents(cell)
                    self.witnesses.append((_CELL, cell, contents))
                    if contents is not _MISSING:
                        written = f"{key}.<closure>.{name}"
                        self.edge(piece, written, contents, f"{piece.label}.{written}")

    def expand_class_without_source(self, piece: _Piece, cls: type) -> None:
        # Defined by exec or in a REPL: its members stand in for its source. Members can be
        # added and replaced, which witnesses do not watch: recompute every time.
        self.cacheable = False
        piece.content = _hash(f"class:{cls.__qualname__}:{[b.__qualname__ for b in cls.__bases__]}")
        for base in cls.__bases__:
            self.edge(piece, f"<base {base.__qualname__}>", base, "")
        for key, member in sorted(vars(cls).items()):
            if key in ("__dict__", "__weakref__", "__module__", "__doc__", "__qualname__"):
                continue
            if isinstance(member, staticmethod | classmethod):
                # The wrapper kind is part of the meaning: tell the two apart.
                self.edge(piece, f"{key}<{type(member).__name__}>", member.__func__, "")
            elif isinstance(member, property):
                for role in ("fget", "fset", "fdel"):
                    accessor = getattr(member, role)
                    if accessor is not None:
                        self.edge(piece, f"{key}<{role}>", accessor, f"{piece.label}.{key}")
            else:
                self.edge(piece, key, member, f"{piece.label}.{key}")

    def expand_object(self, piece: _Piece, obj: Any) -> None:
        label = piece.label
        self.edge(piece, "<type>", type(obj), "")
        if isinstance(obj, types.BuiltinFunctionType):
            # ``math.sqrt`` is a builtin_function_or_method: its module says which library.
            home = getattr(obj, "__module__", None)
            if isinstance(home, str) and home in sys.modules:
                self.edge(piece, "<module>", sys.modules[home], "")
        if isinstance(obj, types.MethodType):
            self.edge(piece, "__func__", obj.__func__, f"{label}.__func__")
            self.edge(piece, "__self__", obj.__self__, f"{label}.__self__")
        if isinstance(obj, functools.partial):
            self.edge(piece, "func", obj.func, f"{label}.func")
            for i, arg in enumerate(obj.args):
                self.edge(piece, f"args[{i}]", arg, f"{label}.args[{i}]")
            for key, arg in sorted(obj.keywords.items()):
                self.edge(piece, f"keywords[{key}]", arg, f"{label}.keywords[{key}]")
        try:
            wrapped = None if isinstance(obj, enum.Enum) else getattr(obj, "__wrapped__", None)
        except Exception:  # a proxy whose __getattr__ fails in its own way wraps nothing
            wrapped = None
        if wrapped is not None and wrapped is not obj:
            # functools.lru_cache and friends: the wrapped function is the code that runs.
            self.edge(piece, "__wrapped__", wrapped, f"{label}.__wrapped__")

    def edge(self, piece: _Piece, written: str, obj: Any, label: str) -> None:
        target, detail = self.visit(obj, label or written)
        piece.edges.append((written, target, detail))

    def link(
        self,
        piece: _Piece,
        static: _Static,
        namespace: Mapping[str, Any],
        cells: Mapping[str, Any],
        owner: str,
    ) -> None:
        """Resolve each dotted name the piece's code reads and add an edge for it."""
        module_name = namespace.get("__name__", "?")
        package = namespace.get("__package__")
        imported = _resolve_imports(static.imports, package)
        if static.imports:
            self.witnesses.append((_IMPORTS, static.imports, package, imported))
        refs = list(static.refs)
        roots = {chain[0] for chain in refs}
        # An import whose name is never read still runs; it counts like a module used whole.
        refs += [(name,) for name in imported if name not in roots]
        seen: set[str] = set()
        for chain in refs:
            root = chain[0]
            if root in imported:
                obj, label = imported[root], f"{owner or module_name}.<import>.{root}"
            elif root in cells:
                obj, label = cells[root], f"{owner}.<closure>.{root}"
            else:
                obj = namespace.get(root, _MISSING)
                self.witnesses.append((_LOOKUP, namespace, root, obj))
                if obj is _MISSING:
                    # Builtins count as nothing; a name bound nowhere fails when it runs, and
                    # failures are never cached. Either way: no edge, and if the name gets
                    # bound later, the new edge changes the fingerprint.
                    continue
                label = f"{module_name}.{root}"
            used = 1
            # Follow attributes through user modules only: into a library, its version is
            # all that counts. vars() and not getattr(): no module __getattr__ code runs.
            while used < len(chain) and isinstance(obj, types.ModuleType):
                if _module_kind(obj.__name__) != _USER:
                    break
                attr = vars(obj).get(chain[used], _MISSING)
                self.witnesses.append((_LOOKUP, vars(obj), chain[used], attr))
                if attr is _MISSING:
                    break
                label = f"{obj.__name__}.{chain[used]}"
                obj = attr
                used += 1
            written = ".".join(chain[:used])
            if written in seen:
                continue
            seen.add(written)
            if root in imported:
                # The import statement is in the source already, and a library reached
                # through it is located, not imported, until the step runs: name it the
                # same way before and after (only its distribution counts).
                target, _ = self.visit(obj, label)
                piece.edges.append((written, target, ""))
            else:
                self.edge(piece, written, obj, label)


_MISSING = object()

# Witness kinds: what a cached fingerprint depends on, and how to check it still holds.
_LOOKUP = 0  # (_LOOKUP, mapping, key, object found or _MISSING)
_CELL = 1  # (_CELL, closure cell, contents or _MISSING)
_ATTR = 2  # (_ATTR, object, attribute name, value)
_VALUE = 3  # (_VALUE, container, digest of its encoding)
_OBJECT = 4  # (_OBJECT, object, digest of its type and repr)
_IMPORTS = 5  # (_IMPORTS, imports, package, what they bound)
_MEMBERS = 6  # (_MEMBERS, container or instance, its _members)
_CONTENT = 7  # (_CONTENT, object, digest of its content)


def _cell_contents(cell: types.CellType) -> Any:
    try:
        return cell.cell_contents
    except ValueError:
        return _MISSING


def _still_valid(witnesses: tuple[tuple[Any, ...], ...]) -> bool:
    for witness in witnesses:
        kind = witness[0]
        if kind == _LOOKUP:
            if witness[1].get(witness[2], _MISSING) is not witness[3]:
                return False
        elif kind == _CELL:
            if _cell_contents(witness[1]) is not witness[2]:
                return False
        elif kind == _ATTR:
            if getattr(witness[1], witness[2], _MISSING) is not witness[3]:
                return False
        elif kind == _VALUE:
            encoded = _encode(witness[1])
            if encoded is None or _hash(encoded) != witness[2]:
                return False
        elif kind == _OBJECT:
            if _hash(_describe(witness[1])) != witness[2]:
                return False
        elif kind == _MEMBERS:
            now_members, then_members = _members(witness[1]), witness[2]
            if (
                now_members is None
                or len(now_members) != len(then_members)
                or any(
                    a[0] != b[0] or a[2] is not b[2]
                    for a, b in zip(now_members, then_members, strict=True)
                )
            ):
                return False
        elif kind == _CONTENT:
            # Hashed again: an array or frame can be changed in place under the same name.
            if _content(witness[1]) != witness[2]:
                return False
        elif kind == _IMPORTS:
            now = _resolve_imports(witness[1], witness[2])
            then = witness[3]
            if now.keys() != then.keys() or any(
                # _Unimported markers are made afresh each time: compare them by value.
                now[k] is not then[k]
                and not (isinstance(now[k], _Unimported) and now[k] == then[k])
                for k in now
            ):
                return False
    return True


#: id(func) -> (func, witnesses, fingerprint); holding func keeps its id from being reused
_results: dict[int, tuple[Any, tuple[tuple[Any, ...], ...], Fingerprint]] = {}
#: bounds the memory held for functions made on the fly (closures in a loop, say)
_RESULTS_MAX = 4096


class _Unimported(NamedTuple):
    """A library module (or a name in one) that a function imports but nobody has yet."""

    kind: _External
    name: str


def _resolve_imports(imports: tuple[_Import, ...], package: str | None) -> dict[str, Any]:
    """What each import inside a function binds, without importing any library."""
    bound: dict[str, Any] = {}
    for imp in imports:
        target = _import(imp.module, imp.level, package)
        if target is None:
            continue  # fails when it runs; failures are never cached
        if imp.top and isinstance(target, types.ModuleType):
            target = sys.modules.get(imp.module.partition(".")[0], target)
        elif imp.top:
            target = _Unimported(target.kind, imp.module.partition(".")[0])
        if imp.attr:
            if isinstance(target, _Unimported):
                target = _Unimported(target.kind, f"{target.name}.{imp.attr}")
            else:
                attr = vars(target).get(imp.attr, _MISSING)
                if attr is _MISSING:
                    # ``from pkg import submodule``, with the submodule not imported yet
                    attr = _import(f"{target.__name__}.{imp.attr}", 0, None)
                if attr is None or attr is _MISSING:
                    continue
                target = attr
        bound[imp.bound] = target
    return bound


def _import(module: str, level: int, package: str | None) -> types.ModuleType | _Unimported | None:
    """The module, imported if it is user code; a library is only located, never imported:
    a fully cached run must not pay for importing pandas."""
    try:
        name = importlib.util.resolve_name("." * level + module, package) if level else module
    except (ImportError, ValueError):
        return None
    found = sys.modules.get(name)
    if found is not None:
        return found
    top = name.partition(".")[0]
    kind = _located.get(top) or _locate(top)
    if kind is None:
        return None
    if kind != _USER:
        return _Unimported(kind, name)  # type: ignore[arg-type]
    try:
        # User code imported inside a step: importing it here is what running the step does.
        return importlib.import_module(name)
    except Exception:  # an import that fails fails the step too, and is never cached
        return None


#: top-level library names located without importing them; user code is not kept here,
#: since it ends up in sys.modules
_located: dict[str, _External] = {}


def _locate(top: str) -> _Kind | None:
    if top == "stepflow":
        return _distributions("stepflow")
    if top in sys.builtin_module_names:
        return _python()
    try:
        spec = importlib.util.find_spec(top)  # a top-level name: finders only, no import
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    origin = spec.origin
    kind: _Kind
    if origin in ("built-in", "frozen"):
        kind = _python()
    else:
        if origin is None:  # a namespace package: where its folders are tells
            origin = next(iter(spec.submodule_search_locations or ()), None)
        where = _path_kind(origin) if origin else _USER
        if where == "installed":
            kind = _installed_distributions(origin)  # type: ignore[arg-type]
        elif where == "stdlib":
            kind = _python()
        elif where == "stepflow":
            kind = _distributions("stepflow")
        else:
            kind = _USER
    if not isinstance(kind, str):
        _located[top] = kind
    return kind


# --- kept on disk, for later processes -----------------------------------------------------

#: Bump when what a _Store keeps, or how it is derived, changes: older files are then unused.
_STORE_FORMAT = 1


class _Store:
    """Analysis that later processes can reuse, in a folder of the stepflow home.

    Two kinds of file, each holding only what follows from what names it, so that a stale
    file cannot exist:

    ``src-<hash>.json``
        every function and class of a source file, normalized, under a hash of the file's
        text (and of the algorithm and Python version). A process reads a file's text anyway;
        with its hash it skips parsing and normalizing, which is most of the cost of
        fingerprinting in a fresh process.
    ``dist-<hash>.json``
        which distributions (with versions) provide each import name, under a signature of
        the import path: every ``sys.path`` folder with its modification time, which changes
        whenever a distribution is installed, upgraded or removed there (the signal
        ``importlib.metadata`` itself caches folder listings by). The signature is taken
        before any metadata is read, and nothing is kept while a folder changed in the last
        two seconds, so an install racing with a run cannot leave an old version behind.

    What names resolve to is never kept: globals, closure variables, module constants (which
    a module may compute from an environment variable or a data file) and objects are looked
    up afresh in every process, as is which module a name imports.

    The files themselves are ``KeptFiles`` (``_storage/kept.py``): checksummed, written to a
    temporary name and renamed, and ignored when damaged.
    """

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.files = KeptFiles(folder)
        #: import path signature -> top-level name -> distributions
        self._dists: dict[str, dict[str, _External]] = {}

    # --- source files ------------------------------------------------------------------

    def source(self, digest: str, lines: list[str]) -> _FileIndex | None:
        data = self.files.read(f"src-{digest}.json")
        if data is None:
            return None
        try:
            functions: dict[tuple[int, str], list[_FunctionEntry]] = {}
            for first, name, params, as_root, as_helper in data["functions"]:
                root = _node_from_json(as_root)
                helper = root if as_helper is None else _node_from_json(as_helper)
                key = (_int(first), _str(name))
                entry = _FunctionEntry(_strs(params), root, helper)
                functions.setdefault(key, []).append(entry)
            classes = {
                _str(name): _Static(_str(content), _refs(refs), True, _imports(imports))
                for name, content, refs, imports in data["classes"]
            }
        except (KeyError, TypeError, ValueError):
            return None
        found = _FileIndex(lines, digest, functions, classes)
        found.saved.add(self.folder)
        return found

    def save_source(self, index: _FileIndex) -> None:
        functions = [
            [
                first,
                name,
                entry.params,
                _node_to_json(entry.as_root),
                None if entry.as_helper is entry.as_root else _node_to_json(entry.as_helper),
            ]
            for (first, name), entries in index.functions.items()
            for entry in entries
        ]
        classes = [
            [name, static.content, static.refs, static.imports]
            for name, static in index.classes.items()
        ]
        self.files.write(f"src-{index.digest}.json", {"functions": functions, "classes": classes})
        # Marked even when the write failed: one attempt per process is enough.
        index.saved.add(self.folder)

    # --- distributions -----------------------------------------------------------------

    def distributions(self, signature: str, top: str) -> _External | None:
        known = self._dists.get(signature)
        if known is None:
            known = {}
            data = self.files.read(f"dist-{signature}.json")
            if isinstance(data, dict):
                for name, pairs in data.items():
                    try:
                        known[name] = tuple((_str(label), _str(v)) for label, v in pairs)
                    except (TypeError, ValueError):
                        continue
            self._dists[signature] = known
        return known.get(top)

    def add_distributions(self, signature: str, top: str, kind: _External) -> None:
        known = self._dists.setdefault(signature, {})
        known[top] = kind
        self.files.write(f"dist-{signature}.json", {name: list(k) for name, k in known.items()})


def _str(value: Any) -> str:
    if type(value) is not str:
        raise TypeError("expected a str")
    return value


def _int(value: Any) -> int:
    if type(value) is not int:
        raise TypeError("expected an int")
    return value


def _strs(values: Any) -> tuple[str, ...]:
    return tuple(_str(v) for v in values)


def _refs(values: Any) -> tuple[tuple[str, ...], ...]:
    return tuple(_strs(chain) for chain in values)


def _imports(values: Any) -> tuple[_Import, ...]:
    found = []
    for bound, module, attr, level, top in values:
        if type(top) is not bool:
            raise TypeError("expected a bool")
        found.append(_Import(_str(bound), _str(module), _str(attr), _int(level), top))
    return tuple(found)


def _node_to_json(node: _NodeStatic) -> list[Any]:
    return [node.content, node.head, node.body, node.imports]


def _node_from_json(data: Any) -> _NodeStatic:
    content, head, body, imports = data
    return _NodeStatic(_str(content), _refs(head), _refs(body), _imports(imports))


_stores: dict[str, _Store] = {}
#: the store of the fingerprint being computed in this thread (or context), if any
_active_store: contextvars.ContextVar[_Store | None] = contextvars.ContextVar(
    "stepflow_fingerprint_store", default=None
)


def _store(folder: str | os.PathLike[str]) -> _Store:
    key = os.path.abspath(os.fspath(folder))
    store = _stores.get(key)
    if store is None:
        store = _stores[key] = _Store(key)
    return store


def fingerprint(
    func: Callable[..., Any], *, cache_dir: str | os.PathLike[str] | None = None
) -> Fingerprint:
    """The code fingerprint of ``func``: its normalized source and everything it uses.

    A result is reused within a process for as long as every global, closure variable, module
    attribute and mutable value it read is still the same (see the module docstring), so a
    global rebound in a running process (a notebook cell) is seen on the next call.

    :param cache_dir: a folder where the analysis of source files and the versions of
        libraries are kept for later processes (``<home>/fingerprints``); only what cannot
        go stale is kept there (see ``_Store``), so the result is the same with or without.
    """
    cached = _results.get(id(func))
    if cached is not None and cached[0] is func and _still_valid(cached[1]):
        return cached[2]
    token = _active_store.set(None if cache_dir is None else _store(cache_dir))
    try:
        return _fingerprint(func)
    finally:
        _active_store.reset(token)


def _fingerprint(func: Callable[..., Any]) -> Fingerprint:
    label = f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', repr(func))}"
    graph = _Graph()
    graph.root = func
    index, detail = graph.visit(func, label)
    if index < 0 or graph.pieces[index].kind == "ext":
        # A builtin or library function as a step: only the library's version can change it.
        graph = _Graph()
        graph.root = func
        graph.add(("root",), lambda: _Piece("root", label, _hash(detail)))
        graph.edge(graph.pieces[0], label, func, label)
    index = 0
    while index < len(graph.pieces):
        graph.expand(index)
        index += 1
    result = Fingerprint(_digest(graph.pieces), _parts(graph.pieces))
    if graph.cacheable:
        if len(_results) >= _RESULTS_MAX:
            _results.clear()
        _results[id(func)] = (func, tuple(graph.witnesses), result)
    return result


def _digest(pieces: list[_Piece]) -> str:
    out = [_ALGORITHM]
    for piece in pieces:
        # User pieces by content and position only: module names depend on how a file was
        # imported. External pieces by name and version: that is what they are.
        name = piece.label if piece.kind == "ext" else ""
        out.append(f"\n{piece.kind}|{len(name)}:{name}|{piece.content}|")
        for written, target, detail in piece.edges:
            out.append(f"{len(written)}:{written}>{target}>{len(detail)}:{detail};")
    return _hash("".join(out))


def _parts(pieces: list[_Piece]) -> dict[str, str]:
    parts: dict[str, str] = {}
    for piece in pieces:
        if piece.kind == "ext" or not piece.edges:
            parts[piece.label] = piece.content
            continue
        # A piece's part changes when what its names resolve to changes, not just its text.
        edges = ";".join(
            f"{written}>{pieces[target].label if target >= 0 else ''}>{detail}"
            for written, target, detail in piece.edges
        )
        parts[piece.label] = _hash(f"{piece.content}|{edges}")
    return parts
