"""Step 2.1b: FALCON's contrastive forget loss and cosine retain loss (pure tensor functions).

Both losses are computed in float32 whatever the model's dtype, and only over the tokens a boolean
mask selects: the host marks prompt and padding tokens with ``labels == -100``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import EmptyMaskError
from .masks import IGNORE_INDEX, token_mask  # noqa: F401 (re-exported; home: falcon_plugin.masks)


def _select(tensor: torch.Tensor, mask: torch.Tensor, what: str) -> torch.Tensor:
    if mask.shape != tensor.shape[: mask.dim()]:
        raise ValueError(
            f"{what}: mask shape {tuple(mask.shape)} does not match activations {tuple(tensor.shape)}"
        )
    if not bool(mask.any()):
        raise EmptyMaskError(f"{what}: no token selected (every sequence is padding or has no answer tokens)")
    return tensor[mask].float()


def info_nce_token_losses(
    anchor: torch.Tensor,
    positive: torch.Tensor,
    negatives: torch.Tensor,
    mask: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """The per-token terms of FALCON's InfoNCE forget loss (paper Eq. 6), shape (N,) for N masked tokens.

    For each selected token with updated activation a (the anchor), positive p and negatives n_j:

        l = -log( exp(cos(a, p)/tau) / (exp(cos(a, p)/tau) + sum_j exp(cos(a, n_j)/tau)) )

    Args:
        anchor: updated-model activations at layer l*, shape (B, T, D).
        positive: the scaled principal offset vector, shape (D,) (shared) or (B, T, D).
        negatives: frozen-model activations, shape (B, T, D) (one negative per token, as the
            official code) or (B, T, M, D).
        mask: boolean (B, T), the tokens that count.
        temperature: tau > 0.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    a = F.normalize(_select(anchor, mask, "forget loss"), dim=-1)  # (N, D)
    if positive.dim() == 1:
        p = F.normalize(positive.float(), dim=-1).expand_as(a)
    else:
        p = F.normalize(_select(positive, mask, "forget loss positive"), dim=-1)
    n = F.normalize(_select(negatives, mask, "forget loss negatives"), dim=-1)
    if n.dim() == 2:
        n = n.unsqueeze(1)  # (N, 1, D)
    positive_logit = (a * p).sum(-1, keepdim=True)  # (N, 1)
    negative_logits = torch.einsum("nd,nmd->nm", a, n)  # (N, M)
    logits = torch.cat([positive_logit, negative_logits], dim=-1) / temperature
    return torch.logsumexp(logits, dim=-1) - logits[:, 0]


def floored_mean(token_losses: torch.Tensor, floor: float | None) -> torch.Tensor:
    """mean_t max(l_t, floor): a token whose term is below ``floor`` adds ``floor`` and no gradient.

    ``floor`` None is the plain mean (the paper's L_F). With a floor the forget loss has a minimum it
    reaches (every token at or below the floor) instead of falling for as long as training runs: the
    forgetting stops at a set depth of the contrastive objective rather than wherever the step
    budget ends (docs/results/README.md).
    """
    if floor is None:
        return token_losses.mean()
    return token_losses.clamp_min(floor).mean()


def info_nce_forget_loss(
    anchor: torch.Tensor,
    positive: torch.Tensor,
    negatives: torch.Tensor,
    mask: torch.Tensor,
    temperature: float,
    floor: float | None = None,
) -> torch.Tensor:
    """InfoNCE forget loss L_F of FALCON (paper Eq. 6): the mean over the masked tokens of
    :func:`info_nce_token_losses`, each term clamped from below at ``floor`` when one is given
    (:func:`floored_mean`)."""
    return floored_mean(info_nce_token_losses(anchor, positive, negatives, mask, temperature), floor)


def cosine_retain_loss(updated: torch.Tensor, frozen: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Retain loss L_R = 1 - mean_t cos(h_updated_t, h_frozen_t) over the masked tokens (paper Eq. 7)."""
    u = _select(updated, mask, "retain loss")
    f = _select(frozen, mask, "retain loss reference")
    return 1.0 - F.cosine_similarity(u, f, dim=-1).mean()
