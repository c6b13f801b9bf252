"""Ground truth for Step 1 on a real LM: FALCON's defaults at every 2nd layer, and where each
criterion points.

    python -m benchmarks.real_lm.layer_sweep --mi-report PATH/mi_report.json --out docs/results/real_lm_layers

Each run is FALCON with the shipped defaults (every MLP weight of l*-2..l*, retain weight 10, lr 1e-3,
100 steps of batch 4 + 4) at a fixed l*, from the cached SmolLM2 target (:mod:`benchmarks.real_lm.common`),
evaluated on the first 20 rows of the forget / retain sets and their reworded questions (the target on
the same rows). The score of
a layer is what a user wants from it: retain kept and forget gone, ``mean(retain ratios) - mean(forget
ratios)`` (ratios to the target). ``--mi-report`` marks the layer each Step-1 criterion picks on the same
target (``falcon-unlearn mi`` writes that report). Runs are cached; the sweep resumes.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from benchmarks.real_lm import common
from benchmarks.real_lm.runs import RunSpec, mlp_regex, quick_sets, run

NUM_LAYERS = 30
FORGET_SETS = ("forget", "forget_para_question")
RETAIN_SETS = ("retain", "retain_para_question")


def sweep_specs(layers: range = range(1, NUM_LAYERS, 2)) -> list[RunSpec]:
    """One run per layer with the defaults (the trainable tensors spelt out: they follow l*)."""
    return [
        RunSpec(
            f"sweep_L{layer:02d}",
            1e-3,
            quick=True,
            method_args={
                "layer": layer,
                "retain_weight": 10,
                "trainable_params_regex": mlp_regex(layer - 2, layer),
            },
        )
        for layer in layers
    ]


def layer_score(result: dict[str, Any], target: dict[str, Any]) -> float:
    """mean retain ratio - mean forget ratio (1 = everything kept and everything forgotten)."""
    kept = sum(result[s] / target[s] for s in RETAIN_SETS) / len(RETAIN_SETS)
    left = sum(result[s] / target[s] for s in FORGET_SETS) / len(FORGET_SETS)
    return kept - left


def picks(mi_report: Path | None) -> dict[str, int]:
    """Layer chosen by each criterion recorded in an MI report (empty without one)."""
    if mi_report is None:
        return {}
    report = json.loads(mi_report.read_text())
    criteria = report.get("criteria", {})
    return {name: int(entry["chosen_layer"]) for name, entry in criteria.items() if "chosen_layer" in entry}


def plot(rows: list[dict[str, Any]], chosen: dict[str, int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = [r["layer"] for r in rows]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7.5, 6), sharex=True)
    for name in (*FORGET_SETS, *RETAIN_SETS):
        top.plot(layers, [r[name] for r in rows], marker="o", label=name.replace("_", " "))
    top.set_ylabel("answer probability / target's")
    top.set_ylim(-0.05, 1.1)
    top.legend(fontsize=8, ncol=2, loc="center right")
    bottom.plot(layers, [r["score"] for r in rows], marker="o", color="black")
    bottom.set_ylabel("retain kept - forget left")
    bottom.set_xlabel("unlearning layer l* (trainable: MLPs of l*-2..l*)")
    ordered = sorted(r["score"] for r in rows)
    bottom.axhline(
        ordered[-(len(ordered) // 3) - 1] if len(ordered) >= 3 else ordered[0],
        color="grey",
        linestyle=":",
        label="best third",
    )
    for (name, layer), color in zip(
        sorted(chosen.items()), ("tab:red", "tab:purple", "tab:green"), strict=False
    ):
        for axis in (top, bottom):
            axis.axvline(layer, color=color, linestyle="--", alpha=0.8)
        right = layer > (min(layers) + max(layers)) / 2
        bottom.annotate(
            f"{name}: {layer}",
            (layer, bottom.get_ylim()[0]),
            xytext=(-3 if right else 3, 4),
            textcoords="offset points",
            color=color,
            fontsize=8,
            ha="right" if right else "left",
        )
    bottom.legend(fontsize=8, loc="lower right")
    fig.suptitle("FALCON defaults per layer, SmolLM2-135M on TOFU forget01 (100 steps)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--mi-report", type=Path, help="mi_report.json of the target (marks each criterion's pick)"
    )
    parser.add_argument("--out", type=Path, help="folder for layer_sweep.json / .md / .png")
    args = parser.parse_args(argv)
    if args.mi_report is not None and not args.mi_report.is_file():
        parser.error(f"--mi-report {str(args.mi_report)!r} is not a file")
    logging.basicConfig(level=logging.WARNING)
    folder = common.CACHE / "models" / "target"
    tokenizer = common.load_tokenizer(folder)
    target = common.cached_eval("target_quick", folder, tokenizer, quick_sets(common.eval_sets(tokenizer)))
    rows = []
    for spec in sweep_specs():
        result = run(spec, "layer_sweep")
        row = {
            "layer": spec.method_args["layer"],
            **{s: result[s] / target[s] for s in (*FORGET_SETS, *RETAIN_SETS)},
        }
        row["score"] = layer_score(result, target)
        rows.append(row)
        print(row, flush=True)
    chosen = picks(args.mi_report)
    ranked = sorted(rows, key=lambda r: -r["score"])
    best_third = {r["layer"] for r in ranked[: max(1, len(rows) // 3)]}
    swept = [r["layer"] for r in rows]
    nearest = {name: min(swept, key=lambda x: (abs(x - layer), x)) for name, layer in chosen.items()}
    summary = {
        "rows": rows,
        "picks": chosen,
        "best_third": sorted(best_third),
        "pick_in_best_third": {name: nearest[name] in best_third for name in chosen},
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "rows"}))
    if args.out:
        common.atomic_json(args.out / "layer_sweep.json", summary)
        plot(rows, chosen, args.out / "layer_sweep.png")


if __name__ == "__main__":
    main()
