"""forget_quality without a retain model: forget truth ratios against the target's on unseen authors.

  unseen_reference.py WORK [REFERENCE]

TOFU's forget_quality is the KS test p-value between the unlearned model's forget-set truth ratios and a
retain model's (a model never trained on the forget authors). A retain model costs a fine-tune. The
`eval_unseen` stage of tofu_quality.sh evaluates the *target* model on two fictitious authors no model
here was trained on (`unseen01`, as many questions as forget01), so REFERENCE (default
WORK/evals/target_unseen01/TOFU_EVAL.json) holds the truth ratios of a model that never saw the
authors it is asked about, without a retain model. This script scores every run under WORK/unlearn (and
the reference models under WORK/evals) against it with the host's test (``scipy.stats.ks_2samp``, p-value,
as open-unlearning's ``ks_test``) and prints them beside the host's forget_quality, with the rank
correlation of the two over the runs, and, per group of runs that differ only in ``pov_seed`` (names
``...-pov<N>...``), which run each score picks. Prints a Markdown report; writes nothing.

The host computes the same number when an evaluation is given ``retain_logs_path=REFERENCE``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from scipy.stats import ks_2samp, spearmanr
from tofu_eval import forget_quality_of, truth_ratios_by_index

POV_TAG = re.compile(r"-pov\d+")


def read_eval(path: Path) -> tuple[list[float], float | None]:
    """(the forget truth ratios, the host's forget_quality or None) of one TOFU_EVAL.json."""
    evaluation = json.loads(path.read_text())
    return list(truth_ratios_by_index(evaluation).values()), forget_quality_of(evaluation)


def pov_group(name: str) -> str | None:
    """The run's name without its ``-pov<N>`` tag (runs that differ only in the POV share it), or None."""
    group, tagged = POV_TAG.subn("", name, count=1)
    return group if tagged else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("work", type=Path, help="the protocol's cache (WORK of tofu_quality.sh)")
    parser.add_argument(
        "reference", type=Path, nargs="?", help="default: WORK/evals/target_unseen01/TOFU_EVAL.json"
    )
    args = parser.parse_args(argv)
    reference_path = args.reference or args.work / "evals" / "target_unseen01" / "TOFU_EVAL.json"
    if not reference_path.is_file():
        raise SystemExit(f"unseen_reference: {reference_path} not found (run tofu_quality.sh eval_unseen)")
    reference, _ = read_eval(reference_path)
    if not reference:
        raise SystemExit(f"unseen_reference: {reference_path} has no per-question forget_truth_ratio")

    rows: list[tuple[str, float | None, float]] = []  # (name, host forget_quality, unseen-reference p)
    run_names: set[str] = set()  # the rows of unlearning runs (the others are reference models)
    for folder in ("evals", "unlearn"):
        for path in sorted((args.work / folder).glob("*/TOFU_EVAL.json")):
            if path.resolve() == reference_path.resolve() or path.parent.name.endswith(".tmp"):
                continue
            ratios, quality = read_eval(path)
            if ratios:
                rows.append((path.parent.name, quality, float(ks_2samp(ratios, reference).pvalue)))
                if folder == "unlearn":
                    run_names.add(path.parent.name)
    if not rows:
        raise SystemExit(f"unseen_reference: no evaluation with forget truth ratios under {args.work}")

    print(f"Reference: {reference_path} ({len(reference)} questions)\n")
    print("| model / run | forget_quality (host: vs the retain model) | vs the unseen-author reference |")
    print("|---|---|---|")
    for name, quality, proxy in sorted(rows, key=lambda r: -r[2]):
        print(f"| {name} | {'-' if quality is None else f'{quality:.3g}'} | {proxy:.3g} |")
    runs = [(q, p) for name, q, p in rows if q is not None and name in run_names]
    if len(runs) >= 3:
        rho = spearmanr([q for q, _ in runs], [p for _, p in runs]).statistic
        print(f"\nSpearman rank correlation over {len(runs)} runs: {rho:.3f}")
    groups: dict[str, list[tuple[str, float | None, float]]] = {}
    for row in rows:
        key = pov_group(row[0])
        if key is not None:
            groups.setdefault(key, []).append(row)
    picks = {k: v for k, v in groups.items() if len(v) >= 2 and all(q is not None for _, q, _ in v)}
    if picks:
        print(
            "\n| POV group (runs) | the host's pick (forget_quality) | the unseen reference's pick (its fq) |"
        )
        print("|---|---|---|")
        for key, members in sorted(picks.items()):
            host = max(members, key=lambda r: r[1])
            proxy = max(members, key=lambda r: r[2])
            print(f"| {key} ({len(members)}) | {host[0]} ({host[1]:.3g}) | {proxy[0]} ({proxy[1]:.3g}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
