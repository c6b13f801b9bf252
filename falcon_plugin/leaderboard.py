"""``falcon-unlearn leaderboard``: open-unlearning and demo results side by side.

Collects, under any number of directories:

* the host's evaluator summaries ``TOFU_SUMMARY.json``, ``MUSE_SUMMARY.json`` and
  ``LMEval_SUMMARY.json`` (WMDP / MMLU through lm-eval; keys ``<task>/<metric>``), or, when only the
  fine-grained ``*_EVAL.json`` exists, its ``agg_value`` per metric;
* the demo's ``results.json``.

A summary in ``<run>/evals/`` (what ``src/eval.py paths.output_dir=<run>/evals`` writes) or in
``<run>/checkpoint-N/evals/`` (the trainer's in-training evaluation) belongs to the run ``<run>``; its
``.hydra/config.yaml`` names the method (``trainer.handler``), the model and the split. When a run
has both, the final ``evals/`` wins, else the highest checkpoint. Runs without a trainer (the host's
``saves/eval/<task>``) are reference rows: a name with ``retain``/``retrain`` is the retain model, one
with ``full``/``target`` the target model. An unlearning run's ``retain_logs_path`` also brings in
its retain model's summary when that file exists.

Outputs: one table per benchmark (Markdown, CSV), a self-contained HTML page with each scatter plot
embedded as base64, ``leaderboard.json``, and a utility-vs-forgetting scatter per benchmark with the
Pareto front of the unlearning runs marked.
"""

from __future__ import annotations

import base64
import functools
import html
import io
import json
import logging
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .demo.errors import InputError
from .demo.tables import csv_text, format_value, markdown_table
from .io import atomic_write, atomic_write_json, atomic_write_text

logger = logging.getLogger(__name__)

SUMMARY_FILES = {"TOFU_SUMMARY.json": "TOFU", "MUSE_SUMMARY.json": "MUSE", "LMEval_SUMMARY.json": "LMEval"}
EVAL_FILES = {"TOFU_EVAL.json": "TOFU", "MUSE_EVAL.json": "MUSE"}
DEMO_FILE = "results.json"
ROLE_ORDER = {"target": 0, "retain": 1, "reference": 2, "unlearn": 3}
ROLE_LABEL = {"target": "Finetuned (target)", "retain": "Retain (reference)"}


@dataclass(frozen=True)
class Axis:
    """One scatter axis: a metric and its direction."""

    key: str
    label: str
    higher_better: bool
    log: bool = False


@dataclass(frozen=True)
class BenchmarkSpec:
    """How a benchmark's table is ordered and plotted."""

    name: str
    columns: tuple[str, ...]
    sort: tuple[tuple[str, bool], ...]
    utility: Axis | None = None
    forget: Axis | None = None


BENCHMARKS: dict[str, BenchmarkSpec] = {
    "TOFU": BenchmarkSpec(
        "TOFU",
        ("forget_quality", "model_utility", "forget_truth_ratio", "forget_Q_A_Prob", "forget_Q_A_ROUGE", "privleak",
         "extraction_strength"),
        (("forget_quality", True), ("model_utility", True)),
        Axis("model_utility", "model utility (higher is better)", True),
        Axis("forget_quality", "forget quality, KS-test p-value (higher is better)", True, log=True),
    ),
    "MUSE": BenchmarkSpec(
        "MUSE",
        ("forget_verbmem_ROUGE", "forget_knowmem_ROUGE", "retain_knowmem_ROUGE", "privleak", "extraction_strength"),
        (("forget_verbmem_ROUGE", False), ("retain_knowmem_ROUGE", True)),
        Axis("retain_knowmem_ROUGE", "retain KnowMem ROUGE (higher is better)", True),
        Axis("forget_knowmem_ROUGE", "forget KnowMem ROUGE (lower is better)", False),
    ),
    "WMDP": BenchmarkSpec(
        "WMDP", ("wmdp_bio/acc", "wmdp_chem/acc", "wmdp_cyber/acc", "wmdp/acc", "mmlu/acc"),
        (("wmdp_mean/acc", False), ("mmlu/acc", True)),
        Axis("mmlu/acc", "MMLU accuracy (higher is better)", True),
        Axis("wmdp_mean/acc", "WMDP accuracy, mean over subsets (lower is better)", False),
    ),
    "LMEval": BenchmarkSpec("LMEval", ("mmlu/acc",), (("mmlu/acc", True),)),
    "demo": BenchmarkSpec(
        "demo", ("forget_prob", "forget_rougeL", "retain_prob", "retain_rougeL", "seconds", "layer"),
        (("forget_prob", False), ("retain_prob", True)),
        Axis("retain_prob", "retain answer probability (higher is better)", True),
        Axis("forget_prob", "forget answer probability (lower is better)", False),
    ),
}


