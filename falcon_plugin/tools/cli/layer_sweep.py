"""``falcon-unlearn layer-sweep``: FALCON at each candidate layer on a user's model and QA files.

The empirical check of Step 1: both criteria pick a layer on the model and data
(:func:`falcon_plugin.report.run_mi_selection`), then FALCON runs from the same model at each layer
asked for and at each pick, with one budget, and the forget / retain answer probability and ROUGE-L
recall are measured per layer (:mod:`falcon_plugin.tools.layer_sweep`). Every input is checked before
the model is loaded; a run resumes from its ``--out``.
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

from falcon_plugin.config import CRITERIA, POOLINGS, MIConfig, min_mi_samples
from falcon_plugin.tools.common.errors import InputError

from .common import FORMATTER, MIN_MAX_LENGTH, add_common, check_out_dir, check_positive, check_seed, emit

logger = logging.getLogger(__name__)
_MI = MIConfig()
DEFAULT_STEPS = 100
DEFAULT_LR = 1e-3
DEFAULT_BATCH = 4
"""The budget's defaults: FALCON's measured real-LM budget (``configs/trainer/FALCON.yaml``, ``budget``)."""


def _layers(text: str) -> list[int]:
    from falcon_plugin.tools.layer_sweep import parse_layers

    try:
        return parse_layers(text)
    except InputError as err:
        raise argparse.ArgumentTypeError(str(err).removeprefix("--layers: ")) from None


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``layer-sweep`` subcommand."""
    p = sub.add_parser(
        "layer-sweep",
        formatter_class=FORMATTER,
        help="FALCON at each candidate layer on your model and QA files: which layer unlearns best",
        description="Score every layer with both Step-1 criteria (as `mi`), then run FALCON from the same "
        "model at each\nlayer of --layers / --every and at each criterion's pick, one budget, and measure "
        "the forget and\nretain answer probability and ROUGE-L recall per layer. Writes layer_sweep.json, "
        ".csv, .png\n(curves with each pick marked) and mi_report.json / .png into --out; rerun the same "
        "command to\nresume (layers already there are skipped).\n"
        "Data files: JSON/JSONL records with 'question' and 'answer'.",
        epilog="example:\n  falcon-unlearn layer-sweep --model demo_out/finetuned --forget forget.jsonl "
        "--retain retain.jsonl --every 2 --steps 50 --out sweep",
    )
    p.add_argument("--model", type=Path, required=True, help="local Hugging Face causal-LM folder")
    p.add_argument("--forget", type=Path, required=True, help="forget QA file")
    p.add_argument("--retain", type=Path, required=True, help="retain QA file")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--layers", type=_layers, help="layers to sweep, e.g. 1,3,5")
    which.add_argument("--every", type=int, help="sweep layers 0, N, 2N, ... (default: every 2nd)")
    p.add_argument(
        "--steps", type=int, default=DEFAULT_STEPS, help="optimizer steps per layer (default: %(default)s)"
    )
    p.add_argument("--lr", type=float, default=DEFAULT_LR, help="learning rate (default: %(default)s)")
    p.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH,
        help="forget/retain pairs per step (default: %(default)s)",
    )
    p.add_argument(
        "--criterion",
        default=_MI.criterion,
        metavar="{" + ",".join(CRITERIA) + "}",
        help="criterion marked as used in the report; both are scored and swept (default: %(default)s)",
    )
    p.add_argument(
        "--samples", type=int, default=_MI.samples, help="Step-1 samples per set (default: %(default)s)"
    )
    p.add_argument(
        "--probe-folds",
        type=int,
        default=_MI.probe_folds,
        help="held-out folds of the separability probe (default: %(default)s)",
    )
    p.add_argument(
        "--min-layer",
        type=int,
        default=_MI.min_layer,
        help="shallowest layer a criterion may pick (default: %(default)s)",
    )
    p.add_argument(
        "--pooling",
        default=_MI.pooling,
        metavar="{" + ",".join(POOLINGS) + "}",
        help="Step-1 token pooling (default: %(default)s)",
    )
    p.add_argument(
        "--eval-samples",
        type=int,
        default=200,
        help="QA pairs per side measured after unlearning (default: %(default)s)",
    )
    p.add_argument(
        "--template",
        default="auto",
        metavar="{auto,plain,chat}",
        help="QA format: plain 'Question: ...\\nAnswer:' or the tokenizer's chat template; auto: chat when "
        "the tokenizer has one (default)",
    )
    p.add_argument("--max-length", type=int, default=256, help="tokens per example (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of sampling and training (default: 0)")
    p.add_argument(
        "--out", type=Path, default=Path("layer_sweep_out"), help="output folder (default: %(default)s)"
    )
    add_common(p)


def run(args: argparse.Namespace) -> int:
    """Check every input, then criteria, the model before unlearning and FALCON at each layer."""
    from falcon_plugin.tools.attacks.data import TEMPLATES
    from falcon_plugin.tools.common.tables import markdown_table
    from falcon_plugin.tools.layer_sweep import (
        RESULT_JSON,
        SweepSettings,
        check_inputs,
        run_layer_sweep,
        table_rows,
    )

    check_positive(args.steps, "--steps")
    check_positive(args.batch_size, "--batch-size")
    check_positive(args.every, "--every")
    check_positive(args.eval_samples, "--eval-samples")
    check_positive(args.max_length, "--max-length", MIN_MAX_LENGTH)
    check_seed(args.seed)
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise InputError(f"--lr must be a finite number > 0, got {args.lr}")
    if args.template not in TEMPLATES:
        raise InputError(f"unknown --template {args.template!r}; expected one of {', '.join(TEMPLATES)}")
    if args.criterion not in CRITERIA:
        raise InputError(f"unknown --criterion {args.criterion!r}; expected one of {', '.join(CRITERIA)}")
    minimum = min_mi_samples(args.criterion, args.probe_folds)
    if args.samples < minimum:
        raise InputError(f"--samples must be >= {minimum}, got {args.samples}")
    check_out_dir(args.out)
    mi = MIConfig(
        criterion=args.criterion,
        samples=args.samples,
        probe_folds=args.probe_folds,
        min_layer=args.min_layer,
        pooling=args.pooling,
    )
    settings = SweepSettings(
        steps=args.steps,
        learning_rate=args.lr,
        batch_size=args.batch_size,
        seed=args.seed,
        max_length=args.max_length,
        template=args.template,
        eval_samples=args.eval_samples,
        mi=mi,
    )
    inputs = check_inputs(args.model, args.forget, args.retain, args.layers, args.every, settings, args.out)
    state = run_layer_sweep(inputs, settings, args.out, progress=not args.quiet)
    columns, rows = table_rows(state)
    emit(markdown_table(columns, rows, digits=4))
    ranks = {row[0]: row[-2] for row in rows[1:]}
    emit(
        "\nscore = (1 - forget_prob/before) * (retain_prob/before); "
        f"rank 1 = best of {len(rows) - 1} layers\n"
    )
    for name, layer in state["criteria"]["picks"].items():
        note = " (default)" if name == state["criteria"]["default"] else ""
        where = f"layer {layer}, rank {ranks.get(layer)}" if layer is not None else "not scored"
        emit(f"  {name}{note} pick: {where}\n")
    logger.info("layer sweep written to %s", args.out / RESULT_JSON)
    return 0
