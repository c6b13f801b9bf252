"""Two reference unlearning methods consuming FALCON's batches, for side-by-side comparisons.

Both are ``transformers.Trainer`` subclasses built like open-unlearning's trainers
(``cls(model=, train_dataset=, tokenizer=, data_collator=, args=, **method_args)``) and read batches
``{"forget": {input_ids, attention_mask, labels}, "retain": {...}}``:

* :class:`GradDiff` -- gradient difference: ``gamma * (-NLL(forget)) + alpha * NLL(retain)``.
* :class:`RMUBaseline` -- representation misdirection in the style of RMU (Li et al., 2024): at one
  layer, push the forget activations towards a fixed random direction scaled by ``steering_coeff``
  and keep the retain activations at a frozen copy's (both MSE over answer tokens), training only
  the MLP down-projections of the two layers below it and itself.

These are written from the papers for this package's demo; inside open-unlearning use the host's own
``GradDiff`` / ``RMU`` trainers.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
import transformers
from torch import nn

from falcon_plugin.activations import find_decoder_layers, forward_until, layer_output
from falcon_plugin.config import OFFICIAL_TRAINABLE_MODULES, default_trainable_regex
from falcon_plugin.hf_compat import trainer_init_kwargs
from falcon_plugin.masks import token_mask


def _model_inputs(batch: Mapping[str, torch.Tensor], with_labels: bool) -> dict[str, torch.Tensor]:
    keys = ("input_ids", "attention_mask", "labels") if with_labels else ("input_ids", "attention_mask")
    return {k: batch[k] for k in keys if k in batch}


def _check_batch(inputs: Mapping[str, Any], method: str) -> None:
    if "forget" not in inputs or "retain" not in inputs:
        raise ValueError(
            f"{method} expects batches {{'forget': ..., 'retain': ...}}, got keys {sorted(inputs)}"
        )


class _UnlearnBase(transformers.Trainer):
    """Accepts the host's constructor arguments (``tokenizer``, ``evaluators``, ``template_args``)."""

    def __init__(self, *args: Any, evaluators: Any = None, template_args: Any = None, **kwargs: Any) -> None:
        self.evaluators = evaluators
        self.template_args = template_args
        super().__init__(*args, **trainer_init_kwargs(kwargs))
        self.args.remove_unused_columns = False


class GradDiff(_UnlearnBase):
    """Gradient ascent on the forget set plus gradient descent on the retain set."""

    def __init__(self, *args: Any, gamma: float = 1.0, alpha: float = 1.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gamma = float(gamma)
        self.alpha = float(alpha)

    def compute_loss(
        self,
        model: nn.Module,
        inputs: Mapping[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
        **kwargs: Any,
    ) -> Any:
        _check_batch(inputs, "GradDiff")
        forget_out = model(**_model_inputs(inputs["forget"], with_labels=True))
        retain_out = model(**_model_inputs(inputs["retain"], with_labels=True))
        loss = -self.gamma * forget_out.loss + self.alpha * retain_out.loss
        return (loss, forget_out) if return_outputs else loss


class RMUBaseline(_UnlearnBase):
    """RMU-style representation misdirection at decoder layer ``layer``.

    Args:
        layer: decoder layer whose output is steered (negative counts from the end).
        steering_coeff: norm of the random target vector for forget activations.
        alpha: weight of the retain MSE.
        trainable_params_regex: parameters to train (``re.fullmatch``); default: the MLP down-projections
            of layers ``layer-2..layer`` (as the RMU reference code).
    """

    def __init__(
        self,
        *args: Any,
        layer: int = -1,
        steering_coeff: float = 20.0,
        alpha: float = 100.0,
        trainable_params_regex: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        model = self.model
        path, layers = find_decoder_layers(model)
        self.layer = layer % len(layers)
        self.steering_coeff = float(steering_coeff)
        self.alpha = float(alpha)
        if trainable_params_regex is None:
            trainable_params_regex = list(
                default_trainable_regex(self.layer, path, OFFICIAL_TRAINABLE_MODULES)
            )
        self.trainable_names = [
            n for n, _ in model.named_parameters() if any(re.fullmatch(p, n) for p in trainable_params_regex)
        ]
        if not self.trainable_names:
            raise ValueError(
                f"RMU: trainable_params_regex {list(trainable_params_regex)} matches no parameter"
            )
        for name, param in model.named_parameters():
            param.requires_grad_(name in self.trainable_names)
        self.ref_model = copy.deepcopy(model).eval().requires_grad_(False)
        hidden = int(model.config.hidden_size)
        generator = torch.Generator().manual_seed(self.args.seed)
        direction = torch.rand(hidden, generator=generator)
        self.control_vec = self.steering_coeff * direction / direction.norm()

    def _activation(self, model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        _, layers = find_decoder_layers(model)
        captured: dict[str, torch.Tensor] = {}

        def hook(_m: nn.Module, _a: Any, output: Any) -> None:
            captured["h"] = layer_output(output)

        handle = layers[self.layer].register_forward_hook(hook)
        try:
            forward_until(model, _model_inputs(batch, with_labels=False), layers[self.layer])
        finally:
            handle.remove()
        return captured["h"]

    def compute_loss(
        self,
        model: nn.Module,
        inputs: Mapping[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
        **kwargs: Any,
    ) -> Any:
        _check_batch(inputs, "RMU")
        forget, retain = inputs["forget"], inputs["retain"]
        mask_f = token_mask(forget.get("labels"), forget.get("attention_mask"))
        mask_r = token_mask(retain.get("labels"), retain.get("attention_mask"))
        h_f = self._activation(model, forget)[mask_f].float()
        target = self.control_vec.to(h_f.device).expand_as(h_f)
        forget_loss = F.mse_loss(h_f, target)
        h_r = self._activation(model, retain)[mask_r].float()
        self.ref_model.to(h_r.device)
        with torch.no_grad():
            ref_r = self._activation(self.ref_model, retain)[mask_r].float()
        retain_loss = F.mse_loss(h_r, ref_r)
        loss = forget_loss + self.alpha * retain_loss
        return (
            (loss, {"forget_loss": forget_loss.detach(), "retain_loss": retain_loss.detach()})
            if return_outputs
            else loss
        )


__all__ = ["GradDiff", "RMUBaseline"]
