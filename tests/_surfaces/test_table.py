"""The one table renderer of the CLI's listings."""

from __future__ import annotations

import pytest

from stepflow._surfaces.table import Column, table


def test_columns_widen_to_the_longest_cell_and_lines_are_stripped() -> None:
    text = table([("a", "", ""), ("long-name", "x", "")], ["NAME", "B", "NOTE"])
    assert text == "NAME       B  NOTE\na\nlong-name  x\n"


def test_right_aligned_columns_minimum_widths_and_gaps() -> None:
    columns = [Column("key", min_width=6), Column("size", ">", min_width=6, gap=" "), Column("run")]
    text = table([("ab", "5 B", "")], columns, strip=False)
    # The last column is never padded; without strip an empty last cell keeps its gap.
    assert text.splitlines() == ["key      size  run", "ab        5 B  "]


def test_an_unknown_alignment_is_refused() -> None:
    with pytest.raises(ValueError, match="'align' must be in"):
        Column("x", "^")
