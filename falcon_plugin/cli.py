"""The ``falcon-unlearn`` command: ``demo``, ``mi``, ``leaderboard`` and ``sweep``.

Bad input (a missing path, a malformed file, an unknown name) ends with one line
``falcon-unlearn: error: ...`` on stderr and exit code 2; progress goes to stderr, and only the final
table goes to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import random
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NoReturn

from .demo.errors import InputError

PROG = "falcon-unlearn"
logger = logging.getLogger("falcon_plugin.cli")
_OUT = {"stream": sys.stdout}


def _emit(text: str) -> None:
    """Write to the real stdout (while a command runs, ``sys.stdout`` points at stderr)."""
    _OUT["stream"].write(text)
    _OUT["stream"].flush()

_DESCRIPTION = """\
FALCON LLM unlearning (arXiv 2502.01472), as a plugin for open-unlearning.
Start with `falcon-unlearn demo` (offline, a few minutes on 2 CPU cores); `falcon-unlearn COMMAND -h`
explains each command.
"""


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line on stderr (exit 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging; tracebacks on unexpected errors")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings only, no progress bars")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``falcon-unlearn`` (public so docs and tests can render ``--help``)."""
    fmt = argparse.RawDescriptionHelpFormatter
    parser = _Parser(prog=PROG, description=_DESCRIPTION, formatter_class=fmt)
    from . import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)

    demo = sub.add_parser(
        "demo", formatter_class=fmt, help="offline end-to-end demo: fictitious facts, tiny Llama, FALCON vs baselines",
        description="Generate fictitious TOFU-like facts, build a word-level tokenizer and a tiny Llama, fine-tune it\n"
        "until it knows every fact, then unlearn the forget people with FALCON (l* = L-2), FALCON-MI\n"
        "(layer chosen by MI, layer=auto), GradDiff and an RMU-style baseline at the same step budget,\n"
        "and print a side-by-side table.\n\n"
        "Writes into --out: results.md/.csv/.json, mi_report.json/.png, forget_vs_retain.png,\n"
        "facts.jsonl (the data, with a split field) and finetuned/ (the fine-tuned model).",
        epilog="examples:\n  falcon-unlearn demo --out demo_out\n  falcon-unlearn demo --size ci --out /tmp/ci\n"
        "  falcon-unlearn demo --model ./my-llm --data qa.jsonl --out mine   # records: question, answer, split",
    )
    demo.add_argument("--out", type=Path, default=Path("falcon_demo"), help="output folder (default: %(default)s)")
    demo.add_argument("--size", default="small", metavar="{small,ci}",
                      help="small: the full demo (default); ci: a reduced size for tests")
    demo.add_argument("--seed", type=int, default=0, help="seed for facts, split, model and training (default: 0)")
    demo.add_argument("--model", type=Path, help="a local Hugging Face causal-LM folder instead of the tiny Llama")
    demo.add_argument("--data", type=Path,
                      help="JSON/JSONL QA records with 'question', 'answer' and 'split' ('forget' or 'retain')")
    demo.add_argument("--forget-data", type=Path, help="JSON/JSONL QA records to forget (with --retain-data)")
    demo.add_argument("--retain-data", type=Path, help="JSON/JSONL QA records to keep (with --forget-data)")
    demo.add_argument("--methods", default="FALCON,FALCON-MI,GradDiff,RMU",
                      help="comma-separated subset (default: %(default)s); FALCON-MI is FALCON with layer=auto")
    demo.add_argument("--steps", type=int, help="unlearning steps per method (default: the size preset's)")
    demo.add_argument("--finetune", default="auto", metavar="{auto,yes,no}",
                      help="fine-tune on all QA pairs first; auto: unless both --model and your own data are given")
    _add_common(demo)

    mi = sub.add_parser(
        "mi", formatter_class=fmt, help="FALCON Step 1 on any HF causal LM: per-layer MI, recommended layer",
        description="Score every decoder layer l by I(F_l; R_l) (+ eta * sum I(F_i; F_j) with several forget sets)\n"
        "from pooled activations, recommend l* = argmin, and write mi_report.json and mi_report.png.\n"
        "Data files: JSON/JSONL records with 'question' and 'answer', or 'text' (a corpus document).",
        epilog="example:\n  falcon-unlearn mi --model demo_out/finetuned --forget forget.jsonl --retain retain.jsonl --out mi",
    )
    mi.add_argument("--model", type=Path, required=True, help="local Hugging Face causal-LM folder")
    mi.add_argument("--forget", type=Path, action="append", required=True,
                    help="forget-domain data file; repeat for several domains")
    mi.add_argument("--retain", type=Path, required=True, help="retain data file")
    mi.add_argument("--samples", type=int, default=200, help="records sampled per file (default: %(default)s)")
    mi.add_argument("--eta", type=float, default=1.0, help="weight of the forget-forget MI term (default: %(default)s)")
    mi.add_argument("--pooling", default="last", metavar="{last,mean}", help="token pooling (default: %(default)s)")
    mi.add_argument("--estimator", default="kde", help="entropy estimator (default: %(default)s)")
    mi.add_argument("--pca-variance", type=float, default=0.95, help="PCA variance kept (default: %(default)s)")
    mi.add_argument("--batch-size", type=int, default=16, help="samples per forward pass (default: %(default)s)")
    mi.add_argument("--max-length", type=int, default=256, help="tokens per record (default: %(default)s)")
    mi.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    mi.add_argument("--out", type=Path, default=Path("mi_out"), help="output folder (default: %(default)s)")
    _add_common(mi)

    board = sub.add_parser(
        "leaderboard", formatter_class=fmt, help="open-unlearning and demo results side by side, Pareto plot",
        description="Collect open-unlearning outputs (TOFU_SUMMARY.json, MUSE_SUMMARY.json, LMEval_SUMMARY.json, with\n"
        "each run's .hydra/config.yaml for the method, model and split) and demo results.json files\n"
        "under the given folders. Writes leaderboard.md/.html/.json, <benchmark>.csv and\n"
        "<benchmark>_pareto.png (utility vs forgetting, Pareto front of the unlearning runs).",
        epilog="example:\n  falcon-unlearn leaderboard open-unlearning/saves demo_out --out board",
    )
    board.add_argument("dirs", nargs="+", type=Path, metavar="DIR", help="folders to search (recursively)")
    board.add_argument("--out", type=Path, default=Path("leaderboard"), help="output folder (default: %(default)s)")
    _add_common(board)

    sweep = sub.add_parser(
        "sweep", formatter_class=fmt, help="run open-unlearning's train/eval per method, then the leaderboard",
        description="For each method (and learning rate) run, in the open-unlearning checkout, src/train.py with\n"
        "experiment=unlearn/<benchmark>/default.yaml trainer=<method> (same budget for all) and then\n"
        "src/eval.py into saves/unlearn/<task>/evals. Completed runs are skipped (marker file written\n"
        "after success); a failing method is reported and the sweep goes on. Exit code 1 if any run failed.\n"
        "Arguments after `--` are passed to src/train.py as Hydra overrides.",
        epilog="example:\n  falcon-unlearn sweep --host ../open-unlearning --benchmark tofu --methods FALCON,RMU,NPO,SimNPO,GradDiff \\\n"
        "      --lrs 1e-5,2e-5 -- trainer.args.per_device_train_batch_size=4",
    )
    sweep.add_argument("--host", type=Path, required=True, help="open-unlearning checkout (has src/train.py)")
    sweep.add_argument("--benchmark", required=True, metavar="{tofu,muse,wmdp}", help="benchmark to run")
    sweep.add_argument("--methods", default="FALCON,RMU,NPO,SimNPO,GradDiff",
                       help="comma-separated trainer names (default: %(default)s)")
    sweep.add_argument("--lrs", help="comma-separated learning rates (default: the experiment's)")
    sweep.add_argument("--model", help="host model config name (default: the benchmark's usual one)")
    sweep.add_argument("--split", help="forget split (TOFU) or data split (MUSE, WMDP)")
    sweep.add_argument("--python", default=sys.executable, help="Python that runs the host (default: this one)")
    sweep.add_argument("--no-eval", action="store_true", help="skip src/eval.py (use the in-training evaluations)")
    sweep.add_argument("--force", action="store_true", help="re-run complete runs")
    sweep.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    sweep.add_argument("--out", type=Path, help="logs, sweep.json and the leaderboard (default: <host>/saves/sweep)")
    _add_common(sweep)
    return parser


