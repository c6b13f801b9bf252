"""FALCON at 7B scale on one machine: peak memory and step time of ours on Zephyr-7B-beta's shape.

Builds a ``MistralForCausalLM`` with Zephyr-7B-beta's published config (32 layers, hidden 4096,
intermediate 14336; random weights in bf16, created in place with no second copy:
:mod:`benchmarks.scale_model`), sets up the plugin's step exactly as ``benchmarks/step.py``'s
``ours`` (``FALCON.compute_loss`` + ``backward`` + ``torch.optim.AdamW`` on the MLP down-projections
of layers l*-2..l*, ``trainable_modules="down_proj"``) and runs ``--warmup`` + ``--repeats`` steps
on random token ids (``--batch`` x ``--seq-len`` per forget and per retain batch).

Everything is measured in a fresh subprocess (``--child``): the resident set after the imports,
the peak resident set (``VmHWM``, reset between phases via ``/proc/self/clear_refs``; on CUDA
``torch.cuda.max_memory_allocated``) of building the model, of the FALCON set-up and of the steps,
and the time of each step. The official scheme (two full models, four full forwards) is *not* run:
its figures are computed from the measured per-model size and :mod:`benchmarks.memory_model`, and
its step time from the ratio of its FLOPs to ours.

``--layers / --hidden / --intermediate`` scale the shape down (same code path) for checks. Results:
``benchmarks/results/scale-<device>.json``; see docs/performance.md ("FALCON on a 7B model within 24 GiB").
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks import memory_model as mm  # noqa: E402
from benchmarks.paths import REPO_ROOT  # noqa: E402
from benchmarks.reporting import environment, text_table  # noqa: E402
from benchmarks.step_variants import LR  # noqa: E402

logger = logging.getLogger("benchmarks.scale")

SCHEMA = "falcon-bench-scale/1"
SCRIPT = Path(__file__).resolve()
MIB = 2**20
DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}
CONFIG_KEYS = (
    "num_hidden_layers",
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
    "vocab_size",
    "tie_word_embeddings",
)
TARGET_PEAK_OVER_WEIGHTS = 1.15
"""Issue 14's target: peak memory of the step <= 1.15 x the model's bf16 weights."""


def command_line(argv: Sequence[str] | None) -> str:
    args = list(sys.argv[1:] if argv is None else argv)
    return " ".join(["python", "benchmarks/scale.py", *args])


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="benchmarks/scale.py",
        description="Peak memory and step time of FALCON (ours) on Zephyr-7B-beta's shape (random bf16 "
        "weights), beside the official scheme's figures computed from the measured model size.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--layers", type=int, default=None, help="decoder layers (Zephyr: 32)")
    parser.add_argument("--hidden", type=int, default=None, help="hidden size (Zephyr: 4096)")
    parser.add_argument("--intermediate", type=int, default=None, help="MLP size (Zephyr: 14336)")
    parser.add_argument("--layer", type=int, default=7, help="l*; trainable: down_proj of l*-2..l*")
    parser.add_argument("--batch", type=int, default=2, help="sequences per forget and per retain batch")
    parser.add_argument("--seq-len", type=int, default=128, help="tokens per sequence")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--repeats", type=int, default=2, help="timed steps")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES))
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget-gib", type=float, default=24.0, help="the device / machine size to judge")
    parser.add_argument("--out", default=None, help="JSON (default benchmarks/results/scale-<device>.json)")
    parser.add_argument("--child", action="store_true", help="internal: measure in this process")
    parser.add_argument("--child-out", default=None, help="internal: where the child writes its JSON")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = parser.parse_args(argv)
    for name in ("batch", "seq_len", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0:
        parser.error(f"--warmup must be >= 0, got {args.warmup}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    try:
        config = _config(args)
    except ValueError as err:
        parser.error(str(err))
    if not 0 <= args.layer < config.num_hidden_layers:
        parser.error(f"--layer must be in 0..{config.num_hidden_layers - 1}, got {args.layer}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device available")
    if args.child and not args.child_out:
        parser.error("--child needs --child-out")
    return args


def _config(args: argparse.Namespace) -> Any:
    from benchmarks.scale_model import zephyr_config

    return zephyr_config(args.layers, args.hidden, args.intermediate)


def shape_of(config: Any) -> mm.Shape:
    """The memory model's view of a transformers config."""
    return mm.Shape(
        name=f"zephyr-{config.num_hidden_layers}x{config.hidden_size}x{config.intermediate_size}",
        vocab=config.vocab_size,
        hidden=config.hidden_size,
        intermediate=config.intermediate_size,
        layers=config.num_hidden_layers,
        heads=config.num_attention_heads,
        kv_heads=config.num_key_value_heads,
        tied=bool(config.tie_word_embeddings),
    )


