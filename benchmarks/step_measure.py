"""The measurements of ``benchmarks/step.py``: interleaved step timing, peak memory per variant in a fresh
subprocess, and MI layer selection against one batched forward."""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.datasets import BenchData, load_data, to_device
from benchmarks.measure import PeakMemory, summarize, timed
from benchmarks.models import load_model
from benchmarks.paths import REPO_ROOT
from benchmarks.step_variants import DESCRIPTIONS, VARIANTS, StepVariant, build_variant

logger = logging.getLogger("benchmarks.step")
STEP_SCRIPT = Path(__file__).resolve().with_name("step.py")
"""The CLI the memory subprocesses run (``--only NAME --memory``)."""
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def resolve_layer(requested: int, layers: int) -> int:
    """``--layer`` if the model has it, else its last layer (with a warning)."""
    if requested < layers:
        return requested
    logger.warning(
        "--layer %d does not exist in a %d-layer model; using l* = %d", requested, layers, layers - 1
    )
    return layers - 1


def run_timing(
    model: nn.Module,
    data: BenchData,
    layer: int,
    device: torch.device,
    names: Sequence[str],
    warmup: int,
    repeats: int,
    profile: bool = False,
) -> dict[str, Any]:
    """Time each variant's step, interleaved (ABCD ABCD ...), after ``warmup`` untimed rounds."""
    variants: dict[str, StepVariant] = {}
    for name in names:
        own = model if name == "floor" else copy.deepcopy(model)  # no variant sees another's flags or updates
        variants[name] = build_variant(name, own, data, layer, device)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(warmup + repeats):
        for name, variant in variants.items():
            seconds = timed(variant.step, device)
            logger.info(
                "round %d %-8s %.3f s%s",
                round_index,
                name,
                seconds,
                " (warm-up)" if round_index < warmup else "",
            )
            if round_index >= warmup:
                times[name].append(seconds)
    if profile:
        for name, variant in variants.items():
            profile_step(name, variant.step)
    for variant in variants.values():
        variant.close()
    result = {
        "order": list(names),
        "warmup": warmup,
        "repeats": repeats,
        "variants": {
            name: {"description": DESCRIPTIONS[name], **summarize(ts)} for name, ts in times.items()
        },
    }
    result["ratios"] = _ratios({n: v["median_s"] for n, v in result["variants"].items()})
    # extra, not used for the targets: the median over rounds of ours/X within the same round (robust to
    # load drifting between rounds on a shared machine)
    result["paired_ratio_medians"] = {
        f"ours/{other}": statistics.median(a / b for a, b in zip(times["ours"], times[other], strict=True))
        for other in names
        if other != "ours" and "ours" in times
    }
    return result


def profile_step(name: str, step: Callable[[], None], rows: int = 25) -> str:
    """One step under ``torch.profiler`` (CPU, plus CUDA when available); logs and returns the op table."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities, record_shapes=False) as prof:
        step()
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)
    logger.info("profile of %s:\n%s", name, table)
    return table


def _ratios(values: dict[str, float]) -> dict[str, float | None]:
    ours = values.get("ours")
    return {
        f"ours/{other}": (ours / values[other] if ours is not None and values.get(other) else None)
        for other in VARIANTS
        if other != "ours"
    }


def run_memory_child(args: argparse.Namespace) -> dict[str, Any]:
    """Peak memory of one variant (``args.only``) in this process: load, reset the peak, set up, run steps."""
    (name,) = args.only
    device = torch.device(args.device)
    loaded = load_model(args.model, args.layers, args.hidden, DTYPES[args.dtype], args.device, args.seed)
    layer = resolve_layer(args.layer, loaded.info["layers"])
    data = load_data(loaded.tokenizer, loaded.info["vocab"], args.batch, args.seq_len, 0, args.seed)
    _preimport()
    meter = PeakMemory(device)
    meter.reset()
    variant = build_variant(name, loaded.model, data, layer, device)
    for _ in range(args.memory_steps):
        variant.step()
    peak = meter.peak_mib()
    variant.close()
    return {
        "variant": name,
        "peak_mib": round(peak, 1),
        "baseline_mib": round(meter.baseline_mib, 1),
        "delta_mib": round(peak - meter.baseline_mib, 1),
        "steps": args.memory_steps,
        "method": meter.method,
    }


def _preimport() -> None:
    """Import what any variant may import lazily (HF Trainer, DeepSpeed): no peak counts module code."""
    import transformers.trainer  # noqa: F401

    import falcon_plugin.trainer  # noqa: F401

    with contextlib.suppress(Exception):  # the HF Trainer imports it on construction when installed
        import deepspeed  # noqa: F401


def _child_argv(args: argparse.Namespace) -> list[str]:
    argv = [
        "--model",
        args.model,
        "--seq-len",
        str(args.seq_len),
        "--batch",
        str(args.batch),
        "--device",
        args.device,
        "--dtype",
        args.dtype,
        "--layer",
        str(args.layer),
        "--seed",
        str(args.seed),
        "--memory-steps",
        str(args.memory_steps),
        "--log-level",
        "WARNING",
    ]
    if args.layers is not None:
        argv += ["--layers", str(args.layers)]
    if args.hidden is not None:
        argv += ["--hidden", str(args.hidden)]
    if args.threads is not None:
        argv += ["--threads", str(args.threads)]
    return argv


def run_memory(args: argparse.Namespace, names: Sequence[str]) -> dict[str, Any]:
    """Each variant's peak memory in a fresh ``--only NAME --memory`` process, ``--memory-jobs`` at once."""
    script = str(STEP_SCRIPT)
    tmpdir = Path(tempfile.mkdtemp(prefix="falcon-bench-mem-"))
    results: dict[str, dict[str, Any]] = {}
    try:
        pending = list(names)
        while pending:
            batch, pending = pending[: args.memory_jobs], pending[args.memory_jobs :]
            procs = []
            for name in batch:
                out = tmpdir / f"{name}.json"
                cmd = [
                    sys.executable,
                    script,
                    *_child_argv(args),
                    "--only",
                    name,
                    "--memory",
                    "--memory-out",
                    str(out),
                ]
                logger.info("memory: %s", " ".join(cmd[1:]))
                env = {**os.environ, "TQDM_DISABLE": "1"}  # no model-loading progress bars from the children
                procs.append((name, out, subprocess.Popen(cmd, cwd=REPO_ROOT, env=env)))
            for name, out, proc in procs:
                if proc.wait() != 0:
                    raise RuntimeError(
                        f"memory subprocess for {name!r} failed with exit code {proc.returncode}"
                    )
                results[name] = json.loads(out.read_text(encoding="utf-8"))
                logger.info(
                    "memory %-8s peak %.1f MiB (baseline %.1f MiB)",
                    name,
                    results[name]["peak_mib"],
                    results[name]["baseline_mib"],
                )
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return summarize_memory(results)


