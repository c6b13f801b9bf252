"""The training-step implementations ``benchmarks/step.py`` compares: ours, the official scheme, RMU, a floor.

* ``ours``: the trainer's exact step: ``FALCON.compute_loss`` (frozen prefix pass 0..l* and a grad
  pass through the trainable layers, per-loss ``autograd.grad``, projection), ``backward`` of the
  surrogate, ``AdamW.step`` on the trainable tensors;
* ``official``: the official FALCON loop (github CharlesJW222/FALCON ``falcon/unlearning.py``): two
  full models, four full forwards with a hook at l*, two ``backward(retain_graph=True)``, per-tensor
  projection with ``.item()`` host syncs, optimizer step;
* ``rmu``: open-unlearning's RMU step (``src/trainer/unlearn/rmu.py`` under the HF Trainer):
  deep-copied reference model, full forwards (with labels) and a hook at l*, MSE losses, one
  backward, optimizer step;
* ``floor``: two no-grad forwards through layers 0..l* only (forget and retain).

Every variant trains the same tensors (FALCON's default: the MLP down-projections of layers
l*-2..l*) with the same optimizer; FALCON's coefficients come from ``FalconConfig()``.
"""

from __future__ import annotations

import copy
import re
import shutil
import tempfile

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.datasets import BenchData, split_rows, to_device
from benchmarks.forward import decoder_layers, forward_to_layer, forward_with_cache
from falcon_plugin.config import OFFICIAL_TRAINABLE_MODULES, FalconConfig, default_trainable_regex
from falcon_plugin.masks import IGNORE_INDEX

VARIANTS = ("ours", "official", "rmu", "floor")
DESCRIPTIONS = {
    "ours": "FALCON.compute_loss (prefix pass 0..l* no-grad + grad pass first..l*) + backward + AdamW",
    "official": "2 models, 4 full forwards, 2 backward(retain_graph), per-tensor projection with .item(), "
    "step",
    "rmu": "host RMU: ref deepcopy, 3 full forwards (labels), MSE, 1 backward, step",
    "floor": "2 no-grad forwards through layers 0..l* (forget, retain)",
}
LR = 1e-5
FALCON_DEFAULTS = FalconConfig()
"""The coefficients of the official variant: FALCON's own defaults (the paper's / official code's)."""
RMU_STEERING_COEFF = 20.0
"""Norm of RMU's control vector here (the value does not change the cost of a step)."""


def trainable_names(model: nn.Module, layer: int) -> list[str]:
    """The benchmark's trainable tensors: the official code's (MLP down-projections of layers l*-2..l*).

    Every variant, FALCON's included, trains these, so the step costs compare like with like.
    """
    from falcon_plugin.activations import find_decoder_layers

    patterns = default_trainable_regex(layer, find_decoder_layers(model)[0], OFFICIAL_TRAINABLE_MODULES)
    return [name for name, _ in model.named_parameters() if any(re.fullmatch(p, name) for p in patterns)]


