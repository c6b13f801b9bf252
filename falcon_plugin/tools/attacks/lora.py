"""``relearn-lora``: LoRA fine-tuning on part of the forget set, with ``peft``.

Protocol of ethz-spylab/unlearning-vs-safety, ``src/finetuning/finetune.py``: LoRA on every linear
layer of the decoder (their list ``q_proj k_proj v_proj o_proj gate_proj up_proj down_proj``, which is
peft's ``"all-linear"`` on Llama-style models: every ``nn.Linear`` but the output head), rank 128,
alpha 16, dropout 0, no bias; AdamW (``adamw_torch``), learning rate 2e-4, weight decay 0.01, 3 epochs
at batch 1 (no accumulation), linear schedule with 5% warm-up, the Trainer's gradient clipping at 1.0.
The epochs are turned into ``max_steps = epochs * ceil(rows / batch)`` and the warm-up into
``ceil(0.05 * max_steps)`` steps, which is what the Trainer derives from ``num_train_epochs`` and
``warmup_ratio``, written so that transformers 4.45 and 5.x read them alike.

Only the adapters train (peft freezes the base weights). Afterwards the adapters are merged into the
base weights (``merge_and_unload``) and the merged model is what is measured, and, with
``save_models``, what is saved: a plain Hugging Face model folder, loadable without peft.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from ..common.errors import InputError
from .relearn import fine_tune
from .specs import LoraSpec

logger = logging.getLogger(__name__)
Example = dict[str, torch.Tensor]


def check_peft() -> None:
    """Fail early, naming the fix, when peft is not installed."""
    try:
        import peft  # noqa: F401
    except ImportError:
        raise InputError(
            "the relearn-lora attack needs peft: pip install 'falcon-unlearning[tools]' (or pip install peft)"
        ) from None


def relearn_lora(
    model: torch.nn.Module,
    examples: Sequence[Example],
    pad_token_id: int,
    spec: LoraSpec,
    seed: int = 0,
    progress: bool = True,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """LoRA-train ``model`` on ``examples``, merge the adapters; returns (merged model, details).

    ``details`` records the loss curve, how many adapter tensors changed and how many base tensors
    were trainable (none: peft freezes them).
    """
    from peft import LoraConfig, get_peft_model

    max_steps, warmup = spec.steps(len(examples))
    torch.manual_seed(seed)  # the adapters' initialisation
    config = LoraConfig(
        r=spec.rank,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=spec.target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, config)
    # only the adapters are copied (a copy of the base would double the memory); the base tensors are
    # frozen by peft, so the optimizer never sees them: count any that are not
    before = {n: p.detach().clone() for n, p in peft_model.named_parameters() if "lora_" in n}
    trainable_base = [n for n, p in peft_model.named_parameters() if p.requires_grad and "lora_" not in n]
    loss = fine_tune(
        peft_model,
        examples,
        pad_token_id,
        learning_rate=spec.learning_rate,
        weight_decay=spec.weight_decay,
        batch_size=spec.batch_size,
        grad_accum=spec.grad_accum,
        max_steps=max_steps,
        warmup_steps=warmup,
        max_grad_norm=spec.max_grad_norm,
        seed=seed,
        progress=progress,
    )
    changed = [
        n for n, p in peft_model.named_parameters() if n in before and not torch.equal(p.detach(), before[n])
    ]
    details = {
        "train_loss": loss,
        "adapter_tensors": len(before),
        "adapter_tensors_changed": len(changed),
        "trainable_base_tensors": len(trainable_base),
        "trainable_parameters": sum(t.numel() for t in before.values()),
    }
    merged = peft_model.merge_and_unload()
    merged.eval()
    logger.info(
        "relearn-lora: %d steps, %d adapter tensors (%d changed), %d trainable base tensors",
        max_steps,
        len(before),
        len(changed),
        len(trainable_base),
    )
    return merged, details


__all__ = ["LoraSpec", "check_peft", "relearn_lora"]
