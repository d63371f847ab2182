"""The one graph renderer: layered layout, states, badges, links, escaping, big graphs."""

from __future__ import annotations

import itertools
import random
import xml.etree.ElementTree as ET

from stepflow import Pipeline, step
from stepflow._planning.svg import layout, render_svg

SVG = "{http://www.w3.org/2000/svg}"


def _nodes(svg: str) -> dict[str, str]:
    """step → data-state, from the drawing as an XML document."""
    root = ET.fromstring(svg)
    return {
        g.get("data-step"): g.get("data-state") for g in root.iter(f"{SVG}g") if g.get("data-step")
    }


def test_columns_follow_the_longest_path():
    """A step sits one column right of its furthest producer, so every edge points right."""
    placed = layout(["a", "b", "c", "d"], [("a", "b"), ("b", "c"), ("a", "c"), ("a", "d")])
    assert placed.columns == {"a": 0, "b": 1, "c": 2, "d": 1}
    for a, b in placed.edges:
        assert placed.boxes[a][0] + placed.boxes[a][2] < placed.boxes[b][0]


def test_boxes_in_one_column_never_overlap():
    steps = ["root", *[f"leaf{i}" for i in range(7)]]
    placed = layout(steps, [("root", s) for s in steps[1:]])
    ys = sorted(placed.boxes[s][1] for s in steps[1:])
    assert all(later - earlier >= 36 for earlier, later in itertools.pairwise(ys))
    assert placed.height >= ys[-1] + 36


def test_states_badges_and_links_are_drawn():
    svg = render_svg(
        ["load", "train", "score"],
        [("load", "train"), ("train", "score")],
        states={"load": "reused", "train": "ran", "score": "failed"},
        notes={"train": "1.50s"},
        href=lambda s: f"/steps/{s}",
    )
    assert _nodes(svg) == {"load": "reused", "train": "ran", "score": "failed"}
    root = ET.fromstring(svg)
    links = [a.get("href") for a in root.iter(f"{SVG}a")]
    assert links == ["/steps/load", "/steps/train", "/steps/score"]
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert "reused" in texts  # the badge
    assert "ran \u00b7 1.50s" in texts
    assert len(list(root.iter(f"{SVG}path"))) >= 2  # two edges (and the arrow head)


def test_steps_left_out_of_states_are_pending():
    svg = render_svg(["a", "b"], [("a", "b")], states={"a": "running"})
    assert _nodes(svg) == {"a": "running", "b": "pending"}


def test_without_states_no_state_is_claimed():
    assert set(_nodes(render_svg(["a", "b"], [("a", "b")])).values()) == {""}


def test_names_are_escaped_and_long_ones_cut():
    long = "x" * 80
    svg = render_svg(['<b>&"', long], [('<b>&"', long)])
    root = ET.fromstring(svg)  # well-formed despite the markup in a name
    assert set(_nodes(svg)) == {'<b>&"', long}
    shown = [t.text for t in root.iter(f"{SVG}text")]
    assert long not in shown and any(t and t.endswith("\u2026") for t in shown)


def test_a_cycle_or_unknown_edge_does_not_hang_or_fail():
    placed = layout(["a", "b"], [("a", "b"), ("b", "a"), ("a", "zzz")])
    assert set(placed.boxes) == {"a", "b"}
    assert placed.edges == (("a", "b"), ("b", "a"))


def test_equal_drawings_are_equal_text_and_different_ones_have_their_own_ids():
    one = render_svg(["a"], [], states={"a": "ran"})
    assert one == render_svg(["a"], [], states={"a": "ran"})
    other = render_svg(["a"], [], states={"a": "failed"})
    assert one.split('class="sf-dag ')[1][:14] != other.split('class="sf-dag ')[1][:14]


def test_two_thousand_steps_draw():
    rng = random.Random(0)
    steps = [f"s{i}" for i in range(2000)]
    edges = [(steps[rng.randrange(i)], steps[i]) for i in range(1, 2000)]
    svg = render_svg(steps, edges, states=dict.fromkeys(steps, "ran"))
    assert len(_nodes(svg)) == 2000


def test_pipeline_and_show_use_the_renderer(tmp_path):
    @step
    def first() -> int:
        return 1

    @step
    def second(first: int) -> int:
        return first + 1

    pipe = Pipeline("two", [first, second])
    svg = pipe._repr_svg_()
    assert _nodes(svg) == {"first": "", "second": ""}
    assert svg in pipe._repr_html_()
    result = pipe.run(home=tmp_path / "home")
    assert _nodes(result._repr_svg_()) == {"first": "ran", "second": "ran"}
    assert "2 ran" in result._repr_html_()
    again = pipe.run(home=tmp_path / "home")
    assert _nodes(again._repr_svg_()) == {"first": "reused", "second": "reused"}
    assert ET.fromstring(again._repr_svg_()).find(f"{SVG}g/{SVG}path") is not None  # the edge
