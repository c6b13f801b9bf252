"""Shared fixtures: tiny Llama models built from a config, a character tokenizer, host-shaped data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny models run fastest on one thread (more threads only add synchronisation); tests that load a
# real model raise it themselves.
torch.set_num_threads(1)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def tiny_llama(num_layers: int = 6, hidden: int = 32, vocab: int = 64, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=False,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    config._attn_implementation = "eager"
    return LlamaForCausalLM(config).eval()


class CharTokenizer:
    """A minimal tokenizer (bytes mod vocab) with the attributes the trainer and data helpers use."""

    pad_token_id = 0
    bos_token_id = 1
    eos_token_id = 2

    def __init__(self, vocab: int = 64) -> None:
        self.vocab = vocab

    def __call__(
        self,
        text: str,
        add_special_tokens: bool = True,
        truncation: bool = False,
        max_length: int | None = None,
    ):
        ids = [3 + (b % (self.vocab - 3)) for b in text.encode()]
        if add_special_tokens:
            ids = [self.bos_token_id] + ids
        if truncation and max_length:
            ids = ids[:max_length]
        return {"input_ids": ids}


PACKAGED_TRAINERS = Path(__file__).resolve().parents[1] / "falcon_plugin" / "configs" / "trainer"


def shipped_method_args(benchmark: str | None = None, trainer: str = "FALCON") -> dict:
    """``trainer/FALCON.yaml``'s method_args as a run receives them: resolved, on a benchmark's experiment
    (``benchmark="tofu"``: its ``tofu_method_args`` through ``benchmark_method_args``) or without one."""
    import yaml
    from omegaconf import OmegaConf

    node = yaml.safe_load((PACKAGED_TRAINERS / f"{trainer}.yaml").read_text())
    if benchmark is not None:
        node["benchmark_method_args"] = node.get(f"{benchmark}_method_args")
    return OmegaConf.to_container(OmegaConf.create({"trainer": node}), resolve=True)["trainer"]["method_args"]


def qa_items(tokenizer, count: int, topic: str, seed: int = 0):
    from falcon_plugin.data import tokenize_qa

    g = torch.Generator().manual_seed(seed)
    items = []
    for i in range(count):
        n = int(torch.randint(3, 9, (1,), generator=g))
        answer = " ".join(f"{topic}{int(x)}" for x in torch.randint(0, 50, (n,), generator=g))
        items.append(tokenize_qa(tokenizer, f"What about {topic} {i}?", answer, max_length=48))
    return items


@pytest.fixture
def tokenizer():
    return CharTokenizer()


def fresh_forget_retain(tokenizer):
    """The ``forget_retain`` fixture's dataset, new: its retain partners start from the seed again."""
    from falcon_plugin.data import ForgetRetainDataset

    return ForgetRetainDataset(qa_items(tokenizer, 24, "zq", 1), qa_items(tokenizer, 24, "ab", 2), seed=0)


@pytest.fixture
def forget_retain(tokenizer):
    return fresh_forget_retain(tokenizer)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "distributed: multi-process runs (torchrun, 2 CPU processes, gloo); each under 90 s"
    )
