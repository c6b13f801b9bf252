"""Every GPU figure in one call: the step, MI and memory benchmarks and the 7B scale benchmark, as JSON.

    python benchmarks/gpu_all.py --out "$OUT"                  # on a CUDA machine, about 2-4 minutes
    python benchmarks/gpu_all.py --out /tmp/plan --dry-run     # print and record the plan, run nothing

Runs, one subprocess each, in this order, each with a time limit taken from what is left of
``--time-limit`` (a part that overruns is killed and recorded; the others still run):

1. ``step``: ``benchmarks/step.py --device cuda --dtype bfloat16 --skip-mi --skip-memory`` (the four
   step variants, interleaved) -> ``step-cuda.json``
2. ``mi``: ``benchmarks/step.py ... --skip-step --skip-memory`` (MI selection vs one batched forward)
   -> ``mi-cuda.json``
3. ``memory``: ``benchmarks/step.py ... --skip-step --skip-mi`` (peak ``torch.cuda.max_memory_allocated``
   of each variant, fresh subprocesses) -> ``memory-cuda.json``
4. ``scale``: ``benchmarks/scale.py --device cuda`` (FALCON on Zephyr-7B-beta's shape, bf16)
   -> ``scale-cuda.json``

and writes ``gpu_all.json`` (the plan, each part's exit code, time and output file) and each part's
log under ``logs/``. Without CUDA (``--device auto``, the default) the same parts run on the CPU at
smoke-test sizes, marked ``"fallback": true``: that checks the script and its JSON, it yields no GPU
figure.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.paths import REPO_ROOT  # noqa: E402

logger = logging.getLogger("benchmarks.gpu_all")

SCHEMA = "falcon-bench-gpu-all/1"
PARTS = ("step", "mi", "memory", "scale")
STEP = str(REPO_ROOT / "benchmarks" / "step.py")
SCALE = str(REPO_ROOT / "benchmarks" / "scale.py")
CAPS_S = {"step": 90, "mi": 90, "memory": 120, "scale": 150}
"""Most seconds each part may take on a GPU (the overall ``--time-limit`` may cut them shorter)."""
SMOKE_STEP = [
    "--model",
    "random",
    "--layers",
    "4",
    "--hidden",
    "64",
    "--seq-len",
    "32",
    "--batch",
    "2",
    "--warmup",
    "0",
    "--repeats",
    "1",
    "--mi-samples",
    "16",
    "--threads",
    "1",
]
"""``benchmarks/step.py`` at smoke size: a 4-layer hidden-64 random Llama (the CPU fallback; the tests)."""
FALLBACK_STEP = [*SMOKE_STEP, "--memory-steps", "1"]
FALLBACK_SCALE = [
    "--layers",
    "4",
    "--hidden",
    "256",
    "--intermediate",
    "512",
    "--layer",
    "3",
    "--batch",
    "1",
    "--seq-len",
    "16",
    "--repeats",
    "1",
    "--threads",
    "1",
]
"""``benchmarks/scale.py`` at smoke size (the CPU fallback; tests/test_benchmarks.py uses it too)."""


@dataclass
class Part:
    """One benchmark run: its command, its output JSON and (after running) what happened."""

    name: str
    command: list[str]
    output: str
    cap_s: float
    returncode: int | None = None
    seconds: float | None = None
    timed_out: bool = False
    log: str | None = None


def plan(out: Path, device: str, parts: Sequence[str], model: str) -> list[Part]:
    """The commands for ``device`` (``cuda``: full sizes; ``cpu``: the fallback's smoke sizes)."""
    python = sys.executable
    if device == "cuda":
        step_common = ["--device", "cuda", "--dtype", "bfloat16", "--model", model, "--log-level", "WARNING"]
        scale_args = ["--device", "cuda", "--log-level", "WARNING"]
    else:
        step_common = [*FALLBACK_STEP, "--log-level", "WARNING"]
        scale_args = [*FALLBACK_SCALE, "--log-level", "WARNING"]
    commands = {
        "step": [STEP, *step_common, "--skip-mi", "--skip-memory", "--repeats", "5"]
        if device == "cuda"
        else [STEP, *step_common, "--skip-mi", "--skip-memory"],
        "mi": [STEP, *step_common, "--skip-step", "--skip-memory"],
        "memory": [STEP, *step_common, "--skip-step", "--skip-mi"],
        "scale": [SCALE, *scale_args],
    }
    result = []
    for name in parts:
        output = out / f"{name}-{device}.json"
        result.append(Part(name, [python, *commands[name], "--out", str(output)], str(output), CAPS_S[name]))
    return result


def run_part(part: Part, limit_s: float, log_dir: Path) -> None:
    """Run ``part`` with at most ``limit_s`` seconds; record exit code, time, log file."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{part.name}.log"
    part.log = str(log_path)
    start = time.perf_counter()
    env = {**os.environ, "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"}
    with log_path.open("w", encoding="utf-8") as log:
        proc = subprocess.Popen(
            part.command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            part.returncode = proc.wait(timeout=max(1.0, limit_s))
        except subprocess.TimeoutExpired:
            part.timed_out = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)  # the part and its own memory subprocesses
            part.returncode = proc.wait()
    part.seconds = round(time.perf_counter() - start, 3)
    status = "timed out" if part.timed_out else f"exit {part.returncode}"
    logger.info("%s: %s after %.1f s (log %s)", part.name, status, part.seconds, log_path)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="benchmarks/gpu_all.py",
        description="Run the step, MI, memory and 7B scale benchmarks on a GPU; JSON into --out.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--out", required=True, help="folder for the JSON files and logs (e.g. $OUT)")
    parser.add_argument("--time-limit", type=float, default=290.0, help="seconds for all parts together")
    parser.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cuda", "cpu"],
        help="auto: cuda if available, else the CPU fallback at smoke-test sizes",
    )
    parser.add_argument(
        "--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}"
    )
    parser.add_argument(
        "--model", default="auto", help="step.py's --model on CUDA (auto: shared GGUF or random)"
    )
    parser.add_argument("--dry-run", action="store_true", help="write the plan and print it; run nothing")
    args = parser.parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        parser.error(f"--parts: unknown {unknown}; choose from {', '.join(PARTS)}")
    if args.time_limit <= 0:
        parser.error(f"--time-limit must be > 0, got {args.time_limit}")
    args.parts = parts
    return args


def resolve_device(requested: str, dry_run: bool) -> tuple[str, bool]:
    """(device, fallback): CUDA when asked or available; ``cuda`` without CUDA is an error unless dry."""
    import torch

    available = torch.cuda.is_available()
    if requested == "cuda" and not available and not dry_run:
        raise SystemExit("benchmarks/gpu_all.py: --device cuda: no CUDA device available")
    if requested == "auto":
        requested = "cuda" if available else "cpu"
    return requested, requested == "cpu"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run (or with ``--dry-run`` only plan) every part; returns and writes ``gpu_all.json``."""
    from falcon_plugin.atomic import atomic_write_json

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    started = time.perf_counter()
    device, fallback = resolve_device(args.device, args.dry_run)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    parts = plan(out, device, args.parts, args.model)
    if fallback:
        logger.warning("no CUDA device: CPU fallback at smoke-test sizes; these are NOT GPU figures")
    for part in parts:
        if args.dry_run:
            print(" ".join(part.command))  # the plan is the output of a dry run
            continue
        left = args.time_limit - (time.perf_counter() - started) - 5.0  # keep time to write the summary
        if left < 10:
            logger.warning("%s: skipped, %.0f s left of --time-limit", part.name, left)
            continue
        run_part(part, min(part.cap_s, left) if device == "cuda" else left, out / "logs")
    summary: dict[str, Any] = {
        "schema": SCHEMA,
        "created_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "device": device,
        "fallback": fallback,
        "note": "CPU fallback at smoke-test sizes: no GPU figure" if fallback else "GPU figures",
        "dry_run": args.dry_run,
        "time_limit_s": args.time_limit,
        "wall_s": round(time.perf_counter() - started, 3),
        "parts": [asdict(p) for p in parts],
        "ok": not args.dry_run and all(p.returncode == 0 and Path(p.output).is_file() for p in parts),
    }
    atomic_write_json(out / "gpu_all.json", summary)
    if not args.dry_run:
        for part in parts:
            if part.returncode == 0 and Path(part.output).is_file():
                data = json.loads(Path(part.output).read_text(encoding="utf-8"))
                logger.info("%s: %s", part.name, _headline(part.name, data))
    return summary


def _headline(name: str, data: dict[str, Any]) -> str:
    """One line per part for the log: the figures a reader looks for first."""
    if name == "scale":
        ours = data["analysis"]["ours"]
        return (
            f"peak {ours['peak_mib']:.0f} MiB = {ours['peak_over_weights']:.3f} x weights, "
            f"step {ours['median_step_s']:.3f} s"
        )
    targets = ", ".join(
        f"{t['name']} {t['status']}" for t in data.get("targets", []) if t["status"] != "SKIP"
    )
    return targets or "written"


if __name__ == "__main__":
    summary = main()
    sys.exit(0 if summary["ok"] or summary["dry_run"] else 1)
