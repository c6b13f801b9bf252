"""Where does ``ours``'s step time go? Phase timings of ``FALCON.compute_loss`` + backward + AdamW.

Wraps (at run time, without editing the core) the functions ``falcon_plugin.trainer`` calls, times
each phase over interleaved rounds, and compares with the floor (two no-grad forwards to l*)::

    python benchmarks/phases.py --threads 1 --repeats 5 [--model random]
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.datasets import load_data  # noqa: E402
from benchmarks.models import load_model  # noqa: E402
from benchmarks.reporting import text_table  # noqa: E402
from benchmarks.step_variants import FloorStep, OursStep  # noqa: E402

logger = logging.getLogger("benchmarks.phases")
PHASES: dict[str, list[float]] = defaultdict(list)


def _wrap(module: Any, attr: str, label: str) -> None:
    original: Callable[..., Any] = getattr(module, attr)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            PHASES[label].append(time.perf_counter() - start)

    setattr(module, attr, wrapper)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Time the phases of one ``ours`` step against the floor; print a markdown table."""
    import falcon_plugin.trainer as trainer_module

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="auto")
    parser.add_argument("--layer", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_model(args.model)
    data = load_data(loaded.tokenizer, loaded.info["vocab"], args.batch, args.seq_len, 0)
    device = torch.device("cpu")
    ours = OursStep(copy.deepcopy(loaded.model), data, args.layer, device)
    floor = FloorStep(loaded.model, data, args.layer, device)
    for name, label in (
        ("frozen_prefix_pass", "1 frozen prefix pass 0..l* (x2)"),
        ("run_layers", "2 grad pass first..l* (x2)"),
        ("info_nce_forget_loss", "3 losses"),
        ("cosine_retain_loss", "3 losses"),
        ("resolve_gradient_conflict", "5 projection"),
        ("token_mask", "3 losses"),
    ):
        _wrap(trainer_module, name, label)
    _wrap(torch.autograd, "grad", "4 autograd.grad g_F, g_R")
    rounds: dict[str, list[float]] = defaultdict(list)
    for index in range(args.repeats + 1):
        PHASES.clear()
        start = time.perf_counter()
        loss = ours.trainer.compute_loss(ours.model, ours.inputs)
        mid = time.perf_counter()
        loss.backward()
        after_backward = time.perf_counter()
        ours.optimizer.step()
        ours.optimizer.zero_grad(set_to_none=True)
        end = time.perf_counter()
        start_floor = time.perf_counter()
        floor.step()
        floor_s = time.perf_counter() - start_floor
        if index == 0:
            continue  # warm-up
        sums = {k: sum(v) for k, v in PHASES.items()}
        sums["6 surrogate backward"] = after_backward - mid
        sums["7 AdamW step + zero_grad"] = end - after_backward
        sums["8 rest of compute_loss"] = (mid - start) - sum(v for k, v in sums.items() if k[0] in "12345")
        sums["total ours"] = end - start
        sums["floor (2 no-grad forwards 0..l*)"] = floor_s
        for key, value in sums.items():
            rounds[key].append(value)
        logger.info("round %d: ours %.3f s, floor %.3f s", index, end - start, floor_s)
    floor_median = statistics.median(rounds["floor (2 no-grad forwards 0..l*)"])
    rows = [
        [k, f"{statistics.median(v):.3f}", f"{statistics.median(v) / floor_median:.2f}"]
        for k, v in sorted(rounds.items())
    ]
    print(text_table(["phase", "median (s)", "/ floor"], rows))
    return {k: statistics.median(v) for k, v in rounds.items()}


if __name__ == "__main__":
    main()
