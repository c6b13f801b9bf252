"""The result file of ``falcon-unlearn attack`` and its flat leaderboard columns (import-light: no torch).

``attacks.json`` (schema :data:`SCHEMA`, documented in ``docs/attacks.md``)::

    {"schema": "falcon-unlearn/attacks/1",
     "model": "/abs/path/of/the/model/folder",
     "seed": 0,
     "data": {"train": {"source", "kind", "rows"}, "test": {...}, "split": {"test_fraction", "seed"} | null,
              "template": "plain" | "chat"},
     "attacks": {"relearn": {"before": {METRIC: float}, "after": {METRIC: float}, "details": {...}}, ...},
     "protocol": {"relearn": {...exact hyper-parameters and source...}, ...},
     "versions": {"torch": ..., "transformers": ..., "peft": ...}}

METRIC names are ``forget_<m>`` on the held-out test part and ``forget_train_<m>`` on the part the
fine-tuning attacks train on, with ``<m>`` one of ``prob`` (answer probability), ``rougeL_recall``
(QA) and ``acc`` (MCQ). No timing or temporary path is written, so one seed gives one file, byte for byte.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SCHEMA = "falcon-unlearn/attacks/1"
RESULT_FILE = "attacks.json"
PHASES = ("before", "after")


def leaderboard_columns(result: Mapping[str, Any]) -> dict[str, float]:
    """Flat columns ``<attack>/<metric>_<before|after>`` (e.g. ``relearn/forget_prob_after``).

    Pure: reads only ``result["attacks"]``; non-numeric values are skipped. Attacks and metrics keep
    the file's order.
    """
    columns: dict[str, float] = {}
    for attack, entry in result.get("attacks", {}).items():
        for phase in PHASES:
            for metric, value in (entry.get(phase) or {}).items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    columns[f"{attack}/{metric}_{phase}"] = float(value)
    return columns


def read_result(path: str | Path) -> dict[str, Any]:
    """Load an ``attacks.json``; ValueError (naming the file) when it is not one."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read attack result {path}: {err}") from None
    if not isinstance(obj, dict) or obj.get("schema") != SCHEMA:
        raise ValueError(f"{path} is not a falcon-unlearn attack result (schema {SCHEMA!r})")
    return obj


def summary_rows(result: Mapping[str, Any]) -> list[list[Any]]:
    """``[attack, metric, before, after, change]`` rows for a table of one result."""
    rows = []
    for attack, entry in result.get("attacks", {}).items():
        before, after = entry.get("before", {}), entry.get("after", {})
        for metric, value in before.items():
            new = after.get(metric)
            change = (
                new - value if isinstance(new, int | float) and isinstance(value, int | float) else math.nan
            )
            rows.append([attack, metric, value, new, change])
    return rows


__all__ = ["PHASES", "RESULT_FILE", "SCHEMA", "leaderboard_columns", "read_result", "summary_rows"]