# ------------------------------------------------------------------------------------------- child
def _rss_mib() -> float:
    from benchmarks.measure import _proc_status_kib

    return (_proc_status_kib("VmRSS") or 0) / 1024


def _allocated_mib(device: torch.device) -> float | None:
    """Tensors allocated on a CUDA device (None on CPU, where the resident set is the measure)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    return torch.cuda.memory_allocated(device) / MIB


def run_child(args: argparse.Namespace) -> dict[str, Any]:
    """Build, set up and step in this process; the memory of each phase and the step times."""
    import accelerate  # noqa: F401  (imported before the baseline: the builder and the Trainer need it)
    import transformers.trainer  # noqa: F401

    import falcon_plugin.trainer  # noqa: F401
    from benchmarks.datasets import load_data
    from benchmarks.measure import PeakMemory, release_free_memory, timed
    from benchmarks.scale_model import build_random_model, model_bytes, parameter_count
    from benchmarks.step_variants import OursStep

    device = torch.device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    config = _config(args)
    release_free_memory()
    rss = {"imports": _rss_mib()}
    peaks: dict[str, float] = {}
    meter = PeakMemory(device)

    meter.reset()
    start = time.perf_counter()
    model = build_random_model(config, DTYPES[args.dtype], args.device, args.seed)
    build_s = time.perf_counter() - start
    peaks["build"] = meter.peak_mib()
    release_free_memory()
    rss["model"] = _rss_mib()
    allocated = {"model": _allocated_mib(device)}
    logger.info("model built in %.1f s; RSS %.0f MiB", build_s, rss["model"])

    data = load_data(None, config.vocab_size, args.batch, args.seq_len, 0, args.seed)
    meter.reset()
    start = time.perf_counter()
    variant = OursStep(model, data, args.layer, device)
    setup_s = time.perf_counter() - start
    peaks["setup"] = meter.peak_mib()
    rss["setup"] = _rss_mib()
    allocated["setup"] = _allocated_mib(device)
    logger.info("FALCON set-up in %.1f s; RSS %.0f MiB", setup_s, rss["setup"])

    meter.reset()
    times = []
    for index in range(args.warmup + args.repeats):
        times.append(timed(variant.step, device))
        logger.info("step %d: %.2f s%s", index, times[-1], " (warm-up)" if index < args.warmup else "")
    peaks["steps"] = meter.peak_mib()
    rss["steps"] = _rss_mib()
    allocated["steps"] = _allocated_mib(device)
    state_dtypes = sorted(
        {
            f"{key}:{value.dtype}".replace("torch.", "")
            for state in variant.optimizer.state.values()
            for key, value in state.items()
            if isinstance(value, torch.Tensor) and value.dim() > 0
        }
    )
    names = variant.trainer.falcon_state.trainable_names
    params = dict(model.named_parameters())
    variant.close()
    return {
        "config": {k: getattr(config, k) for k in CONFIG_KEYS},
        "parameters": parameter_count(model),
        "model_bytes": model_bytes(model),
        "dtype": args.dtype,
        "trainable": list(names),
        "trainable_parameters": sum(params[n].numel() for n in names),
        "optimizer_state_dtypes": state_dtypes,
        "gradient_dtype": str(params[names[0]].dtype).replace("torch.", ""),
        "rss_mib": {k: round(v, 1) for k, v in rss.items()},
        "cuda_allocated_mib": None
        if device.type != "cuda"
        else {k: round(v or 0.0, 1) for k, v in allocated.items()},
        "peak_mib": {**{k: round(v, 1) for k, v in peaks.items()}, "process": round(max(peaks.values()), 1)},
        "memory_method": meter.method,
        "build_s": round(build_s, 3),
        "setup_s": round(setup_s, 3),
        "warmup_times_s": [round(t, 4) for t in times[: args.warmup]],
        "times_s": [round(t, 4) for t in times[args.warmup :]],
    }


# ------------------------------------------------------------------------------------------ parent
def step_flops(scheme: str, shape: mm.Shape, layer: int, tokens: int, seq_len: int) -> float:
    """Matmul FLOPs of one step (forget + retain batches of ``tokens`` tokens each).

    ours: prefix pass through layers 0..l*, grad pass through l*-2..l*, backward: input gradients of
    layers l* and l*-1 (about one forward each) and three down_proj weight gradients; official: four
    full forwards with the LM head, two backwards through layers 0..l* (input and weight gradients,
    about two forwards each).
    """
    per_layer = 2 * shape.layer_params + 2 * seq_len * shape.heads * shape.head_dim  # causal attention
    head = 2 * shape.hidden * shape.vocab
    trainable = min(3, layer + 1)
    if scheme == "ours":
        per_batch = (
            layer + 1 + trainable + (trainable - 1)
        ) * per_layer + trainable * 2 * shape.hidden * shape.intermediate
        return 2 * tokens * per_batch
    if scheme == "official":
        return tokens * (4 * (shape.layers * per_layer + head) + 2 * 2 * (layer + 1) * per_layer)
    raise ValueError(f"no FLOP model for scheme {scheme!r}")


def analyse(child: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Ratios, the official scheme's computed figures, the memory model's prediction, the targets."""
    config = _config(args)
    shape = shape_of(config)
    tokens = args.batch * args.seq_len
    dtype_bytes = 2 if args.dtype == "bfloat16" else 4
    work = mm.Workload(
        args.layer, tokens, "down_proj", dtype_bytes, "adamw_bf16" if dtype_bytes == 2 else "adamw_32bit"
    )
    weights_mib = child["model_bytes"] / MIB
    rss, peak = child["rss_mib"], child["peak_mib"]
    cuda = child.get("cuda_allocated_mib")
    measured_model_mib = cuda["model"] if cuda else rss["model"] - rss["imports"]
    ours = mm.breakdown("ours", shape, work)
    official = mm.breakdown("official", shape, work)
    cpu = args.device == "cpu"
    baseline = rss["imports"] if cpu else 0.0  # CUDA: max_memory_allocated counts tensors only
    predicted_ours = ours["total"] / MIB + baseline
    official_total = (
        official["total"] / MIB - 2 * official["weights"] / MIB + 2 * measured_model_mib + baseline
    )
    median = statistics.median(child["times_s"])
    flop_ratio = step_flops("official", shape, args.layer, tokens, args.seq_len) / step_flops(
        "ours", shape, args.layer, tokens, args.seq_len
    )
    budget_mib = args.budget_gib * 1024
    ratio = peak["process"] / weights_mib
    above = peak["process"] - baseline
    return {
        "weights_mib": round(weights_mib, 1),
        "measured_model_mib": round(measured_model_mib, 1),
        "ours": {
            "peak_mib": peak["process"],
            "peak_above_imports_mib": round(above, 1),
            "peak_over_weights": round(ratio, 4),
            "peak_above_imports_over_weights": round(above / weights_mib, 4),
            "median_step_s": median,
            "fits_budget": peak["process"] <= budget_mib,
        },
        "official_computed": {
            "lower_bound_mib": round(2 * measured_model_mib + baseline, 1),
            "lower_bound_note": "two full models (train + reference), nothing else",
            "model_mib": round(official_total, 1),
            "model_breakdown_mib": {k: round(v / MIB, 1) for k, v in official.items()},
            "fits_budget": 2 * measured_model_mib + baseline <= budget_mib,
            "estimated_step_s": round(median * flop_ratio, 3),
            "flop_ratio_official_over_ours": round(flop_ratio, 3),
        },
        "memory_model": {
            "workload": {
                "layer": work.layer,
                "tokens": tokens,
                "trainable": work.trainable,
                "optimizer": work.optimizer,
            },
            "ours_breakdown_mib": {k: round(v / MIB, 1) for k, v in ours.items()},
            "process_baseline_mib": round(baseline, 1),
            "ours_predicted_peak_mib": round(predicted_ours, 1),
            "measured_over_predicted": round(peak["process"] / predicted_ours, 4),
        },
        "budget_gib": args.budget_gib,
        "targets": [
            {
                "name": "peak_vs_weights",
                "metric": "peak memory / bf16 weights" + (" (whole process)" if cpu else ""),
                "value": round(ratio, 4),
                "threshold": TARGET_PEAK_OVER_WEIGHTS,
                "status": "PASS" if ratio <= TARGET_PEAK_OVER_WEIGHTS else "FAIL",
            },
            *(
                [
                    {
                        "name": "peak_above_imports_vs_weights",
                        "metric": "peak memory above the interpreter / bf16 weights (a GPU's definition)",
                        "value": round(above / weights_mib, 4),
                        "threshold": TARGET_PEAK_OVER_WEIGHTS,
                        "status": "PASS" if above / weights_mib <= TARGET_PEAK_OVER_WEIGHTS else "FAIL",
                    }
                ]
                if cpu
                else []
            ),
            {
                "name": "fits_budget",
                "metric": f"peak memory <= {args.budget_gib:g} GiB",
                "value": round(peak["process"] / 1024, 3),
                "threshold": args.budget_gib,
                "status": "PASS" if peak["process"] <= budget_mib else "FAIL",
            },
        ],
    }


