"""``stepflow show`` displays after=[...] orderings and foreach in every format."""

from __future__ import annotations

import json

from stepflow import Pipeline, step
from stepflow._surfaces.show import render


def _pipeline() -> Pipeline:
    @step
    def setup() -> None: ...

    @step(after=[setup])
    def chunks() -> list[int]:
        return [1, 2]

    @step(foreach="chunks")
    def scored(chunks: int) -> int:
        return chunks

    return Pipeline("demo", [setup, chunks, scored])


def test_text():
    text = render(_pipeline(), "text")
    assert "  chunks() -> chunks: list[int]  [after=setup]" in text
    assert "  scored(chunks) -> scored: list[int]  [foreach=chunks]" in text


def test_dot_dashed():
    assert '  "setup" -> "chunks" [style=dashed];' in render(_pipeline(), "dot")


def test_mermaid_dotted():
    lines = render(_pipeline(), "mermaid").splitlines()
    assert "  n0 -.-> n1" in lines
    assert "  n1 --> n2" in lines


def test_json():
    doc = json.loads(render(_pipeline(), "json"))
    assert doc["after"] == [{"from": "setup", "to": "chunks"}]
    steps = {s["name"]: s for s in doc["steps"]}
    assert steps["chunks"]["options"]["after"] == ["setup"]
    assert steps["scored"]["options"]["foreach"] == "chunks"
    assert all(e["output"] for e in doc["edges"])
