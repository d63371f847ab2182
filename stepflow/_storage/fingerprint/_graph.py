"""The walk from a function over everything it references: pieces of the fingerprint, and edges."""

from __future__ import annotations

import enum
import functools
import linecache
import sys
import types
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from stepflow._storage.fingerprint._kinds import (
    _NOTHING,
    _USER,
    _External,
    _function_kind,
    _module_kind,
)
from stepflow._storage.fingerprint._source import (
    _code_names,
    _FunctionEntry,
    _hash,
    _NodeStatic,
    _Static,
)
from stepflow._storage.fingerprint._store import _file_index
from stepflow._storage.fingerprint._values import (
    _content,
    _describe,
    _encode,
    _immutable,
    _is_reference,
    _members,
    _user_instance,
)
from stepflow._storage.fingerprint._witnesses import (
    _MISSING,
    _Attr,
    _Cell,
    _cell_contents,
    _Content,
    _Imports,
    _Lookup,
    _Members,
    _Object,
    _resolve_imports,
    _Unimported,
    _Value,
    _Witness,
)

# --- what a function's or class's code says ----------------------------------------------


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


# --- the graph ---------------------------------------------------------------------------


class _Piece:
    """One thing that goes into a fingerprint: a function, class, module, value or library."""

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
    """The pieces reached from one function, in discovery order, and what they depend on."""

    def __init__(self) -> None:
        self.pieces: list[_Piece] = []
        self.keys: dict[Any, int] = {}
        self.labels: set[str] = set()
        # Objects are keyed by id(); holding them keeps ids unique until the graph is done.
        self.hold: list[Any] = []
        #: the function being fingerprinted; its decorators are all dropped
        self.root: Any = None
        #: every lookup and value the result depends on, to reuse it while none has changed
        self.witnesses: list[_Witness] = []
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
                self.witnesses.append(_Value(obj, content))
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
                self.witnesses.append(_Members(obj, members))
                return (
                    self.add(("id", id(obj)), lambda: _Piece("members", label, content, obj)),
                    "",
                )
            digest = _content(obj)
            if digest is not None:
                self.witnesses.append(_Content(obj, digest))
                return (
                    self.add(("value", label, digest), lambda: _Piece("data", label, digest, obj)),
                    "",
                )
        # Code referred to (a method, a partial, a wrapper), or an object that cannot be hashed
        # by content: its type and repr, with edges to whatever it wraps.
        content = _hash(_describe(obj))
        self.witnesses.append(_Object(obj, content))
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
        self.witnesses.append(_Attr(func, "__code__", func.__code__))
        cells: dict[str, Any] = {}
        for name, cell in zip(func.__code__.co_freevars, func.__closure__ or (), strict=False):
            contents = _cell_contents(cell)
            self.witnesses.append(_Cell(cell, contents))
            if contents is not _MISSING:  # an empty cell: the variable is not assigned yet
                cells[name] = contents
        self.link(piece, static, func.__globals__, cells, piece.label)
        if not static.source:
            # Without source, defaults and annotations are not in the code object.
            self.witnesses.append(_Attr(func, "__defaults__", func.__defaults__))
            self.witnesses.append(_Attr(func, "__kwdefaults__", func.__kwdefaults__))
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
                    self.witnesses.append(_Cell(cell, contents))
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
            self.witnesses.append(_Imports(static.imports, package, imported))
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
                self.witnesses.append(_Lookup(namespace, root, obj))
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
                self.witnesses.append(_Lookup(vars(obj), chain[used], attr))
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
