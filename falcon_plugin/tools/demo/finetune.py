"""Plain supervised fine-tuning so the demo model memorises every fact before unlearning."""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from falcon_plugin.data import pad_examples

logger = logging.getLogger(__name__)
Example = dict[str, torch.Tensor]


@dataclass(frozen=True)
class FinetuneSpec:
    """Optimisation settings of the knowledge-injection fine-tune."""

    epochs: int = 60
    batch_size: int = 32
    learning_rate: float = 3e-3
    weight_decay: float = 0.0
    warmup_fraction: float = 0.05
    loss_on_prompt: bool = True
    """Train on every token (question too), as pre-training on QA documents; False: answer tokens only.
    On the demo's facts this memorises far faster (answer probability 0.98 vs 0.80 after 60 epochs)."""


def finetune(
    model: torch.nn.Module,
    examples: Sequence[Example],
    pad_token_id: int,
    spec: FinetuneSpec,
    seed: int = 0,
    progress: bool = True,
) -> list[float]:
    """Train ``model`` in place on ``examples``; returns the per-epoch mean loss.

    AdamW with linear warm-up then cosine decay to zero; shuffles with ``seed`` each epoch.
    """
    if not examples:
        raise ValueError("finetune: no examples")
    if spec.loss_on_prompt:
        examples = [{**e, "labels": e["input_ids"].clone()} for e in examples]
    rng = random.Random(seed)
    steps_per_epoch = math.ceil(len(examples) / spec.batch_size)
    total = spec.epochs * steps_per_epoch
    warmup = max(1, int(spec.warmup_fraction * total))
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.learning_rate, weight_decay=spec.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: (
            (step + 1) / warmup
            if step < warmup
            else 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
        ),
    )
    device = next(model.parameters()).device
    model.train()
    order = list(range(len(examples)))
    losses: list[float] = []
    bar = tqdm(total=total, desc="fine-tune", disable=not progress, leave=False)
    for _ in range(spec.epochs):
        rng.shuffle(order)
        epoch_loss = 0.0
        for start in range(0, len(order), spec.batch_size):
            batch = pad_examples([examples[i] for i in order[start : start + spec.batch_size]], pad_token_id)
            batch = {k: v.to(device) for k, v in batch.items()}
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            epoch_loss += loss.item()
            bar.update(1)
        losses.append(epoch_loss / steps_per_epoch)
    bar.close()
    model.eval()
    logger.info("fine-tune: %d steps, final epoch loss %.4f", total, losses[-1])
    return losses