def summarize_memory(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Memory section of the JSON from per-variant child results."""
    methods = {r["method"] for r in results.values()}
    return {
        "method": "; ".join(sorted(methods)),
        "unit": "MiB",
        "variants": {
            n: {k: v for k, v in r.items() if k not in ("variant", "method")} for n, r in results.items()
        },
        "ratios": _ratios({n: r["peak_mib"] for n, r in results.items()}),
        "delta_ratios": _ratios({n: r["delta_mib"] for n, r in results.items()}),
    }


def run_mi(
    model: nn.Module, data: BenchData, device: torch.device, repeats: int, batch_size: int
) -> dict[str, Any]:
    """``run_mi_selection`` over all layers vs one batched no-grad forward, same samples, interleaved."""
    from falcon_plugin.config import MIConfig
    from falcon_plugin.data import pad_examples
    from falcon_plugin.report import run_mi_selection

    config = MIConfig(samples=len(data.mi_forget), batch_size=batch_size)
    batches = [
        to_device(pad_examples(part[i : i + batch_size], data.pad_token_id), device)
        for part in (data.mi_forget, data.mi_retain)
        for i in range(0, len(part), batch_size)
    ]
    model.eval()

    def forward() -> None:
        with torch.no_grad():
            for batch in batches:
                model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)

    reports: list[Any] = []

    def select() -> None:
        reports.append(
            run_mi_selection(
                model,
                [data.mi_forget],
                data.mi_retain,
                config,
                pad_token_id=data.pad_token_id,
                progress=False,
            )
        )

    with torch.no_grad():  # untimed warm-up on one batch
        model(input_ids=batches[0]["input_ids"], attention_mask=batches[0]["attention_mask"], use_cache=False)
    fwd_times: list[float] = []
    mi_times: list[float] = []
    for i in range(repeats):
        order = [(forward, fwd_times), (select, mi_times)]
        for fn, sink in order if i % 2 == 0 else order[::-1]:
            sink.append(timed(fn, device))
            logger.info("MI round %d %s %.3f s", i, "forward" if fn is forward else "mi_selection", sink[-1])
    fwd, mi = summarize(fwd_times), summarize(mi_times)
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    padded = sum(b["input_ids"].numel() for b in batches)
    return {
        "samples": {"forget": len(data.mi_forget), "retain": len(data.mi_retain)},
        "batch_size": batch_size,
        "tokens": tokens,
        "padded_tokens": padded,
        "layers_scored": len(reports[-1].scores),
        "chosen_layer": reports[-1].chosen_layer,
        "estimator": config.estimator,
        "forward": fwd,
        "mi_selection": mi,
        "mi_breakdown_s": reports[-1].timings,
        "ratio": mi["median_s"] / fwd["median_s"],
    }