@dataclass
class Row:
    """One model's results on one benchmark."""

    benchmark: str
    method: str
    role: str
    model: str
    split: str
    task: str
    source: str
    metrics: dict[str, Any] = field(default_factory=dict)
    pareto: bool = False

    def value(self, key: str) -> float | None:
        value = self.metrics.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        return None if math.isnan(float(value)) else float(value)


# ---------------------------------------------------------------------------------------------- reading
def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        logger.warning("skipping unreadable %s: %s", path, err)
        return None


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    return _parse_yaml(str(path), path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=512)
def _parse_yaml(path: str, _mtime: int) -> dict[str, Any]:
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        data = yaml.load(Path(path).read_text(encoding="utf-8"), Loader=loader)  # noqa: S506 (a safe loader)
    except (OSError, yaml.YAMLError) as err:
        logger.warning("skipping unreadable %s: %s", path, err)
        return {}
    return data if isinstance(data, dict) else {}


def _lookup(cfg: dict[str, Any], dotted: str) -> Any:
    """``a.b.c`` in a nested dict, following plain ``${x.y}`` interpolations a few levels."""
    value: Any = cfg
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    for _ in range(5):
        match = re.fullmatch(r"\$\{([\w.]+)\}", value) if isinstance(value, str) else None
        if not match:
            break
        value = _lookup(cfg, match.group(1))
    return value


@dataclass
class _RunInfo:
    handler: str | None = None
    mode: str | None = None
    model: str | None = None
    model_path: str | None = None
    task: str | None = None
    splits: dict[str, str] = field(default_factory=dict)
    retain_logs_path: str | None = None
    cwd: str | None = None


def _run_info(*dirs: Path) -> _RunInfo:
    """Merge what the ``.hydra`` folders of ``dirs`` say (earlier dirs win)."""
    info = _RunInfo()
    for directory in dirs:
        cfg = _read_yaml(directory / ".hydra" / "config.yaml")
        hydra = _read_yaml(directory / ".hydra" / "hydra.yaml").get("hydra", {})
        choices = (hydra.get("runtime") or {}).get("choices") or {}
        values = {
            "handler": _lookup(cfg, "trainer.handler"),
            "mode": _lookup(cfg, "mode"),
            "model": choices.get("model"),
            "model_path": _lookup(cfg, "model.model_args.pretrained_model_name_or_path"),
            "task": _lookup(cfg, "task_name"),
            "retain_logs_path": _lookup(cfg, "retain_logs_path"),
            "cwd": (hydra.get("runtime") or {}).get("cwd"),
        }
        for key, value in values.items():
            if getattr(info, key) is None and isinstance(value, str) and value:
                setattr(info, key, value)
        for key in ("forget_split", "data_split", "retain_split"):
            value = _lookup(cfg, key)
            if isinstance(value, str) and key not in info.splits:
                info.splits[key] = value
    return info


def _run_dir(summary_dir: Path) -> tuple[Path, int | None]:
    """(run folder, checkpoint step or None) of a summary's folder."""
    if summary_dir.name == "evals":
        parent = summary_dir.parent
        match = re.fullmatch(r"checkpoint-(\d+)", parent.name)
        if match:
            return parent.parent, int(match.group(1))
        return parent, None
    return summary_dir, None


def _role(info: _RunInfo, name: str) -> str:
    if info.handler and info.handler not in ("finetune", "FinetuneTrainer", "Trainer") and info.mode != "eval":
        return "unlearn"
    text = " ".join(x for x in (name, info.task or "", info.model_path or "") if x).lower()
    if re.search(r"retain|retrain", text):
        return "retain"
    if re.search(r"full|target", text):
        return "target"
    return "reference"


