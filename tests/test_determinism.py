"""Determinism: the same seed gives the same run, bit for bit; FALCON's randomness follows ``args.seed``.

FALCON draws random numbers in two places, both from ``TrainingArguments.seed`` (the POV's from
``pov_seed`` when it is set) and from nothing else (not the global torch/numpy/python RNG): the MI and
POV samples of the train set (``random.Random(seed + offset)``) and the POV's random vector and noise
(a ``torch.Generator`` seeded with ``seed``).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from conftest import CharTokenizer, qa_items, tiny_llama
from transformers import TrainingArguments

from falcon_plugin.data import ForgetRetainCollator, ForgetRetainDataset
from falcon_plugin.setup import sample_parts
from falcon_plugin.trainer import FALCON


def _trainer(
    out: Path, seed: int = 0, layer: int | str = "auto", steps: int = 3, **method_args: Any
) -> FALCON:
    tok = CharTokenizer()
    dataset = ForgetRetainDataset(qa_items(tok, 16, "zq", 1), qa_items(tok, 16, "ab", 2), seed=0)
    args = TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=2,
        max_steps=steps,
        learning_rate=1e-2,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        seed=seed,
        disable_tqdm=True,
    )
    return FALCON(
        model=tiny_llama(num_layers=4, hidden=16),
        train_dataset=dataset,
        tokenizer=tok,
        data_collator=ForgetRetainCollator(0),
        args=args,
        layer=layer,
        mi={"samples": 8},
        **method_args,
    )


def _run(out: Path, seed: int = 0) -> tuple[list[dict[str, Any]], dict[str, torch.Tensor], FALCON]:
    trainer = _trainer(out, seed)
    trainer.train()
    history = [
        {k: v for k, v in h.items() if "runtime" not in k and "per_second" not in k}
        for h in trainer.state.log_history
    ]
    return history, {n: p.detach().clone() for n, p in trainer.model.named_parameters()}, trainer


def test_same_seed_same_losses_and_weights_bit_for_bit(tmp_path: Path) -> None:
    history_a, weights_a, a = _run(tmp_path / "a")
    # disturb every global RNG between the runs: FALCON must not depend on them
    torch.manual_seed(1234)
    random.seed(1234)
    np.random.seed(1234)
    history_b, weights_b, b = _run(tmp_path / "b")
    assert [h for h in history_a if "loss" in h] and history_a == history_b
    assert all(torch.equal(weights_a[n], weights_b[n]) for n in weights_a)
    assert a.falcon_state is not None and b.falcon_state is not None
    assert a.falcon_state.layer == b.falcon_state.layer
    assert torch.equal(a.falcon_state.pov, b.falcon_state.pov)
    assert a.falcon_state.mi_report["scores"] == b.falcon_state.mi_report["scores"]  # type: ignore[index]


def test_pov_follows_the_trainer_seed_and_nothing_else(tmp_path: Path) -> None:
    def pov(seed: int) -> torch.Tensor:
        trainer = _trainer(tmp_path / f"s{seed}", seed=seed, layer=2)
        torch.manual_seed(seed + 99)  # the global RNG differs on every call: irrelevant to FALCON
        trainer._setup(None)
        assert trainer.falcon_state is not None
        return trainer.falcon_state.pov

    first, again, other = pov(0), pov(0), pov(1)
    assert torch.equal(first, again)
    assert not torch.allclose(first, other, atol=1e-3)


def test_pov_seed_sets_the_pov_apart_from_the_trainer_seed(tmp_path: Path) -> None:
    """``pov_seed`` alone decides H+: two trainer seeds with one pov_seed share it, pov_seed = the trainer
    seed is the default, and another pov_seed at the same trainer seed gives another H+."""

    def pov(seed: int, **method_args: Any) -> torch.Tensor:
        trainer = _trainer(
            tmp_path / f"p{seed}-pov{method_args.get('pov_seed')}", seed=seed, layer=2, **method_args
        )
        trainer._setup(None)
        assert trainer.falcon_state is not None
        return trainer.falcon_state.pov

    default_1 = pov(1)
    assert torch.equal(pov(0, pov_seed=1), default_1)
    assert torch.equal(pov(5, pov_seed=1), default_1)
    assert not torch.allclose(pov(1, pov_seed=0), default_1, atol=1e-3)


def test_mi_and_pov_samples_follow_the_trainer_seed(tmp_path: Path) -> None:
    def sample(seed: int) -> list[torch.Tensor]:
        trainer = _trainer(tmp_path / f"m{seed}", seed=seed)
        return [item["input_ids"] for item in sample_parts(trainer._setup_context(), "forget", 8, 0)]

    first, again, other = sample(0), sample(0), sample(1)
    assert all(torch.equal(x, y) for x, y in zip(first, again, strict=True))
    assert any(not torch.equal(x, y) for x, y in zip(first, other, strict=True))


class _HostLikeDataset(ForgetRetainDataset):
    """Pairs each forget item with a retain item drawn from the global torch RNG, as
    open-unlearning's does."""

    def __getitem__(self, index: int) -> dict[str, dict[str, torch.Tensor]]:
        return {
            "forget": self.forget[index],
            "retain": self.retain[int(torch.randint(0, len(self.retain), (1,)))],
        }


def test_validation_and_set_up_leave_the_global_rng_alone(tmp_path: Path) -> None:
    """Checking and sampling the data must not shift the host's random forget/retain pairing."""
    tok = CharTokenizer()
    dataset = _HostLikeDataset(qa_items(tok, 16, "zq", 1), qa_items(tok, 16, "ab", 2))
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, seed=0, disable_tqdm=True)
    trainer = FALCON(
        model=tiny_llama(num_layers=4, hidden=16),
        train_dataset=dataset,
        args=args,
        layer="auto",
        mi={"samples": 8},
        data_collator=ForgetRetainCollator(0),
    )
    after_init = torch.get_rng_state()
    torch.manual_seed(0)  # what the Trainer's __init__ set, before FALCON's checks ran
    assert torch.equal(after_init, torch.get_rng_state())
    trainer._setup(None)
    assert torch.equal(after_init, torch.get_rng_state())
