"""How far apart runs leave the forget set's truth ratios, question by question (the seed decomposition).

  truth_ratio_gap.py WORK NAME=RUN,RUN[,RUN...] [NAME=RUN,RUN...]

For each group of unlearning runs of the TOFU protocol (folders under WORK/unlearn, each with the host's
TOFU_EVAL.json), the mean over run pairs of the per-question gap mean_q |log TR_a(q) - log TR_b(q)| of the
host's forget truth ratios, with each run's forget_quality and median truth ratio. Two groups that vary
one source of randomness each (runs that share a POV and differ in data order, runs that share the data
order and differ in POV) say which of the two moves the answers. Prints a Markdown table; writes nothing.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import sys
from pathlib import Path

from tofu_eval import forget_quality_of, truth_ratios_by_index


def read_run(run: Path) -> tuple[dict[str, float], float | None]:
    """One run's per-question forget truth ratios (``forget_truth_ratio.value_by_index`` of the host's
    TOFU_EVAL.json) and its forget_quality (None when the evaluation had no retain logs)."""
    path = run / "TOFU_EVAL.json"
    if not path.is_file():
        raise SystemExit(f"truth_ratio_gap: {path} not found (is {run.name} a finished run?)")
    evaluation = json.loads(path.read_text())
    ratios = truth_ratios_by_index(evaluation)
    if not ratios:
        raise SystemExit(f"truth_ratio_gap: {path} has no per-question forget_truth_ratio")
    return ratios, forget_quality_of(evaluation)


def question_gap(a: dict[str, float], b: dict[str, float]) -> float:
    """mean_q |log a(q) - log b(q)| over the questions both runs scored."""
    shared = sorted(set(a) & set(b))
    if not shared:
        raise SystemExit("truth_ratio_gap: two runs share no question")
    return sum(abs(math.log(a[q]) - math.log(b[q])) for q in shared) / len(shared)


def group_row(work: Path, name: str, runs: list[str]) -> list[str]:
    """One table row: group name, runs, their forget_quality and median ratio, the mean pairwise gap."""
    read = {run: read_run(work / "unlearn" / run) for run in runs}
    ratios = {run: run_ratios for run, (run_ratios, _) in read.items()}
    gaps = [question_gap(ratios[a], ratios[b]) for a, b in itertools.combinations(runs, 2)]
    quality = ["-" if q is None else f"{q:.3g}" for _, q in read.values()]
    medians = " / ".join(f"{statistics.median(ratios[r].values()):.3f}" for r in runs)
    return [name, " ".join(runs), " / ".join(quality), medians, f"{sum(gaps) / len(gaps):.3f}"]


def parse_group(text: str) -> tuple[str, list[str]]:
    name, sep, runs = text.partition("=")
    members = [r for r in runs.split(",") if r]
    if not sep or not name or len(members) < 2 or len(set(members)) != len(members):
        raise argparse.ArgumentTypeError(
            f"expected NAME=RUN,RUN[,...] with two or more distinct runs, got {text!r}"
        )
    return name, members


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("work", type=Path, help="the protocol's cache (WORK)")
    parser.add_argument("groups", nargs="+", type=parse_group, help="NAME=RUN,RUN[,RUN...]")
    args = parser.parse_args(argv)
    rows = [group_row(args.work, name, runs) for name, runs in args.groups]
    header = ["group", "runs", "forget_quality", "median truth ratio", "mean per-question abs(Δ log TR)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
