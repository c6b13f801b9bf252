"""``falcon-unlearn leaderboard``: open-unlearning and demo results side by side.

* :mod:`.read` -- finding and reading the results (host summaries, demo ``results.json``) into rows;
* :mod:`.table` -- grouping, ordering, the Pareto front, the Markdown tables;
* :mod:`.attacks` -- ``falcon-unlearn attack`` results as columns of the runs they attacked;
* :mod:`.plot` -- the utility-vs-forgetting scatter (labels placed by :mod:`.labels`); :mod:`.page` --
  the HTML page.

Outputs of :func:`build`: one table per benchmark (Markdown, CSV), a self-contained HTML page with each
scatter plot embedded as base64, ``leaderboard.json``, and a utility-vs-forgetting scatter per benchmark
with the Pareto front of the unlearning runs marked. Which benchmarks exist, their files, columns and
axes: :mod:`falcon_plugin.tools.common.benchmarks`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from falcon_plugin.atomic import atomic_write, atomic_write_json, atomic_write_text
from falcon_plugin.tools.common.benchmarks import BENCHMARKS
from falcon_plugin.tools.common.errors import InputError
from falcon_plugin.tools.common.tables import csv_text

from .page import html_page
from .plot import scatter_figure, scatter_png
from .read import Row, collect
from .table import mark_pareto, markdown, metric_columns, notes, table_cells, tables

logger = logging.getLogger(__name__)


def build(dirs: Sequence[str | Path], out_dir: str | Path) -> tuple[dict[str, list[Row]], str]:
    """Collect, render and write everything into ``out_dir``; returns (tables, Markdown text)."""
    rows = collect(dirs)
    if not rows:
        raise InputError(
            f"no open-unlearning summaries or demo results found under: {', '.join(map(str, dirs))}"
        )
    groups = tables(rows)
    out = Path(out_dir)
    images: dict[str, bytes | None] = {}
    for name, group in groups.items():
        columns, body = table_cells(group, BENCHMARKS[name], include_stderr=True)
        atomic_write_text(out / f"{name.lower()}.csv", csv_text(columns, body))
        image = images[name] = scatter_png(group, BENCHMARKS[name])
        if image:
            atomic_write(out / f"{name.lower()}_pareto.png", lambda tmp, data=image: tmp.write_bytes(data))
    for name, group in groups.items():
        for note in notes(group, BENCHMARKS[name]):
            logger.warning("leaderboard: %s", note)
    text = markdown(groups)
    atomic_write_text(out / "leaderboard.md", text)
    atomic_write_text(out / "leaderboard.html", html_page(groups, images))
    atomic_write_json(
        out / "leaderboard.json", {name: [asdict(r) for r in group] for name, group in groups.items()}
    )
    logger.info("leaderboard: %d rows in %d tables written to %s", len(rows), len(groups), out)
    return groups, text


__all__ = [
    "Row",
    "build",
    "collect",
    "mark_pareto",
    "markdown",
    "metric_columns",
    "notes",
    "scatter_figure",
    "scatter_png",
    "tables",
]
