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

__all__ = ["Column", "table"]


class Column:
    """How one column is laid out.

    A plain class, not attrs: this module is imported to build ``stepflow --help``, whose
    budget an attrs import (about 30 ms here) would take a fifth of.
    """

    __slots__ = ("align", "gap", "header", "min_width")

    def __init__(self, header: str, align: str = "<", min_width: int = 0, gap: str = "  ") -> None:
        if align not in ("<", ">"):
            raise ValueError(f"'align' must be in ('<', '>'), not {align!r}")
        self.header = header
        #: ``"<"`` (left) or ``">"`` (right)
        self.align = align
        #: the narrowest the column is, whatever its cells
        self.min_width = min_width
        #: what separates this column from the one before it
        self.gap = gap

    def __repr__(self) -> str:
        return (
            f"Column(header={self.header!r}, align={self.align!r}, "
            f"min_width={self.min_width!r}, gap={self.gap!r})"
        )


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
