"""``falcon-unlearn leaderboard``: open-unlearning and demo results side by side (``tools.leaderboard``)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from .common import FORMATTER, add_common, check_out_dir, emit

logger = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``leaderboard`` subcommand."""
    board = sub.add_parser(
        "leaderboard",
        formatter_class=FORMATTER,
        help="open-unlearning and demo results side by side, Pareto plot",
        description="Collect open-unlearning outputs (TOFU_SUMMARY.json, MUSE_SUMMARY.json, "
        "LMEval_SUMMARY.json, with\n"
        "each run's .hydra/config.yaml for the method, model and split), demo results.json files and\n"
        "`falcon-unlearn attack` results (attacks.json, as before/after columns of the run they attacked)\n"
        "under the given folders. Writes leaderboard.md/.html/.json, <benchmark>.csv and\n"
        "<benchmark>_pareto.png (utility vs forgetting, Pareto front of the unlearning runs).",
        epilog="example:\n  falcon-unlearn leaderboard open-unlearning/saves demo_out --out board",
    )
    board.add_argument("dirs", nargs="+", type=Path, metavar="DIR", help="folders to search (recursively)")
    board.add_argument(
        "--out", type=Path, default=Path("leaderboard"), help="output folder (default: %(default)s)"
    )
    add_common(board)


def run(args: argparse.Namespace) -> int:
    """Build the leaderboard and print its Markdown."""
    from falcon_plugin.tools.leaderboard import build

    check_out_dir(args.out)
    _, text = build(args.dirs, args.out)
    emit(text)
    logger.info("leaderboard written to %s", args.out)
    return 0
