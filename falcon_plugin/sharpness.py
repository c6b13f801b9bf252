"""Sharpness-aware forget gradient: FALCON's Step 2 made robust to relearning (``sam_rho``).

A relearning attack fine-tunes the unlearned weights θ a little on forget data, which raises the forget
loss again. Fan et al. (ICML 2025, arXiv 2502.05374, Sec. 4) cast robust unlearning as the min-max

    min_θ  max_{‖δ‖₂ ≤ ρ}  L_F(θ + δ)  (+ the retain loss),

and solve the inner maximisation as sharpness-aware minimisation does (Foret et al., ICLR 2021): one
ascent step of length ρ along the normalised forget gradient,

    δ = ρ g_F / ‖g_F‖₂,   g_F^SAM = ∇L_F(θ + δ),

so the forget loss is driven down where a small weight change cannot bring it back up. Here θ is
FALCON's trainable tensors only (the norm is over all of them together, as one vector), L_F the
InfoNCE forget loss at l* (paper Eq. 6), and g_F^SAM replaces g_F in the gradient projection
(:mod:`falcon_plugin.projection`); the retain gradient is unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch


def sam_perturbation(grads: Sequence[torch.Tensor], rho: float) -> list[torch.Tensor]:
    """δ = ρ g / ‖g‖₂ for the gradient g given tensor by tensor (one norm over all of them, in float32).

    A zero gradient gives a zero δ (there is no ascent direction), never NaN.
    """
    if rho <= 0:
        raise ValueError(f"rho must be > 0, got {rho}")
    if not grads:
        return []
    norm = torch.sqrt(sum(g.detach().float().pow(2).sum().to(grads[0].device) for g in grads))
    scale = torch.where(
        norm > 0, rho / norm.clamp_min(torch.finfo(torch.float32).tiny), torch.zeros_like(norm)
    )
    return [(g.detach().float() * scale.to(g.device)).to(g.dtype) for g in grads]


@contextlib.contextmanager
def perturbed(params: Sequence[torch.Tensor], deltas: Sequence[torch.Tensor]) -> Iterator[None]:
    """Inside the block the parameters are θ + δ; after it they are bit for bit what they were.

    The originals are copied and written back (not δ subtracted), so low-precision weights come back
    exactly; the copy is of the trainable tensors only.
    """
    if len(params) != len(deltas):
        raise ValueError(f"{len(params)} parameters but {len(deltas)} perturbations")
    saved = [p.detach().clone() for p in params]
    try:
        with torch.no_grad():
            for param, delta in zip(params, deltas, strict=True):
                param.add_(delta.to(device=param.device, dtype=param.dtype))
        yield
    finally:
        with torch.no_grad():
            for param, original in zip(params, saved, strict=True):
                param.copy_(original)


__all__ = ["perturbed", "sam_perturbation"]
