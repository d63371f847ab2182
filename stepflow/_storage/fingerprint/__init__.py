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
    the import path (see ``_store._Store``). A later process then reads a file's text and hashes it
    instead of parsing it. Everything that resolves names (globals, module constants, closure
    variables, which file an import finds) is done again in each process: a constant that a
    module computes from an environment variable must count by this process's value.

How the code is laid out, each module depending only on those before it
    ``_source`` parses a file and normalizes its functions and classes; ``_store`` keeps that
    analysis per file in this process and in the home; ``_kinds`` tells user code from
    libraries and the standard library; ``_values`` says how a value counts; ``_witnesses``
    records what a result depends on, to reuse it while all of that holds; ``_graph`` walks
    from the function over everything it references; this module puts the pieces into a
    digest.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from stepflow._slotted import Frozen
from stepflow._storage.fingerprint._graph import _Graph, _Piece
from stepflow._storage.fingerprint._source import _ALGORITHM, _hash
from stepflow._storage.fingerprint._store import _active_store, _store_at
from stepflow._storage.fingerprint._witnesses import _MISSING, _still_valid, _Witness

__all__ = ["Fingerprint", "fingerprint"]


class Fingerprint(Frozen):
    """The code fingerprint of a step function."""

    __slots__ = ("digest", "parts")
    _unhashed = frozenset(("parts",))

    #: hex digest of everything below, the value that goes into the cache key
    digest: str
    #: qualified name -> digest of each piece that went in (a version for ``dist:`` and
    #: ``python:`` pieces), in discovery order starting with the function itself
    parts: Mapping[str, str]

    def __init__(self, digest: str, parts: Mapping[str, str]) -> None:
        object.__setattr__(self, "digest", digest)
        object.__setattr__(self, "parts", dict(parts))


#: id(func) -> (func, witnesses, fingerprint); holding func keeps its id from being reused
_results: dict[int, tuple[Any, tuple[_Witness, ...], Fingerprint]] = {}
#: bounds the memory held for functions made on the fly (closures in a loop, say)
_RESULTS_MAX = 4096


def fingerprint(
    func: Callable[..., Any], *, cache_dir: str | os.PathLike[str] | None = None
) -> Fingerprint:
    """The code fingerprint of ``func``: its normalized source and everything it uses.

    A result is reused within a process for as long as every global, closure variable, module
    attribute and mutable value it read is still the same (see the module docstring), so a
    global rebound in a running process (a notebook cell) is seen on the next call.

    :param cache_dir: a folder where the analysis of source files and the versions of
        libraries are kept for later processes (``<home>/fingerprints``); only what cannot
        go stale is kept there (see ``_store._Store``), so the result is the same with or without.
    """
    cached = _results.get(id(func))
    if cached is not None and cached[0] is func and _still_valid(cached[1]):
        return cached[2]
    token = _active_store.set(None if cache_dir is None else _store_at(cache_dir))
    try:
        return _fingerprint(func)
    finally:
        _active_store.reset(token)


def _fingerprint(func: Callable[..., Any]) -> Fingerprint:
    # repr() only when there is no __qualname__: a default argument is computed every time.
    qualname = getattr(func, "__qualname__", _MISSING)
    if qualname is _MISSING:
        qualname = repr(func)
    label = f"{getattr(func, '__module__', '?')}.{qualname}"
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
