"""The one writer of result tables, as Markdown and CSV text (demo, leaderboard, sweep, mi, benchmarks)."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from typing import Any


def format_value(value: Any, digits: int = 3) -> str:
    """Human-readable cell: floats to ``digits`` decimals, tiny ones in scientific form; None is empty."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if value != 0 and abs(value) < 10 ** (-digits):
            return f"{value:.2e}"
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(
    columns: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 3, align_numbers: bool = True
) -> str:
    """A GitHub-flavoured Markdown table ending with a newline; cells through :func:`format_value`.

    Args:
        columns: the header cells.
        rows: one sequence of cells per row (numbers, strings, None).
        digits: decimals of float cells.
        align_numbers: right-align the columns whose every cell is a number (or None); False: every
            column left-aligned (``|---|``), for tables of pre-formatted text.
    """

    def escape(text: str) -> str:
        return text.replace("|", "\\|")

    numeric = [
        align_numbers and all(isinstance(r[i], int | float) or r[i] is None for r in rows)
        for i in range(len(columns))
    ]
    lines = [
        "| " + " | ".join(escape(c) for c in columns) + " |",
        "|" + "|".join("---:" if n else "---" for n in numeric) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(escape(format_value(v, digits)) for v in row) + " |")
    return "\n".join(lines) + "\n"


def csv_text(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """CSV with full-precision numbers (empty cell for a missing value)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if v is None else v for v in row])
    return buffer.getvalue()
