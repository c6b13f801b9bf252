"""The benchmark registry: one entry per benchmark, serving both ``sweep`` and ``leaderboard``.

For each benchmark: the summary file the host's evaluator writes (and the fine-grained ``*_EVAL.json``),
the config key naming a run's split, the metric columns a table shows first, how rows sort, the two
axes of its utility-vs-forgetting plot, and (for the benchmarks ``sweep`` runs) the host's experiment
names, default model and splits. Names and files are those of open-unlearning (github
locuslab/open-unlearning): ``configs/experiment/{unlearn,eval}/<bench>/default.yaml`` and its
``scripts/*_unlearn.sh``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

DEMO_RESULTS_FILE = "results.json"
"""What ``falcon-unlearn demo`` writes and the leaderboard reads as the ``demo`` benchmark."""


@dataclass(frozen=True)
class Axis:
    """One plot axis: a metric and its direction."""

    key: str
    label: str
    higher_better: bool
    log: bool = False
    bounds: tuple[float | None, float | None] = (None, None)
    """The metric's range (a p-value lies in (0, 1]): the plot's axis never runs past it."""
    missing: str | None = None
    """Why a run may lack this metric and how to get it (the leaderboard says so instead of no plot)."""


@dataclass(frozen=True)
class HostRecipe:
    """How the host's scripts run one benchmark (what ``sweep`` passes to src/train.py and src/eval.py)."""

    name: str
    """The ``--benchmark`` name (``tofu``, ``muse``, ``wmdp``)."""
    model: str
    """Default host model config."""
    split: str
    """Default value of the benchmark's split key."""
    unlearn_experiment: str
    eval_experiment: str
    split_pairs: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    """Each valid value of the split key -> the further split keys src/train.py takes with it, as the
    host's ``scripts/*_unlearn.sh`` pair them; empty: any value, no further keys."""
    eval_splits: tuple[str, ...] = ()
    """Which of those further keys src/eval.py also takes (its eval experiment defines them)."""
    model_path: str | None = None
    """Template of the model to unlearn (``{model}``, ``{split}`` and split keys filled in)."""
    retain_logs: str | None = None
    """Template of the retain model's evaluation logs, relative to the host checkout (what
    ``src/eval.py task_name=<that folder's name>`` writes, the host's ``saves/eval/<task>/``)."""
    retain_model: str | None = None
    """Template of the retain (reference) model whose evaluation gives ``retain_logs`` (the host's
    published retain model); ``sweep --eval-retain`` evaluates it."""

    def further_splits(self, split: str) -> dict[str, str]:
        """The split keys paired with ``split`` (``{}`` when the benchmark pairs none)."""
        return dict(self.split_pairs.get(split, {}))


@dataclass(frozen=True)
class Benchmark:
    """One benchmark: where its results are, how its table is ordered and plotted, how the host runs it."""

    name: str
    """Table name (``TOFU``, ``MUSE``, ``WMDP``, ``LMEval``, ``demo``)."""
    summary_file: str
    """File holding one run's metrics (the host evaluator's ``*_SUMMARY.json``, the demo's results)."""
    columns: tuple[str, ...]
    """Metrics shown first, in this order (any other metric follows, alphabetically)."""
    sort: tuple[tuple[str, bool], ...]
    """(metric, higher is better) sort keys of the table."""
    split_key: str | None = None
    """Config key naming a run's split (``forget_split``, ``data_split``)."""
    eval_file: str | None = None
    """Fine-grained ``*_EVAL.json`` (``agg_value`` per metric), read when no summary exists beside it."""
    metric_prefix: str | None = None
    """A summary shared by several benchmarks (lm-eval's) belongs to this one when a key starts so."""
    utility: Axis | None = None
    forget: Axis | None = None
    host: HostRecipe | None = None


