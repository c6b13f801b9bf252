"""Leaderboard tables: rows grouped per benchmark, ordered, the Pareto front marked, rendered as Markdown.

Order within a benchmark: model, split, role (target, retain, other references, unlearning runs),
then the registry's sort metrics. The Pareto front is taken among the unlearning runs of one model and
split, on the benchmark's (utility, forgetting) axes.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from falcon_plugin.tools.common.benchmarks import BENCHMARKS, Benchmark
from falcon_plugin.tools.common.pareto import pareto_front
from falcon_plugin.tools.common.tables import markdown_table

from .attacks import attack_columns
from .read import Row

ROLE_ORDER = {"target": 0, "retain": 1, "reference": 2, "unlearn": 3}


def _sort_key(row: Row, bench: Benchmark) -> tuple:
    keys: list[Any] = [row.model, row.split, ROLE_ORDER.get(row.role, 9)]
    for metric, higher in bench.sort:
        value = row.value(metric)
        keys.append(math.inf if value is None else (-value if higher else value))
    keys.append(row.method)
    keys.append(row.task)
    return tuple(keys)


def mark_pareto(rows: Sequence[Row], bench: Benchmark) -> None:
    """Set ``row.pareto`` on unlearning rows not dominated in (utility, forgetting) in their model/split."""
    if bench.utility is None or bench.forget is None:
        return
    util, forget = bench.utility, bench.forget
    candidates = [
        r
        for r in rows
        if r.role == "unlearn" and r.value(util.key) is not None and r.value(forget.key) is not None
    ]
    groups: dict[tuple[str, str], list[Row]] = {}
    for row in candidates:
        groups.setdefault((row.model, row.split), []).append(row)
    for group in groups.values():
        points = []
        for r in group:
            u, f = r.value(util.key), r.value(forget.key)
            points.append((u if util.higher_better else -u, f if forget.higher_better else -f))  # type: ignore[operator]
        for row, on_front in zip(group, pareto_front(points), strict=True):
            row.pareto = on_front


def tables(rows: Sequence[Row]) -> dict[str, list[Row]]:
    """Rows grouped per benchmark (in registry order), sorted, with the Pareto front marked."""
    out: dict[str, list[Row]] = {}
    for name, bench in BENCHMARKS.items():
        group = sorted((r for r in rows if r.benchmark == name), key=lambda r: _sort_key(r, bench))
        if group:
            mark_pareto(group, bench)
            out[name] = group
    return out


def run_names(rows: Sequence[Row]) -> list[str]:
    """Each row's run folder, as few trailing path parts as tell the rows' folders apart (the folder's
    name unless two runs share it); the source file's folder for a row without a run folder."""
    paths = [Path(r.run_dir) if r.run_dir else Path(r.source).parent for r in rows]
    depth = 1
    while depth < max((len(p.parts) for p in paths), default=1):
        names = ["/".join(p.parts[-depth:]) for p in paths]
        if len(set(names)) == len(set(paths)):
            return names
        depth += 1
    return [str(p) for p in paths]


def repeats_identity(rows: Sequence[Row]) -> bool:
    """Whether two rows share method, model, split and task name (a run repeated into another folder
    under the same host ``task_name``): the tables then add a ``run`` column to tell them apart."""
    return any(n > 1 for n in Counter((r.method, r.model, r.split, r.task) for r in rows).values())


def metric_columns(rows: Sequence[Row], bench: Benchmark, include_stderr: bool = False) -> list[str]:
    """The benchmark's preferred metrics that occur, then any other metric, alphabetically."""
    present = {k for r in rows for k in r.metrics}
    columns = [c for c in bench.columns if c in present]
    rest = sorted(k for k in present - set(columns) if include_stderr or not k.endswith("_stderr"))
    if bench.name == "demo":
        rest = [k for k in rest if k not in ("steps", "lr")]
    return (
        columns
        + [k for k in rest if k != "wmdp_mean/acc"]
        + (["wmdp_mean/acc"] if "wmdp_mean/acc" in present else [])
    )


def table_cells(
    rows: Sequence[Row], bench: Benchmark, include_stderr: bool = False
) -> tuple[list[str], list[list[Any]]]:
    """(column names, cell rows) of one benchmark's table: identity columns (``run`` too when two rows
    share the others, :func:`repeats_identity`), metrics, ``pareto``, then the recovery attacks'
    ``<attack>/<metric>_<before|after>`` (all of them with ``include_stderr``, the CSV; else the
    held-out part's)."""
    metrics = metric_columns(rows, bench, include_stderr)
    attacks = attack_columns(rows, full=include_stderr)
    runs = run_names(rows) if repeats_identity(rows) else None
    columns = ["method", "model", "split", "task", *(["run"] if runs else []), *metrics]
    if bench.utility is not None:
        columns.append("pareto")
    columns += attacks
    body = []
    for i, r in enumerate(rows):
        identity = [r.method, r.model, r.split, r.task, *([runs[i]] if runs else [])]
        line: list[Any] = [*identity, *(r.metrics.get(m) for m in metrics)]
        if bench.utility is not None:
            line.append("yes" if r.pareto else "")
        line += [r.attacks.get(c) for c in attacks]
        body.append(line)
    return columns, body


def notes(rows: Sequence[Row], bench: Benchmark) -> list[str]:
    """What a reader of the table should know: no plot (and why), runs missing from the plot."""
    if bench.utility is None or bench.forget is None:
        return []
    util, forget = bench.utility, bench.forget
    why = f" ({forget.missing})" if forget.missing else ""
    plotted = [r for r in rows if r.value(util.key) is not None and r.value(forget.key) is not None]
    if not plotted:
        return [f"no {bench.name} plot: no run has both {util.key} and {forget.key}{why}."]
    runs = [r for r in rows if r.role == "unlearn"]
    lacking = [r for r in runs if r.value(forget.key) is None]
    if lacking:
        names = ", ".join(r.task for r in lacking)
        return [
            f"{len(lacking)} of {len(runs)} unlearning runs have no {forget.key}, "
            f"not in the plot: {names}{why}."
        ]
    return []


def markdown(groups: dict[str, list[Row]]) -> str:
    """All benchmark tables as one Markdown document (each with its notes)."""
    out = ["# Unlearning leaderboard\n"]
    for name, rows in groups.items():
        columns, body = table_cells(rows, BENCHMARKS[name])
        text = f"## {name}\n\n" + markdown_table(columns, body)
        text += "".join(f"\nNote: {note}\n" for note in notes(rows, BENCHMARKS[name]))
        out.append(text)
    return "\n".join(out)
