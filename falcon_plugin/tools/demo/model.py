"""Tiny Llama-architecture causal LMs built from a config (random init, no download)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase


@dataclass(frozen=True)
class TinyModelSpec:
    """Shape of a demo model."""

    num_layers: int = 8
    hidden_size: int = 128
    intermediate_size: int = 256
    num_heads: int = 4
    max_positions: int = 64


def build_tiny_llama(
    tokenizer: PreTrainedTokenizerBase, spec: TinyModelSpec, seed: int = 0
) -> LlamaForCausalLM:
    """A randomly initialised ``LlamaForCausalLM`` sized by ``spec``, its vocabulary ``tokenizer``'s."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads,
        max_position_embeddings=spec.max_positions,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model
