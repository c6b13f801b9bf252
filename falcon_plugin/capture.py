"""Step 1 glue: pooled activations of every decoder layer, one forward pass per batch.

Forward hooks on every decoder layer pool each layer's output (the last position, or the mean over
the positions, that carry the answer when the batch has labels; else over all non-pad tokens) as
the pass goes, so memory holds (layers, batch, hidden) rather than full
sequences; the pass stops after the last decoder layer (no final norm, no lm_head).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

from .activations import _hooks, find_decoder_layers, forward_until, layer_output
from .data import MODEL_INPUT_KEYS
from .masks import token_mask


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Pool (B, T, D) hidden states to (B, D) over the tokens ``attention_mask`` keeps.

    ``last``: the last kept position (works for left and right padding); ``mean``: their mean.
    """
    mask = attention_mask.to(hidden.device).bool()
    if not bool(mask.any(dim=1).all()):
        raise ValueError(
            "a sequence in the batch has no position to pool: "
            "it is all padding, or (with labels) has no answer tokens"
        )
    if pooling == "last":
        positions = torch.arange(mask.shape[1], device=hidden.device).expand_as(mask)
        last = torch.where(mask, positions, -1).max(dim=1).values
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    if pooling == "mean":
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1)
    raise ValueError(f"unknown pooling {pooling!r}; expected last or mean")


@torch.no_grad()
def capture_layer_activations(
    model: nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    pooling: str = "last",
    progress: bool = False,
    description: str = "capturing activations",
) -> torch.Tensor:
    """Pooled outputs of all decoder layers for every sample: float32 CPU tensor (layers, samples, hidden)."""
    _, layers = find_decoder_layers(model)
    device = next(model.parameters()).device
    per_layer: list[list[torch.Tensor]] = [[] for _ in layers]
    mask_holder: dict[str, torch.Tensor] = {}

    def make_hook(index: int):
        def hook(_module: nn.Module, _args: object, output: object) -> None:
            pooled = pool(layer_output(output), mask_holder["mask"], pooling)
            per_layer[index].append(pooled.float().cpu())

        return hook

    iterator = batches
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(batches, desc=description, unit="batch")
    was_training = model.training
    model.eval()
    try:
        with _hooks([layer.register_forward_hook(make_hook(i)) for i, layer in enumerate(layers)]):
            for batch in iterator:
                inputs = {k: batch[k].to(device) for k in MODEL_INPUT_KEYS}
                # with labels, pool over the positions that carry the answer (the official code pools
                # the last token of "Question: ... Answer: ..." text: the last answer word, not EOS)
                mask_holder["mask"] = token_mask(batch.get("labels"), batch["attention_mask"]).to(device)
                forward_until(model, inputs, layers[-1])
    finally:
        model.train(was_training)
    if not per_layer[0]:
        raise ValueError("no batch to capture activations from")
    return torch.stack([torch.cat(chunks) for chunks in per_layer])
