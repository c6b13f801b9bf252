"""FALCON's checkpointed state: what set-up decides at train start, saved with every checkpoint.

An exact resume needs, besides the Trainer's own files (weights, optimizer, scheduler, RNG), what
FALCON decided before the first step: the layer l* (Step 1), the trainable tensors and their frozen
copies (the reference model of Step 2.1b), and the principal offset vector (Step 2.1a). They are
written to ``falcon_state.pt`` in each ``checkpoint-N`` folder and restored instead of recomputed.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from .atomic import atomic_write

logger = logging.getLogger(__name__)

STATE_FILE = "falcon_state.pt"


@dataclass
class FalconState:
    """Everything FALCON decides at train start; saved with each checkpoint, restored on resume."""

    layer: int
    """l*, the layer whose activations the losses see."""
    first_layer: int
    """The lowest decoder layer holding a trainable tensor (where the grad pass starts)."""
    trainable_names: list[str]
    frozen: dict[str, torch.Tensor]
    """Frozen copies of the trainable tensors, by name (the reference model)."""
    pov: torch.Tensor
    """H+, the normalised principal offset vector (the InfoNCE positive before ``steering_coeff``)."""
    mi_report: dict[str, Any] | None
    """Step 1's report (``layer: auto``), else None."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "first_layer": self.first_layer,
            "trainable_names": list(self.trainable_names),
            "frozen": {k: v.detach().cpu() for k, v in self.frozen.items()},
            "pov": self.pov.detach().cpu(),
            "mi_report": self.mi_report,
        }

    def save(self, directory: str | os.PathLike) -> Path:
        return atomic_write(Path(directory) / STATE_FILE, lambda tmp: torch.save(self.to_dict(), tmp))

    @classmethod
    def load(cls, directory: str | os.PathLike) -> FalconState | None:
        """The state in ``directory``, or None without a state file.

        Keys this version does not hold are ignored (files written before ``pov_directions`` was
        dropped carry it).
        """
        path = Path(directory) / STATE_FILE
        if not path.is_file():
            return None
        data = torch.load(path, map_location="cpu", weights_only=True)
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


class SaveFalconState(TrainerCallback):
    """Writes the trainer's :class:`FalconState` into every checkpoint folder the Trainer saves."""

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer

    def on_save(self, args, state, control, **kwargs):  # noqa: ANN001 (Trainer callback signature)
        falcon_state = self.trainer.falcon_state
        if falcon_state is not None and state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                falcon_state.save(folder)
        return control


def checkpoint_path(resume: str | bool | None, output_dir: str) -> str | None:
    """The checkpoint folder ``resume_from_checkpoint`` names (True: the latest in ``output_dir``) or None."""
    if not resume:
        return None
    if isinstance(resume, bool):
        from transformers.trainer_utils import get_last_checkpoint

        last = get_last_checkpoint(output_dir)
        if last is None:
            raise ValueError(f"resume_from_checkpoint=True but no checkpoint in {output_dir}")
        return last
    if not Path(resume).is_dir():
        raise ValueError(f"resume_from_checkpoint={resume!r} is not a checkpoint folder")
    return str(resume)


def check_resumable(checkpoint: str) -> None:
    """An exact resume needs the optimizer state.

    That is ``optimizer.pt`` (DeepSpeed: ``global_step*``, FSDP: ``optimizer_*``) in the checkpoint.
    """
    names = [p.name for p in Path(checkpoint).iterdir()]
    if not any(n.startswith(("optimizer", "global_step")) for n in names):
        raise ValueError(
            f"FALCON: invalid resume_from_checkpoint={checkpoint!r}: "
            "it has no optimizer state (was it saved with "
            "save_only_model=True?), so the run cannot continue exactly; resume from a checkpoint saved with "
            "save_only_model=false, or start a new run from these weights"
        )


__all__ = ["STATE_FILE", "FalconState", "SaveFalconState", "check_resumable", "checkpoint_path"]
