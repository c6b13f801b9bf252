"""Memory model of one unlearning step: FALCON (ours), the host's RMU and the official FALCON scheme.

Pure arithmetic on a dense Llama-family shape (no torch): the bytes of the weights, the frozen
reference (copies of the trainable tensors for ours, a whole second model for RMU and the official
code), the optimizer state of the trainable tensors, the gradients alive at the step's peak and the
activations alive at that peak, for a batch of ``tokens`` tokens (per forget and per retain batch).
What each term counts, scheme by scheme (b = bytes per weight, T = trainable parameters, t = the
largest trainable tensor, S = bytes one decoder layer saves for backward per token, L = layers,
l = l*, V = vocabulary):

* **ours** (``falcon_plugin.trainer.FalconMixin.compute_loss``): weights P b; frozen copies T b;
  gradients: g_F and g_R (2 T b) plus the projection's temporaries (``falcon_plugin.projection``:
  float32 dot products over chunks of ``DOT_CHUNK`` elements, 3 x 4 bytes each, and one tensor's
  beta g_R, t b; the combined update is written into g_F's storage); activations: one pass's graph
  at a time (the forget graph is freed before the retain pass), layers l-2..l saved (3 S per
  token, an upper bound: the frozen parts of the first trainable layer save nothing) plus the
  no-grad prefix pass's largest transient and record.
* **rmu** (open-unlearning ``src/trainer/unlearn/rmu.py`` under the HF Trainer, the WMDP
  experiment's trainable tensors): weights and a deep-copied reference (2 P b);
  ``create_optimizer`` leaves every parameter ``requires_grad``, so the backward computes the
  gradient of the embedding and of every parameter of layers 0..l (G); activations: the forget
  forward's outputs stay referenced while the retain forward runs (``compute_loss`` keeps
  ``forget_outputs``), so two full-depth graphs (2 L S per token) and two sets of logits with their
  float32 copy and log-softmax (labels are passed: 2 (b + 8) V per token for bf16).
* **official** (github CharlesJW222/FALCON, ``falcon/unlearning.py``): train model + reference
  model (2 P b); every parameter ``requires_grad`` and only the optimizer's tensors are zeroed, so
  the gradients of the embedding and of layers 0..l accumulate and stay (G) plus the two cloned
  per-loss gradients and the projected one (3 T b); activations: the train-forget graph up to l
  kept (``retain_graph``) while the train-retain forward runs full depth, logits included
  ((L + l + 1) S + b V per token).

S counts, per token, the float32 input RMSNorm keeps (2 norms x 4 h bytes) and the b-byte tensors a
Llama layer saves with every parameter trainable: the two normed inputs, q/k/v input, q, k, v,
attention output, o_proj input, MLP input, gate, SiLU(gate), up and their product (7 h + 2 kv d +
4 i elements). Attention is SDPA / flash (no T x T matrix). Everything is checked against
measurements in docs/performance.md ("Memory model").

Under DeepSpeed ZeRO-3 (the host's ``configs/accelerate/default_config.yaml``: stage 3, bf16, no
offload, 2 processes) weights, reference model, gradients of full-model training and the
optimizer's fp32 master copy + moments (16 bytes per trainable parameter) are split across N
devices; activations, FALCON's frozen copies and per-loss gradients (each rank holds whole g_F,
g_R), and the gathered parameters of about two layers (prefetch) are not.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

GIB = 2**30
SCHEMES = ("ours", "rmu", "official")
SCHEME_LABELS = {"ours": "FALCON (ours)", "rmu": "host RMU", "official": "official FALCON"}
COMPONENTS = ("weights", "frozen", "optimizer", "gradients", "activations")
DEVICES_GIB = (24, 48, 80)
DEVICE_RESERVE_GIB = 1.0
DOT_CHUNK = 1 << 22  # = falcon_plugin.projection.DOT_CHUNK (tests/test_benchmarks.py checks; no torch here)
"""Held back on a GPU for the CUDA context, cuBLAS workspace and allocator slack."""
ZERO3_STATE_BYTES = 16
"""Bytes per trainable parameter DeepSpeed keeps with bf16 on: fp32 master, two fp32 moments, fp32 grad."""
OPTIMIZERS = {
    "adamw_bf16": 4,  # torch.optim.AdamW on bf16 parameters: exp_avg and exp_avg_sq in the parameter dtype
    "adamw_32bit": 8,  # two float32 moments: torch AdamW on float32 params, bitsandbytes paged_adamw_32bit
}


@dataclass(frozen=True)
class Shape:
    """A dense Llama-family decoder (Llama, Mistral): untied LM head unless ``tied``."""

    name: str
    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    tied: bool = False

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def layer_params(self) -> int:
        attention = (
            2 * self.hidden * self.heads * self.head_dim + 2 * self.hidden * self.kv_heads * self.head_dim
        )
        return attention + 3 * self.hidden * self.intermediate + 2 * self.hidden

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden

    @property
    def params(self) -> int:
        head = 0 if self.tied else self.embedding_params
        return self.embedding_params + head + self.layers * self.layer_params + self.hidden


SHAPES: dict[str, Shape] = {
    s.name: s
    for s in (
        Shape("zephyr-7b-beta", 32000, 4096, 14336, 32, 32, 8),  # Mistral-7B-v0.1 (WMDP in the paper)
        Shape("llama-2-7b", 32000, 4096, 11008, 32, 32, 32),  # MUSE
        Shape("llama-2-13b", 32000, 5120, 13824, 40, 40, 40),
        Shape("llama-2-70b", 32000, 8192, 28672, 80, 64, 8),
        Shape("smollm2-135m", 49152, 576, 1536, 30, 9, 3, tied=True),  # docs/performance.md's model
    )
}


@dataclass(frozen=True)
class Workload:
    """One step: l*, trainable tensors (of layers l*-2..l*), tokens per forget / retain batch, dtypes."""

    layer: int = 7
    tokens: int = 512
    trainable: str = "down_proj"
    dtype_bytes: int = 2
    optimizer: str = "adamw_32bit"

    def __post_init__(self) -> None:
        if self.trainable not in ("down_proj", "mlp"):
            raise ValueError(f"trainable must be 'down_proj' or 'mlp', got {self.trainable!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {sorted(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.dtype_bytes not in (2, 4):
            raise ValueError(f"dtype_bytes must be 2 (bf16) or 4 (fp32), got {self.dtype_bytes}")
        if self.layer < 0 or self.tokens < 1:
            raise ValueError(f"need layer >= 0 and tokens >= 1, got {self.layer}, {self.tokens}")


def trainable_params(shape: Shape, work: Workload) -> tuple[int, int]:
    """(total, largest tensor) of the trainable parameters: ``down_proj`` or every MLP weight, 3 layers."""
    layers = min(3, work.layer + 1)
    per_tensor = shape.hidden * shape.intermediate
    count = 1 if work.trainable == "down_proj" else 3
    return layers * count * per_tensor, per_tensor


def saved_bytes_per_token_layer(shape: Shape, dtype_bytes: int) -> int:
    """S: what one decoder layer keeps for backward per token, every parameter trainable (see module doc)."""
    kv = shape.kv_heads * shape.head_dim
    elements = 7 * shape.hidden + 2 * kv + 4 * shape.intermediate
    return 2 * 4 * shape.hidden + dtype_bytes * elements


def ours_saved_bytes_per_token(shape: Shape, work: Workload) -> int:
    """What ours' grad pass keeps per token: layers l*-1 and l* (2 S, an upper bound: their frozen
    projections save no input) and, of the first trainable layer l*-2, the trainable tensors' inputs
    (``down_proj``: its input; ``mlp``: the MLP's RMSNorm, input, gate, SiLU, up and product)."""
    s, b = saved_bytes_per_token_layer(shape, work.dtype_bytes), work.dtype_bytes
    if work.trainable == "down_proj":
        first = shape.intermediate * b
    else:
        first = 4 * shape.hidden + b * (shape.hidden + 4 * shape.intermediate)
    return min(2, work.layer) * s + first


def gradient_of_prefix(shape: Shape, work: Workload) -> int:
    """G: gradients of the embedding and every parameter of layers 0..l* (all ``requires_grad``)."""
    return (shape.embedding_params + (work.layer + 1) * shape.layer_params) * work.dtype_bytes


def breakdown(
    scheme: str, shape: Shape, work: Workload, rmu_keeps_forget_outputs: bool = True
) -> dict[str, int]:
    """Bytes of each component at the step's peak, and their ``total``, on one device.

    ``rmu_keeps_forget_outputs=False`` models ``benchmarks/step.py``'s ``rmu`` variant, which drops
    the forget forward's outputs at once (the graph above l* is freed before the retain pass).
    """
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    if work.layer >= shape.layers:
        raise ValueError(f"layer {work.layer} does not exist in {shape.name} ({shape.layers} layers)")
    b, tok = work.dtype_bytes, work.tokens
    total_t, largest = trainable_params(shape, work)
    weights = shape.params * b
    optimizer = total_t * OPTIMIZERS[work.optimizer]
    s = saved_bytes_per_token_layer(shape, b)
    logits = tok * shape.vocab
    labelled = b + (4 if b < 4 else 0) + 4  # logits, their float32 copy (bf16 only), the log-softmax
    if scheme == "ours":
        chunk = min(DOT_CHUNK, largest) * 4 * (3 if b < 4 else 1)  # a.float(), b.float(), their product
        parts = {
            "weights": weights,
            "frozen": total_t * b,
            "optimizer": optimizer,
            "gradients": 2 * total_t * b + largest * b + chunk,
            "activations": tok
            * (ours_saved_bytes_per_token(shape, work) + (2 * shape.hidden + 3 * shape.intermediate) * b),
        }
    elif scheme == "rmu":
        parts = {
            "weights": weights,
            "frozen": weights,
            "optimizer": optimizer,
            "gradients": gradient_of_prefix(shape, work),
            "activations": (
                tok * 2 * shape.layers * s + 2 * logits * labelled
                if rmu_keeps_forget_outputs
                else tok * (shape.layers + work.layer + 1) * s + logits * labelled
            ),
        }
    else:
        parts = {
            "weights": weights,
            "frozen": weights,
            "optimizer": optimizer,
            "gradients": gradient_of_prefix(shape, work) + 3 * total_t * b,
            "activations": tok * (shape.layers + work.layer + 1) * s + logits * b,
        }
    parts["total"] = sum(parts.values())
    return parts


def zero3_per_device(scheme: str, shape: Shape, work: Workload, devices: int) -> int:
    """Bytes per device under DeepSpeed ZeRO-3 over ``devices`` devices (see the module doc)."""
    parts = breakdown(scheme, shape, work)
    total_t, _ = trainable_params(shape, work)
    live_layers = 2 * shape.layer_params * work.dtype_bytes * (1 if scheme == "ours" else 2)
    state = total_t * ZERO3_STATE_BYTES
    if scheme == "ours":
        split = parts["weights"] + state
        # under ZeRO-3 both passes' graphs stay alive for the engine's backward of L_F + L_R
        whole = parts["frozen"] + parts["gradients"] + 2 * parts["activations"]
    else:
        split = parts["weights"] + parts["frozen"] + gradient_of_prefix(shape, work) + state
        whole = parts["gradients"] - gradient_of_prefix(shape, work) + parts["activations"]
    return math.ceil(split / devices) + whole + live_layers


def fits(total_bytes: float, device_gib: float, reserve_gib: float = DEVICE_RESERVE_GIB) -> bool:
    """Whether ``total_bytes`` fit a device of ``device_gib`` GiB less the CUDA reserve."""
    return total_bytes <= (device_gib - reserve_gib) * GIB


def placement(scheme: str, shape: Shape, work: Workload, device_gib: float, max_devices: int = 16) -> str:
    """``1 device`` when it fits, else ``ZeRO-3 x N`` (the fewest devices of that size, N <= ``max_devices``).

    ZeRO-3 splits weights, not activations (each device runs its own batch): when what no device count
    splits does not fit, the answer is ``batch``: a smaller per-device batch or gradient checkpointing.
    """
    if fits(breakdown(scheme, shape, work)["total"], device_gib):
        return "1 device"
    for n in range(2, max_devices + 1):
        if fits(zero3_per_device(scheme, shape, work, n), device_gib):
            return f"ZeRO-3 x {n}"
    unsplit = zero3_per_device(scheme, shape, work, 10**9)
    return "batch" if not fits(unsplit, device_gib) else f"> {max_devices} devices"


@dataclass
class Report:
    """Every shape x scheme under one workload, for the JSON and the tables."""

    workload: Workload
    rows: list[dict[str, Any]] = field(default_factory=list)


def build_report(shapes: Sequence[str], work: Workload, schemes: Sequence[str] = SCHEMES) -> Report:
    """Every shape x scheme: bytes per component and placement on 24 / 48 / 80 GiB devices."""
    report = Report(work)
    for name in shapes:
        shape = SHAPES[name]
        for scheme in schemes:
            parts = breakdown(scheme, shape, work)
            report.rows.append(
                {
                    "shape": name,
                    "params": shape.params,
                    "scheme": scheme,
                    "bytes": parts,
                    "placement": {f"{gib}GiB": placement(scheme, shape, work, gib) for gib in DEVICES_GIB},
                }
            )
    return report


def _gib(value: float) -> str:
    return f"{value / GIB:.2f}"


def render(report: Report) -> str:
    """Markdown: components (GiB) and where each (shape, scheme) fits."""
    from benchmarks.reporting import text_table

    header = ["model", "scheme", *COMPONENTS, "total (GiB)", *(f"{g} GiB device" for g in DEVICES_GIB)]
    rows = [
        [
            row["shape"],
            SCHEME_LABELS[row["scheme"]],
            *(_gib(row["bytes"][c]) for c in COMPONENTS),
            f"**{_gib(row['bytes']['total'])}**",
            *row["placement"].values(),
        ]
        for row in report.rows
    ]
    return text_table(header, rows)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="benchmarks/memory_model.py",
        description="Memory of one FALCON / RMU / official-FALCON step on dense Llama-family models.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--shapes", default="zephyr-7b-beta,llama-2-7b,llama-2-13b,llama-2-70b")
    parser.add_argument("--layer", type=int, default=7)
    parser.add_argument("--tokens", type=int, default=512, help="tokens per forget and per retain batch")
    parser.add_argument("--trainable", default="down_proj", choices=["down_proj", "mlp"])
    parser.add_argument("--optimizer", default="adamw_32bit", choices=sorted(OPTIMIZERS))
    parser.add_argument("--dtype-bytes", type=int, default=2, choices=[2, 4])
    parser.add_argument("--schemes", default=",".join(SCHEMES))
    parser.add_argument("--json", default=None, help="also write the report here")
    args = parser.parse_args(argv)
    bad = [s for s in args.schemes.split(",") if s not in SCHEMES]
    if bad:
        parser.error(f"--schemes: unknown {bad}; choose from {', '.join(SCHEMES)}")
    unknown = [s for s in args.shapes.split(",") if s not in SHAPES]
    if unknown:
        parser.error(f"--shapes: unknown {unknown}; choose from {', '.join(SHAPES)}")
    return args


def main(argv: Sequence[str] | None = None) -> Report:
    args = parse_args(argv)
    work = Workload(args.layer, args.tokens, args.trainable, args.dtype_bytes, args.optimizer)
    report = build_report(args.shapes.split(","), work, args.schemes.split(","))
    if args.json:
        from falcon_plugin.atomic import atomic_write_json

        atomic_write_json(args.json, {"workload": asdict(work), "rows": report.rows})
    print(render(report))  # the one print: the table
    return report


if __name__ == "__main__":
    if __package__ in (None, ""):
        from pathlib import Path

        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
