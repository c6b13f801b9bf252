"""Multi-process checks of the FALCON trainer on CPU (gloo): DDP and DeepSpeed ZeRO-1/2/3 vs one process.

Usage (from the repository root)::

    OMP_NUM_THREADS=1 python scripts/distributed_check.py                  # every case, prints a JSON summary
    OMP_NUM_THREADS=1 python scripts/distributed_check.py --cases ddp zero3 --out /tmp/falcon-dist

Each case trains the same tiny Llama (4 layers, saved once and loaded with ``from_pretrained`` as
the host loads models) on the same data for 4 steps with the same *global* batch: two processes
with batch B/2 each (``torchrun --nproc_per_node 2``; DeepSpeed cases add a ``deepspeed`` config
to the TrainingArguments), against one process with batch B and the same gradient accumulation.
Every rank saves its logged losses, final trainable weights, l* and POV; the parent compares the
ranks with each other and with the single-process run. Cases: ``ddp``, ``zero1``, ``zero2``,
``zero3`` (parameters partitioned by the engine), ``zero3-zero_init`` (partitioned at load, as the
host's accelerate config with ``zero3_init_flag`` does), ``*-gas2`` (gradient accumulation 2) and
``zero3-auto-zero_init`` (MI layer selection on a partitioned model), ``ddp-log2`` (logging every 2 steps).

Every rank also records its *local* ``falcon/forget_loss`` per step and how many
``torch.distributed.all_reduce`` calls each step made: the logged ``falcon/*`` metrics must be the mean
over ranks (like the Trainer's ``loss``), reduced once per logging step and never on the steps between.

Every sample has the same number of answer tokens, so the mean over a rank's tokens averaged over
ranks equals the mean over the global batch's tokens: the multi-process runs then compute the same
update as the single-process run, and the differences are float32 reduction-order noise.
(With unequal token counts per rank, FALCON's losses, like any per-rank mean loss under DDP, weight
tokens of smaller ranks more: the multi-process result is then a slightly different estimate.)

DeepSpeed cases need ``pip install deepspeed``; they are reported as skipped when it is missing.
tests/test_distributed.py runs three of these cases (ddp, zero2, zero3 with zero.Init + accumulation).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MODES = ("single", "ddp", "zero1", "zero2", "zero3")
GLOBAL_BATCH = 4
STEPS = 4
LAYER = 2
VOCAB = 64


def deepspeed_available() -> bool:
    """Whether ``deepspeed`` is installed (checked without importing it: the import is slow and noisy)."""
    import importlib.util

    return importlib.util.find_spec("deepspeed") is not None


# ---------------------------------------------------------------------------------------------- worker
class CharTokenizer:
    """Bytes mod vocab; enough for FALCON's trainer and data helpers."""

    pad_token_id = 0
    bos_token_id = 1
    eos_token_id = 2

    def __call__(self, text: str, add_special_tokens: bool = True, **_: Any) -> dict[str, list[int]]:
        ids = [3 + (b % (VOCAB - 3)) for b in text.encode()]
        return {"input_ids": ([self.bos_token_id] if add_special_tokens else []) + ids}


def build_dataset(count: int = 16) -> Any:
    """Forget/retain QA items whose prompts and answers all have the same length (equal token counts)."""
    import torch

    from falcon_plugin.data import ForgetRetainDataset, tokenize_qa

    tok = CharTokenizer()
    g = torch.Generator().manual_seed(0)

    def items(topic: str) -> list[dict[str, torch.Tensor]]:
        out = []
        for i in range(count):
            words = " ".join(f"{topic}{int(x):02d}" for x in torch.randint(0, 100, (5,), generator=g))
            out.append(tokenize_qa(tok, f"What about {topic} {i:02d}?", words, max_length=64))
        return out

    # index-only items (no per-access redraw): every process and the one-process run see the same pairs
    return ForgetRetainDataset(items("zq"), items("ab"), seed=0, redraw=False)


def build_model() -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=False,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    config._attn_implementation = "eager"
    return LlamaForCausalLM(config)


