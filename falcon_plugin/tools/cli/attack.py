"""``falcon-unlearn attack``: recovery attacks on a saved model folder (the run in ``tools.attacks``)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from .common import FORMATTER, add_common, check_out_dir, check_seed, emit

logger = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``attack`` subcommand."""
    from falcon_plugin.tools.attacks.specs import LoraSpec, RelearnSpec

    relearn, lora = RelearnSpec(), LoraSpec()
    p = sub.add_parser(
        "attack",
        formatter_class=FORMATTER,
        help="recovery attacks (relearning, LoRA relearning, quantization): "
        "does forgotten knowledge come back?",
        description="Attack a saved Hugging Face model folder (e.g. an unlearned model the host wrote) "
        "and measure\n"
        "the forget data before and after each attack. The model folder is only read; attacks.json (and,\n"
        "with --save-models, the attacked models) go to --out.\n\n"
        "attacks (docs/attacks.md):\n"
        "  relearn        full fine-tune on the train part (OPTML-Group/Unlearn-Simple: AdamW, lr 1e-5,\n"
        "                 100 steps, effective batch 4, warm-up steps//10)\n"
        "  relearn-lora   LoRA on every linear layer (ethz-spylab/unlearning-vs-safety: r 128, alpha 16,\n"
        "                 lr 2e-4, 3 epochs, batch 1)\n"
        "  quantize-8bit, quantize-4bit  weight round trip in bitsandbytes' 8-bit / 4-bit formats (Zhang et\n"
        "                 al., ICLR 2025); 'quantize' = both, 'all' = every attack (the default)\n\n"
        "data: TOFU/MUSE QA files ({question, answer}), WMDP-style MCQs ({question, choices, answer}) or a\n"
        "text corpus ({text} records or a .txt file); one --data file is split into train/test by a seeded\n"
        "shuffle, or give --train-data and --test-data. Metrics: answer probability and ROUGE-L recall\n"
        "(QA), MCQ accuracy, on the held-out test part (forget_*) and the train part (forget_train_*).",
        epilog="examples:\n"
        "  falcon-unlearn attack --model saves/unlearn/falcon_tofu --data forget01.json "
        "--out attacks/falcon\n"
        "  falcon-unlearn attack --model m --train-data bio_forget_corpus.jsonl --test-data wmdp_bio.jsonl "
        "--attacks relearn --out a",
    )
    p.add_argument(
        "--model", type=Path, required=True, help="local Hugging Face causal-LM folder (only read)"
    )
    p.add_argument("--data", type=Path, help="forget data, split into train/test (see --test-fraction)")
    p.add_argument(
        "--train-data", type=Path, help="data to fine-tune on (with --test-data, instead of --data)"
    )
    p.add_argument("--test-data", type=Path, help="held-out data to measure (with --train-data)")
    p.add_argument(
        "--out", type=Path, required=True, help="output folder for attacks.json (not inside --model)"
    )
    p.add_argument("--attacks", default="all", help="comma-separated attacks (default: %(default)s)")
    p.add_argument(
        "--kind", default="auto", metavar="{auto,qa,mcq,text}", help="data kind (default: from the fields)"
    )
    p.add_argument(
        "--test-fraction", type=float, default=0.5, help="share of --data held out (default: %(default)s)"
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed for the split, training and adapters (default: 0)"
    )
    p.add_argument(
        "--template",
        default="auto",
        metavar="{auto,plain,chat}",
        help="QA format: plain 'Question: ...\\nAnswer:' or the tokenizer's chat template with the host's "
        "system prompt; auto: chat when the tokenizer has one (default)",
    )
    p.add_argument("--max-length", type=int, default=256, help="tokens per example (default: %(default)s)")
    p.add_argument(
        "--max-new-tokens",
        type=int,
        help="greedy answer length for ROUGE (default: the longest reference answer + 16)",
    )
    p.add_argument("--batch-size", type=int, default=16, help="evaluation batch size (default: %(default)s)")
    p.add_argument("--no-eval-train", action="store_true", help="measure only the held-out test part")
    p.add_argument(
        "--save-models", action="store_true", help="also save each attacked model under OUT/models/"
    )
    p.add_argument(
        "--relearn-steps", type=int, default=relearn.steps, help="relearn: steps (default: %(default)s)"
    )
    p.add_argument(
        "--relearn-lr",
        type=float,
        default=relearn.learning_rate,
        help="relearn: learning rate (default: %(default)s)",
    )
    p.add_argument(
        "--relearn-batch-size",
        type=int,
        default=relearn.batch_size,
        help="relearn: per-step batch (default: %(default)s)",
    )
    p.add_argument(
        "--relearn-grad-accum",
        type=int,
        default=relearn.grad_accum,
        help="relearn: gradient accumulation steps (default: %(default)s)",
    )
    p.add_argument(
        "--relearn-warmup-steps", type=int, help="relearn: warm-up steps (default: steps // 10, >= 1)"
    )
    p.add_argument(
        "--lora-rank", type=int, default=lora.rank, help="relearn-lora: rank r (default: %(default)s)"
    )
    p.add_argument(
        "--lora-alpha", type=float, default=lora.alpha, help="relearn-lora: alpha (default: %(default)s)"
    )
    p.add_argument(
        "--lora-epochs", type=int, default=lora.epochs, help="relearn-lora: epochs (default: %(default)s)"
    )
    p.add_argument(
        "--lora-lr",
        type=float,
        default=lora.learning_rate,
        help="relearn-lora: learning rate (default: %(default)s)",
    )
    p.add_argument(
        "--quant-scheme",
        default="bnb",
        metavar="{bnb,rtn}",
        help="bnb: bitsandbytes' LLM.int8 / FP4-64 formats (default); rtn: per-channel integers",
    )
    add_common(p)


