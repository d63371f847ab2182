"""HTML building blocks: the page frame, tables, state badges and small SVG charts.

Every value that reaches a page goes through :func:`esc`; pages are plain strings, so a page
of 10,000 rows costs a join, not a template engine.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Sequence
from html import escape
from typing import Any
from urllib.parse import quote, urlencode

__all__ = [
    "badge",
    "chart",
    "esc",
    "page",
    "q",
    "table",
    "when",
]

_NAV = (
    ("/runs", "Runs"),
    ("/compare", "Compare"),
    ("/datasets", "Data sets"),
    ("/models", "Models"),
    ("/published", "Published"),
)


#: text that neither HTML nor a URL path needs to change (step names, run ids, numbers)
_PLAIN = re.compile(r"[A-Za-z0-9_.\-~ :+]*")


def esc(value: object) -> str:
    text = "" if value is None else str(value)
    # The fast path matters on pages of thousands of rows.
    return text if _PLAIN.fullmatch(text) else escape(text, quote=True)


def q(value: str) -> str:
    """``value`` quoted for a URL path segment."""
    return value if " " not in value and _PLAIN.fullmatch(value) else quote(value, safe="")


def query(**params: object) -> str:
    """``?a=1&b=2`` of the parameters that are set, or ``""``."""
    kept = {k: v for k, v in params.items() if v not in (None, "")}
    return ("?" + urlencode(kept)) if kept else ""


def when(ts: float | None) -> str:
    """A timestamp as local time, with the full ISO time as its tooltip."""
    if ts is None:
        return "-"
    iso = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(ts))
    return f'<time datetime="{iso}">{time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))}</time>'


def iso(text: str | None) -> str:
    """An ISO 8601 time as ``2026-12-01 22:41:59``, the full time as its tooltip."""
    if not text:
        return "-"
    shown = esc(text[:19].replace("T", " "))
    return f'<time datetime="{esc(text)}" title="{esc(text)}">{shown}</time>'


def seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 60:
        return f"{value:.2f}s"
    minutes, secs = divmod(int(value), 60)
    return f"{minutes}m{secs:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


def badge(state: str | None) -> str:
    state = state or "unknown"
    return f'<span class="badge s-{esc(state)}">{esc(state)}</span>'


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], *, id: str = "") -> str:
    """A table whose cells are already HTML."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    ident = f' id="{esc(id)}"' if id else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def page(title: str, body: str, *, current: str = "", live: str = "") -> str:
    """A whole page: the navigation, then ``body``. ``live``: the server-sent-events URL
    that tells the page to refresh its live parts."""
    nav = "".join(
        f'<a href="{href}"{" class=on" if href == current else ""}>{label}</a>'
        for href, label in _NAV
    )
    live_attr = f' data-live="{esc(live)}"' if live else ""
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)} - stepflow</title>"
        '<link rel=icon href="data:,">'
        '<link rel=stylesheet href="/static/ui.css">'
        '<script src="/static/htmx.min.js" defer></script>'
        '<script src="/static/ui.js" defer></script>'
        f"</head><body{live_attr}><header><b>stepflow</b>{nav}</header>"
        f"<main><h1>{esc(title)}</h1>{body}</main></body></html>"
    )


def chart(
    points: Sequence[tuple[float, float]],
    *,
    labels: Sequence[str] = (),
    links: Sequence[str] = (),
    x_label: str = "",
    width: int = 420,
    height: int = 160,
) -> str:
    """A line chart of ``(x, y)`` points as inline SVG; ``labels`` and ``links`` per point
    become tooltips and links."""
    pts = [(x, y) for x, y in points if y is not None and y == y]  # NaN never draws
    if not pts:
        return '<p class="muted">no values</p>'
    pad_l, pad_b, pad = 48, 22, 8
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    if y1 == y0:
        y0, y1 = y0 - 1, y1 + 1
    w, h = width - pad_l - pad, height - pad_b - pad

    def sx(x: float) -> float:
        return pad_l + (x - x0) / (x1 - x0) * w

    def sy(y: float) -> float:
        return pad + h - (y - y0) / (y1 - y0) * h

    path = "M" + "L".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
    dots = []
    for i, (x, y) in enumerate(pts):
        tip = labels[i] if i < len(labels) else f"{x:g}: {y:g}"
        dot = f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3"><title>{esc(tip)}</title></circle>'
        if i < len(links) and links[i]:
            dot = f'<a href="{esc(links[i])}">{dot}</a>'
        dots.append(dot)
    return (
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}">'
        f'<line x1="{pad_l}" y1="{pad + h}" x2="{pad_l + w}" y2="{pad + h}" class="axis"/>'
        f'<line x1="{pad_l}" y1="{pad}" x2="{pad_l}" y2="{pad + h}" class="axis"/>'
        f'<text x="{pad_l - 4}" y="{pad + 8}" text-anchor="end">{y1:.4g}</text>'
        f'<text x="{pad_l - 4}" y="{pad + h}" text-anchor="end">{y0:.4g}</text>'
        f'<text x="{pad_l + w}" y="{height - 6}" text-anchor="end">{esc(x_label)}</text>'
        f'<path d="{path}" class="line"/>{"".join(dots)}</svg>'
    )


def pre(text: str, *, id: str = "") -> str:
    ident = f' id="{esc(id)}"' if id else ""
    return f"<pre{ident}>{esc(text)}</pre>"


def kv(pairs: Iterable[tuple[str, Any]]) -> str:
    """A definition list of already-HTML values."""
    return "<dl>" + "".join(f"<dt>{esc(k)}</dt><dd>{v}</dd>" for k, v in pairs) + "</dl>"