def load_model(path: Path) -> Any:
    """``from_pretrained`` as the host loads models.

    Under an active ZeRO-3 config this partitions them (zero.Init).
    """
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(path, attn_implementation="eager")


def stage_of(mode: str) -> int | None:
    return int(mode[-1]) if mode.startswith("zero") else None


def deepspeed_config(stage: int) -> dict[str, Any]:
    zero: dict[str, Any] = {"stage": stage}
    if stage == 3:
        # partition even the tiny test tensors (the default threshold keeps small ones whole)
        zero.update({"stage3_param_persistence_threshold": 0, "stage3_prefetch_bucket_size": 0})
    return {
        "zero_optimization": zero,
        "train_micro_batch_size_per_gpu": "auto",
        "train_batch_size": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "zero_allow_untested_optimizer": True,
    }


@dataclass(frozen=True)
class Case:
    """One run: ``mode`` (single / ddp / zero1-3), gradient accumulation, layer, zero.Init at load."""

    mode: str
    gas: int = 1
    layer: str = str(LAYER)
    zero_init: bool = False
    logging_steps: int = 1

    @property
    def name(self) -> str:
        extras = [
            f"gas{self.gas}" if self.gas > 1 else "",
            "auto" if self.layer == "auto" else "",
            "zero_init" if self.zero_init else "",
            f"log{self.logging_steps}" if self.logging_steps > 1 else "",
        ]
        return "-".join([self.mode, *[e for e in extras if e]])

    @property
    def reference(self) -> Case:
        """The single-process run with the same global batch, accumulation, layer and logging interval."""
        return Case("single", self.gas, self.layer, logging_steps=self.logging_steps)

    def argv(self) -> list[str]:
        out = [
            "--worker",
            self.mode,
            "--gas",
            str(self.gas),
            "--layer",
            self.layer,
            "--logging-steps",
            str(self.logging_steps),
        ]
        return [*out, "--zero-init"] if self.zero_init else out


CASES = {
    c.name: c
    for c in (
        Case("ddp"),
        Case("zero1"),
        Case("zero2"),
        Case("zero3"),
        Case("zero3", zero_init=True),
        Case("ddp", gas=2),
        Case("zero2", gas=2),
        Case("zero3", gas=2),
        Case("zero3", layer="auto", zero_init=True),
        Case("ddp", logging_steps=2),
    )
}


def count_all_reduces(trainer: Any) -> dict[int, int]:
    """Count ``torch.distributed.all_reduce`` calls by the trainer's ``global_step`` at call time
    (patched in).

    A step's gradient all-reduces happen while ``global_step`` is still the previous step's number; its
    ``log`` (after the optimizer step) sees the new number. So count[s] = gradient reduces of step s+1,
    plus the metric reduce if step s logged.
    """
    import torch

    counts: dict[int, int] = {}
    original = torch.distributed.all_reduce

    def counting(*args: Any, **kwargs: Any) -> Any:
        step = trainer.state.global_step
        counts[step] = counts.get(step, 0) + 1
        return original(*args, **kwargs)

    torch.distributed.all_reduce = counting
    return counts


def record_local_forget_loss(trainer: Any) -> list[float]:
    """The rank's own (not yet averaged) forget loss of every micro-batch, in order."""
    local: list[float] = []
    record = trainer._record

    def recording(forget_loss: Any, *args: Any) -> None:
        local.append(float(forget_loss.detach()))
        record(forget_loss, *args)

    trainer._record = recording
    return local


