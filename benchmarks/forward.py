"""Forward passes with a hook at one decoder layer, for the reference steps ours is compared with."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

Example = dict[str, torch.Tensor]


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of a Llama-style model (``model.model.layers``)."""
    from falcon_plugin.activations import find_decoder_layers

    return find_decoder_layers(model)[1]


class _Stop(Exception):
    """Raised by a forward hook to end a pass after a given layer."""


def forward_to_layer(model: nn.Module, inputs: Example, layer: nn.Module) -> torch.Tensor:
    """Run ``model`` on ``inputs`` and stop after ``layer``; returns that layer's hidden states."""
    captured: dict[str, torch.Tensor] = {}

    def hook(_module: nn.Module, _args: Any, output: Any) -> None:
        captured["out"] = output[0] if isinstance(output, tuple | list) else output
        raise _Stop

    handle = layer.register_forward_hook(hook)
    try:
        with contextlib.suppress(_Stop):
            model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False)
    finally:
        handle.remove()
    return captured["out"]


def forward_with_cache(
    model: nn.Module, inputs: Example, module: nn.Module, grad: bool, with_labels: bool = False
) -> torch.Tensor:
    """A full forward (every layer and the LM head) with a hook caching ``module``'s output."""
    cache: list[torch.Tensor] = []

    def hook(_module: nn.Module, _args: Any, output: Any) -> None:
        cache.append(output[0] if isinstance(output, tuple | list) else output)

    keys = ("input_ids", "attention_mask", "labels") if with_labels else ("input_ids", "attention_mask")
    handle = module.register_forward_hook(hook)
    try:
        with torch.set_grad_enabled(grad):
            model(**{k: inputs[k] for k in keys})
    finally:
        handle.remove()
    return cache[0]