# ---------------------------------------------------------------------------------------------- commands
def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo.methods import METHODS
    from .demo.presets import PRESETS
    from .demo.runner import DemoOptions, run_demo

    if args.size not in PRESETS:
        raise InputError(f"unknown --size {args.size!r}; expected one of {', '.join(PRESETS)}")
    if args.finetune not in ("auto", "yes", "no"):
        raise InputError(f"unknown --finetune {args.finetune!r}; expected auto, yes or no")
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    for method in methods or ("",):
        if method not in METHODS:
            raise InputError(f"unknown method {method!r} in --methods; expected some of {', '.join(METHODS)}")
    if args.steps is not None and args.steps < 1:
        raise InputError(f"--steps must be >= 1, got {args.steps}")
    if args.model is not None and not args.model.exists():
        raise InputError(f"--model not found: {args.model}")
    for flag in ("data", "forget_data", "retain_data"):
        path = getattr(args, flag)
        if path is not None and not path.exists():
            raise InputError(f"--{flag.replace('_', '-')} not found: {path}")
    result = run_demo(DemoOptions(
        out=args.out, size=args.size, seed=args.seed, model_path=args.model, data_path=args.data,
        forget_data=args.forget_data, retain_data=args.retain_data, methods=methods, steps=args.steps,
        finetune=args.finetune, progress=not args.quiet,
    ))
    _emit(result.markdown())
    logger.info("demo outputs written to %s (%.0f s in total)", args.out, result.meta["total_seconds"])
    return 0


