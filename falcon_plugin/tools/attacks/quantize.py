"""``quantize-8bit`` / ``quantize-4bit``: re-evaluate after weight quantization.

Zhang et al. (ICLR 2025, "Does your LLM truly unlearn? An embarrassingly simple approach to recover
unlearned knowledge", zzwjames/FailureLLMUnlearning) load the unlearned model with bitsandbytes,
``BitsAndBytesConfig(load_in_8bit=True)`` or ``(load_in_4bit=True)`` (``utils.py: load_model``), and
find that knowledge an unlearning method only nudged away comes back at 4 bits.

Here the same weight formats are applied as a quantize -> dequantize round trip in torch, on CPU and
GPU alike, without bitsandbytes (a CUDA-oriented dependency of about 125 MB):

* ``scheme="bnb"`` (default), the formats those two flags store:
  - 8 bits: LLM.int8's weight format, per output row symmetric absmax int8,
    ``W_hat = round(W * 127 / max|W_row|) * max|W_row| / 127``;
  - 4 bits: bitsandbytes' default 4-bit type, FP4 (e2m1) with one absmax per block of 64 consecutive
    weights of the flattened matrix (``blocksize=64``, no double quantization), each scaled weight
    rounded to the nearest FP4 code (ties to the lower code, as bitsandbytes' ``bucketize``).
* ``scheme="rtn"``: per output channel symmetric round-to-nearest integers,
  ``W_hat = clamp(round(W / s), -q, q) * s`` with ``q = 2**(bits-1) - 1`` and ``s = max|W_row| / q``
  (at 8 bits the same as ``bnb``; at 4 bits much coarser than FP4 with 64-blocks).

Every ``nn.Linear`` weight is quantized except the output head (``get_output_embeddings()``), which is
what transformers' bitsandbytes integration skips; embeddings, norms and biases stay in full precision.
Only weights are quantized: bitsandbytes' 8-bit matmul also quantizes activations (outlier columns
aside) and its 4-bit matmul computes in the compute dtype, so a round trip isolates the weight
perturbation, which is the effect the paper studies.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from ..common.errors import InputError
from .specs import BNB_BLOCKSIZE, QuantSpec

logger = logging.getLogger(__name__)
# bitsandbytes' FP4 code (functional.get_4bit_type("fp4")):
# e2m1 magnitudes {0, 0.0625, 2, 3, 4, 6, 8, 12} / 12
_FP4_MAGNITUDES = torch.tensor([0.0, 0.0625, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0], dtype=torch.float64) / 12.0
FP4_CODE = torch.sort(torch.cat([-_FP4_MAGNITUDES[1:], _FP4_MAGNITUDES])).values.float()


def _row_absmax(weight: torch.Tensor) -> torch.Tensor:
    absmax = weight.abs().amax(dim=1, keepdim=True)
    return torch.where(absmax > 0, absmax, torch.ones_like(absmax))  # an all-zero row stays zero


def round_trip_int(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-output-row symmetric integer quantization, dequantized (float32 math)."""
    w = weight.float()
    qmax = 2 ** (bits - 1) - 1
    absmax = _row_absmax(w)
    if bits == 8:  # LLM.int8's arithmetic: round(w * 127 / absmax), then * absmax / 127
        return (torch.round(w * (127.0 / absmax)).clamp(-127, 127) * (absmax / 127.0)).to(weight.dtype)
    scale = absmax / qmax
    return (torch.round(w / scale).clamp(-qmax, qmax) * scale).to(weight.dtype)


def round_trip_fp4(weight: torch.Tensor, blocksize: int = BNB_BLOCKSIZE) -> torch.Tensor:
    """bitsandbytes-style FP4 with one absmax per ``blocksize`` consecutive weights, dequantized."""
    flat = weight.reshape(-1).float()
    n = flat.numel()
    pad = (-n) % blocksize
    blocks = torch.nn.functional.pad(flat, (0, pad)).reshape(-1, blocksize)
    if pad:  # the last, partial block's absmax comes from its real weights only (as bitsandbytes)
        blocks[-1, blocksize - pad :] = 0.0
    absmax = blocks.abs().amax(dim=1, keepdim=True)
    safe = torch.where(absmax > 0, absmax, torch.ones_like(absmax))
    scaled = torch.clamp(blocks / safe, -1.0, 1.0)
    code = FP4_CODE.to(weight.device)
    index = torch.bucketize(scaled, (code[:-1] + code[1:]) / 2)
    out = (code[index] * safe).reshape(-1)[:n]
    return out.reshape(weight.shape).to(weight.dtype)


def quantized_linears(model: torch.nn.Module) -> list[tuple[str, torch.nn.Linear]]:
    """The ``nn.Linear`` modules a bitsandbytes load would convert: all but the output head."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return [
        (name, m) for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m is not head
    ]


@torch.no_grad()
def quantize_weights(model: torch.nn.Module, bits: int, spec: QuantSpec | None = None) -> dict[str, Any]:
    """Replace every quantized weight of ``model`` by its round trip, in place; returns details."""
    spec = (spec or QuantSpec()).validate(bits)
    modules = quantized_linears(model)
    if not modules:
        raise InputError("the model has no nn.Linear layer to quantize")
    error = 0.0
    for _, module in modules:
        w = module.weight
        new = round_trip_fp4(w) if spec.scheme == "bnb" and bits == 4 else round_trip_int(w, bits)
        error = max(error, float((new.float() - w.float()).abs().max()))
        w.copy_(new)
    logger.info(
        "quantize: %d linear layers to %d bits (%s), max |dW| %.3g", len(modules), bits, spec.scheme, error
    )
    return {"quantized_modules": len(modules), "max_abs_weight_change": error}


__all__ = [
    "FP4_CODE",
    "QuantSpec",
    "quantize_weights",
    "quantized_linears",
    "round_trip_fp4",
    "round_trip_int",
]
