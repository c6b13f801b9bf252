"""The two Step-1 criteria side by side: the tables of docs/mi.md, "Criteria".

``synthetic``: two independent samples of one Gaussian (n = 200 each, 576 coordinates, effective
dimension d), so forget and retain are unpaired and identically distributed: the true I(F;R) and the
true I(H; D) are both 0. Prints each criterion's estimate per d (mean ± sd over seeds).

``tofu``: pooled activations of every layer of SmolLM2-135M-Instruct (the shared GGUF) on TOFU
question/answer pairs (forget10[:200] and forget01 against retain90[:200]), with ``last`` and ``mean``
pooling; prints each criterion's per-layer score and pick (``paper``: argmin, ``separability``: argmax),
and separability on two random halves of retain90[:400] (one distribution: 0 expected).
Usage::

    python benchmarks/criteria_tables.py synthetic [--seeds 3]
    python benchmarks/criteria_tables.py tofu [--samples 200] [--model DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

SHARED = Path(os.environ.get("FALCON_BENCH_SHARED", Path(__file__).resolve().parents[2] / "shared"))
HIDDEN = 576


def same_distribution(d: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two independent (n, 576) samples of N(0, P_d) + 0.01 noise, P_d a random rank-d projection."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((HIDDEN, d)))[0].T
    return tuple(
        rng.standard_normal((n, d)) @ basis + 0.01 * rng.standard_normal((n, HIDDEN)) for _ in range(2)
    )


def synthetic(seeds: int, dims: Sequence[int] = (2, 10, 20, 40), n: int = 200) -> None:
    from falcon_plugin.mi import mutual_information
    from falcon_plugin.separability import separability

    columns = [
        "paper I(F;R), kde",
        "paper I(F;R), gaussian",
        "paper I(F;R), kde_resubstitution",
        "separability I(H;D)",
        "separability, before the clip",
    ]
    print(f"| d | {' | '.join(columns)} |")
    print("|---|" + "---|" * len(columns))
    for d in dims:
        values: list[list[float]] = [[] for _ in columns]
        for seed in range(seeds):
            f, r = same_distribution(d, n, 100 * d + seed)
            for i, est in enumerate(("kde", "gaussian", "kde_resubstitution")):
                values[i].append(mutual_information(f, r, est).mi)
            e = separability(f, r)
            values[3].append(e.mi)
            values[4].append(e.raw)
        print(f"| {d} | " + " | ".join(f"{np.mean(v):+.3f} ± {np.std(v):.3f}" for v in values) + " |")


def _examples(tokenizer: Any, path: Path, rows: slice) -> list[dict]:
    from falcon_plugin.data import tokenize_qa

    with path.open(encoding="utf-8") as handle:
        items = [json.loads(line) for line in handle if line.strip()][rows]
    return [tokenize_qa(tokenizer, d["question"], d["answer"], 256) for d in items]


def tofu(samples: int, model_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from falcon_plugin.capture import capture_layer_activations
    from falcon_plugin.data import pad_examples, pad_token_id
    from falcon_plugin.mi import score_layers, select_layer
    from falcon_plugin.separability import recommend_layer, score_layers_separability

    torch.set_num_threads(1)
    gguf = sorted(model_dir.glob("*.gguf"))
    kwargs = {"gguf_file": gguf[0].name} if gguf else {}
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, **kwargs).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))  # the folder's tokenizer.json
    pad = pad_token_id(tokenizer)
    tofu_dir = SHARED / "data" / "tofu"
    sets = {
        "forget10": _examples(tokenizer, tofu_dir / "forget10.json", slice(0, samples)),
        "forget01": _examples(tokenizer, tofu_dir / "forget01.json", slice(None)),
        "retain": _examples(tokenizer, tofu_dir / "retain90.json", slice(0, 2 * samples)),
    }
    for pooling in ("last", "mean"):
        acts = {}
        for name, examples in sets.items():
            batches = (pad_examples(examples[i : i + 16], pad) for i in range(0, len(examples), 16))
            acts[name] = capture_layer_activations(model, batches, pooling).numpy()
        halves = np.random.default_rng(0).permutation(acts["retain"].shape[1])
        null = score_layers_separability(
            [acts["retain"][:, halves[:samples]]], acts["retain"][:, halves[samples:]]
        )
        print(
            f"\nrandom halves of retain90[:{2 * samples}], pooling {pooling}: separability per layer "
            + " ".join(f"{s.score:.2f}" for s in null)
        )
        acts["retain"] = acts["retain"][:, :samples]
        for forget in ("forget10", "forget01"):
            paper = score_layers([acts[forget]], acts["retain"])
            ours = score_layers_separability([acts[forget]], acts["retain"])
            print(
                f"\n{forget} ({len(sets[forget])}) vs retain90 ({samples}), pooling {pooling}: "
                f"paper picks {select_layer(paper)}, separability picks {recommend_layer(ours)}"
            )
            print("| layer | " + " | ".join(str(s.layer) for s in ours) + " |")
            print("|---|" + "---|" * len(ours))
            print("| paper I(F;R) | " + " | ".join(f"{s.score:.1f}" for s in paper) + " |")
            print("| separability I(H;D) | " + " | ".join(f"{s.score:.2f}" for s in ours) + " |")
            print("| held-out d' | " + " | ".join(f"{s.d_prime:.1f}" for s in ours) + " |")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="table", required=True)
    syn = sub.add_parser("synthetic")
    syn.add_argument("--seeds", type=int, default=3)
    real = sub.add_parser("tofu")
    real.add_argument(
        "--samples", type=int, default=200, help="forget10 and retain90 samples (forget01: all 40)"
    )
    real.add_argument("--model", type=Path, default=SHARED / "models" / "smollm2-135m-instruct-gguf")
    args = parser.parse_args(argv)
    if args.table == "synthetic":
        synthetic(args.seeds)
    else:
        tofu(args.samples, args.model)


if __name__ == "__main__":
    main()