def _mi_examples(records: list, count: int, tokenizer: object, max_length: int, seed: int) -> list:
    from .data import tokenize_qa, tokenize_text
    from .demo.data_io import QAPair

    if len(records) > count:
        records = random.Random(seed).sample(records, count)
    return [tokenize_qa(tokenizer, r.question, r.answer, max_length) if isinstance(r, QAPair)
            else tokenize_text(tokenizer, r, max_length) for r in records]


def _cmd_mi(args: argparse.Namespace) -> int:
    from .config import MIN_MI_SAMPLES, MIConfig
    from .demo.data_io import load_mi_records
    from .demo.hf import load_causal_lm
    from .demo.tables import markdown_table
    from .report import run_mi_selection

    for path in [*args.forget, args.retain]:
        if not path.exists():
            raise InputError(f"data file not found: {path}")
    if args.samples < MIN_MI_SAMPLES:
        raise InputError(f"--samples must be >= {MIN_MI_SAMPLES}, got {args.samples}")
    config = MIConfig(samples=args.samples, pca_variance=args.pca_variance, estimator=args.estimator, eta=args.eta,
                      pooling=args.pooling, batch_size=args.batch_size)
    tokenizer, model = load_causal_lm(args.model)
    files = [*args.forget, args.retain]
    records = [load_mi_records(p) for p in files]
    for path, recs in zip(files, records, strict=True):
        if len(recs) < MIN_MI_SAMPLES:
            raise InputError(f"{path} has {len(recs)} records; MI needs at least {MIN_MI_SAMPLES}")
    # the same number of samples from every file: the joint entropy pairs the i-th samples of two sets
    count = min(args.samples, *(len(r) for r in records))
    examples = [_mi_examples(r, count, tokenizer, args.max_length, args.seed + i) for i, r in enumerate(records)]
    report = run_mi_selection(model, examples[:-1], examples[-1], config, pad_token_id=tokenizer.pad_token_id,
                              progress=not args.quiet)
    json_path, png_path = report.save(args.out)
    rows = [[s.layer, s.score, "<- l*" if s.layer == report.chosen_layer else ""] for s in report.scores]
    _emit(markdown_table(["layer", "I(F;R) score (nats)", "chosen"], rows, digits=4))
    _emit(f"\nrecommended layer: {report.chosen_layer} ({count} samples per set)\n")
    logger.info("MI report written to %s and %s", json_path, png_path)
    return 0