def options_from_args(args: argparse.Namespace):
    """The library's :class:`~falcon_plugin.tools.attacks.runner.AttackOptions` from the parsed flags."""
    from falcon_plugin.tools.attacks.runner import AttackOptions
    from falcon_plugin.tools.attacks.specs import LoraSpec, QuantSpec, RelearnSpec

    return AttackOptions(
        seed=args.seed,
        template=args.template,
        max_length=args.max_length,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        eval_train=not args.no_eval_train,
        save_models=args.save_models,
        progress=not args.quiet,
        relearn=RelearnSpec(
            steps=args.relearn_steps,
            learning_rate=args.relearn_lr,
            batch_size=args.relearn_batch_size,
            grad_accum=args.relearn_grad_accum,
            warmup_steps=args.relearn_warmup_steps,
        ),
        lora=LoraSpec(
            rank=args.lora_rank, alpha=args.lora_alpha, epochs=args.lora_epochs, learning_rate=args.lora_lr
        ),
        quant=QuantSpec(scheme=args.quant_scheme),
    )


def run(args: argparse.Namespace) -> int:
    """Check every input (names, options, folders, data) before the model loads; attack; print the table."""
    from falcon_plugin.tools.attacks.data import load_attack_data
    from falcon_plugin.tools.attacks.result import summary_rows
    from falcon_plugin.tools.attacks.runner import parse_attacks, run_attacks, validate
    from falcon_plugin.tools.common.tables import markdown_table

    check_seed(args.seed)
    check_out_dir(args.out)
    names = parse_attacks(args.attacks)
    options = options_from_args(args)
    validate(args.model, names, options, args.out)
    data = load_attack_data(
        args.data,
        train_path=args.train_data,
        test_path=args.test_data,
        kind=args.kind,
        test_fraction=args.test_fraction,
        seed=args.seed,
    )
    result = run_attacks(args.model, data, names, options, out=args.out)
    emit(markdown_table(["attack", "metric", "before", "after", "change"], summary_rows(result), digits=4))
    return 0
