"""FALCON's set-up at train start: Step 1 (if ``layer: auto``), trainable tensors, frozen copies, POV.

Runs once, before the Trainer's loop (:meth:`falcon_plugin.trainer.FalconMixin.train`), and returns
the :class:`~falcon_plugin.state.FalconState` the step reads:

1. l*: the configured layer, or Step 1's pick over the decoder layers under ``mi.criterion``
   (``separability``: argmax of held-out I(H;D); ``paper``: argmin of I(F;R), Eq. 2-4;
   :func:`falcon_plugin.report.run_mi_selection`, which scores both; rank 0's choice on every rank,
   report written into the output dir);
2. the trainable tensors (default: MLP down-projections of l*-2..l*) get ``requires_grad``, every
   other parameter is frozen, and a detached copy of each is kept: the frozen reference model;
3. the principal offset vector H+ from the frozen forget activations at l* (Step 2.1a,
   :mod:`falcon_plugin.pov`).

On resume the state comes from the checkpoint instead (:meth:`FalconState.load`), so the run
continues exactly. Every random draw follows one seed: ``args.seed`` for Step 1's samples of the train
set (``random.Random(seed + offset)``); :func:`pov_seed` (``pov_seed``, by default ``args.seed``) for the
POV's sample and its random vector and noise (a seeded generator).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .activations import find_decoder_layers, frozen_prefix_pass, layer_index_of, vocab_size
from .config import FalconConfig
from .data import model_inputs, pad_examples
from .distributed import broadcast_int, gathered
from .errors import EmptyMaskError
from .masks import IGNORE_INDEX, token_mask
from .pov import principal_directions, principal_offset_vector
from .report import MIReport, run_mi_selection
from .state import STATE_FILE, FalconState
from .validation import check_example, part_of, resolve_trainable

logger = logging.getLogger(__name__)

POV_SAMPLES = 64
"""Forget items whose answer-token activations at l* give the principal directions."""
SEED_OFFSETS = {"mi_forget": 0, "mi_retain": 1, "pov": 2}
"""Offsets on ``args.seed`` of the three samples of the train set (independent draws)."""


@dataclass(frozen=True)
class SetupContext:
    """What set-up reads from the trainer."""

    model: nn.Module
    """The unwrapped model (:func:`falcon_plugin.activations.base_model`)."""
    config: FalconConfig
    dataset: Any
    seed: int
    pad_token_id: int
    output_dir: str
    is_main_process: bool


def prepare_state(ctx: SetupContext, trainable: Sequence[str] | None, checkpoint: str | None) -> FalconState:
    """FALCON's state for this run: restored from ``checkpoint`` if it has one, else computed.

    ``trainable`` are the tensor names validation resolved (integer ``layer``), or None (``auto``).
    A model partitioned by ZeRO-3 at load time (zero.Init, the host's accelerate default) has empty
    parameters and no engine hooks yet: it is gathered for the set-up passes (MI, POV, frozen
    copies), once, before training; no-op otherwise.
    """
    with gathered(list(ctx.model.parameters())):
        return _prepare(ctx, trainable, checkpoint)


def _prepare(ctx: SetupContext, trainable: Sequence[str] | None, checkpoint: str | None) -> FalconState:
    model, cfg = ctx.model, ctx.config
    layers_path, layers = find_decoder_layers(model)
    restored = FalconState.load(checkpoint) if checkpoint else None
    if checkpoint and restored is None:
        logger.warning(
            "FALCON: %s has no %s; recomputing FALCON's state (layer, POV, frozen tensors) from the "
            "model as loaded, which must be this run's initial model",
            checkpoint,
            STATE_FILE,
        )
    if restored is not None:
        logger.info(
            "FALCON: restored layer l*=%d, POV and frozen tensors from %s", restored.layer, checkpoint
        )
        apply_trainable(model, restored.trainable_names)
        params = dict(model.named_parameters())
        restored.frozen = {k: v.to(params[k].device, params[k].dtype) for k, v in restored.frozen.items()}
        restored.pov = restored.pov.to(params[restored.trainable_names[0]].device)
        return restored
    report: MIReport | None = None
    if cfg.layer == "auto":
        report = select_layer(ctx)
        layer = report.chosen_layer
        names = resolve_trainable(
            model, layers_path, layer, cfg.trainable_params_regex, cfg.trainable_modules
        )
    else:
        layer = int(cfg.layer)
        names = (
            list(trainable)
            if trainable is not None
            else resolve_trainable(
                model, layers_path, layer, cfg.trainable_params_regex, cfg.trainable_modules
            )
        )
    apply_trainable(model, names)
    params = dict(model.named_parameters())
    frozen = {n: params[n].detach().clone() for n in names}
    first = min(layer_index_of(n, layers_path) for n in names)  # type: ignore[type-var]
    pov = build_pov(ctx, layers, first, layer, frozen)
    logger.info("FALCON: l*=%d, trainable tensors %s", layer, names)
    return FalconState(layer, first, names, frozen, pov, report.to_dict() if report else None)


def apply_trainable(model: nn.Module, names: Sequence[str]) -> None:
    """``requires_grad`` on exactly the tensors ``names``."""
    wanted = set(names)
    for name, param in model.named_parameters():
        param.requires_grad_(name in wanted)


def sample_parts(
    ctx: SetupContext, part: str, count: int, seed_offset: int, seed: int | None = None
) -> list[dict[str, torch.Tensor]]:
    """``count`` examples of ``part`` ('forget' or 'retain'), drawn with ``seed + seed_offset``
    (``seed`` defaults to ``args.seed``).

    Each is checked as validation checks items; the global RNG is left as it was (datasets such as
    the host's draw from it in ``__getitem__``).
    """
    dataset = ctx.dataset
    if dataset is None:
        raise ValueError("FALCON needs a train_dataset of {'forget', 'retain'} items")
    rng = random.Random((ctx.seed if seed is None else seed) + seed_offset)
    indices = rng.sample(range(len(dataset)), min(count, len(dataset)))
    vocab = vocab_size(ctx.model)
    items = []
    with torch.random.fork_rng(devices=[]):
        examples = [(i, part_of(dataset[i], part, i)) for i in indices]
    for i, example in examples:
        check_example(example, f"train_dataset[{i}][{part!r}]", vocab)
        items.append(
            {
                k: torch.as_tensor(v)
                for k, v in example.items()
                if k in ("input_ids", "attention_mask", "labels")
            }
        )
    return items


def select_layer(ctx: SetupContext) -> MIReport:
    """Step 1 (``mi.criterion``) on seeded samples of the train set; rank 0's l* on every rank; the report
    (both criteria's scores) saved by rank 0."""
    mi = ctx.config.mi
    forget = sample_parts(ctx, "forget", mi.samples, SEED_OFFSETS["mi_forget"])
    retain = sample_parts(ctx, "retain", mi.samples, SEED_OFFSETS["mi_retain"])
    report = run_mi_selection(
        ctx.model, [forget], retain, mi, pad_token_id=ctx.pad_token_id, progress=ctx.is_main_process
    )
    chosen = broadcast_int(report.chosen_layer)
    if chosen != report.chosen_layer:
        logger.warning("FALCON: rank-0 layer %d overrides local MI choice %d", chosen, report.chosen_layer)
        report.chosen_layer = chosen
    if ctx.is_main_process:
        json_path, _ = report.save(ctx.output_dir)
        logger.info("FALCON: MI report written to %s", json_path)
    return report


def pov_seed(ctx: SetupContext) -> int:
    """The seed of the POV's draws: ``pov_seed`` when set, else the Trainer's ``args.seed``."""
    return ctx.seed if ctx.config.pov_seed is None else ctx.config.pov_seed


def build_pov(
    ctx: SetupContext, layers: nn.ModuleList, first: int, layer: int, frozen: Mapping[str, torch.Tensor]
) -> torch.Tensor:
    """H+ from the principal directions of frozen forget activations at l* (answer tokens, seeded sample)."""
    cfg = ctx.config
    seed = pov_seed(ctx)
    samples = sample_parts(ctx, "forget", POV_SAMPLES, SEED_OFFSETS["pov"], seed)
    device = next(iter(frozen.values())).device
    rows = []
    for start in range(0, len(samples), cfg.mi.batch_size):
        batch = pad_examples(samples[start : start + cfg.mi.batch_size], ctx.pad_token_id)
        batch = {k: v.to(device) for k, v in batch.items()}
        record = frozen_prefix_pass(ctx.model, layers, first, layer, model_inputs(batch), frozen)
        mask = token_mask(batch.get("labels"), batch.get("attention_mask"))
        rows.append(record.frozen_out[mask].float())
    activations = torch.cat(rows)
    if activations.shape[0] == 0:
        raise EmptyMaskError(
            f"FALCON: the sampled forget examples have no answer tokens (all labels are {IGNORE_INDEX})"
        )
    directions = principal_directions(activations, cfg.pov_rank)
    generator = torch.Generator().manual_seed(seed)
    return principal_offset_vector(directions, cfg.pov_weight, cfg.pov_noise, generator)


__all__ = [
    "POV_SAMPLES",
    "SEED_OFFSETS",
    "SetupContext",
    "apply_trainable",
    "build_pov",
    "pov_seed",
    "prepare_state",
    "sample_parts",
    "select_layer",
]
