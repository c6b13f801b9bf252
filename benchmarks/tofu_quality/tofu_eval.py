"""The TOFU protocol scripts' one reader of a host TOFU_EVAL.json (forget truth ratios, forget_quality).

Beside report.py, truth_ratio_gap.py and unseen_reference.py, which import it as a sibling module (a
script's folder is the first entry of ``sys.path``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def truth_ratios_by_index(evaluation: Mapping[str, Any] | None) -> dict[str, float]:
    """``forget_truth_ratio.value_by_index`` as {question index: ratio}, questions without a score left out.

    The host's truth ratio is the perturbed answers' probability over the paraphrased answer's, per
    question; ``{}`` when the evaluation has none.
    """
    values = ((evaluation or {}).get("forget_truth_ratio") or {}).get("value_by_index") or {}
    return {
        index: float(value["score"])
        for index, value in values.items()
        if isinstance(value, Mapping) and value.get("score") is not None
    }


def forget_quality_of(evaluation: Mapping[str, Any] | None) -> float | None:
    """The host's forget_quality (its ``agg_value``), or None when the evaluation had no retain logs."""
    value = ((evaluation or {}).get("forget_quality") or {}).get("agg_value")
    return None if value is None else float(value)
