"""The one text table of the CLI's listings (``runs``, ``logs``, ``cache``, ``datasets``,
``models``).

Cells are never cut: a cut name cannot be told from a shorter real one, so each column widens
to its longest cell.

>>> print(table([("a", "1"), ("bcd", "22")], ["NAME", "N"]), end="")
NAME  N
a     1
bcd   22
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

__all__ = ["Column", "table"]


@attrs.frozen
class Column:
    """How one column is laid out."""

    header: str
    #: ``"<"`` (left) or ``">"`` (right)
    align: str = attrs.field(default="<", validator=attrs.validators.in_(("<", ">")))
    #: the narrowest the column is, whatever its cells
    min_width: int = 0
    #: what separates this column from the one before it
    gap: str = "  "


def table(
    rows: Sequence[Sequence[object]],
    columns: Sequence[str | Column],
    *,
    strip: bool = True,
) -> str:
    """``rows`` under a header line, each column as wide as its widest cell (or header).

    ``strip`` removes the spaces that end a line (a short last cell); without it every line
    keeps its full padding up to the last column, which is never padded.
    """
    cols = [c if isinstance(c, Column) else Column(c) for c in columns]
    cells = [[c.header for c in cols], *([str(cell) for cell in row] for row in rows)]
    widths = [max(c.min_width, *(len(r[i]) for r in cells)) for i, c in enumerate(cols)]
    last = len(cols) - 1
    lines = []
    for row in cells:
        parts = []
        for i, (cell, col, width) in enumerate(zip(row, cols, widths, strict=True)):
            gap = col.gap if i else ""
            if i == last and col.align == "<":
                parts.append(gap + cell)  # trailing padding is noise
            else:
                parts.append(gap + (cell.rjust(width) if col.align == ">" else cell.ljust(width)))
        line = "".join(parts)
        lines.append(line.rstrip() if strip else line)
    return "\n".join(lines) + "\n"
