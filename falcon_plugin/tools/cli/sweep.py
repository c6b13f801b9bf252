"""``falcon-unlearn sweep``: the host's own train/eval per method (``tools.sweep``), then the leaderboard."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from falcon_plugin.tools.common.benchmarks import HOST_BENCHMARKS
from falcon_plugin.tools.common.errors import InputError

from .common import FORMATTER, add_common, check_out_dir, emit

logger = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``sweep`` subcommand."""
    sweep = sub.add_parser(
        "sweep",
        formatter_class=FORMATTER,
        help="run open-unlearning's train/eval per method, then the leaderboard",
        description="For each method (and learning rate) run, in the open-unlearning checkout, "
        "src/train.py with\n"
        "experiment=unlearn/<benchmark>/default.yaml trainer=<method> (same budget for all) and then\n"
        "src/eval.py into saves/unlearn/<task>/evals. Completed runs are skipped (marker file written\n"
        "after success); a failing method is reported and the sweep goes on. Exit code 1 if any run failed.\n"
        "TOFU splits are paired as the host's scripts do: forget01/05/10 with retain99/95/90 and\n"
        "holdout01/05/10. forget_quality needs the retain model's logs (saves/eval/...): without them the\n"
        "sweep says so; --eval-retain evaluates the retain model first.\n"
        "Arguments after `--` are Hydra overrides for src/train.py; those of the model's loading and of\n"
        "the evaluation (model.* but model.model_args.pretrained_model_name_or_path, eval.*,\n"
        "retain_logs_path) reach src/eval.py too.",
        epilog="examples:\n  falcon-unlearn sweep --host ../open-unlearning --benchmark tofu "
        "--methods FALCON,RMU,NPO,SimNPO,GradDiff \\\n"
        "      --lrs 1e-5,2e-5 -- trainer.args.per_device_train_batch_size=4\n"
        "  falcon-unlearn sweep --host ../open-unlearning --benchmark tofu --split forget01 "
        "--eval-retain \\\n"
        "      --retain-model /models/retain99 -- "
        "model.model_args.pretrained_model_name_or_path=/models/full \\\n"
        "      model.tokenizer_args.pretrained_model_name_or_path=/models/full "
        "model.model_args.attn_implementation=eager \\\n"
        "      model.model_args.torch_dtype=float32 ++model.model_args.device_map=cpu",
    )
    sweep.add_argument("--host", type=Path, required=True, help="open-unlearning checkout (has src/train.py)")
    sweep.add_argument(
        "--benchmark", required=True, metavar="{" + ",".join(HOST_BENCHMARKS) + "}", help="benchmark to run"
    )
    sweep.add_argument(
        "--methods",
        default="FALCON,RMU,NPO,SimNPO,GradDiff",
        help="comma-separated trainer names (default: %(default)s)",
    )
    sweep.add_argument("--lrs", help="comma-separated learning rates (default: the experiment's)")
    sweep.add_argument(
        "--pov-seeds",
        help="comma-separated FALCON POV seeds (method_args.pov_seed), one FALCON run each "
        "(default: the POV of args.seed); on TOFU the POV decides how much FALCON forgets",
    )
    sweep.add_argument("--model", help="host model config name (default: the benchmark's usual one)")
    sweep.add_argument("--split", help="forget split (TOFU) or data split (MUSE, WMDP)")
    sweep.add_argument(
        "--python", default=sys.executable, help="Python that runs the host (default: this one)"
    )
    sweep.add_argument(
        "--no-eval", action="store_true", help="skip src/eval.py (use the in-training evaluations)"
    )
    sweep.add_argument(
        "--eval-retain",
        action="store_true",
        help="first evaluate the retain model with src/eval.py (its logs give forget_quality), "
        "unless its logs exist",
    )
    sweep.add_argument(
        "--retain-model",
        help="retain model to evaluate with --eval-retain (default: the host's, "
        "open-unlearning/tofu_<model>_<retain split>, muse-bench/MUSE-<split>_retrain)",
    )
    sweep.add_argument("--force", action="store_true", help="re-run complete runs")
    sweep.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    sweep.add_argument(
        "--out", type=Path, help="logs, sweep.json and the leaderboard (default: <host>/saves/sweep)"
    )
    add_common(sweep)


def run(args: argparse.Namespace) -> int:
    """Plan (every input checked first), run or print the commands, then build the leaderboard."""
    from falcon_plugin.tools.common.tables import markdown_table
    from falcon_plugin.tools.leaderboard import build
    from falcon_plugin.tools.sweep import (
        check_host,
        parse_lrs,
        parse_methods,
        parse_pov_seeds,
        plan_sweep,
        run_sweep,
    )

    host = args.host
    check_host(host)
    out = args.out or host / "saves" / "sweep"
    if not args.dry_run:
        check_out_dir(out)
    sweep = plan_sweep(
        host,
        args.benchmark,
        parse_methods(args.methods),
        parse_lrs(args.lrs),
        model=args.model,
        split=args.split,
        extra=args.extra,
        python=args.python,
        run_eval=not args.no_eval,
        eval_retain=args.eval_retain,
        retain_model=args.retain_model,
        pov_seeds=parse_pov_seeds(args.pov_seeds),
    )
    if args.dry_run:
        for plan in sweep.plans:
            for command in plan.commands:
                emit(" ".join(command) + "\n")
        if sweep.note:
            emit(f"# note: {sweep.note}\n")
        return 0
    outcomes = run_sweep(
        host, sweep.plans, out, force=args.force, progress=not args.quiet, retain_logs=sweep.retain_logs
    )
    rows = [
        [o.task, o.method, o.learning_rate, o.status, round(o.seconds, 1), o.message or ""] for o in outcomes
    ]
    emit(markdown_table(["task", "method", "lr", "status", "seconds", "note"], rows) + "\n")
    if sweep.note:
        emit(f"note: {sweep.note}\n\n")
    saves = [d for d in (host / "saves" / "unlearn", host / "saves" / "eval") if d.is_dir()]
    try:
        _, text = build(saves or [host / "saves"], out / "leaderboard")
        emit(text)
    except InputError as err:
        logger.warning("no leaderboard: %s", err)
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        logger.error(
            "%d of %d runs failed: %s", len(failed), len(outcomes), ", ".join(o.task for o in failed)
        )
        return 1
    return 0
