"""``falcon-unlearn mi``: FALCON Step 1 (layer selection) on any local HF causal LM, both criteria.

The option defaults are the core's :class:`~falcon_plugin.config.MIConfig` defaults (what
``trainer.method_args.mi`` uses when not set). Every criterion is scored from one capture and printed
side by side; ``--criterion`` names the one whose pick is the recommended layer.
"""

from __future__ import annotations

import argparse
import logging
import random
from pathlib import Path
from typing import Any

from falcon_plugin.config import CRITERIA, MIConfig, check_mi_sample_count, min_mi_samples
from falcon_plugin.tools.common.errors import InputError

from .common import FORMATTER, MIN_MAX_LENGTH, add_common, check_out_dir, check_positive, emit

logger = logging.getLogger(__name__)
_DEFAULTS = MIConfig()


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``mi`` subcommand."""
    mi = sub.add_parser(
        "mi",
        formatter_class=FORMATTER,
        help="FALCON Step 1 on any HF causal LM: per-layer scores of both criteria, recommended layer",
        description="Score every decoder layer l from pooled activations (one capture) with both Step-1 "
        "criteria:\n"
        "  separability: held-out I(H_l; D), how well layer l tells forget from retain; pick = argmax\n"
        "  paper: the paper's paired I(F_l; R_l); pick = argmin\n"
        "(several forget sets: + eta * the forget-forget terms). Recommend the --criterion's pick and "
        "write\nmi_report.json and mi_report.png (both curves). See docs/mi.md to choose.\n"
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
        "--criterion",
        default=_DEFAULTS.criterion,
        metavar="{" + ",".join(CRITERIA) + "}",
        help="criterion whose pick is the recommended layer; both are scored (default: %(default)s)",
    )
    mi.add_argument(
        "--probe-folds",
        type=int,
        default=_DEFAULTS.probe_folds,
        help="held-out folds of the separability probe (default: %(default)s)",
    )
    mi.add_argument(
        "--min-layer",
        type=int,
        default=_DEFAULTS.min_layer,
        help="shallowest layer either criterion may pick (default: %(default)s)",
    )
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
        "--estimator",
        default=_DEFAULTS.estimator,
        help="entropy estimator of the paper criterion (default: %(default)s)",
    )
    mi.add_argument(
        "--pca-variance",
        type=float,
        default=_DEFAULTS.pca_variance,
        help="PCA variance kept by the paper criterion (default: %(default)s)",
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

    for path in [*args.forget, args.retain]:
        if not path.exists():
            raise InputError(f"data file not found: {path}")
    if args.criterion not in CRITERIA:
        raise InputError(f"unknown --criterion {args.criterion!r}; expected one of {', '.join(CRITERIA)}")
    minimum = min_mi_samples(args.criterion, args.probe_folds)
    if args.samples < minimum:
        raise InputError(f"--samples must be >= {minimum}, got {args.samples}")
    check_positive(args.max_length, "--max-length", MIN_MAX_LENGTH)
    check_positive(args.batch_size, "--batch-size")
    check_out_dir(args.out)
    config = MIConfig(
        criterion=args.criterion,
        probe_folds=args.probe_folds,
        min_layer=args.min_layer,
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
        check_mi_sample_count(len(recs), str(path), config)  # FalconConfigError: one error line, exit 2
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
    emit(criteria_table(report))
    emit(
        f"\nrecommended layer: {report.chosen_layer} (criterion {report.criterion}; "
        f"{count} samples per set)\n"
    )
    emit(criteria_picks(report))
    logger.info("MI report written to %s and %s", json_path, png_path)
    return 0


def criteria_table(report: Any) -> str:
    """Markdown table: one row per layer, each criterion's score, and which criterion picks the layer."""
    from falcon_plugin.report import RULES
    from falcon_plugin.tools.common.tables import markdown_table

    names = [report.criterion, *(n for n in report.criteria if n != report.criterion)]
    by_layer = {n: {s.layer: s.score for s in report.criteria[n].scores} for n in names}
    layers = sorted({layer for scores in by_layer.values() for layer in scores})
    headers = ["layer", *(f"{n} ({RULES[n]})" for n in names), "picked by"]
    rows = []
    for layer in layers:
        picks = [
            n + (" <- l*" if n == report.criterion else "")
            for n in names
            if report.criteria[n].chosen_layer == layer
        ]
        rows.append([layer, *(by_layer[n].get(layer) for n in names), ", ".join(picks)])
    return markdown_table(headers, rows, digits=4)


def criteria_picks(report: Any) -> str:
    """One line per criterion: its pick, and which one is the default and which one was used."""
    from falcon_plugin.report import DEFAULT_CRITERION, RULES

    lines = []
    for name, result in report.criteria.items():
        flags = (("default", name == DEFAULT_CRITERION), ("used", name == report.criterion))
        notes = [n for n, on in flags if on]
        note = f" ({', '.join(notes)})" if notes else ""
        if result.error is not None:
            lines.append(f"  {name}{note}: not scored ({result.error})\n")
        else:
            lines.append(f"  {name}{note}: {RULES[name]} -> layer {result.chosen_layer}\n")
    return "picks:\n" + "".join(lines)
