"""Markdown tables that Jupyter renders as tables and consoles print as text."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

_NUMBER = re.compile(r"[+-]?[\d,]*\.?\d+( ?%)?")


class MarkdownText(str):
    """A string that Jupyter renders as Markdown (as a cell's value or through ``display``)."""

    def _repr_markdown_(self) -> str:
        return str(self)

    def __repr__(self) -> str:  # plain consoles show the table, not a quoted one-liner
        return str(self)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> MarkdownText:
    """A Markdown table; columns of numbers (blanks allowed) are right-aligned."""
    columns = [[row[i] for row in rows if row[i] != ""] for i in range(len(headers))]
    numeric = [bool(cells) and all(map(_is_number, cells)) for cells in columns]
    lines = [
        "| " + " | ".join(headers) + " |",
        "| " + " | ".join("---:" if right else "---" for right in numeric) + " |",
    ]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return MarkdownText("\n".join(lines))


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) or bool(_NUMBER.fullmatch(str(value)))
