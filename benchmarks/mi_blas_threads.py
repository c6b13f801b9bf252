"""Evidence for the single-thread BLAS limit in ``score_layers``: MI scoring time vs BLAS threads.

Captures the pooled activations of every layer once (``capture_layer_activations``, as
``run_mi_selection`` does), then times ``falcon_plugin.mi.score_layers`` on them with the BLAS
thread pool as the process has it (the library default) and limited to one thread
(``threadpoolctl.threadpool_limits(1, "blas")``, what ``score_layers`` does),
interleaved, and checks that both give the same scores::

    python benchmarks/mi_blas_threads.py --threads 1 [--repeats 2] [--mi-samples 200] [--model random]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.datasets import load_data  # noqa: E402
from benchmarks.models import load_model  # noqa: E402
from benchmarks.reporting import environment, text_table  # noqa: E402

logger = logging.getLogger("benchmarks.mi_blas_threads")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Capture once, then time ``score_layers`` with default vs single-threaded BLAS; print a table."""
    from threadpoolctl import threadpool_info, threadpool_limits

    from falcon_plugin.capture import capture_layer_activations
    from falcon_plugin.config import MIConfig
    from falcon_plugin.data import pad_examples
    from falcon_plugin.mi import score_layers

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="auto")
    parser.add_argument("--mi-samples", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (BLAS threads are the variable)"
    )
    parser.add_argument("--out", default=None, help="also write the result as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_model(args.model)
    data = load_data(loaded.tokenizer, loaded.info["vocab"], 1, 256, args.mi_samples)
    config = MIConfig(samples=args.mi_samples)

    def batches(examples: list[dict[str, torch.Tensor]]):
        for i in range(0, len(examples), config.batch_size):
            yield pad_examples(examples[i : i + config.batch_size], data.pad_token_id)

    start = time.perf_counter()
    forget = capture_layer_activations(loaded.model, batches(data.mi_forget), config.pooling).numpy()
    retain = capture_layer_activations(loaded.model, batches(data.mi_retain), config.pooling).numpy()
    logger.info("captured %s + %s in %.1f s", forget.shape, retain.shape, time.perf_counter() - start)
    blas = [(i["internal_api"], i["num_threads"]) for i in threadpool_info() if i["user_api"] == "blas"]
    times: dict[str, list[float]] = {"default BLAS threads": [], "1 BLAS thread": []}
    scores: dict[str, list[float]] = {}
    for index in range(args.repeats):
        for label in times:
            start = time.perf_counter()
            if label == "1 BLAS thread":
                with threadpool_limits(limits=1, user_api="blas"):
                    result = score_layers([forget], retain, config.estimator, config.pca_variance, config.eta)
            else:
                result = score_layers([forget], retain, config.estimator, config.pca_variance, config.eta)
            times[label].append(time.perf_counter() - start)
            scores[label] = [s.score for s in result]
            logger.info("round %d %s: %.2f s", index, label, times[label][-1])
    same = all(abs(a - b) <= 1e-6 * max(1.0, abs(a)) for a, b in zip(*scores.values(), strict=True))
    rows = [
        [label, f"{statistics.median(ts):.2f}", ", ".join(f"{t:.2f}" for t in ts)]
        for label, ts in times.items()
    ]
    print(text_table(["score_layers over all layers", "median (s)", "rounds (s)"], rows))
    print(f"\nBLAS pools: {blas}; same scores: {same}; loadavg: {environment()['loadavg']}")
    result = {
        "command": " ".join(
            ["python", "benchmarks/mi_blas_threads.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        "model": loaded.info,
        "data": data.info,
        "samples": args.mi_samples,
        "layers": int(forget.shape[0]),
        "times_s": times,
        "medians_s": {k: statistics.median(v) for k, v in times.items()},
        "same_scores": same,
        "blas_pools": blas,
        "environment": environment(),
    }
    if args.out:
        from falcon_plugin.atomic import atomic_write_json

        atomic_write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
