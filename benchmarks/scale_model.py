"""A full-size causal LM with random weights, built without a second copy in memory (for ``scale.py``).

``zephyr_config`` is Zephyr-7B-beta's published ``config.json`` (a ``MistralForCausalLM``: 32 layers,
hidden 4096, intermediate 14336, 32 query / 8 key-value heads, vocabulary 32000, untied LM head),
optionally scaled down (``layers``, ``hidden``, ``intermediate``) for checks that must run in seconds:
the same code path, a smaller tensor shape.

``build_random_model`` constructs the model's *parameters* on the ``meta`` device (no storage; the
small buffers, e.g. the rotary ``inv_freq``, are real), then gives every parameter its own storage
in the target dtype on the target device and fills it in place, chunk by chunk, from one seeded
generator on that device (so CPU and CUDA weights differ; only shapes matter here):
``normal_(0, initializer_range)`` for matrices (what ``_init_weights`` does for Linear
and Embedding), ones for norm weights, zeros for biases. Peak memory while building is the model's
size plus one chunk; a tied LM head stays tied (one storage).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

logger = logging.getLogger("benchmarks.scale")

ZEPHYR_7B_BETA: dict[str, Any] = {
    # HuggingFaceH4/zephyr-7b-beta, config.json (architectures: MistralForCausalLM)
    "vocab_size": 32000,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "hidden_act": "silu",
    "max_position_embeddings": 32768,
    "initializer_range": 0.02,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "sliding_window": 4096,
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 2,
}
"""Zephyr-7B-beta's shape (Mistral-7B-v0.1's, which it fine-tunes)."""

INIT_CHUNK_ELEMENTS = 1 << 24
"""Elements filled per ``normal_`` call (16 Mi: 32 MiB of bf16)."""


def zephyr_config(
    layers: int | None = None, hidden: int | None = None, intermediate: int | None = None
) -> Any:
    """Zephyr-7B-beta's ``MistralConfig``, with optional shape overrides (same head_dim ratio rules).

    ``hidden`` keeps 32 query heads where it can (head_dim = hidden / 32, at least 8) and 8 key-value
    heads (4 query heads per key-value head, as Zephyr); it must be a multiple of 32.
    """
    from transformers import MistralConfig

    shape = dict(ZEPHYR_7B_BETA)
    for name, value in (("layers", layers), ("hidden", hidden), ("intermediate", intermediate)):
        if value is not None and value < 1:
            raise ValueError(f"--{name} must be >= 1, got {value}")
    if layers is not None:
        shape["num_hidden_layers"] = layers
    if intermediate is not None:
        shape["intermediate_size"] = intermediate
    if hidden is not None and hidden != shape["hidden_size"]:
        if hidden % 32:
            raise ValueError(f"--hidden must be a multiple of 32 (32 query heads), got {hidden}")
        heads = 32 if hidden // 32 >= 8 else max(4, hidden // 8)
        if hidden % heads or heads % 4:
            raise ValueError(f"--hidden {hidden}: no head split with 4 query heads per key-value head")
        shape.update(hidden_size=hidden, num_attention_heads=heads, num_key_value_heads=heads // 4)
    shape["head_dim"] = shape["hidden_size"] // shape["num_attention_heads"]
    return MistralConfig(**shape)


def _fill_(tensor: torch.Tensor, std: float, generator: torch.Generator) -> None:
    flat = tensor.view(-1)
    for start in range(0, flat.numel(), INIT_CHUNK_ELEMENTS):
        flat[start : start + INIT_CHUNK_ELEMENTS].normal_(0.0, std, generator=generator)


def build_random_model(
    config: Any,
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> nn.Module:
    """``AutoModelForCausalLM.from_config(config)`` with random weights, materialised once, in place.

    Every parameter is created directly in ``dtype`` on ``device``: there is never a float32 copy,
    nor a second copy of any tensor. Returns the model in eval mode.
    """
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()  # on the meta parameters, so the tied pair gets one storage below
    device = torch.device(device)
    generator = torch.Generator(device=device).manual_seed(seed)  # fill where the tensor lives
    std = float(getattr(config, "initializer_range", 0.02))
    made: dict[int, nn.Parameter] = {}  # id of a meta parameter -> its materialised one (keeps ties)
    with torch.no_grad():
        for module in model.modules():
            for name, param in list(module._parameters.items()):
                if param is None:
                    continue
                if id(param) not in made:
                    data = torch.empty(param.shape, dtype=dtype, device=device)
                    if name == "bias":
                        data.zero_()
                    elif param.dim() == 1:  # norm weights
                        data.fill_(1.0)
                    else:
                        _fill_(data, std, generator)
                    made[id(param)] = nn.Parameter(data, requires_grad=param.requires_grad)
                module._parameters[name] = made[id(param)]
    leftover = [n for n, p in model.named_parameters() if p.is_meta]
    if leftover:
        raise RuntimeError(f"parameters left on the meta device: {leftover[:5]}")
    for name, buffer in model.named_buffers():
        if buffer.is_meta:
            raise RuntimeError(f"buffer {name} is on the meta device (not supported by this builder)")
    model.to(device)  # the (small) buffers; parameters are already there
    logger.info("built %s: %d parameters in %s", type(model).__name__, len(made), dtype)
    return model.eval()


def model_bytes(model: nn.Module) -> int:
    """Bytes of the model's distinct parameter and buffer storages (a tied LM head counted once)."""
    seen: set[int] = set()
    total = 0
    for tensor in [*model.parameters(), *model.buffers()]:
        key = tensor.untyped_storage().data_ptr()
        if key in seen:
            continue
        seen.add(key)
        total += tensor.untyped_storage().nbytes()
    return total


def parameter_count(model: nn.Module) -> int:
    """Distinct parameters (a tied LM head counted once)."""
    return sum(p.numel() for p in model.parameters())  # named_parameters de-duplicates ties