def render(results: dict[str, Any]) -> str:
    """The side-by-side table (ours measured, official computed) and the targets."""
    a = results["analysis"]
    child = results["measured"]
    ours, official = a["ours"], a["official_computed"]
    gib = 1024
    rows = [
        [
            "ours (measured)",
            f"{a['weights_mib'] / gib:.2f}",
            f"{ours['peak_mib'] / gib:.2f}",
            f"{ours['peak_over_weights']:.3f}",
            f"{ours['median_step_s']:.2f} ({', '.join(f'{t:.2f}' for t in child['times_s'])})",
            "yes" if ours["fits_budget"] else "no",
        ],
        [
            "official (computed, not run)",
            f"2 x {a['measured_model_mib'] / gib:.2f}",
            f">= {official['lower_bound_mib'] / gib:.2f}; model {official['model_mib'] / gib:.2f}",
            f"{official['model_mib'] / a['weights_mib']:.3f}",
            f"~{official['estimated_step_s']:.2f} (FLOPs x {official['flop_ratio_official_over_ours']:.2f})",
            "yes" if official["fits_budget"] else "no",
        ],
    ]
    header = [
        "scheme",
        "models (GiB)",
        "peak (GiB)",
        "peak / weights",
        "step (s)",
        f"fits {a['budget_gib']:g} GiB",
    ]
    targets = [
        [t["metric"], f"{t['value']:.3f}", f"<= {t['threshold']:g}", t["status"]] for t in a["targets"]
    ]
    phases = [[k, f"{v:.0f}"] for k, v in child["peak_mib"].items()]
    return "\n\n".join(
        [
            text_table(header, rows),
            text_table(["phase", "peak (MiB)"], phases),
            text_table(["target", "value", "threshold", "result"], targets),
        ]
    )