def worker(case: Case, out: Path) -> None:
    import torch
    from transformers import TrainingArguments

    from falcon_plugin.activations import base_model
    from falcon_plugin.data import ForgetRetainCollator
    from falcon_plugin.trainer import FALCON

    torch.set_num_threads(1)
    stage = stage_of(case.mode)
    if stage is not None and not os.environ.get("FALCON_DS_SHM_COMM"):
        # DeepSpeed's CPU shared-memory all-reduce is a C++ op compiled on first use (~90 s) that only
        # serves inference all-reduce; training collectives go through torch.distributed (gloo) anyway.
        import deepspeed.ops

        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    model = None if case.zero_init else load_model(out.parent / "model")
    args = TrainingArguments(
        output_dir=str(out / "run"),
        per_device_train_batch_size=GLOBAL_BATCH // world // case.gas,
        gradient_accumulation_steps=case.gas,
        max_steps=STEPS,
        learning_rate=1e-2,
        lr_scheduler_type="constant",
        logging_steps=case.logging_steps,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        ddp_backend="gloo" if world > 1 else None,
        deepspeed=deepspeed_config(stage) if stage is not None else None,
    )
    if (
        model is None
    ):  # the host's accelerate default: ZeRO-3 with zero3_init_flag, the model partitioned at load
        import deepspeed

        _ = args.device  # initialises torch.distributed
        deepspeed.init_distributed(dist_backend="gloo")  # zero.Init reads the world size from deepspeed.comm
        model = load_model(out.parent / "model")
    layer: int | str = case.layer if case.layer == "auto" else int(case.layer)
    trainer = FALCON(
        model=model,
        train_dataset=build_dataset(),
        tokenizer=CharTokenizer(),
        data_collator=ForgetRetainCollator(0),
        args=args,
        layer=layer,
        mi={"samples": 16},
    )
    all_reduces = count_all_reduces(trainer)
    local_forget = record_local_forget_loss(trainer)
    start = time.perf_counter()
    trainer.train()
    elapsed = time.perf_counter() - start
    state = trainer.falcon_state
    assert state is not None
    params = dict(base_model(trainer.model).named_parameters())
    weights = {}
    for name in state.trainable_names:
        param = params[name]
        if hasattr(param, "ds_id"):
            import deepspeed

            with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
                weights[name] = param.detach().clone().cpu()
        else:
            weights[name] = param.detach().clone().cpu()
    partitioned = any(hasattr(p, "ds_id") and p.ds_tensor.numel() < p.ds_numel for p in params.values())
    history = trainer.state.log_history
    torch.save(
        {
            "rank": rank,
            "world": world,
            "losses": [h["loss"] for h in history if "loss" in h],
            "weights": weights,
            "layer": state.layer,
            "pov": state.pov.cpu(),
            "seconds": elapsed,
            "partitioned": partitioned,
            "gas": case.gas,
            "logging_steps": case.logging_steps,
            "local_forget_loss": local_forget,
            "all_reduces_by_step": all_reduces,
            "logged_forget_loss": {
                h["step"]: h["falcon/forget_loss"] for h in history if "falcon/forget_loss" in h
            },
        },
        out / f"rank{rank}.pt",
    )


# ---------------------------------------------------------------------------------------------- parent
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(case: Case, out: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run ``case`` with torchrun (1 process for ``single``, else 2) into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    nproc = 1 if case.mode == "single" else 2
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "LOCAL_SIZE": str(nproc),
        "PYTHONWARNINGS": "ignore",
    }
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(nproc),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        str(Path(__file__).resolve()),
        *case.argv(),
        "--out",
        str(out),
    ]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def prepare(root: Path) -> None:
    """Write the initial model (``root/model``) every case loads with ``from_pretrained``."""
    if not (root / "model").is_dir():
        build_model().save_pretrained(root / "model")


def load_ranks(out: Path) -> list[dict[str, Any]]:
    import torch

    return [torch.load(p, weights_only=False) for p in sorted(out.glob("rank*.pt"))]


def _weight_diff(a: dict[str, Any], b: dict[str, Any]) -> float:
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def compare(reference: list[dict[str, Any]], ranks: list[dict[str, Any]]) -> dict[str, Any]:
    """Max |difference| of final trainable weights and logged losses, vs the reference and between ranks."""
    ref = reference[0]
    initial = dict(load_model_initial(ref["weights"]))
    return {
        "weights_vs_single": max(_weight_diff(r["weights"], ref["weights"]) for r in ranks),
        "losses_vs_single": max(
            abs(x - y) for r in ranks for x, y in zip(r["losses"], ref["losses"], strict=True)
        ),
        "weights_between_ranks": max(_weight_diff(r["weights"], ranks[0]["weights"]) for r in ranks),
        "weights_moved": _weight_diff(ref["weights"], initial),
        "same_layer_and_pov": all(
            r["layer"] == ref["layer"] and bool((r["pov"] == ref["pov"]).all()) for r in ranks
        ),
        "partitioned": bool(ranks[0]["partitioned"]),
        "train_seconds": round(max(r["seconds"] for r in ranks), 2),
    }