class StepVariant:
    """One training-step implementation: set up in ``__init__`` (untimed), ``step()`` is timed."""

    name = ""

    def step(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release temporary resources (untimed)."""


class OursStep(StepVariant):
    """The plugin's step through ``falcon_plugin.trainer.FALCON`` (its ``compute_loss``, as in training)."""

    name = "ours"

    def __init__(self, model: nn.Module, data: BenchData, layer: int, device: torch.device) -> None:
        from transformers import TrainingArguments

        from falcon_plugin.data import ForgetRetainDataset
        from falcon_plugin.trainer import FALCON

        self.model = model
        self.tmpdir = tempfile.mkdtemp(prefix="falcon-bench-")
        dataset = ForgetRetainDataset(split_rows(data.forget), split_rows(data.retain), seed=0)
        args = TrainingArguments(
            output_dir=self.tmpdir,
            report_to="none",
            use_cpu=device.type == "cpu",
            seed=0,
            per_device_train_batch_size=data.forget["input_ids"].shape[0],
            save_strategy="no",
            disable_tqdm=True,
        )
        self.trainer = FALCON(
            model=model,
            args=args,
            train_dataset=dataset,
            layer=layer,
            trainable_modules=OFFICIAL_TRAINABLE_MODULES,
        )
        self.trainer._setup(None)  # what train() runs first: trainable flags, frozen copies, POV
        state = self.trainer.falcon_state
        assert state is not None
        params = dict(model.named_parameters())
        self.params = [params[n] for n in state.trainable_names]
        self.optimizer = torch.optim.AdamW(self.params, lr=LR)
        self.inputs = {"forget": to_device(data.forget, device), "retain": to_device(data.retain, device)}

    def step(self) -> None:
        loss = self.trainer.compute_loss(self.model, self.inputs)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def close(self) -> None:
        shutil.rmtree(self.tmpdir, ignore_errors=True)


def _unit_vector(dim: int, seed: int = 0) -> torch.Tensor:
    vector = torch.randn(dim, generator=torch.Generator().manual_seed(seed))
    return vector / vector.norm()


class OfficialStep(StepVariant):
    """The official FALCON loop body (``falcon/unlearning.py`` + ``algorithms.py``), re-written here.

    As there: every parameter of the train model keeps ``requires_grad=True`` (only the optimizer's
    tensors are zeroed), the reference model is a second full model, each activation comes from a
    full forward (LM head included) with a forward hook at l*, and the projection decides per tensor
    on the host (``cos.item()``). The optimizer is AdamW here (the official code uses SophiaG) so
    every variant pays the same update; the steering vector is made once, untimed.
    """

    name = "official"

    def __init__(self, model: nn.Module, data: BenchData, layer: int, device: torch.device) -> None:
        self.train_model = model.train()
        for param in model.parameters():
            param.requires_grad_(True)
        self.ref_model = copy.deepcopy(model).eval()
        self.train_module = decoder_layers(self.train_model)[layer]
        self.ref_module = decoder_layers(self.ref_model)[layer]
        params = dict(self.train_model.named_parameters())
        self.params = [params[n] for n in trainable_names(model, layer)]
        self.optimizer = torch.optim.AdamW(self.params, lr=LR)
        self.steer = (
            _unit_vector(model.config.hidden_size).to(device, next(model.parameters()).dtype).view(1, 1, -1)
        )
        self.forget = to_device(data.forget, device)
        self.retain = to_device(data.retain, device)

    @staticmethod
    def contrastive_loss(
        anchor: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor
    ) -> torch.Tensor:
        anchor, positive = F.normalize(anchor, dim=-1), F.normalize(positive, dim=-1)
        negatives = F.normalize(negatives, dim=-1).unsqueeze(2)
        pos = torch.sum(anchor * positive, dim=-1, keepdim=True)
        neg = torch.einsum("bld,blnd->bln", anchor, negatives)
        logits = torch.cat([pos, neg], dim=-1) / FALCON_DEFAULTS.temperature
        target = torch.zeros(logits.size(0) * logits.size(1), dtype=torch.long, device=logits.device)
        return F.cross_entropy(logits.view(-1, logits.size(-1)), target)

    @staticmethod
    def project(
        unlearn: list[torch.Tensor], retain: list[torch.Tensor]
    ) -> tuple[list[torch.Tensor], list[float]]:
        conflict, align = FALCON_DEFAULTS.conflict_weights, FALCON_DEFAULTS.align_weights
        combined, cosines = [], []
        for u, r in zip(unlearn, retain, strict=True):
            cos = F.cosine_similarity(u.view(-1), r.view(-1), dim=0)
            cosines.append(cos.item())
            if cos < 0:
                proj = u - (torch.dot(u.view(-1), r.view(-1)) / torch.dot(r.view(-1), r.view(-1))) * r
                combined.append(conflict[0] * proj + conflict[1] * r)
            else:
                combined.append(align[0] * u + align[1] * r)
        return combined, cosines

    def step(self) -> None:
        train_forget = forward_with_cache(self.train_model, self.forget, self.train_module, grad=True)
        ref_forget = forward_with_cache(self.ref_model, self.forget, self.ref_module, grad=False)
        train_retain = forward_with_cache(self.train_model, self.retain, self.train_module, grad=True)
        ref_retain = forward_with_cache(self.ref_model, self.retain, self.ref_module, grad=False)
        steering = (
            self.steer.expand(train_forget.size(0), train_forget.size(1), -1) * FALCON_DEFAULTS.steering_coeff
        )
        unlearn_loss = self.contrastive_loss(train_forget, steering, ref_forget)
        retain_loss = (
            1 - F.cosine_similarity(train_retain, ref_retain, dim=-1).mean()
        ) * FALCON_DEFAULTS.retain_weight
        self.optimizer.zero_grad()
        unlearn_loss.backward(retain_graph=True)
        unlearn_grads = [p.grad.clone() for p in self.params]
        self.optimizer.zero_grad()
        retain_loss.backward(retain_graph=True)
        retain_grads = [p.grad.clone() for p in self.params]
        final, _cosines = self.project(unlearn_grads, retain_grads)
        for param, grad in zip(self.params, final, strict=True):
            param.grad = grad
        self.optimizer.step()
        # the official loop's per-step logging: three loss .item() calls and the update size
        _ = unlearn_loss.item() + retain_loss.item(), self.params[0].grad.abs().mean().item()


class RMUStep(StepVariant):
    """open-unlearning's RMU step (``src/trainer/unlearn/rmu.py``) as the HF Trainer runs it, re-written here.

    As there: the reference model is a deep copy; ``create_optimizer`` builds the optimizer on the
    trainable tensors and then sets ``requires_grad=True`` on *every* parameter, so the backward
    computes gradients down to the embeddings; forwards carry ``labels`` (the LM loss is computed
    and discarded); ``retain_loss_type: EMBED_DIFF`` (configs/trainer/RMU.yaml); the Trainer's
    ``model.zero_grad()`` after each step. No gradient clipping (no variant clips).
    """

    name = "rmu"

    def __init__(self, model: nn.Module, data: BenchData, layer: int, device: torch.device) -> None:
        self.model = model.train()
        self.ref_model = copy.deepcopy(model).eval()
        params = dict(model.named_parameters())
        self.params = [params[n] for n in trainable_names(model, layer)]
        self.optimizer = torch.optim.AdamW(self.params, lr=LR)
        for param in model.parameters():
            param.requires_grad_(True)
        self.module = decoder_layers(self.model)[layer]
        self.ref_module = decoder_layers(self.ref_model)[layer]
        self.control = (
            _unit_vector(model.config.hidden_size, seed=1).abs().view(1, 1, -1) * RMU_STEERING_COEFF
        )
        self.forget = to_device(data.forget, device)
        self.retain = to_device(data.retain, device)
        self.gamma, self.alpha = 1.0, 1.0

    @staticmethod
    def activation_loss(
        activation1: torch.Tensor, activation2: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        squared = F.mse_loss(activation1, activation2, reduction="none")
        summed = (squared * mask.unsqueeze(-1).expand_as(squared)).mean(dim=2).sum(dim=1)
        return (summed / mask.sum(dim=-1, keepdim=True)).mean()  # (b,)/(b,1) broadcast, as the host

    def compute_loss(self) -> torch.Tensor:
        forget_acts = forward_with_cache(self.model, self.forget, self.module, grad=True, with_labels=True)
        control = self.control.to(forget_acts.device, forget_acts.dtype).expand_as(forget_acts)
        forget_loss = self.activation_loss(forget_acts, control, self.forget["labels"] != IGNORE_INDEX)
        retain_acts = forward_with_cache(self.model, self.retain, self.module, grad=True, with_labels=True)
        ref_acts = forward_with_cache(
            self.ref_model, self.retain, self.ref_module, grad=False, with_labels=True
        )
        retain_loss = self.activation_loss(retain_acts, ref_acts, self.retain["labels"] != IGNORE_INDEX)
        return self.gamma * forget_loss + self.alpha * retain_loss

    def step(self) -> None:
        loss = self.compute_loss()
        loss.backward()
        self.optimizer.step()
        self.model.zero_grad(set_to_none=True)


class FloorStep(StepVariant):
    """The floor: two no-grad forwards through layers 0..l* only."""

    name = "floor"

    def __init__(self, model: nn.Module, data: BenchData, layer: int, device: torch.device) -> None:
        self.model = model.eval()
        self.layer = decoder_layers(model)[layer]
        self.forget = to_device(data.forget, device)
        self.retain = to_device(data.retain, device)

    def step(self) -> None:
        with torch.no_grad():
            forward_to_layer(self.model, self.forget, self.layer)
            forward_to_layer(self.model, self.retain, self.layer)


VARIANT_CLASSES: dict[str, type[StepVariant]] = {
    "ours": OursStep,
    "official": OfficialStep,
    "rmu": RMUStep,
    "floor": FloorStep,
}


def build_variant(
    name: str, model: nn.Module, data: BenchData, layer: int, device: torch.device
) -> StepVariant:
    """Set up variant ``name`` on ``model`` (which it may modify: pass a copy to keep the original)."""
    return VARIANT_CLASSES[name](model, data, layer, device)  # type: ignore[call-arg]
