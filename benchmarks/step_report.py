"""The report of ``benchmarks/step.py``: the targets (PASS / FAIL / SKIP) and the Markdown summary."""

from __future__ import annotations

from typing import Any

from benchmarks.reporting import text_table
from benchmarks.step_variants import VARIANTS

TARGETS = (
    # name, metric, threshold
    ("step_vs_official", "step time ours / official", 0.35),
    ("step_vs_rmu", "step time ours / rmu", 0.5),
    ("step_vs_floor", "step time ours / floor", 2.0),
    ("memory_vs_official", "peak memory ours / official", 0.6),
    ("mi_vs_forward", "MI selection / one batched forward", 1.5),
)


def evaluate_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """PASS/FAIL (or SKIP when not measured) for each target."""
    step = (results.get("step") or {}).get("ratios", {})
    memory = (results.get("memory") or {}).get("ratios", {})
    mi = results.get("mi") or {}
    values = {
        "step_vs_official": step.get("ours/official"),
        "step_vs_rmu": step.get("ours/rmu"),
        "step_vs_floor": step.get("ours/floor"),
        "memory_vs_official": memory.get("ours/official"),
        "mi_vs_forward": mi.get("ratio"),
    }
    out = []
    for name, metric, threshold in TARGETS:
        value = values[name]
        status = "SKIP" if value is None else ("PASS" if value <= threshold else "FAIL")
        out.append({"name": name, "metric": metric, "value": value, "threshold": threshold, "status": status})
    return out


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def render_table(results: dict[str, Any]) -> str:
    """The human-readable summary (markdown): step times and memory, targets, MI."""
    step = results.get("step") or {"variants": {}}
    memory = results.get("memory") or {"variants": {}}
    ours_t = step["variants"].get("ours", {}).get("median_s")
    ours_m = memory["variants"].get("ours", {}).get("peak_mib")
    rows = []
    for name in VARIANTS:
        t = step["variants"].get(name)
        m = memory["variants"].get(name)
        if t is None and m is None:
            continue
        median = t["median_s"] if t else None
        peak = m["peak_mib"] if m else None
        paired = step.get("paired_ratio_medians", {}).get(f"ours/{name}", 1.0 if name == "ours" else None)
        rows.append(
            [
                name,
                _fmt(median),
                f"{_fmt(t['min_s'])}-{_fmt(t['max_s'])}" if t else "-",
                _fmt(ours_t / median if ours_t and median else None, 2),
                _fmt(paired if t else None, 2),
                _fmt(peak, 0),
                _fmt(ours_m / peak if ours_m and peak else None, 2),
            ]
        )
    parts = [
        text_table(
            [
                "variant",
                "median step (s)",
                "range (s)",
                "ours / this (time)",
                "paired median",
                "peak memory (MiB)",
                "ours / this (memory)",
            ],
            rows,
        )
    ]
    mi = results.get("mi")
    if mi:
        samples = f"{mi['samples']['forget']}+{mi['samples']['retain']}"
        breakdown = mi["mi_breakdown_s"]
        parts.append(
            text_table(
                ["MI over all layers", "median (s)", "samples", "tokens", "of which"],
                [
                    ["one batched forward", _fmt(mi["forward"]["median_s"]), samples, mi["tokens"], "-"],
                    [
                        "run_mi_selection",
                        _fmt(mi["mi_selection"]["median_s"]),
                        samples,
                        mi["tokens"],
                        f"capture {breakdown['capture']:.1f} s, estimate {breakdown['estimate']:.1f} s",
                    ],
                ],
            )
        )
    parts.append(
        text_table(
            ["target", "value", "threshold", "result"],
            [
                [t["metric"], _fmt(t["value"]), f"<= {t['threshold']}", t["status"]]
                for t in results["targets"]
            ],
        )
    )
    return "\n\n".join(parts)
