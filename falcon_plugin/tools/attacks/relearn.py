"""``relearn``: full fine-tuning on part of the forget set (the relearning attack).

Protocol of OPTML-Group/Unlearn-Simple, ``WMDP/configs/unlearn/wmdp/Relearn+Forget.json`` with
``WMDP/src/model/relearn.py``: a ``transformers.Trainer`` with AdamW (``adamw_torch``), learning rate
1e-5, weight decay 0, ``max_steps`` 100, per-device batch 1 with 4 gradient-accumulation steps
(effective batch 4), ``warmup_steps = max(1, max_steps // 10)``, the Trainer's linear decay and
gradient clipping at 1.0. Their corpus rows are text (loss on every token); QA rows here are trained
on their answer tokens (the host's labels), MCQ rows on the right answer letter.

:func:`fine_tune` is the one Trainer loop both fine-tuning attacks use (``relearn-lora`` wraps the model
in LoRA adapters first). It uses only Trainer / TrainingArguments arguments that exist unchanged from
transformers 4.45 to 5.x (``warmup_steps`` as an int: 5.x removed ``warmup_ratio``) and passes no
tokenizer, so neither ``tokenizer=`` nor ``processing_class=`` is needed. The Trainer's own tqdm bar
shows progress; nothing is written outside a temporary directory.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from typing import Any

import torch

from falcon_plugin.data import pad_examples

from ..common.errors import InputError
from .specs import RelearnSpec

logger = logging.getLogger(__name__)
Example = dict[str, torch.Tensor]


class _Examples(torch.utils.data.Dataset):
    def __init__(self, examples: Sequence[Example]) -> None:
        self.examples = list(examples)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> Example:
        return self.examples[index]


def fine_tune(
    model: torch.nn.Module,
    examples: Sequence[Example],
    pad_token_id: int,
    *,
    learning_rate: float,
    weight_decay: float,
    batch_size: int,
    grad_accum: int,
    max_steps: int,
    warmup_steps: int,
    max_grad_norm: float = 1.0,
    seed: int = 0,
    progress: bool = True,
) -> list[list[float]]:
    """Train ``model`` in place with ``transformers.Trainer``; returns ``[[step, loss], ...]``.

    Right-padded batches of ``examples`` (labels -100 on prompt and padding); the Trainer's seeded
    shuffling, so one seed gives one result.
    """
    from transformers import PrinterCallback, Trainer, TrainingArguments

    if not examples:
        raise InputError("nothing to fine-tune on: the train part is empty")
    with tempfile.TemporaryDirectory(prefix="falcon-attack-") as tmp:
        args = TrainingArguments(
            output_dir=tmp,
            per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=grad_accum,
            max_steps=max_steps,
            learning_rate=learning_rate,
            weight_decay=weight_decay,
            warmup_steps=warmup_steps,
            lr_scheduler_type="linear",
            optim="adamw_torch",
            max_grad_norm=max_grad_norm,
            seed=seed,
            data_seed=seed,
            logging_steps=max(1, max_steps // 10),
            save_strategy="no",
            report_to=[],
            remove_unused_columns=False,
            disable_tqdm=not progress,
            dataloader_num_workers=0,
            dataloader_pin_memory=False,
        )
        if args.n_gpu > 1:
            logger.warning(
                "%d GPUs visible: the Trainer splits each batch over them (DataParallel), so the effective "
                "batch is %d x the protocol's; set CUDA_VISIBLE_DEVICES to one GPU to follow it",
                args.n_gpu,
                args.n_gpu,
            )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=_Examples(examples),
            data_collator=lambda items: pad_examples(items, pad_token_id),
        )
        if not progress:  # without a bar the Trainer prints every log line to stdout instead
            trainer.remove_callback(PrinterCallback)
        trainer.train()
        history = [[float(e["step"]), float(e["loss"])] for e in trainer.state.log_history if "loss" in e]
    model.eval()
    return history


def relearn(
    model: torch.nn.Module,
    examples: Sequence[Example],
    pad_token_id: int,
    spec: RelearnSpec,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Full fine-tune of every parameter of ``model`` (in place) on ``examples``; returns details."""
    protocol = spec.protocol()
    for p in model.parameters():
        p.requires_grad_(True)
    loss = fine_tune(
        model,
        examples,
        pad_token_id,
        learning_rate=spec.learning_rate,
        weight_decay=spec.weight_decay,
        batch_size=spec.batch_size,
        grad_accum=spec.grad_accum,
        max_steps=spec.steps,
        warmup_steps=protocol["warmup_steps"],
        max_grad_norm=spec.max_grad_norm,
        seed=seed,
        progress=progress,
    )
    logger.info(
        "relearn: %d steps on %d examples, loss %s",
        spec.steps,
        len(examples),
        f"{loss[0][1]:.4f} -> {loss[-1][1]:.4f}" if loss else "n/a",
    )
    return {"train_loss": loss}


__all__ = ["RelearnSpec", "fine_tune", "relearn"]
