"""The TOFU protocol scripts' one reader of the per-question forget truth ratios in a host TOFU_EVAL.json.

Beside report.py and truth_ratio_gap.py, which import it as a sibling module (a script's folder is the
first entry of ``sys.path``).
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
