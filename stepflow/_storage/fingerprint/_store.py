"""Where analyses are kept for reuse: per file in this process, and in the home for later ones."""

from __future__ import annotations

import contextvars
import linecache
import os
import sys
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from stepflow._storage.fingerprint._source import (
    _ALGORITHM,
    _analyse,
    _FileIndex,
    _FunctionEntry,
    _hash,
    _Import,
    _NodeStatic,
    _Static,
)
from stepflow._storage.kept import KeptFiles

if TYPE_CHECKING:
    from stepflow._storage.fingerprint._kinds import _External

#: Bump when what a _Store keeps, or how it is derived, changes: older files are then unused.
_STORE_FORMAT = 1


def _text_digest(text: str) -> str:
    # The analysis depends on the text, the algorithm and the ast module of this Python.
    return _hash(f"{_ALGORITHM}|{_STORE_FORMAT}|{sys.implementation.cache_tag}|{text}")


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
            [name, static.content, static.refs, _imports_to_json(static.imports)]
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


def _imports_to_json(imports: tuple[_Import, ...]) -> list[list[Any]]:
    return [[i.bound, i.module, i.attr, i.level, i.top] for i in imports]


def _node_to_json(node: _NodeStatic) -> list[Any]:
    return [node.content, node.head, node.body, _imports_to_json(node.imports)]


def _node_from_json(data: Any) -> _NodeStatic:
    content, head, body, imports = data
    return _NodeStatic(_str(content), _refs(head), _refs(body), _imports(imports))


_stores: dict[str, _Store] = {}
#: the store of the fingerprint being computed in this thread (or context), if any
_active_store: contextvars.ContextVar[_Store | None] = contextvars.ContextVar(
    "stepflow_fingerprint_store", default=None
)


def _store_at(folder: str | os.PathLike[str]) -> _Store:
    key = os.path.abspath(os.fspath(folder))
    store = _stores.get(key)
    if store is None:
        store = _stores[key] = _Store(key)
    return store


#: filename -> its analysis, for as long as linecache holds the same text
_files: dict[str, _FileIndex] = {}
#: held while a file's analysis is read from the store, made or saved (see _file_index)
_FILES_LOCK = threading.Lock()


def _file_index(filename: str, module_globals: Mapping[str, Any] | None) -> _FileIndex | None:
    """A source file's analysis: from this process, from the active store, or made now."""
    linecache.checkcache(filename)
    lines = linecache.getlines(filename, module_globals)
    if not lines:
        return None
    store = _active_store.get()
    found = _files.get(filename)
    # linecache replaces the list when the file changes, so identity says "same text".
    if (
        found is not None
        and found.lines is lines
        and (store is None or store.folder in found.saved)
    ):
        return found
    # Steps keyed in parallel (--workers) ask for the same file at once: one thread reads or
    # analyses it while the others wait for its result, rather than each parsing it again.
    with _FILES_LOCK:
        found = _files.get(filename)
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