def _benchmark_of(kind: str, metrics: dict[str, Any]) -> str:
    if kind == "LMEval" and any(k.startswith("wmdp") for k in metrics):
        return "WMDP"
    return kind


def _split_of(benchmark: str, info: _RunInfo) -> str:
    if benchmark == "TOFU":
        return info.splits.get("forget_split", "")
    return info.splits.get("data_split", "")


def _host_row(path: Path, kind: str, metrics: dict[str, Any]) -> Row:
    summary_dir = path.parent
    run, _ = _run_dir(summary_dir)
    info = _run_info(run, summary_dir)
    role = _role(info, run.name)
    benchmark = _benchmark_of(kind, metrics)
    method = info.handler if role == "unlearn" else ROLE_LABEL.get(role, f"reference: {info.task or run.name}")
    wmdp = [v for k, v in metrics.items() if re.fullmatch(r"wmdp\w*/acc", k) and isinstance(v, int | float)]
    if wmdp:
        metrics = {**metrics, "wmdp_mean/acc": sum(wmdp) / len(wmdp)}
    return Row(benchmark, method or run.name, role, info.model or info.model_path or "", _split_of(benchmark, info),
               info.task or run.name, str(path), metrics)


def _demo_rows(path: Path, data: dict[str, Any]) -> list[Row]:
    meta = data.get("meta", {})
    model = str(meta.get("model", "demo model"))
    split = f"{meta.get('n_forget', '?')} forget / {meta.get('n_retain', '?')} retain QA"
    rows = []
    for item in data.get("rows", []):
        if not isinstance(item, dict) or "method" not in item:
            continue
        method = str(item["method"])
        role = "target" if "reference" in method else "unlearn"
        metrics = {k: v for k, v in item.items() if k != "method"}
        rows.append(Row("demo", method, role, model, split, path.parent.name, str(path), metrics))
    return rows


def _is_demo_results(data: Any) -> bool:
    return isinstance(data, dict) and isinstance(data.get("rows"), list) and isinstance(data.get("meta"), dict)


def _walk(root: Path) -> Iterable[Path]:
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        for name in sorted(files):
            if name in SUMMARY_FILES or name in EVAL_FILES or name == DEMO_FILE:
                yield Path(directory) / name


def _eval_to_summary(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v["agg_value"] for k, v in data.items() if isinstance(v, dict) and v.get("agg_value") is not None}


def _retain_reference(row_path: Path, kind: str) -> Path | None:
    """The retain model's summary named by an unlearning run's ``retain_logs_path``, if it exists."""
    run, _ = _run_dir(row_path.parent)
    info = _run_info(run, row_path.parent)
    if not info.retain_logs_path:
        return None
    logs = Path(info.retain_logs_path)
    candidates = [logs] if logs.is_absolute() else []
    saves = next((p for p in [run, *run.parents] if p.name == "saves"), None)
    if not logs.is_absolute():
        if saves is not None:
            candidates.append(saves.parent / logs)
        if info.cwd:
            candidates.append(Path(info.cwd) / logs)
    for candidate in candidates:
        summary = candidate.parent / f"{kind}_SUMMARY.json"
        if summary.is_file():
            return summary
    return None


def collect(dirs: Sequence[str | Path]) -> list[Row]:
    """All rows under ``dirs`` (see the module docstring); raises :class:`InputError` on a bad directory."""
    roots = []
    for d in dirs:
        root = Path(d)
        if not root.exists():
            raise InputError(f"results directory not found: {root}")
        if not root.is_dir():
            raise InputError(f"not a directory: {root}")
        roots.append(root)
    found: dict[tuple[str, str], tuple[int, Row]] = {}
    demo_rows: list[Row] = []
    seen: set[Path] = set()
    queue = [p for root in roots for p in _walk(root)]
    while queue:
        path = queue.pop(0).resolve()
        if path in seen:
            continue
        seen.add(path)
        if path.name == DEMO_FILE:
            data = _read_json(path)
            if _is_demo_results(data):
                demo_rows += _demo_rows(path, data)
            continue
        kind = SUMMARY_FILES.get(path.name) or EVAL_FILES[path.name]
        if path.name in EVAL_FILES and (path.parent / f"{kind}_SUMMARY.json").is_file():
            continue
        data = _read_json(path)
        if not isinstance(data, dict):
            continue
        metrics = _eval_to_summary(data) if path.name in EVAL_FILES else data
        if not metrics:
            continue
        row = _host_row(path, kind, metrics)
        run, step = _run_dir(path.parent)
        rank = 1 << 30 if step is None else step
        key = (row.benchmark, str(run.resolve()))
        if key not in found or rank > found[key][0]:
            found[key] = (rank, row)
        if row.role == "unlearn":
            reference = _retain_reference(path, kind)
            if reference is not None:
                queue.append(reference)
    rows = [row for _, row in found.values()] + demo_rows
    for row in rows:
        if row.role == "reference" and row.method.startswith("reference: ") and row.benchmark != "demo":
            row.method = f"reference: {row.task}"
    return rows


