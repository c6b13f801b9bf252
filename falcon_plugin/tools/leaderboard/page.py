"""The leaderboard as one self-contained HTML page (tables, scatter plots embedded as base64 PNG)."""

from __future__ import annotations

import base64
import html

from falcon_plugin.tools.common.benchmarks import BENCHMARKS
from falcon_plugin.tools.common.tables import format_value

from .read import Row
from .table import notes, table_cells

_STYLE = (
    "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
    "th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f2f2f2}"
    "td:nth-child(-n+4){text-align:left}tr.ref{background:#f8f8e8}tr.pareto td:first-child{font-weight:bold}"
    "img{max-width:100%}p.note{color:#844}</style>"
)


def html_page(groups: dict[str, list[Row]], images: dict[str, bytes | None]) -> str:
    """The page: per benchmark a heading, its table (reference rows shaded, Pareto rows bold), its plot."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>Unlearning leaderboard</title>',
        _STYLE + "</head><body>",
        "<h1>Unlearning leaderboard</h1>",
    ]
    for name, rows in groups.items():
        columns, body = table_cells(rows, BENCHMARKS[name])
        parts.append(f"<h2>{html.escape(name)}</h2><table><thead><tr>")
        parts += [f"<th>{html.escape(c)}</th>" for c in columns]
        parts.append("</tr></thead><tbody>")
        for row, line in zip(rows, body, strict=True):
            cls = "ref" if row.role != "unlearn" else ("pareto" if row.pareto else "")
            cells = "".join(f"<td>{html.escape(format_value(v))}</td>" for v in line)
            parts.append(f'<tr class="{cls}">' + cells + "</tr>")
        parts.append("</tbody></table>")
        parts += [f'<p class="note">Note: {html.escape(note)}</p>' for note in notes(rows, BENCHMARKS[name])]
        image = images.get(name)
        if image:
            encoded = base64.b64encode(image).decode("ascii")
            parts.append(f'<img alt="{html.escape(name)} scatter" src="data:image/png;base64,{encoded}">')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
