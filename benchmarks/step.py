"""Benchmark one FALCON training step against the official scheme, RMU and a forward-only floor.

Variants (:mod:`benchmarks.step_variants`), measured side by side in one process, interleaved
(ABCDABCD...), medians: ``ours`` (the trainer's exact step), ``official`` (the official FALCON loop),
``rmu`` (open-unlearning's RMU step) and ``floor`` (two no-grad forwards through layers 0..l*).

Peak memory is measured per variant in a fresh subprocess (``--only X --memory``). MI layer
selection (``falcon_plugin.report.run_mi_selection``, all layers) is timed against one batched
forward pass over the same samples (:mod:`benchmarks.step_measure`); targets and the table:
:mod:`benchmarks.step_report`.

Run ``python benchmarks/step.py --help``; results go to ``benchmarks/results/step-<device>.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.datasets import load_data  # noqa: E402
from benchmarks.models import load_model  # noqa: E402
from benchmarks.paths import REPO_ROOT  # noqa: E402
from benchmarks.reporting import environment  # noqa: E402
from benchmarks.step_measure import (  # noqa: E402
    DTYPES,
    resolve_layer,
    run_memory,
    run_memory_child,
    run_mi,
    run_timing,
    summarize_memory,
)
from benchmarks.step_report import TARGETS, evaluate_targets, render_table  # noqa: E402
from benchmarks.step_variants import LR, VARIANTS, trainable_names  # noqa: E402
from falcon_plugin.config import MIN_MI_SAMPLES, MIConfig  # noqa: E402

logger = logging.getLogger("benchmarks.step")

SCHEMA = "falcon-bench-step/1"
_MI_DEFAULTS = MIConfig()


def command_line(argv: Sequence[str] | None) -> str:
    """The command as typed (for the JSON and docs)."""
    args = list(sys.argv[1:] if argv is None else argv)
    return " ".join(["python", "benchmarks/step.py", *args])


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="benchmarks/step.py",
        description="Benchmark one FALCON step (ours) against the official scheme, RMU and a forward-only "
        "floor; "
        "peak memory per variant (fresh subprocesses); MI layer selection against one batched forward.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--model",
        default="auto",
        help="auto (shared SmolLM2-135M-Instruct GGUF if present, else random), random, or a model folder",
    )
    parser.add_argument(
        "--layers", type=int, default=None, help="decoder layers of --model random (default 30)"
    )
    parser.add_argument(
        "--hidden", type=int, default=None, help="hidden size of --model random (default 576)"
    )
    parser.add_argument(
        "--layer", type=int, default=7, help="unlearning layer l*; trainable: down_proj of l*-2..l*"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per variant (medians reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--seq-len", type=int, default=256, help="tokens per sequence")
    parser.add_argument("--batch", type=int, default=4, help="sequences per forget and per retain batch")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--only",
        default=None,
        help=f"comma-separated subset of {','.join(VARIANTS)} (timing); exactly one with --memory",
    )
    parser.add_argument(
        "--out", default=None, help="JSON output (default benchmarks/results/step-<device>.json)"
    )
    parser.add_argument("--skip-step", action="store_true", help="do not time the step variants")
    parser.add_argument("--skip-mi", action="store_true", help="do not time MI selection")
    parser.add_argument("--skip-memory", action="store_true", help="do not measure peak memory")
    parser.add_argument(
        "--mi-samples", type=int, default=_MI_DEFAULTS.samples, help="forget and retain samples each for MI"
    )
    parser.add_argument(
        "--mi-batch", type=int, default=_MI_DEFAULTS.batch_size, help="MI capture and forward batch size"
    )
    parser.add_argument(
        "--mi-max-len", type=int, default=256, help="MI samples are truncated to this many tokens"
    )
    parser.add_argument("--mi-repeats", type=int, default=1, help="interleaved MI/forward rounds")
    parser.add_argument(
        "--memory", action="store_true", help="child mode: peak memory of the single --only variant"
    )
    parser.add_argument("--memory-out", default=None, help="child mode: write its JSON here")
    parser.add_argument("--memory-steps", type=int, default=2, help="steps run while measuring peak memory")
    parser.add_argument("--memory-jobs", type=int, default=1, help="memory subprocesses run at once")
    parser.add_argument(
        "--profile", action="store_true", help="after timing, profile one step per variant (torch.profiler)"
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = parser.parse_args(argv)
    only = list(VARIANTS) if args.only is None else [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in only if s not in VARIANTS]
    if unknown or not only:
        parser.error(f"--only: unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    if args.memory and len(only) != 1:
        parser.error("--memory needs exactly one --only variant")
    args.only = only
    for name in (
        "repeats",
        "seq_len",
        "batch",
        "mi_batch",
        "mi_max_len",
        "mi_repeats",
        "memory_steps",
        "memory_jobs",
    ):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    if not args.skip_mi and args.mi_samples < MIN_MI_SAMPLES:
        parser.error(f"--mi-samples must be >= {MIN_MI_SAMPLES} (MI selection's minimum)")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device available")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns (and writes) the results dict. In ``--memory`` mode, the child result."""
    from falcon_plugin.atomic import atomic_write_json

    args = parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.memory:
        result = run_memory_child(args)
        if args.memory_out:
            atomic_write_json(args.memory_out, result)
        return result

    device = torch.device(args.device)
    env_start = environment()
    loaded = load_model(args.model, args.layers, args.hidden, DTYPES[args.dtype], args.device, args.seed)
    layer = resolve_layer(args.layer, loaded.info["layers"])
    data = load_data(
        loaded.tokenizer,
        loaded.info["vocab"],
        args.batch,
        args.seq_len,
        0 if args.skip_mi else args.mi_samples,
        args.seed,
        args.mi_max_len,
    )
    logger.info("model %s, data %s, l* = %d", loaded.info, data.info, layer)
    results: dict[str, Any] = {
        "schema": SCHEMA,
        "command": command_line(argv),
        "created_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "environment": env_start,
        "config": {
            "device": args.device,
            "dtype": args.dtype,
            "seq_len": args.seq_len,
            "batch": args.batch,
            "layer": layer,
            "trainable": trainable_names(loaded.model, layer),
            "optimizer": f"AdamW(lr={LR})",
            "seed": args.seed,
        },
        "model": loaded.info,
        "data": data.info,
    }
    results["step"] = (
        None
        if args.skip_step
        else run_timing(loaded.model, data, layer, device, args.only, args.warmup, args.repeats, args.profile)
    )
    results["mi"] = (
        None if args.skip_mi else run_mi(loaded.model, data, device, args.mi_repeats, args.mi_batch)
    )
    results["memory"] = None if args.skip_memory else run_memory(args, args.only)
    results["environment_end"] = {"loadavg": environment()["loadavg"]}
    results["targets"] = evaluate_targets(results)
    out = Path(args.out) if args.out else REPO_ROOT / "benchmarks" / "results" / f"step-{args.device}.json"
    atomic_write_json(out, results)
    print(render_table(results))  # the one print: the final table
    print(f"\nJSON: {out}")
    return results


__all__ = ["SCHEMA", "TARGETS", "VARIANTS", "evaluate_targets", "main", "parse_args", "summarize_memory"]

if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        main()