# ---------------------------------------------------------------------------------------------- ordering
def _sort_key(row: Row, spec: BenchmarkSpec) -> tuple:
    keys: list[Any] = [row.model, row.split, ROLE_ORDER.get(row.role, 9)]
    for metric, higher in spec.sort:
        value = row.value(metric)
        keys.append(math.inf if value is None else (-value if higher else value))
    keys.append(row.method)
    keys.append(row.task)
    return tuple(keys)


def mark_pareto(rows: Sequence[Row], spec: BenchmarkSpec) -> None:
    """Set ``row.pareto`` for unlearning rows not dominated in (utility, forgetting) within their model/split."""
    if spec.utility is None or spec.forget is None:
        return
    util, forget = spec.utility, spec.forget
    candidates = [r for r in rows if r.role == "unlearn" and r.value(util.key) is not None and r.value(forget.key) is not None]

    def score(r: Row) -> tuple[float, float]:
        u, f = r.value(util.key), r.value(forget.key)
        return (u if util.higher_better else -u, f if forget.higher_better else -f)  # type: ignore[operator]

    for row in candidates:
        a = score(row)
        row.pareto = not any(
            other is not row and other.model == row.model and other.split == row.split
            and score(other)[0] >= a[0] and score(other)[1] >= a[1] and score(other) != a
            for other in candidates
        )


def tables(rows: Sequence[Row]) -> dict[str, list[Row]]:
    """Rows grouped per benchmark (in :data:`BENCHMARKS` order), sorted, with the Pareto front marked."""
    out: dict[str, list[Row]] = {}
    for name, spec in BENCHMARKS.items():
        group = sorted((r for r in rows if r.benchmark == name), key=lambda r: _sort_key(r, spec))
        if group:
            mark_pareto(group, spec)
            out[name] = group
    return out


def metric_columns(rows: Sequence[Row], spec: BenchmarkSpec, include_stderr: bool = False) -> list[str]:
    """The spec's preferred metrics that occur, then any other metric, alphabetically."""
    present = {k for r in rows for k in r.metrics}
    columns = [c for c in spec.columns if c in present]
    rest = sorted(k for k in present - set(columns) if include_stderr or not k.endswith("_stderr"))
    if spec.name == "demo":
        rest = [k for k in rest if k not in ("steps", "lr")]
    return columns + [k for k in rest if k != "wmdp_mean/acc"] + (["wmdp_mean/acc"] if "wmdp_mean/acc" in present else [])


def _table(rows: Sequence[Row], spec: BenchmarkSpec, include_stderr: bool = False) -> tuple[list[str], list[list[Any]]]:
    metrics = metric_columns(rows, spec, include_stderr)
    columns = ["method", "model", "split", "task", *metrics]
    if spec.utility is not None:
        columns.append("pareto")
    body = []
    for r in rows:
        line: list[Any] = [r.method, r.model, r.split, r.task, *(r.metrics.get(m) for m in metrics)]
        if spec.utility is not None:
            line.append("yes" if r.pareto else "")
        body.append(line)
    return columns, body