def _cmd_leaderboard(args: argparse.Namespace) -> int:
    from .leaderboard import build

    _, text = build(args.dirs, args.out)
    _emit(text)
    logger.info("leaderboard written to %s", args.out)
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from .demo.tables import markdown_table
    from .leaderboard import build
    from .sweep import check_host, parse_lrs, parse_methods, plan_runs, run_sweep

    host = args.host
    check_host(host)
    plans = plan_runs(host, args.benchmark, parse_methods(args.methods), parse_lrs(args.lrs), model=args.model,
                      split=args.split, extra=args.extra, python=args.python, run_eval=not args.no_eval)
    if args.dry_run:
        for plan in plans:
            for command in plan.commands:
                _emit(" ".join(command) + "\n")
        return 0
    out = args.out or host / "saves" / "sweep"
    outcomes = run_sweep(host, plans, out, force=args.force, progress=not args.quiet)
    rows = [[o.task, o.method, o.learning_rate, o.status, round(o.seconds, 1), o.message or ""] for o in outcomes]
    _emit(markdown_table(["task", "method", "lr", "status", "seconds", "note"], rows) + "\n")
    saves = [d for d in (host / "saves" / "unlearn", host / "saves" / "eval") if d.is_dir()]
    try:
        _, text = build(saves or [host / "saves"], out / "leaderboard")
        _emit(text)
    except InputError as err:
        logger.warning("no leaderboard: %s", err)
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        logger.error("%d of %d runs failed: %s", len(failed), len(outcomes), ", ".join(o.task for o in failed))
        return 1
    return 0


COMMANDS = {"demo": _cmd_demo, "mi": _cmd_mi, "leaderboard": _cmd_leaderboard, "sweep": _cmd_sweep}


@contextlib.contextmanager
def _cli_environment(verbose: bool, quiet: bool) -> Iterator[None]:
    """Logging to stderr, quiet libraries, stdout kept for the table; everything restored afterwards
    (``main`` also runs in-process, from tests and notebooks)."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    noisy = {name: logging.getLogger(name).level for name in ("absl", "urllib3", "matplotlib", "PIL", "filelock", "httpx")}
    saved_tqdm = os.environ.get("TQDM_DISABLE")
    if quiet:
        os.environ["TQDM_DISABLE"] = "1"  # read by tqdm when it is first imported
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root.handlers = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
    for name in noisy:
        logging.getLogger(name).setLevel(logging.WARNING)
    from transformers.utils import logging as hf_logging

    hf_verbosity, hf_bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    if quiet:
        hf_logging.disable_progress_bar()
    try:
        with contextlib.redirect_stdout(sys.stderr):  # libraries that print (DeepSpeed's notices) -> stderr
            yield
    finally:
        root.handlers, root.level = saved_handlers, saved_level
        for name, level in noisy.items():
            logging.getLogger(name).setLevel(level)
        hf_logging.set_verbosity(hf_verbosity)
        if hf_bars:
            hf_logging.enable_progress_bar()
        if saved_tqdm is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = saved_tqdm


def _split_extra(argv: list[str]) -> tuple[list[str], list[str]]:
    if "--" in argv:
        index = argv.index("--")
        return argv[:index], argv[index + 1:]
    return argv, []


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``falcon-unlearn`` console script; returns the exit code."""
    raw = list(sys.argv[1:] if argv is None else argv)
    own, extra = _split_extra(raw)
    parser = build_parser()
    args = parser.parse_args(own)
    if extra and args.command != "sweep":
        parser.error(f"arguments after '--' are only for sweep: {' '.join(extra)}")
    args.extra = extra
    _OUT["stream"] = sys.stdout
    try:
        with _cli_environment(args.verbose, args.quiet):
            from .config import FalconConfigError

            try:
                return COMMANDS[args.command](args)
            except FalconConfigError as err:
                raise InputError(str(err)) from None
    except InputError as err:
        sys.stderr.write(f"{PROG}: error: {err}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted\n")
        return 130
    except Exception as err:  # a bug or an environment problem: one line, traceback with --verbose
        if args.verbose:
            raise
        sys.stderr.write(f"{PROG}: error: {type(err).__name__}: {err} (run with --verbose for the traceback)\n")
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
