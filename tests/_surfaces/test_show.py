"""``stepflow show`` renderers: hostile step names stay inside quoted labels."""

from __future__ import annotations

import re

from stepflow import Pipeline, step
from stepflow._surfaces.show import render


def _end_pipeline(name: str = "demo") -> Pipeline:
    @step
    def start() -> int:
        return 1

    @step
    def end(start: int) -> tuple[int, int]:
        return start, start

    @step
    def report(end: tuple[int, int]) -> str:
        return str(end)

    return Pipeline(name, [start, end, report])


def test_mermaid_quotes_keyword_step_names():
    """A step named ``end`` (a Mermaid keyword) is a quoted label on a generated node id."""
    text = render(_end_pipeline(), "mermaid")
    lines = text.splitlines()
    assert lines[0] == "flowchart LR"
    assert '  n1["end"]' in lines
    assert '  n2["report"]' in lines
    assert "  n0 --> n1" in lines and "  n1 --> n2" in lines
    # No bare name is used as a node id: every edge joins generated ids only.
    for line in lines[1:]:
        assert re.fullmatch(r'  n\d+(\["[^"]*"\]| -->(\|"[^"]*"\|)? n\d+)', line), line


def test_dot_quotes_every_id():
    """DOT keywords are safe as names because every id is quoted (a guard, not a fix)."""

    @step
    def node() -> int:
        return 1

    @step
    def edge(node: int) -> int:
        return node

    text = render(Pipeline("demo", [node, edge]), "dot")
    assert '  "node" -> "edge";' in text


def test_svg_is_the_shared_renderer_and_well_formed():
    """``show --format svg`` draws every step and edge with the one renderer."""
    import xml.etree.ElementTree as ET

    text = render(_end_pipeline(), "svg")
    root = ET.fromstring(text)
    ns = "{http://www.w3.org/2000/svg}"
    names = [g.get("data-step") for g in root.iter(f"{ns}g") if g.get("data-step")]
    assert names == ["start", "end", "report"]
    assert len([p for p in root.iter(f"{ns}path") if p.get("class") == "sf-edge"]) == 2