def _child_argv(args: argparse.Namespace, out: Path) -> list[str]:
    argv = [
        str(SCRIPT),
        "--child",
        "--child-out",
        str(out),
        "--layer",
        str(args.layer),
        "--batch",
        str(args.batch),
        "--seq-len",
        str(args.seq_len),
        "--warmup",
        str(args.warmup),
        "--repeats",
        str(args.repeats),
        "--device",
        args.device,
        "--dtype",
        args.dtype,
        "--seed",
        str(args.seed),
        "--log-level",
        args.log_level,
    ]
    for flag, value in (
        ("--layers", args.layers),
        ("--hidden", args.hidden),
        ("--intermediate", args.intermediate),
        ("--threads", args.threads),
    ):
        if value is not None:
            argv += [flag, str(value)]
    return argv


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark (the measurement in a fresh subprocess); returns and writes the results."""
    from falcon_plugin.atomic import atomic_write_json

    args = parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    if args.child:
        result = run_child(args)
        atomic_write_json(args.child_out, result)
        return result
    env_start = environment()
    with tempfile.TemporaryDirectory(prefix="falcon-scale-") as tmp:
        out_child = Path(tmp) / "child.json"
        cmd = [sys.executable, *_child_argv(args, out_child)]
        logger.info("child: %s", " ".join(cmd[1:]))
        env = {**os.environ, "TQDM_DISABLE": "1"}
        proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"measurement subprocess failed with exit code {proc.returncode}")
        child = json.loads(out_child.read_text(encoding="utf-8"))
    results: dict[str, Any] = {
        "schema": SCHEMA,
        "command": command_line(argv),
        "created_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "environment": env_start,
        "settings": {
            "layer": args.layer,
            "batch": args.batch,
            "seq_len": args.seq_len,
            "warmup": args.warmup,
            "repeats": args.repeats,
            "device": args.device,
            "dtype": args.dtype,
            "optimizer": f"torch.optim.AdamW(lr={LR}) on the trainable tensors",
            "trainable_modules": "down_proj",
        },
        "measured": child,
    }
    results["analysis"] = analyse(child, args)
    results["environment_end"] = {"loadavg": environment()["loadavg"]}
    out = Path(args.out) if args.out else REPO_ROOT / "benchmarks" / "results" / f"scale-{args.device}.json"
    atomic_write_json(out, results)
    print(render(results))  # the one print: the final table
    print(f"\nJSON: {out}")
    return results


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        main()
