"""Run the examples in ``docs/`` so the documentation cannot drift from the code.

Every Markdown file under ``docs/`` (except those other people write, listed in ``NOT_OURS``)
is one test. Its fenced blocks run in order, in a fresh temporary working folder with a fresh
``STEPFLOW_HOME``:

- a block tagged ``python`` is executed; all the blocks of one document share one namespace,
  except in the tutorial (``STANDALONE``), where a reader runs each block on its own, so each
  block gets a fresh namespace and must import and load what it uses;
- a block tagged ``pycon`` is run as a doctest (``...`` is an ellipsis) in that same namespace;
- a block right after the comment ``<!-- file: NAME -->`` is written to ``NAME`` instead, so
  later blocks can import it or run it;
- a block tagged ``console`` runs its ``$ stepflow ...`` lines (as ``python -m stepflow``) and
  its ``$ pytest ...`` lines (as ``python -m pytest``); ``$ echo $?`` prints the previous exit
  code. The lines after a command, up to the next ``$`` line, are its expected output (stdout,
  then stderr): each is matched against one line, where ``*`` matches any text in the line
  (as in fnmatch, but ``?`` and ``[`` are plain characters) and a line ``...`` matches any
  number of lines. A command with no expected output must exit 0;
- a block right after ``<!-- skip -->`` is not run (install commands and the like).

Commands run with ``COLUMNS=80`` so the report's rules have the width the documents show.
"""

from __future__ import annotations

import doctest
import importlib
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"

# Written by other people: not run here, and links to them may land before they do.
NOT_OURS = {"benchmarks.md", "how-to/write-a-plugin.md"}

# Pages another branch adds while this one is merged: links to them may land first, and they
# run like any page once they are here. Drop a name once its page is on main.
LANDING: set[str] = set()

# Documents whose readers run each Python block by itself (pasted into a fresh interpreter or
# saved as a script), so no block may lean on names an earlier block defined.
STANDALONE = ("tutorial/",)

_FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>```+)(?P<info>[\w-]*)\s*$")
_FILE_MARK = re.compile(r"^\s*<!--\s*file:\s*(?P<name>\S+)\s*-->\s*$")
_SKIP_MARK = re.compile(r"^\s*<!--\s*skip\s*-->\s*$")
_LINK = re.compile(r"\]\((?P<target>[^)\s#]+)(?:#[^)]*)?\)")


@attrs.frozen
class Block:
    """One fenced block of a document."""

    lang: str
    text: str
    #: line number of the block's first content line (1-based), for messages
    lineno: int
    #: ``"run"``, ``"skip"`` or ``"file"``
    action: str = "run"
    filename: str | None = None


def parse_blocks(source: str) -> list[Block]:
    """The fenced blocks of a Markdown text, with their ``file``/``skip`` marks."""
    lines = source.splitlines()
    blocks: list[Block] = []
    index = 0
    while index < len(lines):
        match = _FENCE.match(lines[index])
        if not match:
            index += 1
            continue
        indent, fence = len(match["indent"]), match["fence"]
        start = index + 1
        end = start
        while end < len(lines) and lines[end].strip() != fence:
            end += 1
        body = "\n".join(line[indent:] for line in lines[start:end]) + "\n"
        mark = _previous_nonblank(lines, index)
        action, filename = "run", None
        if mark is not None and (file_match := _FILE_MARK.match(mark)):
            action, filename = "file", file_match["name"]
        elif mark is not None and _SKIP_MARK.match(mark):
            action = "skip"
        blocks.append(Block(match["info"], body, start + 1, action, filename))
        index = end + 1
    return blocks


def _previous_nonblank(lines: list[str], index: int) -> str | None:
    for line in reversed(lines[:index]):
        if line.strip():
            return line
    return None


# --- matching output ---------------------------------------------------------------------------


def _line_regex(pattern: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")), re.DOTALL)


def lines_match(patterns: list[str], lines: list[str]) -> bool:
    """True when ``lines`` match ``patterns`` one to one; a ``...`` pattern eats any lines."""
    memo: dict[tuple[int, int], bool] = {}

    def match(p: int, n: int) -> bool:
        key = (p, n)
        if key not in memo:
            if p == len(patterns):
                memo[key] = n == len(lines)
            elif patterns[p].strip() == "...":
                memo[key] = any(match(p + 1, k) for k in range(n, len(lines) + 1))
            else:
                memo[key] = (
                    n < len(lines)
                    and _line_regex(patterns[p]).fullmatch(lines[n]) is not None
                    and match(p + 1, n + 1)
                )
        return memo[key]

    return match(0, 0)


def _clean(lines: list[str]) -> list[str]:
    lines = [line.rstrip() for line in lines]
    while lines and not lines[-1]:
        lines.pop()
    while lines and not lines[0]:
        lines.pop(0)
    return lines


# --- running blocks ----------------------------------------------------------------------------


@attrs.define
class DocRunner:
    """Runs the blocks of one document and remembers what they share."""

    doc: str
    workdir: Path
    namespace: dict[str, object] = attrs.field(factory=dict)
    #: run each ``python`` block in a fresh namespace (see ``STANDALONE``)
    standalone: bool = False
    last_ret: int | None = None
    ran: int = 0

    def run(self, block: Block) -> None:
        __tracebackhide__ = True
        if block.action == "skip":
            return
        if block.action == "file":
            assert block.filename is not None
            target = self.workdir / block.filename
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(block.text)
            importlib.invalidate_caches()
            self.ran += 1
        elif block.lang == "python":
            importlib.invalidate_caches()
            code = compile(block.text, f"{self.doc}:{block.lineno}", "exec")
            namespace = self.namespace
            if self.standalone:
                namespace = {"__name__": self.namespace.get("__name__", "__main__")}
            exec(code, namespace)  # the documentation's own examples, by design
            self.ran += 1
        elif block.lang == "pycon":
            self._doctest(block)
            self.ran += 1
        elif block.lang == "console":
            self._console(block)
            self.ran += 1

    def _doctest(self, block: Block) -> None:
        __tracebackhide__ = True
        parser = doctest.DocTestParser()
        test = parser.get_doctest(block.text, self.namespace, self.doc, self.doc, block.lineno)
        runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
        report: list[str] = []
        runner.run(test, out=report.append, clear_globs=False)
        # DocTest copies the globals it is given; keep what the block defined.
        self.namespace.update(test.globs)
        if runner.failures:
            pytest.fail(f"{self.doc}:{block.lineno}: pycon block failed\n" + "".join(report))

    def _console(self, block: Block) -> None:
        __tracebackhide__ = True
        commands: list[tuple[str, list[str], int]] = []
        for offset, line in enumerate(block.text.splitlines()):
            if line.startswith("$ "):
                commands.append((line[2:].strip(), [], block.lineno + offset))
            elif commands:
                commands[-1][1].append(line)
            elif line.strip():
                pytest.fail(f"{self.doc}:{block.lineno}: console output before any '$' line")
        for command, expected, lineno in commands:
            output = self._execute(command, lineno)
            patterns = _clean(expected)
            actual = _clean(output.splitlines())
            where = f"{self.doc}:{lineno}: $ {command}"
            if not patterns:
                if self.last_ret != 0:
                    pytest.fail(f"{where}\nexited {self.last_ret}:\n{output}")
            elif not lines_match(patterns, actual):
                pytest.fail(
                    f"{where}\n--- expected\n"
                    + "\n".join(patterns)
                    + "\n--- got\n"
                    + "\n".join(actual)
                )

    def _execute(self, command: str, lineno: int) -> str:
        __tracebackhide__ = True
        if command == "echo $?":
            return f"{self.last_ret}\n"
        argv = shlex.split(command)
        if argv[0] == "stepflow":
            argv = [sys.executable, "-m", "stepflow", *argv[1:]]
        elif argv[0] == "pytest":
            argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *argv[1:]]
        else:
            pytest.fail(
                f"{self.doc}:{lineno}: cannot run {command!r}; only stepflow, pytest and "
                f"'echo $?' run, so mark the block <!-- skip --> if it is not meant to"
            )
        env = {**os.environ, "COLUMNS": "80"}
        proc = subprocess.run(
            argv,
            cwd=self.workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        self.last_ret = proc.returncode
        return proc.stdout + proc.stderr


# --- the tests ---------------------------------------------------------------------------------


def _documents() -> list[Path]:
    return sorted(
        path for path in DOCS.rglob("*.md") if path.relative_to(DOCS).as_posix() not in NOT_OURS
    )


@pytest.fixture
def docs_workdir(
    tmp_path: Path, stepflow_home: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    """A fresh working folder on ``sys.path``, with the stepflow variables cleared."""
    workdir = tmp_path / "project"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    monkeypatch.syspath_prepend(str(workdir))
    for name in ("STEPFLOW_PLUGINS", "STEPFLOW_WORKERS", "STEPFLOW_DEFAULT_BACKEND"):
        monkeypatch.delenv(name, raising=False)
    yield workdir
    # Modules a document wrote and imported must not leak into the next document. A prefix
    # test on the path as imported or resolved (not resolving each of the ~1500 modules'
    # files, which cost 0.3-0.8 s per test).
    roots = (f"{workdir}{os.sep}", f"{workdir.resolve()}{os.sep}")
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if file and os.path.abspath(file).startswith(roots):
            del sys.modules[name]


@pytest.mark.parametrize(
    "path", _documents(), ids=lambda p: p.relative_to(DOCS).as_posix() if p else ""
)
def test_document_examples(path: Path, docs_workdir: Path) -> None:
    """Every runnable block of the document runs and shows the output the document shows."""
    doc = path.relative_to(DOCS).as_posix()
    module_name = "docs_" + re.sub(r"\W", "_", path.stem)
    runner = DocRunner(
        doc,
        docs_workdir,
        namespace={"__name__": module_name},
        standalone=doc.startswith(STANDALONE),
    )
    blocks = parse_blocks(path.read_text())
    for block in blocks:
        runner.run(block)
    assert runner.ran > 0, f"{doc} has no runnable example"


@pytest.mark.parametrize(
    "path", _documents(), ids=lambda p: p.relative_to(DOCS).as_posix() if p else ""
)
def test_document_links(path: Path) -> None:
    """Every relative link of the document points at a file that exists."""
    missing = []
    for match in _LINK.finditer(path.read_text()):
        target = match["target"]
        if "://" in target or target.startswith("mailto:"):
            continue
        resolved = (path.parent / target).resolve()
        if resolved.exists():
            continue
        if resolved.is_relative_to(DOCS) and resolved.relative_to(DOCS).as_posix() in (
            NOT_OURS | LANDING
        ):
            continue  # written by someone else, or on another branch; may land later
        missing.append(target)
    assert not missing, f"{path.relative_to(DOCS)} links to missing files: {missing}"


def test_index_links_every_how_to_once() -> None:
    """``docs/index.md`` links each how-to page exactly once: none is left out, none twice."""
    links = [match["target"] for match in _LINK.finditer((DOCS / "index.md").read_text())]
    pages = {path.relative_to(DOCS).as_posix() for path in (DOCS / "how-to").glob("*.md")}
    counts = {page: links.count(page) for page in sorted(pages | LANDING)}
    assert all(count == 1 for count in counts.values()), f"links per how-to page: {counts}"


def test_lines_match_ellipsis_and_star() -> None:
    """``...`` matches any run of lines and ``*`` any text, while ``[`` and ``?`` are literal."""
    lines = ["a", "list[int] ok?", "b", "c", "end 0.01s"]
    assert lines_match(["a", "list[int] ok?", "...", "end *s"], lines)
    assert lines_match(["...", "c", "end *"], lines)
    assert not lines_match(["a", "end *s"], lines)
    assert not lines_match(["lis[ti]nt] ok?", "..."], ["listint] ok!"])


def test_standalone_blocks_share_nothing(docs_workdir: Path) -> None:
    """In a standalone document a block cannot use a name an earlier block defined."""
    runner = DocRunner("tutorial/check.md", docs_workdir, standalone=True)
    runner.run(Block("python", "import math\nx = 1\n", 1))
    with pytest.raises(NameError, match="'math'"):
        runner.run(Block("python", "assert math.pi > x\n", 4))
    shared = DocRunner("how-to/check.md", docs_workdir)
    shared.run(Block("python", "import math\nx = 1\n", 1))
    shared.run(Block("python", "assert math.pi > x\n", 4))


def test_parse_blocks_marks() -> None:
    """File and skip comments attach to the next block; other blocks run."""
    text = (
        "<!-- file: flow.py -->\n```python\nx = 1\n```\n\n"
        "<!-- skip -->\n\n```console\n$ pip install x\n```\n"
        "```python\ny = 2\n```\n"
    )
    blocks = parse_blocks(text)
    assert [(b.action, b.filename, b.lang) for b in blocks] == [
        ("file", "flow.py", "python"),
        ("skip", None, "console"),
        ("run", None, "python"),
    ]
    assert blocks[0].text == "x = 1\n"


@pytest.mark.parametrize(
    "block",
    [
        Block("pycon", ">>> 1 + 1\n3\n", 1),
        Block("console", "$ stepflow --version\nnot the version\n", 1),
        Block("console", "$ stepflow run missing.py\n", 1),
        Block("python", "assert False, 'the example is wrong'\n", 1),
    ],
    ids=["pycon", "console-output", "console-exit-code", "python"],
)
def test_wrong_example_fails(block: Block, docs_workdir: Path) -> None:
    """A block whose output or exit code differs from the document's fails the test."""
    runner = DocRunner("check.md", docs_workdir)
    with pytest.raises((pytest.fail.Exception, AssertionError)):
        runner.run(block)
