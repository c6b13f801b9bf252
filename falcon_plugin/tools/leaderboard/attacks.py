"""Recovery-attack results (``falcon-unlearn attack``'s ``attacks.json``) as leaderboard columns.

Every ``attacks.json`` under the searched folders is read (:func:`falcon_plugin.tools.attacks.read_result`)
and matched to the run whose model it attacked, in this order:

1. the model folder it records (``"model"``, an absolute path) is the run's folder, or the local model
   folder the run's ``.hydra/config.yaml`` names;
2. the file lies inside the run's folder (``<run>/.../attacks.json``; the command never writes into
   the model folder it reads, so this is for runs whose model is a checkpoint below them);
3. the recorded model folder's name is the run folder's name (``saves/unlearn/<task>``), for results
   moved to another machine; only when exactly one run has that name.

A matched run's rows get the flat columns of
:func:`falcon_plugin.tools.attacks.leaderboard_columns`: ``<attack>/<metric>_<before|after>``. A result
that matches no run is reported (a warning naming the file and its model), not dropped silently.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from falcon_plugin.tools.attacks.result import PHASES, RESULT_FILE, leaderboard_columns, read_result

from .read import Row

logger = logging.getLogger(__name__)


def _name(path: Path) -> str:
    """A run's name: the folder's, with its parent's for a checkpoint (``<task>/checkpoint-N``)."""
    return f"{path.parent.name}/{path.name}" if path.name.startswith("checkpoint-") else path.name


def find_results(paths: Iterable[Path]) -> list[tuple[Path, dict[str, Any]]]:
    """(file, result) of every readable ``attacks.json`` in ``paths`` (sorted, duplicates dropped)."""
    found = []
    for path in sorted({p.resolve() for p in paths}):
        try:
            found.append((path, read_result(path)))
        except ValueError as err:
            logger.warning("leaderboard: skipping %s", err)
    return found


def attach(rows: Sequence[Row], results: Sequence[tuple[Path, dict[str, Any]]]) -> list[Path]:
    """Give the matched rows their attack columns; returns the files that matched no run."""
    host_rows = [r for r in rows if r.run_dir]
    by_dir: dict[str, list[Row]] = {}
    for row in host_rows:
        for key in {row.run_dir, *row.model_dirs}:
            by_dir.setdefault(key, []).append(row)
    by_name: dict[str, set[str]] = {}
    for row in host_rows:
        by_name.setdefault(_name(Path(row.run_dir)), set()).add(row.run_dir)
    unmatched = []
    for path, result in results:
        model = Path(str(result.get("model", ""))).resolve()
        matched = by_dir.get(str(model))
        if not matched:
            owners = [d for d in by_dir if Path(d) in path.parents]
            matched = by_dir[max(owners, key=len)] if owners else None
        if not matched:
            dirs = by_name.get(_name(model), set())
            matched = [r for r in host_rows if r.run_dir in dirs] if len(dirs) == 1 else None
        if not matched:
            unmatched.append(path)
            logger.warning(
                "leaderboard: %s (model %s) matches no run of the leaderboard; put it beside the runs "
                "(falcon-unlearn attack --model saves/unlearn/<task> --out saves/attacks/<task>)",
                path,
                result.get("model"),
            )
            continue
        columns = leaderboard_columns(result)
        for row in matched:
            clash = sorted({c.split("/", 1)[0] for c in columns if c in row.attacks})
            if clash:
                logger.warning(
                    "leaderboard: %s repeats attack(s) %s of %s for %s; keeping the first",
                    path,
                    ", ".join(clash),
                    row.attacks_source,
                    row.task,
                )
            row.attacks = {**columns, **row.attacks}
            row.attacks_source = ", ".join(x for x in (row.attacks_source, str(path)) if x)
    return unmatched


def attack_columns(rows: Sequence[Row], full: bool = False) -> list[str]:
    """The attack columns present, per attack and metric ``before`` then ``after``.

    ``full`` (CSV): every metric; otherwise (Markdown, HTML) only the held-out part's ``forget_<m>``,
    the headline of docs/attacks.md (``forget_train_<m>`` rises for any model, it was trained on).
    """
    present = list(dict.fromkeys(c for r in rows for c in r.attacks))
    groups: dict[tuple[str, str], list[str]] = {}
    for column in present:
        attack, rest = column.split("/", 1)
        metric, phase = rest.rsplit("_", 1)
        if phase not in PHASES or (not full and metric.startswith("forget_train_")):
            continue
        groups.setdefault((attack, metric), []).append(column)
    return [
        f"{attack}/{metric}_{phase}"
        for (attack, metric), columns in groups.items()
        for phase in PHASES
        if f"{attack}/{metric}_{phase}" in columns
    ]


__all__ = ["RESULT_FILE", "attach", "attack_columns", "find_results"]