# ---------------------------------------------------------------------------------------------- rendering
def scatter_png(rows: Sequence[Row], spec: BenchmarkSpec) -> bytes | None:
    """PNG bytes of the utility-vs-forgetting scatter with the Pareto front, or None without data."""
    if spec.utility is None or spec.forget is None:
        return None
    util, forget = spec.utility, spec.forget
    points = [r for r in rows if r.value(util.key) is not None and r.value(forget.key) is not None]
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    floor = 1e-300
    for i, row in enumerate(points):
        y = max(row.value(forget.key), floor) if forget.log else row.value(forget.key)  # type: ignore[type-var]
        ref = row.role != "unlearn"
        ax.scatter(row.value(util.key), y, marker="*" if ref else "o", s=200 if ref else 70,
                   color="black" if ref else f"C{i % 10}", edgecolors="red" if row.pareto else "none",
                   linewidths=2, zorder=3)
        ax.annotate(row.method, (row.value(util.key), y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    front = sorted((r for r in points if r.pareto), key=lambda r: r.value(util.key))  # type: ignore[arg-type,return-value]
    if len(front) > 1:
        ys = [max(r.value(forget.key), floor) if forget.log else r.value(forget.key) for r in front]  # type: ignore[type-var]
        ax.plot([r.value(util.key) for r in front], ys, color="red", linestyle="--", linewidth=1,
                label="Pareto front (unlearning runs)", zorder=2)
        ax.legend(fontsize=8)
    if forget.log:
        ax.set_yscale("log")
        top = max(max(r.value(forget.key), floor) for r in points)  # type: ignore[type-var]
        ax.set_ylim(top=top * 5)
    ax.set_xlabel(util.label)
    ax.set_ylabel(forget.label)
    ax.set_title(f"{spec.name}: utility vs forgetting (stars: reference models; red ring: Pareto front)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def _html_page(groups: dict[str, list[Row]], images: dict[str, bytes | None]) -> str:
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8"><title>Unlearning leaderboard</title>',
             "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
             "th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f2f2f2}"
             "td:nth-child(-n+4){text-align:left}tr.ref{background:#f8f8e8}tr.pareto td:first-child{font-weight:bold}"
             "img{max-width:100%}</style></head><body>", "<h1>Unlearning leaderboard</h1>"]
    for name, rows in groups.items():
        spec = BENCHMARKS[name]
        columns, body = _table(rows, spec)
        parts.append(f"<h2>{html.escape(name)}</h2><table><thead><tr>")
        parts += [f"<th>{html.escape(c)}</th>" for c in columns]
        parts.append("</tr></thead><tbody>")
        for row, line in zip(rows, body, strict=True):
            cls = "ref" if row.role != "unlearn" else ("pareto" if row.pareto else "")
            parts.append(f'<tr class="{cls}">' + "".join(f"<td>{html.escape(format_value(v))}</td>" for v in line) + "</tr>")
        parts.append("</tbody></table>")
        image = images.get(name)
        if image:
            encoded = base64.b64encode(image).decode("ascii")
            parts.append(f'<img alt="{html.escape(name)} scatter" src="data:image/png;base64,{encoded}">')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def markdown(groups: dict[str, list[Row]]) -> str:
    """All benchmark tables as one Markdown document."""
    out = ["# Unlearning leaderboard\n"]
    for name, rows in groups.items():
        columns, body = _table(rows, BENCHMARKS[name])
        out.append(f"## {name}\n\n" + markdown_table(columns, body))
    return "\n".join(out)


def build(dirs: Sequence[str | Path], out_dir: str | Path) -> tuple[dict[str, list[Row]], str]:
    """Collect, render and write everything into ``out_dir``; returns (tables, Markdown text)."""
    rows = collect(dirs)
    if not rows:
        raise InputError(f"no open-unlearning summaries or demo results found under: {', '.join(map(str, dirs))}")
    groups = tables(rows)
    out = Path(out_dir)
    images: dict[str, bytes | None] = {}
    for name, group in groups.items():
        columns, body = _table(group, BENCHMARKS[name], include_stderr=True)
        atomic_write_text(out / f"{name.lower()}.csv", csv_text(columns, body))
        image = images[name] = scatter_png(group, BENCHMARKS[name])
        if image:
            atomic_write(out / f"{name.lower()}_pareto.png", lambda tmp, data=image: tmp.write_bytes(data))
    text = markdown(groups)
    atomic_write_text(out / "leaderboard.md", text)
    atomic_write_text(out / "leaderboard.html", _html_page(groups, images))
    atomic_write_json(out / "leaderboard.json", {name: [asdict(r) for r in group] for name, group in groups.items()})
    logger.info("leaderboard: %d rows in %d tables written to %s", len(rows), len(groups), out)
    return groups, text
