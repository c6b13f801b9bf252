"""Reading results for the leaderboard: host evaluator summaries and demo results, one :class:`Row` each.

Collected under any number of directories:

* the host's evaluator summaries (``TOFU_SUMMARY.json``, ``MUSE_SUMMARY.json``, ``LMEval_SUMMARY.json``
  for WMDP / MMLU through lm-eval, keys ``<task>/<metric>``; the files come from the benchmark
  registry, :mod:`falcon_plugin.tools.common.benchmarks`), or, when only the fine-grained
  ``*_EVAL.json`` exists, its ``agg_value`` per metric;
* the demo's ``results.json``;
* ``falcon-unlearn attack``'s ``attacks.json``, as columns of the run it attacked (:mod:`.attacks`).

A summary in ``<run>/evals/`` (what ``src/eval.py paths.output_dir=<run>/evals`` writes) or in
``<run>/checkpoint-N/evals/`` (the trainer's in-training evaluation) belongs to the run ``<run>``; its
``.hydra/config.yaml`` names the method (``trainer.handler``), the model and the split. When a run
has both, the final ``evals/`` wins, else the highest checkpoint. Runs without a trainer (the host's
``saves/eval/<task>``) are reference rows: a name with ``retain``/``retrain`` is the retain model, one
with ``full``/``target`` the target model. An unlearning run's ``retain_logs_path`` also brings in
its retain model's summary when that file exists.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from falcon_plugin.tools.common.benchmarks import (
    BENCHMARKS,
    DEMO_RESULTS_FILE,
    SPLIT_KEYS,
    Benchmark,
    benchmark_of,
    host_result_files,
)
from falcon_plugin.tools.common.errors import InputError

logger = logging.getLogger(__name__)

ROLE_LABEL = {"target": "Finetuned (target)", "retain": "Retain (reference)"}


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
    learning_rate: float | None = None
    """The run's ``trainer.args.learning_rate`` (the demo's ``lr``), to tell two runs of one method apart."""
    run_dir: str = ""
    """The run's folder (host rows): what an ``attacks.json`` is matched to."""
    model_dirs: list[str] = field(default_factory=list)
    """Local model folders the run's config names (``model.model_args.pretrained_model_name_or_path``)."""
    attacks: dict[str, float] = field(default_factory=dict)
    """Recovery-attack columns ``<attack>/<metric>_<before|after>`` (:mod:`.attacks`)."""
    attacks_source: str | None = None

    def value(self, key: str) -> float | None:
        """A metric as a float, or None when missing, not a number or NaN."""
        value = self.metrics.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        return None if math.isnan(float(value)) else float(value)


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
    learning_rate: float | None = None


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
        if info.learning_rate is None:
            info.learning_rate = _number(_lookup(cfg, "trainer.args.learning_rate"))
        for key in SPLIT_KEYS:
            value = _lookup(cfg, key)
            if isinstance(value, str) and key not in info.splits:
                info.splits[key] = value
    return info


