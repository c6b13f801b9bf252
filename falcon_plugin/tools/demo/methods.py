"""Running one unlearning method on a copy of the demo model, at a given step budget.

Retain pairing and token masks come from the core: ``ForgetRetainDataset`` draws a fresh (seeded)
retain example on every access, as the host's dataset does, and the representation losses see the
positions that *predict* answer tokens (``falcon_plugin.masks.token_mask``).
"""

from __future__ import annotations

import copy
import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import PrinterCallback, ProgressCallback, TrainerCallback, TrainingArguments

from falcon_plugin.data import ForgetRetainCollator, ForgetRetainDataset

from .presets import MethodSpec

logger = logging.getLogger(__name__)
Example = dict[str, torch.Tensor]
METHODS = ("FALCON", "FALCON-MI", "GradDiff", "RMU")
TRAINERS = ("FALCON", "GradDiff", "RMU")


def trainer_class(name: str) -> type:
    """The trainer class behind a trainer name (FALCON, GradDiff, RMU)."""
    if name == "FALCON":
        from falcon_plugin.trainer import FALCON

        return FALCON
    if name == "GradDiff":
        from .baselines import GradDiff

        return GradDiff
    if name == "RMU":
        from .baselines import RMUBaseline

        return RMUBaseline
    raise ValueError(f"unknown trainer {name!r}; expected one of {', '.join(TRAINERS)}")


class _QuietProgress(TrainerCallback):
    """A tqdm bar on stderr and Trainer logs to ``logging`` (the Trainer's own callbacks print to stdout)."""

    def __init__(self, description: str, enabled: bool) -> None:
        self.description = description
        self.enabled = enabled
        self.bar: Any = None

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001 (TrainerCallback signature)
        self.bar = tqdm(total=state.max_steps, desc=self.description, disable=not self.enabled, leave=False)

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
        if self.bar is not None:
            self.bar.update(1)

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
        logger.debug("%s step %d: %s", self.description, state.global_step, logs)

    def on_train_end(self, args, state, control, **kwargs):  # noqa: ANN001
        if self.bar is not None:
            self.bar.close()


@dataclass
class UnlearnOutcome:
    """The unlearned model and what the run decided."""

    model: torch.nn.Module
    seconds: float
    layer: int | None
    mi_report: dict[str, Any] | None


def unlearn(
    method: str,
    spec: MethodSpec,
    reference: torch.nn.Module,
    tokenizer: Any,
    forget: Sequence[Example],
    retain: Sequence[Example],
    steps: int,
    batch_size: int,
    seed: int,
    progress: bool = True,
) -> UnlearnOutcome:
    """Unlearn ``forget`` from a deep copy of ``reference`` with ``spec`` for ``steps`` optimizer steps.

    Constant learning rate, no warm-up, no weight decay; the Trainer's output folder is temporary
    (FALCON's MI report comes back in the outcome).
    The wall time covers the whole ``train()`` call (FALCON's MI layer selection included).
    """
    with tempfile.TemporaryDirectory(prefix="falcon-demo-") as tmp:
        return _unlearn(
            method, spec, reference, tokenizer, forget, retain, steps, batch_size, Path(tmp), seed, progress
        )


def _unlearn(
    method: str,
    spec: MethodSpec,
    reference: torch.nn.Module,
    tokenizer: Any,
    forget: Sequence[Example],
    retain: Sequence[Example],
    steps: int,
    batch_size: int,
    output_dir: Path,
    seed: int,
    progress: bool,
) -> UnlearnOutcome:
    model = copy.deepcopy(reference)
    model.train()
    args = TrainingArguments(
        output_dir=str(output_dir),
        max_steps=steps,
        per_device_train_batch_size=batch_size,
        learning_rate=spec.learning_rate,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        logging_steps=max(1, steps // 4),
        save_strategy="no",
        report_to="none",
        seed=seed,
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
    )
    trainer = trainer_class(spec.trainer)(
        model=model,
        args=args,
        train_dataset=ForgetRetainDataset(forget, retain, seed=seed, redraw=True),
        data_collator=ForgetRetainCollator(tokenizer.pad_token_id),
        tokenizer=tokenizer,
        **copy.deepcopy(spec.method_args),
    )
    for callback in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(callback)
    trainer.add_callback(_QuietProgress(method, progress))
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    layer = getattr(trainer, "falcon_layer", None)
    if layer is None:
        layer = getattr(trainer, "layer", None)
    state = getattr(trainer, "falcon_state", None)
    mi_report = state.mi_report if state is not None else None
    model.eval()
    logger.info("%s: %d steps in %.1fs (layer %s)", method, steps, seconds, layer)
    return UnlearnOutcome(model=model, seconds=seconds, layer=layer, mi_report=mi_report)
