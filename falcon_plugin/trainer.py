"""The FALCON trainer: a ``transformers.Trainer`` whose step is the paper's Steps 2.1 and 2.2.

One training step (see docs/design.md for the picture):

1. forget and retain batch: a no-grad pass of the frozen model through layers 0..l* (the trainable
   tensors swapped for frozen copies; no second model, nothing above l*), then the trainable layers
   first..l* with grad from the recorded input (:mod:`falcon_plugin.activations`);
2. L_F = InfoNCE(updated forget act, scaled POV, frozen forget act), L_R = w_R (1 - cos) on retain
   (:mod:`falcon_plugin.losses`, :mod:`falcon_plugin.pov`);
3. g_F, g_R by ``torch.autograd.grad`` on the trainable tensors, averaged over processes when
   distributed, combined by :func:`falcon_plugin.projection.resolve_gradient_conflict`;
4. a surrogate loss whose gradient is the combined update and whose value is L_F + L_R is returned
   to the Trainer, so gradient accumulation, clipping, mixed precision, DDP and DeepSpeed ZeRO-1/2
   run unchanged. Under ZeRO-3 (partitioned parameters) the loss L_F + L_R is returned instead and
   gradient hooks put the combined update in place (:meth:`FalconMixin._zero3_surrogate`).

``layer: auto`` runs Step 1 (:mod:`falcon_plugin.report`) at the start of ``train()``.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn
from transformers import TrainerCallback

from .activations import (
    ModelStructureError,
    find_decoder_layers,
    frozen_prefix_pass,
    layer_index_of,
    run_layers,
)
from .config import MIN_MI_SAMPLES, FalconConfig, FalconConfigError, FalconDataError, default_trainable_regex
from .data import pad_examples
from .losses import EmptyMaskError, cosine_retain_loss, info_nce_forget_loss, token_mask
from .pov import principal_directions, principal_offset_vector
from .projection import resolve_gradient_conflict
from .report import MIReport, run_mi_selection

logger = logging.getLogger(__name__)

STATE_FILE = "falcon_state.pt"
POV_SAMPLES = 64
DATA_CHECK_ITEMS = 64
"""Train items (spread over the dataset) checked at construction; set-up checks every item it samples."""
_METHOD_ARG_NAMES = frozenset(FalconConfig.__dataclass_fields__)
_TRAINER_ACCEPTS_TOKENIZER = "tokenizer" in inspect.signature(transformers.Trainer.__init__).parameters


class NonFiniteLossError(FloatingPointError):
    """A FALCON loss or gradient became NaN/inf: the run stops before the optimizer step."""


@dataclass
class FalconState:
    """Everything FALCON decides at train start; saved with each checkpoint, restored on resume."""

    layer: int
    first_layer: int
    trainable_names: list[str]
    frozen: dict[str, torch.Tensor]
    pov: torch.Tensor
    pov_directions: torch.Tensor
    mi_report: dict[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "first_layer": self.first_layer,
            "trainable_names": list(self.trainable_names),
            "frozen": {k: v.detach().cpu() for k, v in self.frozen.items()},
            "pov": self.pov.detach().cpu(),
            "pov_directions": self.pov_directions.detach().cpu(),
            "mi_report": self.mi_report,
        }

    def save(self, directory: str | os.PathLike) -> Path:
        from .io import atomic_write

        return atomic_write(Path(directory) / STATE_FILE, lambda tmp: torch.save(self.to_dict(), tmp))

    @classmethod
    def load(cls, directory: str | os.PathLike) -> FalconState | None:
        path = Path(directory) / STATE_FILE
        if not path.is_file():
            return None
        data = torch.load(path, map_location="cpu", weights_only=True)
        return cls(**data)


class _SaveFalconState(TrainerCallback):
    """Writes :class:`FalconState` into every checkpoint folder the Trainer saves."""

    def __init__(self, trainer: FalconMixin) -> None:
        self.trainer = trainer

    def on_save(self, args, state, control, **kwargs):  # noqa: ANN001 (Trainer callback signature)
        falcon_state = self.trainer.falcon_state
        if falcon_state is not None and state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                falcon_state.save(folder)
        return control


class FalconMixin:
    """FALCON's behaviour; put it before a ``transformers.Trainer`` subclass in the bases.

    Constructed as open-unlearning constructs trainers: ``cls(model=, train_dataset=, ...,
    args=, **method_args)``; the method_args are the fields of :class:`FalconConfig`.
    """

    falcon_config: FalconConfig
    falcon_state: FalconState | None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        method_args = {k: kwargs.pop(k) for k in list(kwargs) if k in _METHOD_ARG_NAMES}
        self.falcon_config = FalconConfig.from_method_args(**method_args)
        self.falcon_state = None
        self._falcon_metrics: dict[str, list[torch.Tensor]] = {}
        self._falcon_grad_hooks: list[Any] = []
        if "tokenizer" in kwargs and not _TRAINER_ACCEPTS_TOKENIZER:
            kwargs.setdefault("processing_class", kwargs.pop("tokenizer"))
        super().__init__(*args, **kwargs)
        if getattr(self.args, "remove_unused_columns", False):
            logger.info("FALCON: setting remove_unused_columns=False (batches are {'forget', 'retain'} dicts)")
            self.args.remove_unused_columns = False
        self._validate_against_model()
        if getattr(self.args, "save_only_model", False) and self.args.save_strategy != "no":
            logger.warning(
                "FALCON: save_only_model=True: checkpoints will hold the weights and FALCON's state but no "
                "optimizer, scheduler or RNG state, so resume_from_checkpoint cannot continue this run; set "
                "trainer.args.save_only_model=false for resumable checkpoints"
            )
        self.add_callback(_SaveFalconState(self))

    # ------------------------------------------------------------------ set-up and validation
    @property
    def falcon_layer(self) -> int | None:
        """The unlearning layer l* once known (after ``train()`` starts, or at once if configured)."""
        if self.falcon_state is not None:
            return self.falcon_state.layer
        layer = self.falcon_config.layer
        return layer if isinstance(layer, int) else None

    def _base_model(self) -> nn.Module:
        model = self.model
        while hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        return model

    def _validate_against_model(self) -> None:
        """Checks that need the model and data, before any forward pass."""
        model = self._base_model()
        _check_decoder_only(model)
        path, layers = find_decoder_layers(model)
        cfg = self.falcon_config
        if isinstance(cfg.layer, int) and cfg.layer >= len(layers):
            raise FalconConfigError(
                f"FALCON method_args: invalid layer={cfg.layer!r}; the model has {len(layers)} decoder layers "
                f"(valid: 0..{len(layers) - 1} or 'auto')"
            )
        names = [n for n, _ in model.named_parameters()]
        if cfg.trainable_params_regex is not None:
            for pattern in cfg.trainable_params_regex:
                if not any(re.fullmatch(pattern, n) for n in names):
                    raise FalconConfigError(
                        f"FALCON method_args: invalid trainable_params_regex entry {pattern!r}: it matches no parameter "
                        f"of {type(model).__name__} (e.g. {names[len(names) // 2]!r})"
                    )
        if isinstance(cfg.layer, int):
            self._resolve_trainable(model, path, cfg.layer)
        elif cfg.trainable_params_regex is not None:  # 'auto': l* is not known yet, decoder layers are
            self._resolve_trainable(model, path, len(layers) - 1)
        dataset = self.train_dataset
        if dataset is not None and cfg.layer == "auto":
            size = len(dataset)  # type: ignore[arg-type]
            if size < MIN_MI_SAMPLES:
                raise FalconConfigError(
                    f"FALCON method_args: layer='auto' needs >= {MIN_MI_SAMPLES} train samples for MI, "
                    f"the train dataset has {size}"
                )
        self._validate_train_data(model)

    def _validate_train_data(self, model: nn.Module) -> None:
        """Empty data, a pad id or token ids outside the model's vocabulary, all-padding or answerless items."""
        vocab = _vocab_size(model)
        pad = self._pad_id()
        if vocab is not None and not 0 <= pad < vocab:
            raise FalconDataError(
                f"FALCON: invalid pad_token_id={pad}: the model's input embedding has {vocab} rows (valid ids "
                f"0..{vocab - 1}); the tokenizer does not match the model"
            )
        dataset = self.train_dataset
        if dataset is None or not hasattr(dataset, "__len__"):
            return  # no data yet, or an iterable dataset: set-up checks the items it samples
        size = len(dataset)
        if size == 0:
            raise FalconDataError("FALCON: invalid train_dataset: it is empty (len 0); FALCON needs {'forget', 'retain'} items")
        # fork_rng: datasets may draw from the global RNG in __getitem__ (the host's pairs a random retain item)
        with torch.random.fork_rng(devices=[]):
            for index in range(0, size, max(1, size // DATA_CHECK_ITEMS))[:DATA_CHECK_ITEMS]:
                item = dataset[index]
                for part in ("forget", "retain"):
                    _check_example(_part_of(item, part, index), f"train_dataset[{index}][{part!r}]", vocab)

    def _resolve_trainable(self, model: nn.Module, layers_path: str, layer: int) -> list[str]:
        cfg = self.falcon_config
        patterns = cfg.trainable_params_regex or default_trainable_regex(layer)
        matched = [n for n, _ in model.named_parameters() if any(re.fullmatch(p, n) for p in patterns)]
        if not matched:
            raise FalconConfigError(
                f"FALCON method_args: invalid trainable_params_regex={list(patterns)!r}: no parameter matches "
                f"(set trainable_params_regex for {type(model).__name__})"
            )
        for name in matched:
            index = layer_index_of(name, layers_path)
            if index is None:
                raise FalconConfigError(
                    f"FALCON method_args: invalid trainable_params_regex: it matches {name!r}, outside the decoder "
                    f"layers ({layers_path}.N); FALCON trains tensors of layers <= l*={layer}"
                )
            if index > layer:
                raise FalconConfigError(
                    f"FALCON method_args: invalid trainable_params_regex: it matches {name!r} in layer {index} > "
                    f"l*={layer}; FALCON's losses live at layer l* and give it no gradient"
                )
        return matched

    # ------------------------------------------------------------------ train start
    def train(self, resume_from_checkpoint: str | bool | None = None, trial: Any = None, **kwargs: Any) -> Any:
        """Run Step 1 (if ``layer: auto``) and FALCON's set-up, then the Trainer's loop.

        ``TrainingArguments.resume_from_checkpoint`` is honoured when no argument is given (the
        host's ``src/train.py`` calls ``train()`` with none).
        """
        if resume_from_checkpoint is None and getattr(self.args, "resume_from_checkpoint", None):
            resume_from_checkpoint = self.args.resume_from_checkpoint
        checkpoint = self._checkpoint_path(resume_from_checkpoint)
        if checkpoint is not None:
            _check_resumable(checkpoint)
        self._setup(checkpoint)
        return super().train(resume_from_checkpoint=resume_from_checkpoint, trial=trial, **kwargs)  # type: ignore[misc]

    def _checkpoint_path(self, resume: str | bool | None) -> str | None:
        if not resume:
            return None
        if isinstance(resume, bool):
            from transformers.trainer_utils import get_last_checkpoint

            last = get_last_checkpoint(self.args.output_dir)
            if last is None:
                raise ValueError(f"resume_from_checkpoint=True but no checkpoint in {self.args.output_dir}")
            return last
        if not Path(resume).is_dir():
            raise ValueError(f"resume_from_checkpoint={resume!r} is not a checkpoint folder")
        return str(resume)

    def _setup(self, checkpoint: str | None) -> None:
        model = self._base_model()
        # A model partitioned by ZeRO-3 at load time (zero.Init, the host's accelerate default) has
        # empty parameters and no engine hooks yet: gather it for the set-up passes (MI, POV, frozen
        # copies), once, before training; no-op otherwise.
        with _gathered(list(model.parameters())):
            self._setup_gathered(model, checkpoint)

    def _setup_gathered(self, model: nn.Module, checkpoint: str | None) -> None:
        layers_path, layers = find_decoder_layers(model)
        restored = FalconState.load(checkpoint) if checkpoint else None
        if checkpoint and restored is None:
            logger.warning("FALCON: %s has no %s; recomputing FALCON's state (layer, POV, frozen tensors) from the "
                           "model as loaded, which must be this run's initial model", checkpoint, STATE_FILE)
        if restored is not None:
            logger.info("FALCON: restored layer l*=%d, POV and frozen tensors from %s", restored.layer, checkpoint)
            self._apply_trainable(model, restored.trainable_names)
            params = dict(model.named_parameters())
            restored.frozen = {k: v.to(params[k].device, params[k].dtype) for k, v in restored.frozen.items()}
            restored.pov = restored.pov.to(params[restored.trainable_names[0]].device)
            self.falcon_state = restored
            return
        report: MIReport | None = None
        if self.falcon_config.layer == "auto":
            report = self._select_layer(model)
            layer = report.chosen_layer
        else:
            layer = int(self.falcon_config.layer)
        names = self._resolve_trainable(model, layers_path, layer)
        self._apply_trainable(model, names)
        params = dict(model.named_parameters())
        frozen = {n: params[n].detach().clone() for n in names}
        first = min(layer_index_of(n, layers_path) for n in names)  # type: ignore[type-var]
        directions, pov = self._build_pov(model, layers, first, layer, frozen)
        self.falcon_state = FalconState(layer, first, names, frozen, pov, directions, report.to_dict() if report else None)
        logger.info("FALCON: l*=%d, trainable tensors %s", layer, names)

    def _apply_trainable(self, model: nn.Module, names: Sequence[str]) -> None:
        wanted = set(names)
        for name, param in model.named_parameters():
            param.requires_grad_(name in wanted)

    def _sample_parts(self, part: str, count: int, seed_offset: int) -> list[dict[str, torch.Tensor]]:
        dataset = self.train_dataset
        if dataset is None:
            raise ValueError("FALCON needs a train_dataset of {'forget', 'retain'} items")
        rng = random.Random(self.args.seed + seed_offset)
        indices = rng.sample(range(len(dataset)), min(count, len(dataset)))  # type: ignore[arg-type]
        vocab = _vocab_size(self._base_model())
        items = []
        with torch.random.fork_rng(devices=[]):  # as in _validate_train_data: leave the global RNG as it was
            examples = [(i, _part_of(dataset[i], part, i)) for i in indices]
        for i, example in examples:
            _check_example(example, f"train_dataset[{i}][{part!r}]", vocab)
            items.append({k: torch.as_tensor(v) for k, v in example.items() if k in ("input_ids", "attention_mask", "labels")})
        return items

    def _pad_id(self) -> int:
        tokenizer = getattr(self, "processing_class", None) or getattr(self, "tokenizer", None)
        pad = getattr(tokenizer, "pad_token_id", None)
        if pad is None:
            pad = getattr(tokenizer, "eos_token_id", None)
        return int(pad) if pad is not None else 0

    def _select_layer(self, model: nn.Module) -> MIReport:
        mi = self.falcon_config.mi
        forget = self._sample_parts("forget", mi.samples, 0)
        retain = self._sample_parts("retain", mi.samples, 1)
        report = run_mi_selection(model, [forget], retain, mi, pad_token_id=self._pad_id(),
                                  progress=self.is_world_process_zero())
        chosen = _broadcast_int(report.chosen_layer)
        if chosen != report.chosen_layer:
            logger.warning("FALCON: rank-0 layer %d overrides local MI choice %d", chosen, report.chosen_layer)
            report.chosen_layer = chosen
        if self.is_world_process_zero():
            json_path, _ = report.save(self.args.output_dir)
            logger.info("FALCON: MI report written to %s", json_path)
        return report

    def _build_pov(
        self, model: nn.Module, layers: nn.ModuleList, first: int, layer: int, frozen: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Principal directions of frozen forget activations at l* (answer tokens of a seeded sample) and H+."""
        samples = self._sample_parts("forget", POV_SAMPLES, 2)
        device = next(iter(frozen.values())).device
        rows = []
        for start in range(0, len(samples), self.falcon_config.mi.batch_size):
            batch = pad_examples(samples[start : start + self.falcon_config.mi.batch_size], self._pad_id())
            batch = {k: v.to(device) for k, v in batch.items()}
            record = frozen_prefix_pass(model, layers, first, layer, _model_inputs(batch), frozen)
            mask = token_mask(batch.get("labels"), batch.get("attention_mask"))
            rows.append(record.frozen_out[mask].float())
        activations = torch.cat(rows)
        if activations.shape[0] == 0:
            raise EmptyMaskError("FALCON: the sampled forget examples have no answer tokens (all labels are -100)")
        directions = principal_directions(activations, self.falcon_config.pov_rank)
        generator = torch.Generator().manual_seed(self.args.seed)
        pov = principal_offset_vector(directions, self.falcon_config.pov_weight, self.falcon_config.pov_noise, generator)
        return directions, pov

    def create_optimizer(self, *args: Any, **kwargs: Any) -> Any:
        """The Trainer's optimizer without empty parameter groups.

        FALCON trains only weight matrices, so the Trainer's no-weight-decay group is empty;
        DeepSpeed drops empty groups while the LR scheduler keeps one rate per group, and the first
        scheduler step fails (``zip() argument 2 is longer than argument 1``).
        """
        optimizer = super().create_optimizer(*args, **kwargs)  # type: ignore[misc]
        inner = getattr(optimizer, "optimizer", optimizer)
        inner.param_groups[:] = [group for group in inner.param_groups if group["params"]]
        return optimizer

    # ------------------------------------------------------------------ the step
    def compute_loss(self, model: nn.Module, inputs: Mapping[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None, **kwargs: Any) -> Any:
        """Losses at l*, per-loss gradients, projection; returns the surrogate (value L_F + L_R)."""
        if self.falcon_state is None:
            raise RuntimeError("FALCON set-up has not run: call train(), which runs it first")
        if "forget" not in inputs or "retain" not in inputs:
            raise ValueError(f"FALCON expects batches {{'forget': ..., 'retain': ...}}, got keys {sorted(inputs)}")
        state, cfg = self.falcon_state, self.falcon_config
        engine = model if getattr(self, "is_deepspeed_enabled", False) else None
        _deepspeed_forward_prologue(engine)
        base = self._base_model()
        _, layers = find_decoder_layers(base)
        params = dict(base.named_parameters())
        trainable = [params[n] for n in state.trainable_names]
        with self.accelerator.autocast():
            updated_f, frozen_f, mask_f = self._layer_pass(base, layers, inputs["forget"])
            updated_r, frozen_r, mask_r = self._layer_pass(base, layers, inputs["retain"])
        positive = cfg.steering_coeff * state.pov.to(updated_f.device)
        forget_loss = info_nce_forget_loss(updated_f, positive, frozen_f, mask_f, cfg.temperature)
        retain_loss = cfg.retain_weight * cosine_retain_loss(updated_r, frozen_r, mask_r)

        # L_F depends only on the forget pass and L_R only on the retain pass: two disjoint graphs,
        # so the two autograd.grad calls do no duplicate work.
        zero3 = any(hasattr(p, "ds_id") for p in trainable)
        g_f = _all_reduce_mean(list(torch.autograd.grad(forget_loss, trainable, retain_graph=zero3, materialize_grads=True)))
        g_r = _all_reduce_mean(list(torch.autograd.grad(retain_loss, trainable, retain_graph=zero3, materialize_grads=True)))
        combined = resolve_gradient_conflict(g_f, g_r, cfg.projection, cfg.conflict_weights, cfg.align_weights)

        self._check_finite(forget_loss, retain_loss, combined.grads)
        self._record(forget_loss, retain_loss, combined.cosines, combined.conflicts)
        if zero3:
            surrogate = self._zero3_surrogate(forget_loss + retain_loss, trainable, combined.grads)
        else:
            value = (forget_loss + retain_loss).detach()
            inner = sum((p * g.to(p.dtype)).sum() for p, g in zip(trainable, combined.grads, strict=True))
            surrogate = inner - inner.detach() + value  # gradient: combined update; value: L_F + L_R
        _deepspeed_forward_epilogue(engine, surrogate)
        return (surrogate, {"forget_loss": forget_loss.detach(), "retain_loss": retain_loss.detach()}) if return_outputs else surrogate

    def _zero3_surrogate(self, loss: torch.Tensor, trainable: Sequence[nn.Parameter],
                         grads: Sequence[torch.Tensor]) -> torch.Tensor:
        """ZeRO-3: return ``loss`` itself, with hooks that replace each trainable tensor's gradient.

        Under ZeRO-3 a parameter is an empty placeholder outside its module's forward/backward, so
        the surrogate ``sum(p * g)`` cannot be formed. Instead the engine backpropagates L_F + L_R
        through the modules (its hooks gather and release the parameters as usual) and a tensor hook
        on each trainable parameter swaps the gradient arriving there for ``s * g_combined``, where
        ``s`` is whatever factor the engine put on the loss (1/gradient_accumulation_steps, the fp16
        loss scale), recorded by an identity node at the root. The update is exactly the projected
        one; the cost is one more backward pass through layers first..l*. Hooks are removed when the
        training step ends.
        """
        scale: dict[str, torch.Tensor] = {}
        for param, grad in zip(trainable, grads, strict=True):
            def replace(incoming: torch.Tensor, grad: torch.Tensor = grad) -> torch.Tensor:
                return (scale["s"].to(incoming.dtype) * grad.to(incoming.dtype)).reshape(incoming.shape)

            self._falcon_grad_hooks.append(param.register_hook(replace))
        return _RecordScale.apply(loss, scale)

    def training_step(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The Trainer's step; removes the ZeRO-3 gradient hooks :meth:`compute_loss` may have set."""
        try:
            return super().training_step(*args, **kwargs)  # type: ignore[misc]
        finally:
            for handle in self._falcon_grad_hooks:
                handle.remove()
            self._falcon_grad_hooks.clear()

    def _layer_pass(self, base: nn.Module, layers: nn.ModuleList, batch: Mapping[str, torch.Tensor]):
        state = self.falcon_state
        assert state is not None
        record = frozen_prefix_pass(base, layers, state.first_layer, state.layer, _model_inputs(batch), state.frozen)
        updated = run_layers(layers, state.first_layer, record)
        mask = token_mask(batch.get("labels"), batch.get("attention_mask"))
        return updated, record.frozen_out, mask

    def _check_finite(self, forget_loss: torch.Tensor, retain_loss: torch.Tensor, grads: Sequence[torch.Tensor]) -> None:
        total = torch.stack([forget_loss.float(), retain_loss.float()] + [g.float().sum() for g in grads])
        if not bool(torch.isfinite(total).all()):
            step = self.state.global_step
            raise NonFiniteLossError(
                f"FALCON: non-finite value at training step {step + 1} (after {step} optimizer steps): "
                f"forget_loss={forget_loss.item()}, "
                f"retain_loss={retain_loss.item()}, finite grads={[bool(torch.isfinite(g).all()) for g in grads]}; "
                "stopping before the optimizer step so no corrupted checkpoint is written"
            )

    # ------------------------------------------------------------------ logging
    def _record(self, forget_loss: torch.Tensor, retain_loss: torch.Tensor, cosines: torch.Tensor,
                conflicts: torch.Tensor) -> None:
        for key, value in (
            ("falcon/forget_loss", forget_loss.detach().float()),
            ("falcon/retain_loss", retain_loss.detach().float()),
            ("falcon/grad_cosine", cosines.detach().float().mean()),
            ("falcon/projection_rate", conflicts.float().mean()),
        ):
            self._falcon_metrics.setdefault(key, []).append(value)

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """Add the mean of FALCON's metrics since the last log (one device sync per logging step)."""
        if self._falcon_metrics and "loss" in logs:
            for key, values in self._falcon_metrics.items():
                logs[key] = round(float(torch.stack(values).mean()), 6)
            logs["falcon/layer"] = self.falcon_layer
            self._falcon_metrics = {}
        super().log(logs, *args, **kwargs)  # type: ignore[misc]


def _check_decoder_only(model: nn.Module) -> None:
    """A Hugging Face model must be a decoder-only LM (an encoder-decoder or encoder has no causal activations)."""
    config = getattr(model, "config", None)
    if getattr(config, "is_encoder_decoder", False):
        raise ModelStructureError(
            f"FALCON: invalid model {type(model).__name__}: it is an encoder-decoder model "
            "(config.is_encoder_decoder=True); FALCON needs a decoder-only causal LM"
        )
    if isinstance(model, transformers.PreTrainedModel) and not model.can_generate():
        raise ModelStructureError(
            f"FALCON: invalid model {type(model).__name__}: it is not a causal LM (can_generate() is False); "
            "FALCON needs a decoder-only causal LM such as AutoModelForCausalLM loads"
        )


def _vocab_size(model: nn.Module) -> int | None:
    """Rows of the input embedding (what token ids may index), if the model exposes it."""
    get = getattr(model, "get_input_embeddings", None)
    embedding = get() if callable(get) else None
    size = getattr(embedding, "num_embeddings", None)
    return int(size) if isinstance(size, int) else None


def _part_of(item: Any, part: str, index: int) -> Mapping[str, Any]:
    if not isinstance(item, Mapping) or part not in item or not isinstance(item[part], Mapping):
        keys = sorted(item) if isinstance(item, Mapping) else type(item).__name__
        raise FalconDataError(
            f"FALCON: invalid train_dataset[{index}]: expected {{'forget': {{input_ids, ...}}, 'retain': {{...}}}}, "
            f"got {keys} (no {part!r} part)"
        )
    return item[part]


def _check_example(example: Mapping[str, Any], where: str, vocab: int | None) -> None:
    """One tokenised example: non-empty, ids inside the vocabulary, not all padding, some answer tokens."""
    if "input_ids" not in example:
        raise FalconDataError(f"FALCON: invalid {where}: no input_ids (keys: {sorted(example)})")
    ids = torch.as_tensor(example["input_ids"])
    if ids.numel() == 0:
        raise FalconDataError(f"FALCON: invalid {where}.input_ids=[]: an empty sequence")
    low, high = int(ids.min()), int(ids.max())
    if vocab is not None and (low < 0 or high >= vocab):
        bad = high if high >= vocab else low
        raise FalconDataError(
            f"FALCON: invalid {where}.input_ids: token id {bad} is outside the model's vocabulary 0..{vocab - 1} "
            f"(input embedding size {vocab}); the tokenizer does not match the model"
        )
    attention = example.get("attention_mask")
    attention = None if attention is None else torch.as_tensor(attention)
    if attention is not None and not bool(attention.bool().any()):
        raise FalconDataError(f"FALCON: invalid {where}.attention_mask: all 0 (the sequence is all padding)")
    labels = example.get("labels")
    if labels is not None and not bool(token_mask(torch.as_tensor(labels), attention).any()):
        raise FalconDataError(
            f"FALCON: invalid {where}.labels: all -100 on the attended tokens (no answer tokens for FALCON's losses)"
        )


def _check_resumable(checkpoint: str) -> None:
    """An exact resume needs the optimizer state (``optimizer.pt``, DeepSpeed's ``global_step*``, FSDP's ``optimizer_*``)."""
    names = [p.name for p in Path(checkpoint).iterdir()]
    if not any(n.startswith(("optimizer", "global_step")) for n in names):
        raise ValueError(
            f"FALCON: invalid resume_from_checkpoint={checkpoint!r}: it has no optimizer state (was it saved with "
            "save_only_model=True?), so the run cannot continue exactly; resume from a checkpoint saved with "
            "save_only_model=false, or start a new run from these weights"
        )


class _RecordScale(torch.autograd.Function):
    """Identity whose backward records the incoming gradient (the factor the engine applied to the loss)."""

    @staticmethod
    def forward(ctx: Any, loss: torch.Tensor, scale: dict[str, torch.Tensor]) -> torch.Tensor:
        ctx.scale = scale
        return loss.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        ctx.scale["s"] = grad.detach()
        return grad, None


def _deepspeed_forward_prologue(engine: Any) -> None:
    """What ``DeepSpeedEngine.forward`` does before the model runs, which FALCON's direct layer calls bypass.

    Recent DeepSpeed (checked: 0.19.8) readies its ZeRO optimizer for a new micro-batch at the start of
    ``engine.forward`` (``clear_backward_seen_flag``: ZeRO-3 advances its micro-step counter there;
    without it gradient accumulation overwrites instead of accumulating). Older versions do this in
    ``engine.backward``; a missing method is skipped. No-op without DeepSpeed.
    """
    optimizer = getattr(engine, "optimizer", None)
    clear = getattr(optimizer, "clear_backward_seen_flag", None)
    if engine is None or not callable(clear):
        return
    try:
        from deepspeed.runtime.base_optimizer import ZeROOptimizer
    except ImportError:
        return
    if isinstance(optimizer, ZeROOptimizer):  # the same condition as engine.forward's
        clear()


def _deepspeed_forward_epilogue(engine: Any, loss: torch.Tensor) -> None:
    """What ``DeepSpeedEngine.forward`` does with the model's output: its backward-prologue hooks on it.

    Recent DeepSpeed registers, on the forward outputs, the hooks that start its backward (the
    gradient-accumulation boundary, gradient-hook counting, timers). FALCON's loss does not come out
    of ``engine.forward``, so they are registered on it here; skipped where DeepSpeed lacks them.
    """
    prologue = getattr(engine, "_backward_prologue", None)
    per_tensor = getattr(engine, "_backward_prologue_per_tensor", None)
    if engine is None or not callable(prologue):
        return
    try:
        from deepspeed.runtime.utils import register_output_backward_hooks
    except ImportError:
        return
    register_output_backward_hooks(loss, preprocess_once_fn=prologue, preprocess_per_tensor_fn=per_tensor)


def _gathered(params: Sequence[nn.Parameter]) -> Any:
    """``deepspeed.zero.GatheredParameters`` (read-only) when some of ``params`` are ZeRO-3 partitioned, else a no-op."""
    if not any(hasattr(p, "ds_id") for p in params):
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(params), modifier_rank=None)


def _model_inputs(batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: batch[k] for k in ("input_ids", "attention_mask") if k in batch}


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1


def _all_reduce_mean(grads: list[torch.Tensor]) -> list[torch.Tensor]:
    """Average gradients over processes so the projection sees the global g_F and g_R."""
    if not _distributed():
        return grads
    flat = torch.cat([g.reshape(-1).float() for g in grads])
    torch.distributed.all_reduce(flat)
    flat /= torch.distributed.get_world_size()
    out, offset = [], 0
    for g in grads:
        out.append(flat[offset : offset + g.numel()].view_as(g).to(g.dtype))
        offset += g.numel()
    return out


def _broadcast_int(value: int) -> int:
    if not _distributed():
        return value
    backend = torch.distributed.get_backend()
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    tensor = torch.tensor([value], device=device)
    torch.distributed.broadcast(tensor, src=0)
    return int(tensor.item())


def falcon_trainer_class(base: type) -> type:
    """A trainer class named ``FALCON`` with FALCON's behaviour on top of ``base`` (e.g. the host's UnlearnTrainer)."""
    if not (isinstance(base, type) and issubclass(base, transformers.Trainer)):
        raise TypeError(f"FALCON needs a transformers.Trainer subclass as base, got {base!r}")
    return type("FALCON", (FalconMixin, base), {"__module__": __name__, "__doc__": FalconMixin.__doc__})


class FALCON(FalconMixin, transformers.Trainer):
    """Standalone FALCON trainer (no open-unlearning needed); accepts the host's constructor arguments."""

    def __init__(self, *args: Any, evaluators: Any = None, template_args: Any = None, **kwargs: Any) -> None:
        self.evaluators = evaluators
        self.template_args = template_args
        super().__init__(*args, **kwargs)


__all__ = ["FALCON", "FalconMixin", "FalconState", "NonFiniteLossError", "falcon_trainer_class"]