def _number(value: Any) -> float | None:
    """A config number (PyYAML reads ``1e-05`` without a dot as a string)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    try:
        return float(value) if isinstance(value, str) else None
    except ValueError:
        return None


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
    if (
        info.handler
        and info.handler not in ("finetune", "FinetuneTrainer", "Trainer")
        and info.mode != "eval"
    ):
        return "unlearn"
    text = " ".join(x for x in (name, info.task or "", info.model_path or "") if x).lower()
    if re.search(r"retain|retrain", text):
        return "retain"
    if re.search(r"full|target", text):
        return "target"
    return "reference"


def _host_row(path: Path, bench: Benchmark, metrics: dict[str, Any]) -> Row:
    summary_dir = path.parent
    run, _ = _run_dir(summary_dir)
    info = _run_info(run, summary_dir)
    role = _role(info, run.name)
    method = (
        info.handler if role == "unlearn" else ROLE_LABEL.get(role, f"reference: {info.task or run.name}")
    )
    wmdp = [v for k, v in metrics.items() if re.fullmatch(r"wmdp\w*/acc", k) and isinstance(v, int | float)]
    if wmdp:
        metrics = {**metrics, "wmdp_mean/acc": sum(wmdp) / len(wmdp)}
    split = info.splits.get(bench.split_key, "") if bench.split_key else ""
    return Row(
        bench.name,
        method or run.name,
        role,
        _model_label(info),
        split,
        info.task or run.name,
        str(path),
        metrics,
        learning_rate=info.learning_rate if role == "unlearn" else None,
        run_dir=str(run.resolve()),
        model_dirs=_local_models(info, run),
    )


def _model_label(info: _RunInfo) -> str:
    """The model column: a local model folder's name when the run loaded one (the host's model config
    name, e.g. ``Llama-3.2-1B-Instruct``, then says only which template was used), else the config name."""
    if info.model_path and info.model_path.startswith(("/", "./", "../", "~")):
        return Path(info.model_path).name or info.model_path
    return info.model or info.model_path or ""


def _candidates(path: str, run: Path, info: _RunInfo) -> list[Path]:
    """Where a path from a run's config may be: as is when absolute, else relative to the folder the
    host ran in (the one holding ``saves/``, or Hydra's recorded working directory)."""
    logs = Path(path)
    if logs.is_absolute():
        return [logs]
    candidates = []
    saves = next((p for p in [run, *run.parents] if p.name == "saves"), None)
    if saves is not None:
        candidates.append(saves.parent / logs)
    if info.cwd:
        candidates.append(Path(info.cwd) / logs)
    return candidates


def _local_models(info: _RunInfo, run: Path) -> list[str]:
    if not info.model_path:
        return []
    found = [c for c in _candidates(info.model_path, run, info) if c.is_absolute() and c.is_dir()]
    return [str(c.resolve()) for c in found]


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
        lr = item.get("lr")
        rows.append(
            Row(
                BENCHMARKS["demo"].name,
                method,
                role,
                model,
                split,
                path.parent.name,
                str(path),
                metrics,
                learning_rate=float(lr) if isinstance(lr, int | float) and not isinstance(lr, bool) else None,
            )
        )
    return rows


def _is_demo_results(data: Any) -> bool:
    return (
        isinstance(data, dict) and isinstance(data.get("rows"), list) and isinstance(data.get("meta"), dict)
    )


def _walk(root: Path, names: set[str]) -> Iterable[Path]:
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        for name in sorted(files):
            if name in names:
                yield Path(directory) / name


def _eval_to_summary(data: dict[str, Any]) -> dict[str, Any]:
    return {
        k: v["agg_value"] for k, v in data.items() if isinstance(v, dict) and v.get("agg_value") is not None
    }


def _retain_reference(row_path: Path, bench: Benchmark) -> Path | None:
    """The retain model's summary named by an unlearning run's ``retain_logs_path``, if it exists."""
    run, _ = _run_dir(row_path.parent)
    info = _run_info(run, row_path.parent)
    if not info.retain_logs_path:
        return None
    for candidate in _candidates(info.retain_logs_path, run, info):
        summary = candidate.parent / bench.summary_file
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
    host_files = host_result_files()
    found: dict[tuple[str, str], tuple[int, Row]] = {}
    demo_rows: list[Row] = []
    seen: set[Path] = set()
    queue = [p for root in roots for p in _walk(root, {*host_files, DEMO_RESULTS_FILE})]
    while queue:
        path = queue.pop(0).resolve()
        if path in seen:
            continue
        seen.add(path)
        if path.name == DEMO_RESULTS_FILE:
            data = _read_json(path)
            if _is_demo_results(data):
                demo_rows += _demo_rows(path, data)
            continue
        is_eval_file = any(path.name == b.eval_file for b in host_files[path.name])
        if is_eval_file and (path.parent / host_files[path.name][0].summary_file).is_file():
            continue
        data = _read_json(path)
        if not isinstance(data, dict):
            continue
        metrics = _eval_to_summary(data) if is_eval_file else data
        if not metrics:
            continue
        bench = benchmark_of(path.name, metrics)
        row = _host_row(path, bench, metrics)
        run, step = _run_dir(path.parent)
        rank = 1 << 30 if step is None else step
        key = (row.benchmark, str(run.resolve()))
        if key not in found or rank > found[key][0]:
            found[key] = (rank, row)
        if row.role == "unlearn":
            reference = _retain_reference(path, bench)
            if reference is not None:
                queue.append(reference)
    rows = [row for _, row in found.values()] + demo_rows
    for row in rows:
        if row.role == "reference" and row.method.startswith("reference: ") and row.benchmark != "demo":
            row.method = f"reference: {row.task}"
    from .attacks import RESULT_FILE, attach, find_results

    attach(rows, find_results(p for root in roots for p in _walk(root, {RESULT_FILE})))
    return rows
