"""Step-1 scoring time per criterion against one batched forward pass of a SmolLM2-135M-sized model.

Times, interleaved over ``--repeats`` rounds (medians reported):

* ``separability``: :func:`falcon_plugin.separability.score_layers_separability` (held-out I(H; D));
* ``paper``: :func:`falcon_plugin.mi.score_layers` (I(F;R), PCA 95% + leave-one-out KDE, the default);
* ``forward``: one no-grad forward of a random-weight Llama built from SmolLM2-135M's config (hidden 576,
  30 layers, intermediate 1536, 9 heads / 3 kv heads, vocab 49152) on a batch of 16 x 64 tokens,

on random activations of the shape capture produces for that model (30 layers x 200 + 200 samples x 576).
Target (issue 11): scoring all layers takes less than that one forward. Usage::

    python benchmarks/separability_speed.py [--repeats 3] [--threads 1] \\
        [--out benchmarks/results/separability-cpu.json]
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.models import SMOLLM_SHAPE  # noqa: E402

logger = logging.getLogger("benchmarks.separability_speed")


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds (medians reported)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the forward pass")
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--samples", type=int, default=200, help="forget and retain samples each")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--skip-paper", action="store_true", help="do not time the paper's criterion")
    parser.add_argument("--out", default=None, help="also write the result as JSON here")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from transformers import LlamaConfig, LlamaForCausalLM

    from falcon_plugin.mi import score_layers
    from falcon_plugin.separability import ProbeSettings, recommend_layer, score_layers_separability

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = LlamaConfig(**{**SMOLLM_SHAPE, "num_hidden_layers": args.layers})
    model = LlamaForCausalLM(config).eval()
    ids = torch.randint(3, config.vocab_size, (args.batch, args.seq_len))
    rng = np.random.default_rng(0)
    forget = rng.standard_normal((args.layers, args.samples, config.hidden_size)).astype(np.float32)
    retain = rng.standard_normal((args.layers, args.samples, config.hidden_size)).astype(np.float32)
    settings = ProbeSettings()

    def forward() -> None:
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)

    picks: dict[str, int] = {}

    def separability() -> None:
        picks["separability"] = recommend_layer(score_layers_separability([forget], retain, settings))

    def paper() -> None:
        scores = score_layers([forget], retain)
        picks["paper"] = min(scores, key=lambda s: (s.score, s.layer)).layer

    forward()  # untimed warm-up
    runs: dict[str, Callable[[], None]] = {"forward": forward, "separability": separability}
    if not args.skip_paper:
        runs["paper"] = paper
    times: dict[str, list[float]] = {name: [] for name in runs}
    for index in range(args.repeats):
        order = list(runs.items())
        for name, fn in order if index % 2 == 0 else order[::-1]:
            times[name].append(_timed(fn))
            logger.info("round %d %s %.3f s", index, name, times[name][-1])
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    ratios = {name: medians[name] / medians["forward"] for name in runs if name != "forward"}
    rows = [("one batched forward", medians["forward"], "-")]
    rows += [(f"score {args.layers} layers: {name}", medians[name], f"{ratios[name]:.3f}") for name in ratios]
    print(
        f"| what ({args.layers} layers, {args.samples}+{args.samples} x {config.hidden_size}; "
        f"forward {args.batch} x {args.seq_len} tokens) | median (s) | / forward |"
    )
    print("|---|---|---|")
    for what, seconds, ratio in rows:
        print(f"| {what} | {seconds:.3f} | {ratio} |")
    target = ratios["separability"] < 1.0
    print(
        f"\nseparability scoring under one forward pass: {'PASS' if target else 'FAIL'} "
        f"(ratio {ratios['separability']:.3f}); loadavg {os.getloadavg()}"
    )
    result = {
        "command": " ".join(
            ["python", "benchmarks/separability_speed.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        "shape": {
            "layers": args.layers,
            "samples": args.samples,
            "hidden": config.hidden_size,
            "batch": args.batch,
            "seq_len": args.seq_len,
        },
        "settings": {"folds": settings.folds, "C": settings.C, "max_components": settings.max_components},
        "picks_on_random_activations": picks,
        "times_s": times,
        "medians_s": medians,
        "ratio_to_forward": ratios,
        "target_separability_under_forward": target,
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "loadavg": list(os.getloadavg()),
        },
    }
    if args.out:
        from falcon_plugin.atomic import atomic_write_json

        atomic_write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
