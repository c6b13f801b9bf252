"""The benchmark model: the shared SmolLM2-135M-Instruct, a random model of its shape, or a folder."""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.paths import SMOLLM_DIR, SMOLLM_GGUF

logger = logging.getLogger("benchmarks")

# SmolLM2-135M-Instruct's shape (the GGUF's config), used for ``--model random``.
SMOLLM_SHAPE: dict[str, Any] = {
    "vocab_size": 49152,
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": True,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 2,
}


@dataclass
class LoadedModel:
    """A causal LM ready for benchmarking, its tokenizer (None: random ids) and a description."""

    model: nn.Module
    tokenizer: Any
    info: dict[str, Any]


def _clear_gguf_quantizer(model: nn.Module) -> None:
    """Drop the GGUF 'quantizer' flag (the tensors are plain de-quantised fp32; see PROVENANCE.md)."""
    model.hf_quantizer = None  # type: ignore[assignment]
    model.is_quantized = False  # type: ignore[assignment]
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "quantization_config"):
        with contextlib.suppress(AttributeError):
            del config.quantization_config


def _load_tokenizer(folder: Path) -> Any:
    if not (folder / "tokenizer.json").is_file() and not (folder / "tokenizer_config.json").is_file():
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError) as err:  # a folder without a usable tokenizer: fall back to random ids
        logger.warning("could not load a tokenizer from %s (%s); using random token ids", folder, err)
        return None


def random_model(layers: int | None = None, hidden: int | None = None, seed: int = 0) -> nn.Module:
    """A randomly initialised Llama with SmolLM2-135M's shape (or a smaller one for smoke tests)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = dict(SMOLLM_SHAPE)
    if layers is not None:
        shape["num_hidden_layers"] = layers
    if hidden is not None and hidden != shape["hidden_size"]:
        if hidden % 4:
            raise ValueError(f"--hidden must be a multiple of 4, got {hidden}")
        shape.update(
            hidden_size=hidden,
            intermediate_size=(hidden * 8) // 3,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=hidden // 4,
        )
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**shape))


def load_model(
    spec: str,
    layers: int | None = None,
    hidden: int | None = None,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    seed: int = 0,
) -> LoadedModel:
    """Load the benchmark model.

    Args:
        spec: ``auto`` (SmolLM2-135M-Instruct from the shared folder if present, else ``random``),
            ``random`` (random-init Llama of the same shape) or a folder (a GGUF file in it is loaded
            with ``gguf_file``, otherwise a plain ``from_pretrained`` folder).
        layers, hidden: shape overrides, only for ``random`` (smoke tests).
    """
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if spec == "auto":
        spec = str(SMOLLM_DIR) if (SMOLLM_DIR / SMOLLM_GGUF).is_file() else "random"
        logger.info("--model auto -> %s", spec)
    start = time.perf_counter()
    if spec == "random":
        model = random_model(layers, hidden, seed)
        tokenizer = _load_tokenizer(SMOLLM_DIR) if SMOLLM_DIR.is_dir() else None
        if tokenizer is not None and len(tokenizer) > model.config.vocab_size:
            tokenizer = None
        info: dict[str, Any] = {"source": "random", "path": None}
    else:
        if layers is not None or hidden is not None:
            raise ValueError("--layers/--hidden only apply to --model random")
        folder = Path(spec)
        if not folder.is_dir():
            raise FileNotFoundError(f"--model {spec!r}: not 'auto', 'random' or an existing folder")
        ggufs = sorted(folder.glob("*.gguf"))
        if ggufs:
            model = AutoModelForCausalLM.from_pretrained(
                str(folder), gguf_file=ggufs[0].name, dtype=torch.float32
            )
            _clear_gguf_quantizer(model)
            info = {"source": "gguf", "path": str(folder / ggufs[0].name)}
        else:
            model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
            info = {"source": "pretrained", "path": str(folder)}
        tokenizer = _load_tokenizer(folder)
    model = model.to(device=device, dtype=dtype).eval()
    config = model.config
    info.update(
        architecture=type(model).__name__,
        layers=int(config.num_hidden_layers),
        hidden=int(config.hidden_size),
        vocab=int(config.vocab_size),
        parameters=sum(p.numel() for p in model.parameters()),
        attn_implementation=getattr(config, "_attn_implementation", None),
        load_s=round(time.perf_counter() - start, 3),
    )
    return LoadedModel(model, tokenizer, info)
