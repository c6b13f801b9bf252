"""Step 2.2: gradient conflict resolution by orthogonal projection (pure tensor functions).

When the forget and retain gradients conflict, cos(g_F, g_R) < 0, the forget gradient loses its
component along g_R (paper Eq. 8):

    g_F <- g_F - (g_F . g_R / ||g_R||^2) g_R,

and the update is alpha g_F + beta g_R, with (alpha, beta) = ``conflict_weights`` under conflict and
``align_weights`` otherwise (the official code's per-tensor scheme). ``global`` takes one decision
on the concatenation of all trainable tensors. Everything stays on the device: no host sync.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

EPS = 1e-12


@dataclass(frozen=True)
class ProjectionResult:
    """Combined gradients plus what to log."""

    grads: list[torch.Tensor]
    cosines: torch.Tensor
    """cos(g_F, g_R) per decision group (one per tensor, or one for ``global``)."""
    conflicts: torch.Tensor
    """Boolean per group: whether the projection was applied."""


def _combine(
    g_f: torch.Tensor,
    g_r: torch.Tensor,
    dot: torch.Tensor,
    rr: torch.Tensor,
    conflict: torch.Tensor,
    conflict_weights: tuple[float, float],
    align_weights: tuple[float, float],
) -> torch.Tensor:
    # conflict: a_c (g_F - c g_R) + b_c g_R = a_c g_F + (b_c - a_c c) g_R ; aligned: a_a g_F + b_a g_R
    coef = dot / rr.clamp_min(EPS)
    a_c, b_c = conflict_weights
    a_a, b_a = align_weights
    alpha = torch.where(conflict, torch.full_like(dot, a_c), torch.full_like(dot, a_a))
    beta = torch.where(conflict, b_c - a_c * coef, torch.full_like(dot, b_a))
    return alpha.to(g_f.dtype) * g_f + beta.to(g_r.dtype) * g_r


def resolve_gradient_conflict(
    forget_grads: Sequence[torch.Tensor],
    retain_grads: Sequence[torch.Tensor],
    mode: str = "per_tensor",
    conflict_weights: tuple[float, float] = (0.8, 1.2),
    align_weights: tuple[float, float] = (0.1, 1.9),
) -> ProjectionResult:
    """Combine per-loss gradients as FALCON's Step 2.2.

    Args:
        forget_grads, retain_grads: gradients of L_F and L_R for the same trainable tensors.
        mode: ``per_tensor`` (one decision per tensor, official code), ``global`` (one decision on
            the flattened gradient) or ``none`` (plain sum g_F + g_R: no projection, no reweighting).
    """
    if len(forget_grads) != len(retain_grads):
        raise ValueError(f"{len(forget_grads)} forget grads vs {len(retain_grads)} retain grads")
    if mode == "none":
        grads = [f + r for f, r in zip(forget_grads, retain_grads, strict=True)]
        dots = torch.stack(
            [(f.float() * r.float()).sum() for f, r in zip(forget_grads, retain_grads, strict=True)]
        )
        ff = torch.stack([f.float().square().sum() for f in forget_grads])
        rr = torch.stack([r.float().square().sum() for r in retain_grads])
        cos = dots.sum() / (ff.sum().sqrt() * rr.sum().sqrt()).clamp_min(EPS)
        return ProjectionResult(grads, cos.reshape(1), torch.zeros(1, dtype=torch.bool, device=cos.device))
    if mode not in ("per_tensor", "global"):
        raise ValueError(f"unknown projection mode {mode!r}; expected per_tensor, global or none")

    dots = torch.stack(
        [(f.float() * r.float()).sum() for f, r in zip(forget_grads, retain_grads, strict=True)]
    )
    ff = torch.stack([f.float().square().sum() for f in forget_grads])
    rr = torch.stack([r.float().square().sum() for r in retain_grads])
    if mode == "global":
        dots, ff, rr = dots.sum(0, keepdim=True), ff.sum(0, keepdim=True), rr.sum(0, keepdim=True)
    cos = dots / (ff.sqrt() * rr.sqrt()).clamp_min(EPS)
    conflict = cos < 0
    grads = []
    for i, (f, r) in enumerate(zip(forget_grads, retain_grads, strict=True)):
        j = 0 if mode == "global" else i
        grads.append(_combine(f, r, dots[j], rr[j], conflict[j], conflict_weights, align_weights))
    return ProjectionResult(grads, cos, conflict)
