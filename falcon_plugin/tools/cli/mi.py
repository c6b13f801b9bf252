"""``falcon-unlearn mi``: FALCON Step 1 (MI-guided layer selection) on any local HF causal LM.

The option defaults are the core's :class:`~falcon_plugin.config.MIConfig` defaults (what
``trainer.method_args.mi`` uses when not set).
"""

from __future__ import annotations

import argparse
import logging
import random
from pathlib import Path
from typing import Any

from falcon_plugin.config import MIN_MI_SAMPLES, MIConfig, check_mi_sample_count
from falcon_plugin.tools.common.errors import InputError

from .common import FORMATTER, add_common, emit

logger = logging.getLogger(__name__)
_DEFAULTS = MIConfig()


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``mi`` subcommand."""
    mi = sub.add_parser(
        "mi",
        formatter_class=FORMATTER,
        help="FALCON Step 1 on any HF causal LM: per-layer MI, recommended layer",
        description="Score every decoder layer l by I(F_l; R_l) (+ eta * sum I(F_i; F_j) with several "
        "forget sets)\n"
        "from pooled activations, recommend l* = argmin, and write mi_report.json and mi_report.png.\n"
        "Data files: JSON/JSONL records with 'question' and 'answer', or 'text' (a corpus document).",
        epilog="example:\n  falcon-unlearn mi --model demo_out/finetuned --forget forget.jsonl "
        "--retain retain.jsonl --out mi",
    )
    mi.add_argument("--model", type=Path, required=True, help="local Hugging Face causal-LM folder")
    mi.add_argument(
        "--forget",
        type=Path,
        action="append",
        required=True,
        help="forget-domain data file; repeat for several domains",
    )
    mi.add_argument("--retain", type=Path, required=True, help="retain data file")
    mi.add_argument(
        "--samples",
        type=int,
        default=_DEFAULTS.samples,
        help="records sampled per file (default: %(default)s)",
    )
    mi.add_argument(
        "--eta",
        type=float,
        default=_DEFAULTS.eta,
        help="weight of the forget-forget MI term (default: %(default)s)",
    )
    mi.add_argument(
        "--pooling",
        default=_DEFAULTS.pooling,
        metavar="{last,mean}",
        help="token pooling (default: %(default)s)",
    )
    mi.add_argument(
        "--estimator", default=_DEFAULTS.estimator, help="entropy estimator (default: %(default)s)"
    )
    mi.add_argument(
        "--pca-variance",
        type=float,
        default=_DEFAULTS.pca_variance,
        help="PCA variance kept (default: %(default)s)",
    )
    mi.add_argument(
        "--batch-size",
        type=int,
        default=_DEFAULTS.batch_size,
        help="samples per forward pass (default: %(default)s)",
    )
    mi.add_argument("--max-length", type=int, default=256, help="tokens per record (default: %(default)s)")
    mi.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    mi.add_argument("--out", type=Path, default=Path("mi_out"), help="output folder (default: %(default)s)")
    add_common(mi)


def _examples(records: list, count: int, tokenizer: Any, max_length: int, seed: int) -> list:
    from falcon_plugin.data import tokenize_qa, tokenize_text
    from falcon_plugin.tools.common.qa_files import QAPair

    if len(records) > count:
        records = random.Random(seed).sample(records, count)
    return [
        tokenize_qa(tokenizer, r.question, r.answer, max_length)
        if isinstance(r, QAPair)
        else tokenize_text(tokenizer, r, max_length)
        for r in records
    ]


def run(args: argparse.Namespace) -> int:
    """Check the inputs, score every layer, write the report, print the per-layer table."""
    from falcon_plugin.report import run_mi_selection
    from falcon_plugin.tools.common.hf import load_causal_lm
    from falcon_plugin.tools.common.qa_files import load_mi_records
    from falcon_plugin.tools.common.tables import markdown_table

    for path in [*args.forget, args.retain]:
        if not path.exists():
            raise InputError(f"data file not found: {path}")
    if args.samples < MIN_MI_SAMPLES:
        raise InputError(f"--samples must be >= {MIN_MI_SAMPLES}, got {args.samples}")
    config = MIConfig(
        samples=args.samples,
        pca_variance=args.pca_variance,
        estimator=args.estimator,
        eta=args.eta,
        pooling=args.pooling,
        batch_size=args.batch_size,
    )
    tokenizer, model = load_causal_lm(args.model)
    files = [*args.forget, args.retain]
    records = [load_mi_records(p) for p in files]
    for path, recs in zip(files, records, strict=True):
        check_mi_sample_count(len(recs), str(path))  # FalconConfigError: one error line, exit 2
    # the same number of samples from every file: the joint entropy pairs the i-th samples of two sets
    count = min(args.samples, *(len(r) for r in records))
    examples = [_examples(r, count, tokenizer, args.max_length, args.seed + i) for i, r in enumerate(records)]
    report = run_mi_selection(
        model,
        examples[:-1],
        examples[-1],
        config,
        pad_token_id=tokenizer.pad_token_id,
        progress=not args.quiet,
    )
    json_path, png_path = report.save(args.out)
    rows = [[s.layer, s.score, "<- l*" if s.layer == report.chosen_layer else ""] for s in report.scores]
    emit(markdown_table(["layer", "I(F;R) score (nats)", "chosen"], rows, digits=4))
    emit(f"\nrecommended layer: {report.chosen_layer} ({count} samples per set)\n")
    logger.info("MI report written to %s and %s", json_path, png_path)
    return 0
