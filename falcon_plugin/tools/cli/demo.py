"""``falcon-unlearn demo``: the offline end-to-end demo (options checked here, the run in ``tools.demo``)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from falcon_plugin.tools.common.errors import InputError

from .common import (
    FORMATTER,
    MIN_MAX_LENGTH,
    add_common,
    check_out_dir,
    check_positive,
    check_seed,
    emit,
)

logger = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``demo`` subcommand."""
    demo = sub.add_parser(
        "demo",
        formatter_class=FORMATTER,
        help="offline end-to-end demo: fictitious facts, tiny Llama, FALCON vs baselines",
        description="Generate fictitious TOFU-like facts, build a word-level tokenizer and a tiny Llama, "
        "fine-tune it\n"
        "until it knows every fact, then unlearn the forget people with FALCON (l* = L-2), FALCON-MI\n"
        "(layer chosen by MI, layer=auto), GradDiff and an RMU-style baseline at the same step budget,\n"
        "and print a side-by-side table.\n\n"
        "Writes into --out: results.md/.csv/.json, mi_report.json/.png, forget_vs_retain.png,\n"
        "facts.jsonl (the data, with a split field) and finetuned/ (the fine-tuned model, reused by a\n"
        "rerun with the same settings; an earlier run's results and MI report are removed at the start).",
        epilog="examples:\n  falcon-unlearn demo --out demo_out\n"
        "  falcon-unlearn demo --size ci --out /tmp/ci\n"
        "  falcon-unlearn demo --model ./my-llm --data qa.jsonl --out mine"
        "   # records: question, answer, split",
    )
    demo.add_argument(
        "--out", type=Path, default=Path("falcon_demo"), help="output folder (default: %(default)s)"
    )
    demo.add_argument(
        "--size",
        default="small",
        metavar="{small,ci}",
        help="small: the full demo (default); ci: a reduced size for tests",
    )
    demo.add_argument(
        "--seed", type=int, default=0, help="seed for facts, split, model and training (default: 0)"
    )
    demo.add_argument(
        "--model", type=Path, help="a local Hugging Face causal-LM folder instead of the tiny Llama"
    )
    demo.add_argument(
        "--data",
        type=Path,
        help="JSON/JSONL QA records with 'question', 'answer' and 'split' ('forget' or 'retain')",
    )
    demo.add_argument("--forget-data", type=Path, help="JSON/JSONL QA records to forget (with --retain-data)")
    demo.add_argument("--retain-data", type=Path, help="JSON/JSONL QA records to keep (with --forget-data)")
    demo.add_argument(
        "--methods",
        default="FALCON,FALCON-MI,GradDiff,RMU",
        help="comma-separated subset (default: %(default)s); FALCON-MI is FALCON with layer=auto",
    )
    demo.add_argument("--steps", type=int, help="unlearning steps per method (default: the size preset's)")
    demo.add_argument(
        "--finetune",
        default="auto",
        metavar="{auto,yes,no}",
        help="fine-tune on all QA pairs first; auto: unless both --model and your own data are given. "
        "A complete OUT/finetuned/ fine-tuned with the same settings is reused",
    )
    demo.add_argument("--max-length", type=int, help="tokens per QA pair (default: the size preset's, 48)")
    demo.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (default: 1 for the built-in tiny model unless OMP_NUM_THREADS is set; "
        "torch's default with --model)",
    )
    add_common(demo)


def run(args: argparse.Namespace) -> int:
    """Check every option, run the demo, print its table."""
    from falcon_plugin.tools.demo.methods import METHODS
    from falcon_plugin.tools.demo.presets import PRESETS
    from falcon_plugin.tools.demo.runner import DemoOptions, run_demo

    if args.size not in PRESETS:
        raise InputError(f"unknown --size {args.size!r}; expected one of {', '.join(PRESETS)}")
    if args.finetune not in ("auto", "yes", "no"):
        raise InputError(f"unknown --finetune {args.finetune!r}; expected auto, yes or no")
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    for method in methods or ("",):
        if method not in METHODS:
            raise InputError(f"unknown method {method!r} in --methods; expected some of {', '.join(METHODS)}")
    check_positive(args.steps, "--steps")
    check_positive(args.max_length, "--max-length", MIN_MAX_LENGTH)
    check_positive(args.threads, "--threads")
    check_seed(args.seed)
    check_out_dir(args.out)
    if args.model is not None and not args.model.exists():
        raise InputError(f"--model not found: {args.model}")
    for flag in ("data", "forget_data", "retain_data"):
        path = getattr(args, flag)
        if path is not None and not path.exists():
            raise InputError(f"--{flag.replace('_', '-')} not found: {path}")
    result = run_demo(
        DemoOptions(
            out=args.out,
            size=args.size,
            seed=args.seed,
            model_path=args.model,
            data_path=args.data,
            forget_data=args.forget_data,
            retain_data=args.retain_data,
            methods=methods,
            steps=args.steps,
            finetune=args.finetune,
            progress=not args.quiet,
            max_length=args.max_length,
            threads=args.threads,
        )
    )
    emit(result.markdown())
    logger.info("demo outputs written to %s (%.0f s in total)", args.out, result.meta["total_seconds"])
    return 0
