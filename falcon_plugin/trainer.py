"""The FALCON trainer: a ``transformers.Trainer`` whose step is the paper's Steps 2.1 and 2.2.

One training step (:meth:`FalconMixin.compute_loss`; the picture is in docs/architecture.md):

1. forget and retain batch: a no-grad pass of the frozen model through layers 0..l* (the trainable
   tensors swapped for frozen copies; no second model, nothing above l*), then the trainable layers
   first..l* with grad from the recorded input (:mod:`falcon_plugin.activations`);
2. L_F = InfoNCE(updated forget act, scaled POV, frozen forget act), L_R = w_R (1 - cos) on retain
   (:mod:`falcon_plugin.losses`, paper Eq. 6-7);
3. g_F, g_R by ``torch.autograd.grad`` on the trainable tensors, averaged over processes when
   distributed (with ``sam_rho``, g_F is taken again at θ + ρ g_F/‖g_F‖: :mod:`falcon_plugin.sharpness`),
   combined by :func:`falcon_plugin.projection.resolve_gradient_conflict`;
4. a surrogate loss whose gradient is the combined update and whose value is L_F + L_R is returned
   to the Trainer, so gradient accumulation, clipping, mixed precision, DDP and DeepSpeed ZeRO-1/2
   run unchanged. Under ZeRO-3 (partitioned parameters) the loss L_F + L_R is returned instead and
   gradient hooks put the combined update in place (:func:`falcon_plugin.distributed.zero3_gradient_hooks`).

Around the step: ``method_args`` are split off and validated at construction
(:mod:`falcon_plugin.config`, :mod:`falcon_plugin.validation`); ``train()`` first runs the set-up
(Step 1 if ``layer: auto``, frozen copies, POV: :mod:`falcon_plugin.setup`), whose state is saved
with every checkpoint (:mod:`falcon_plugin.state`). The train items are drawn under RNGs seeded from
(seed, epoch, index) so a resumed run pairs them as the straight run did (:mod:`falcon_plugin.replay`);
the logged ``falcon/*`` metrics are averaged over processes once per logging step.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import transformers
from torch import nn

from .activations import LayerCalls, base_model, find_decoder_layers, frozen_prefix_pass, run_layers
from .config import FalconConfig, split_method_args
from .data import model_inputs, pad_token_id
from .distributed import (
    all_reduce_mean,
    deepspeed_forward_epilogue,
    deepspeed_forward_prologue,
    drop_empty_param_groups,
    is_zero3,
    zero3_gradient_hooks,
)
from .errors import FalconConfigError, NonFiniteLossError
from .hf_compat import init_parameters, processing_class_of, trainer_init_kwargs
from .losses import cosine_retain_loss, floored_mean, info_nce_token_losses
from .masks import token_mask
from .projection import float32_sum, resolve_gradient_conflict
from .replay import EpochToItems, replayable, trainer_rng_state_loading, warn_if_persistent_workers
from .setup import SetupContext, prepare_state
from .sharpness import perturbed, sam_perturbation
from .state import FalconState, SaveFalconState, check_resumable, checkpoint_path
from .validation import (
    SAM_UNDER_ZERO3,
    check_sharpness_supported,
    check_training_args,
    validate_against_model,
)

logger = logging.getLogger(__name__)


class FalconMixin:
    """FALCON's behaviour; put it before a ``transformers.Trainer`` subclass in the bases.

    Constructed as open-unlearning constructs trainers: ``cls(model=, train_dataset=, ...,
    args=, **method_args)``; the method_args are the fields of :class:`FalconConfig`.
    """

    falcon_config: FalconConfig
    falcon_state: FalconState | None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.falcon_config, trainer_kwargs = split_method_args(kwargs, init_parameters(type(self)))
        self.falcon_state = None
        self._falcon_layers: nn.ModuleList | None = None
        self._falcon_metrics: dict[str, list[torch.Tensor]] = {}
        self._falcon_grad_hooks: list[Any] = []
        super().__init__(*args, **trainer_init_kwargs(trainer_kwargs))
        check_training_args(self.args)
        check_sharpness_supported(self.falcon_config)
        self._falcon_trainable = validate_against_model(
            base_model(self.model), self.falcon_config, self.train_dataset, self._pad_id()
        )
        self.add_callback(SaveFalconState(self))
        self._falcon_epoch_to_items = EpochToItems()
        self.add_callback(self._falcon_epoch_to_items)

    @property
    def falcon_layer(self) -> int | None:
        """The unlearning layer l* once known (after ``train()`` starts, or at once if configured)."""
        if self.falcon_state is not None:
            return self.falcon_state.layer
        layer = self.falcon_config.layer
        return layer if isinstance(layer, int) else None

    def _pad_id(self) -> int:
        return pad_token_id(processing_class_of(self))

    # ------------------------------------------------------------------ train start
    def train(
        self, resume_from_checkpoint: str | bool | None = None, trial: Any = None, **kwargs: Any
    ) -> Any:
        """Run FALCON's set-up (Step 1 if ``layer: auto``), then the Trainer's loop.

        ``TrainingArguments.resume_from_checkpoint`` is honoured when no argument is given (the
        host's ``src/train.py`` calls ``train()`` with none).
        """
        if resume_from_checkpoint is None and getattr(self.args, "resume_from_checkpoint", None):
            resume_from_checkpoint = self.args.resume_from_checkpoint
        checkpoint = checkpoint_path(resume_from_checkpoint, self.args.output_dir)
        if checkpoint is not None:
            check_resumable(checkpoint)
        self._setup(checkpoint)
        train = super().train  # type: ignore[misc]
        return train(resume_from_checkpoint=resume_from_checkpoint, trial=trial, **kwargs)

    def _setup(self, checkpoint: str | None) -> None:
        """Set-up (:func:`falcon_plugin.setup.prepare_state`); tests and benchmarks call it directly."""
        context = self._setup_context()
        self.falcon_state = prepare_state(context, self._falcon_trainable, checkpoint)
        self._falcon_layers = find_decoder_layers(context.model)[1]

    def _setup_context(self) -> SetupContext:
        return SetupContext(
            base_model(self.model),
            self.falcon_config,
            self.train_dataset,
            self.args.seed,
            self._pad_id(),
            self.args.output_dir,
            self.is_world_process_zero(),
        )

    # ------------------------------------------------------------------ exact resume
    def get_train_dataloader(self, *args: Any, **kwargs: Any) -> Any:
        """The Trainer's train dataloader over :func:`falcon_plugin.replay.replayable` items.

        Each item is drawn under RNGs seeded from (seed, epoch, index), so the host's random retain
        partners are the same in a straight and in a resumed run (see :mod:`falcon_plugin.replay`).
        """
        dataset = self.train_dataset
        seed = self.args.data_seed if getattr(self.args, "data_seed", None) is not None else self.args.seed
        items = replayable(dataset, seed)
        self._falcon_epoch_to_items.items = items if items is not dataset else None
        if items is not dataset:
            warn_if_persistent_workers(self.args)
        self.train_dataset = items
        try:
            return super().get_train_dataloader(*args, **kwargs)  # type: ignore[misc]
        finally:
            self.train_dataset = dataset

    def _load_rng_state(self, checkpoint: str | None) -> Any:
        """The Trainer's RNG restore, with numpy's RNG-state types allowed.

        (transformers 4.45, torch >= 2.6.)
        """
        with trainer_rng_state_loading():
            return super()._load_rng_state(checkpoint)  # type: ignore[misc]

    def create_optimizer(self, *args: Any, **kwargs: Any) -> Any:
        """The Trainer's optimizer minus empty parameter groups (``distributed.drop_empty_param_groups``)."""
        return drop_empty_param_groups(super().create_optimizer(*args, **kwargs))  # type: ignore[misc]

    # ------------------------------------------------------------------ the step
    def compute_loss(
        self,
        model: nn.Module,
        inputs: Mapping[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
        **kwargs: Any,
    ) -> Any:
        """Losses at l*, per-loss gradients, projection; returns the surrogate (value L_F + L_R)."""
        if self.falcon_state is None or self._falcon_layers is None:
            raise RuntimeError("FALCON set-up has not run: call train(), which runs it first")
        if "forget" not in inputs or "retain" not in inputs:
            raise ValueError(
                f"FALCON expects batches {{'forget': ..., 'retain': ...}}, got keys {sorted(inputs)}"
            )
        state, cfg, layers = self.falcon_state, self.falcon_config, self._falcon_layers
        engine = model if getattr(self, "is_deepspeed_enabled", False) else None
        deepspeed_forward_prologue(engine)
        base = base_model(self.model)
        params = dict(base.named_parameters())
        trainable = [params[n] for n in state.trainable_names]
        # L_F depends only on the forget pass and L_R only on the retain pass: two disjoint graphs, so
        # the two autograd.grad calls do no duplicate work. Outside ZeRO-3 g_F is taken before the
        # retain pass runs, which frees the forget graph first: one pass's activations alive at a time.
        # Under ZeRO-3 both graphs stay alive for the engine's backward of L_F + L_R.
        zero3 = is_zero3(trainable)

        def gradient(loss: torch.Tensor) -> list[torch.Tensor]:  # on the trainable tensors, mean over ranks
            grads = torch.autograd.grad(loss, trainable, retain_graph=zero3, materialize_grads=True)
            return all_reduce_mean(list(grads))

        with self.accelerator.autocast():
            record_f, mask_f = self._frozen_pass(base, layers, inputs["forget"])
        positive = cfg.steering_coeff * state.pov.to(record_f.frozen_out.device)

        def forget_objective() -> tuple[torch.Tensor, torch.Tensor]:  # (per-token terms, L_F) at the live θ
            with self.accelerator.autocast():  # the frozen pass does not depend on θ: layers first..l* only
                updated = run_layers(layers, state.first_layer, record_f)
            tokens = info_nce_token_losses(updated, positive, record_f.frozen_out, mask_f, cfg.temperature)
            return tokens, floored_mean(tokens, cfg.forget_loss_floor)

        token_losses, forget_loss = forget_objective()
        at_floor = None  # the share of forget tokens the floor has stopped
        if cfg.forget_loss_floor is not None:
            at_floor = (token_losses.detach() <= cfg.forget_loss_floor).float().mean()
        if zero3 and cfg.sam_rho is not None:  # normally refused at construction (check_sharpness_supported)
            raise FalconConfigError(SAM_UNDER_ZERO3.format(cfg.sam_rho))
        g_f = None if zero3 else gradient(forget_loss)
        sam_loss = None  # L_F at θ + δ (sharpness-aware forget gradient, falcon_plugin.sharpness)
        if cfg.sam_rho is not None and g_f is not None:
            with perturbed(trainable, sam_perturbation(g_f, cfg.sam_rho)):
                _, sam_loss = forget_objective()
                g_f = gradient(sam_loss)
        with self.accelerator.autocast():
            record_r, mask_r = self._frozen_pass(base, layers, inputs["retain"])
            updated_r, frozen_r = run_layers(layers, state.first_layer, record_r), record_r.frozen_out
        retain_loss = cfg.retain_weight * cosine_retain_loss(updated_r, frozen_r, mask_r)
        g_f = gradient(forget_loss) if g_f is None else g_f
        g_r = gradient(retain_loss)
        combined = resolve_gradient_conflict(  # into g_F's storage: no second set of gradients
            g_f, g_r, cfg.projection, cfg.conflict_weights, cfg.align_weights, inplace=True
        )

        self._check_finite(forget_loss, retain_loss, combined.grads)
        self._record(forget_loss, retain_loss, combined.cosines, combined.conflicts, at_floor, sam_loss)
        if zero3:
            surrogate, hooks = zero3_gradient_hooks(forget_loss + retain_loss, trainable, combined.grads)
            self._falcon_grad_hooks.extend(hooks)
        else:
            value = (forget_loss + retain_loss).detach()
            inner = sum((p * g.to(p.dtype)).sum() for p, g in zip(trainable, combined.grads, strict=True))
            surrogate = inner - inner.detach() + value  # gradient: combined update; value: L_F + L_R
        deepspeed_forward_epilogue(engine, surrogate)
        if return_outputs:
            return surrogate, {"forget_loss": forget_loss.detach(), "retain_loss": retain_loss.detach()}
        return surrogate

    def training_step(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The Trainer's step; removes the ZeRO-3 gradient hooks :meth:`compute_loss` may have set."""
        try:
            return super().training_step(*args, **kwargs)  # type: ignore[misc]
        finally:
            for handle in self._falcon_grad_hooks:
                handle.remove()
            self._falcon_grad_hooks.clear()

    def _frozen_pass(
        self, base: nn.Module, layers: nn.ModuleList, batch: Mapping[str, torch.Tensor]
    ) -> tuple[LayerCalls, torch.Tensor]:
        """(the frozen pass's record: frozen activation at l* and the trainable layers' inputs, token mask)
        for one batch; :func:`~falcon_plugin.activations.run_layers` on the record gives the updated one."""
        state = self.falcon_state
        assert state is not None
        record = frozen_prefix_pass(
            base, layers, state.first_layer, state.layer, model_inputs(batch), state.frozen
        )
        return record, token_mask(batch.get("labels"), batch.get("attention_mask"))

    def _check_finite(
        self, forget_loss: torch.Tensor, retain_loss: torch.Tensor, grads: Sequence[torch.Tensor]
    ) -> None:
        total = torch.stack([forget_loss.float(), retain_loss.float()] + [float32_sum(g) for g in grads])
        if not bool(torch.isfinite(total).all()):
            step = self.state.global_step
            raise NonFiniteLossError(
                f"FALCON: non-finite value at training step {step + 1} (after {step} optimizer steps): "
                f"forget_loss={forget_loss.item()}, "
                f"retain_loss={retain_loss.item()}, "
                f"finite grads={[bool(torch.isfinite(g).all()) for g in grads]}; "
                "stopping before the optimizer step so no corrupted checkpoint is written"
            )

    # ------------------------------------------------------------------ logging
    def _record(
        self,
        forget_loss: torch.Tensor,
        retain_loss: torch.Tensor,
        cosines: torch.Tensor,
        conflicts: torch.Tensor,
        at_floor: torch.Tensor | None = None,
        sam_loss: torch.Tensor | None = None,
    ) -> None:
        metrics = [
            ("falcon/forget_loss", forget_loss.detach().float()),
            ("falcon/retain_loss", retain_loss.detach().float()),
            ("falcon/grad_cosine", cosines.detach().float().mean()),
            ("falcon/projection_rate", conflicts.float().mean()),
        ]
        if at_floor is not None:  # only with a forget_loss_floor
            metrics.append(("falcon/forget_at_floor", at_floor))
        if sam_loss is not None:  # only with sam_rho: the forget loss at θ + δ, where g_F is taken
            metrics.append(("falcon/sam_forget_loss", sam_loss.detach().float()))
        for key, value in metrics:
            self._falcon_metrics.setdefault(key, []).append(value)

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """Add the mean of FALCON's metrics since the last log, averaged over processes like ``loss``.

        One all-reduce (all metrics in one tensor) and one device sync per logging step; none on the
        steps in between. Every rank logs (the Trainer calls ``log`` on all of them), so none waits.
        """
        if self._falcon_metrics and "loss" in logs:
            keys = list(self._falcon_metrics)
            device = self._falcon_metrics[keys[0]][0].device
            local = torch.stack([torch.stack(self._falcon_metrics[k]).mean().to(device) for k in keys])
            (mean,) = all_reduce_mean([local])
            for key, value in zip(keys, mean.tolist(), strict=True):
                logs[key] = round(value, 6)
            logs["falcon/layer"] = self.falcon_layer
            self._falcon_metrics = {}
        super().log(logs, *args, **kwargs)  # type: ignore[misc]


def falcon_trainer_class(base: type) -> type:
    """A trainer class ``FALCON``: FALCON's behaviour on top of ``base`` (e.g. the host's UnlearnTrainer)."""
    if not (isinstance(base, type) and issubclass(base, transformers.Trainer)):
        raise TypeError(f"FALCON needs a transformers.Trainer subclass as base, got {base!r}")
    return type("FALCON", (FalconMixin, base), {"__module__": __name__, "__doc__": FalconMixin.__doc__})


class FALCON(FalconMixin, transformers.Trainer):
    """Standalone FALCON trainer (no open-unlearning needed); accepts the host's constructor arguments."""

    def __init__(self, *args: Any, evaluators: Any = None, template_args: Any = None, **kwargs: Any) -> None:
        self.evaluators = evaluators
        self.template_args = template_args
        super().__init__(*args, **kwargs)


__all__ = ["FALCON", "FalconMixin", "falcon_trainer_class"]