def logged_metrics(ranks: list[dict[str, Any]]) -> dict[str, Any]:
    """The logged falcon/forget_loss vs. the mean over ranks of each rank's local mean over the
    logging window.

    ``logged_vs_rank_mean``: max |logged - that mean| (0 up to rounding to 6 decimals); ``ranks_spread``: max
    |difference| between the two ranks' local window means (what a rank-0-only value would be off by);
    ``metric_reduces``: per step, all-reduce calls beyond the gradient ones (1 on a logging step, else 0).
    """
    steps, window = len(ranks[0]["local_forget_loss"]) // ranks[0]["gas"], ranks[0]["logging_steps"]
    micro = ranks[0]["gas"]

    def local_mean(rank: dict[str, Any], step: int) -> float:
        values = rank["local_forget_loss"][(step - window) * micro : step * micro]
        return sum(values) / len(values)

    logged_steps = sorted(ranks[0]["logged_forget_loss"])
    means = {s: sum(local_mean(r, s) for r in ranks) / len(ranks) for s in logged_steps}
    counts = ranks[0]["all_reduces_by_step"]
    gradient = counts.get(0, 0)  # step 1's gradient reduces (nothing logs at step 0)
    extra = {s: counts.get(s, 0) - (gradient if s < steps else 0) for s in range(1, steps + 1)}
    return {
        "logged_steps": logged_steps,
        "logged_vs_rank_mean": max(
            abs(r["logged_forget_loss"][s] - means[s]) for r in ranks for s in logged_steps
        ),
        "ranks_spread": max(
            abs(local_mean(ranks[0], s) - local_mean(r, s)) for r in ranks for s in logged_steps
        ),
        "gradient_reduces_per_step": gradient,
        "metric_reduces": extra,
    }


def load_model_initial(like: dict[str, Any]) -> dict[str, Any]:
    params = dict(build_model().named_parameters())
    return {n: params[n].detach() for n in like}


def run_case(case: Case, root: Path, timeout: float) -> dict[str, Any]:
    """Run ``case`` and its single-process reference (once per root) and compare them."""
    if case.mode.startswith("zero") and not deepspeed_available():
        return {"skipped": "deepspeed is not installed (pip install deepspeed)"}
    prepare(root)
    wall: dict[str, float] = {}
    for c in (case.reference, case):
        out = root / c.name
        if list(out.glob("rank*.pt")):
            continue  # a reference shared by several cases runs once
        started = time.perf_counter()
        result = launch(c, out, timeout)
        if result.returncode != 0:
            return {
                "error": f"{c.name}: exit {result.returncode}",
                "log_tail": (result.stdout + result.stderr)[-4000:],
            }
        wall[c.name] = time.perf_counter() - started
    summary = compare(load_ranks(root / case.reference.name), load_ranks(root / case.name))
    summary["logged_metrics"] = logged_metrics(load_ranks(root / case.name))
    summary["wall_seconds"] = round(wall.get(case.name, 0.0), 1)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=list(CASES))
    parser.add_argument("--out", type=Path, default=None, help="working folder (default: a temporary one)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per run")
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--gas", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--layer", default=str(LAYER), help=argparse.SUPPRESS)
    parser.add_argument("--zero-init", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--logging-steps", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(Case(args.worker, args.gas, args.layer, args.zero_init, args.logging_steps), args.out)
        return 0

    root = args.out or Path(tempfile.mkdtemp(prefix="falcon-dist-"))
    summary = {name: run_case(CASES[name], root, args.timeout) for name in args.cases}
    print(json.dumps(summary, indent=2))
    return 1 if any("error" in v for v in summary.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
