"""Which FALCON settings make a real pretrained LM forget, and what each knob does (library level).

    python -m benchmarks.real_lm.ablate            # stages cached in ~/.cache/falcon-unlearning/real-lm
    python -m benchmarks.real_lm.ablate --report docs/results/real_lm_ablation.md

Stages: export SmolLM2-135M-Instruct from ``../shared/models`` to an HF folder, fine-tune the target
(TOFU forget01 + retain90[:80], see :mod:`benchmarks.real_lm.common`), evaluate base and target, then
every run of :data:`GRID` (FALCON at l* = 7 and the RMU-style baseline with the same trainable tensors,
100 steps of batch 4 + 4, constant learning rate) and a Markdown table with every metric as a ratio to
the target. Run it alone on the machine (``OMP_NUM_THREADS`` = free cores): about 4 minutes a run on
one core.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import torch

from benchmarks.real_lm import common
from benchmarks.real_lm.runs import RunSpec, mlp_regex, run

LAYER = 7
MLP = mlp_regex(LAYER - 2, LAYER)
PAPER = {"layer": LAYER, "trainable_modules": "down_proj", "retain_weight": 100}
"""The official method_args (trainer=FALCON_paper), spelt out so the grid does not move with the defaults."""
GRID: tuple[RunSpec, ...] = (
    RunSpec("paper_lr5e-5", 5e-5, method_args=PAPER),
    RunSpec("paper_lr3e-4", 3e-4, method_args=PAPER),
    RunSpec("paper_lr1e-3", 1e-3, method_args=PAPER),
    RunSpec("down_rw10_lr1e-3", 1e-3, method_args={**PAPER, "retain_weight": 10}),
    RunSpec(
        "mlp_rw10_lr1e-4",
        1e-4,
        method_args={"layer": LAYER, "retain_weight": 10, "trainable_params_regex": MLP},
    ),
    RunSpec(
        "mlp_rw10_lr3e-4",
        3e-4,
        method_args={"layer": LAYER, "retain_weight": 10, "trainable_params_regex": MLP},
    ),
    RunSpec(
        "mlp_rw10_lr1e-3",
        1e-3,
        method_args={"layer": LAYER, "retain_weight": 10, "trainable_params_regex": MLP},
    ),
    RunSpec(
        "mlp_rw100_lr1e-3",
        1e-3,
        method_args={"layer": LAYER, "retain_weight": 100, "trainable_params_regex": MLP},
    ),
    RunSpec(
        "rmu_mlp_lr1e-4",
        1e-4,
        method="RMU",
        method_args={"layer": LAYER, "steering_coeff": 20, "alpha": 10, "trainable_params_regex": MLP},
    ),
    RunSpec(
        "rmu_mlp_lr3e-4",
        3e-4,
        method="RMU",
        method_args={"layer": LAYER, "steering_coeff": 20, "alpha": 10, "trainable_params_regex": MLP},
    ),
    RunSpec(
        "rmu_mlp_lr1e-3",
        1e-3,
        method="RMU",
        method_args={"layer": LAYER, "steering_coeff": 20, "alpha": 10, "trainable_params_regex": MLP},
    ),
)
COLUMNS = (
    "forget",
    "forget_para_question",
    "forget_para_answer",
    "retain",
    "retain_para_question",
    "retain_para_answer",
    "real_authors",
    "world_facts",
)


def prepare() -> tuple[dict[str, Any], dict[str, Any]]:
    """Export, fine-tune and evaluate base and target (each stage cached); returns their metrics."""
    base = common.export_base_model()
    tokenizer = common.load_tokenizer(base)
    sets = common.eval_sets(tokenizer)
    base_metrics = common.cached_eval("base", base, tokenizer, sets)
    target = common.finetune_target(base)
    return base_metrics, common.cached_eval("target", target, tokenizer, sets)


def ratio_table(rows: dict[str, dict[str, Any]], target: dict[str, Any], columns: tuple[str, ...]) -> str:
    """Markdown: each metric of each run as a ratio to the target's, with the first greedy forget answer."""
    from falcon_plugin.tools.common.tables import markdown_table

    header = ["run", *columns, "first forget answer"]
    body = []
    for name, result in rows.items():
        cells = [name] + [f"{result[c] / target[c]:.3f}" if c in result else "" for c in columns]
        answer = result.get("forget_greedy", [""])[0].replace("|", "/").replace("\n", " ")[:60]
        body.append([*cells, answer])
    return markdown_table(header, body)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", nargs="*", help="run only these grid names")
    parser.add_argument("--report", type=Path, help="write the Markdown table here")
    args = parser.parse_args(argv)
    names = {spec.name for spec in GRID}
    unknown = sorted(set(args.only or ()) - names)
    if unknown:
        parser.error(f"unknown run(s) {unknown}; known: {', '.join(sorted(names))}")
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)
    _, target = prepare()
    rows = {}
    for spec in GRID:
        if args.only and spec.name not in args.only:
            continue
        rows[spec.name] = run(spec, "ablation")
        print(
            spec.name, {c: round(rows[spec.name][c], 4) for c in COLUMNS if c in rows[spec.name]}, flush=True
        )
    table = ratio_table(rows, target, COLUMNS)
    print(table)
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(table + "\n")


if __name__ == "__main__":
    main()