_TOFU = Benchmark(
    "TOFU",
    "TOFU_SUMMARY.json",
    (
        "forget_quality",
        "model_utility",
        "forget_truth_ratio",
        "forget_Q_A_Prob",
        "forget_Q_A_ROUGE",
        "privleak",
        "extraction_strength",
    ),
    (("forget_quality", True), ("model_utility", True)),
    split_key="forget_split",
    eval_file="TOFU_EVAL.json",
    utility=Axis("model_utility", "model utility (higher is better)", True),
    forget=Axis(
        "forget_quality",
        "forget quality, KS-test p-value (higher is better)",
        True,
        log=True,
        bounds=(None, 1.0),
        missing="forget_quality needs the retain model's evaluation logs (the host's retain_logs_path, "
        "saves/eval/tofu_<model>_<retain_split>/TOFU_EVAL.json): evaluate the retain model with "
        "`falcon-unlearn sweep ... --eval-retain` or fetch the host's with `python setup_data.py "
        "--eval_logs`, then evaluate the runs again",
    ),
    host=HostRecipe(
        "tofu",
        "Llama-3.2-1B-Instruct",
        "forget10",
        "unlearn/tofu/default.yaml",
        "eval/tofu/default.yaml",
        split_pairs={
            f"forget{n}": {"retain_split": f"retain{100 - int(n)}", "holdout_split": f"holdout{n}"}
            for n in ("01", "05", "10")
        },
        eval_splits=("holdout_split",),
        model_path="open-unlearning/tofu_{model}_full",
        retain_logs="saves/eval/tofu_{model}_{retain_split}/TOFU_EVAL.json",
        retain_model="open-unlearning/tofu_{model}_{retain_split}",
    ),
)
_MUSE = Benchmark(
    "MUSE",
    "MUSE_SUMMARY.json",
    (
        "forget_verbmem_ROUGE",
        "forget_knowmem_ROUGE",
        "retain_knowmem_ROUGE",
        "privleak",
        "extraction_strength",
    ),
    (("forget_verbmem_ROUGE", False), ("retain_knowmem_ROUGE", True)),
    split_key="data_split",
    eval_file="MUSE_EVAL.json",
    utility=Axis("retain_knowmem_ROUGE", "retain KnowMem ROUGE (higher is better)", True),
    forget=Axis("forget_knowmem_ROUGE", "forget KnowMem ROUGE (lower is better)", False),
    host=HostRecipe(
        "muse",
        "Llama-2-7b-hf",
        "News",
        "unlearn/muse/default.yaml",
        "eval/muse/default.yaml",
        retain_logs="saves/eval/muse_{model}_{split}_retrain/MUSE_EVAL.json",
        retain_model="muse-bench/MUSE-{split}_retrain",
    ),
)
_WMDP = Benchmark(
    "WMDP",
    "LMEval_SUMMARY.json",
    ("wmdp_bio/acc", "wmdp_chem/acc", "wmdp_cyber/acc", "wmdp/acc", "mmlu/acc"),
    (("wmdp_mean/acc", False), ("mmlu/acc", True)),
    split_key="data_split",
    metric_prefix="wmdp",
    utility=Axis("mmlu/acc", "MMLU accuracy (higher is better)", True),
    forget=Axis("wmdp_mean/acc", "WMDP accuracy, mean over subsets (lower is better)", False),
    host=HostRecipe("wmdp", "zephyr-7b-beta", "cyber", "unlearn/wmdp/default.yaml", "eval/wmdp/default.yaml"),
)
_LMEVAL = Benchmark(
    "LMEval", "LMEval_SUMMARY.json", ("mmlu/acc",), (("mmlu/acc", True),), split_key="data_split"
)
_DEMO = Benchmark(
    "demo",
    DEMO_RESULTS_FILE,
    ("forget_prob", "forget_rougeL", "retain_prob", "retain_rougeL", "seconds", "layer"),
    (("forget_prob", False), ("retain_prob", True)),
    utility=Axis("retain_prob", "retain answer probability (higher is better)", True),
    forget=Axis("forget_prob", "forget answer probability (lower is better)", False),
)

BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (_TOFU, _MUSE, _WMDP, _LMEVAL, _DEMO)}
"""Every benchmark by table name, in the order the leaderboard shows them."""

HOST_BENCHMARKS: dict[str, Benchmark] = {b.host.name: b for b in BENCHMARKS.values() if b.host is not None}
"""The benchmarks ``sweep`` runs, by ``--benchmark`` name."""

SPLIT_KEYS: tuple[str, ...] = tuple(dict.fromkeys(b.split_key for b in BENCHMARKS.values() if b.split_key))
"""Config keys that name a run's split, over all benchmarks."""


def host_result_files() -> dict[str, list[Benchmark]]:
    """Host result file name -> the benchmarks it may hold (summaries, fine-grained evals; not the demo's)."""
    files: dict[str, list[Benchmark]] = {}
    for bench in BENCHMARKS.values():
        if bench.name == "demo":
            continue
        for name in (bench.summary_file, bench.eval_file):
            if name is not None:
                files.setdefault(name, []).append(bench)
    return files


def benchmark_of(file_name: str, metrics: Mapping[str, Any]) -> Benchmark:
    """The benchmark a host result file with these metric keys belongs to.

    A file several benchmarks share (``LMEval_SUMMARY.json``) goes to the one whose ``metric_prefix``
    starts a key, else to the one without a prefix.
    """
    candidates = host_result_files()[file_name]
    for bench in candidates:
        if bench.metric_prefix and any(str(k).startswith(bench.metric_prefix) for k in metrics):
            return bench
    return next(b for b in candidates if b.metric_prefix is None)
