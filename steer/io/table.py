"""Plain-text tables for the terminal."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from typing import Any


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, max_width: int = 48) -> str:
    """A boxed table; long cells wrap at `max_width` characters."""
    cells = [[textwrap.wrap(_cell(v), max_width) or [""] for v in row] for row in rows]
    widths = [
        max([len(h)] + [max(len(line) for line in row[i]) for row in cells]) for i, h in enumerate(headers)
    ]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    out = [rule, "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |", rule.replace("-", "=")]
    for row in cells:
        height = max(len(c) for c in row)
        for line in range(height):
            parts = [(c[line] if line < len(c) else "").ljust(w) for c, w in zip(row, widths)]
            out.append("| " + " | ".join(parts) + " |")
        out.append(rule)
    return "\n".join(out)
