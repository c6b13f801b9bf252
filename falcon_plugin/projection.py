"""Step 2.2: gradient conflict resolution by orthogonal projection (pure tensor functions).

When the forget and retain gradients conflict, cos(g_F, g_R) < 0, the forget gradient loses its
component along g_R (paper Eq. 8):

    g_F <- g_F - (g_F . g_R / ||g_R||^2) g_R,

and the update is alpha g_F + beta g_R, with (alpha, beta) = ``conflict_weights`` under conflict and
``align_weights`` otherwise (the official code's per-tensor scheme). ``global`` takes one decision
on the concatenation of all trainable tensors. Everything stays on the device: no host sync.

Memory: the dot products run in float32 over chunks of at most ``DOT_CHUNK`` elements, so a bf16
7B ``down_proj`` gradient (58.7 M elements) never gets a whole-tensor float32 copy, and with
``inplace=True`` the combined update is written into g_F's storage. On three 14336 x 4096 bf16
gradient pairs this takes the projection's peak above g_F + g_R from 674 to ~113 MiB
(``benchmarks/scale.py``, docs/performance.md). Tensors up to ``DOT_CHUNK`` elements are summed in
one piece, exactly as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

EPS = 1e-12
DOT_CHUNK = 1 << 22
"""Largest number of elements whose float32 products are materialised at once (16 MiB)."""


@dataclass(frozen=True)
class ProjectionResult:
    """Combined gradients plus what to log."""

    grads: list[torch.Tensor]
    cosines: torch.Tensor
    """cos(g_F, g_R) per decision group (one per tensor, or one for ``global``)."""
    conflicts: torch.Tensor
    """Boolean per group: whether the projection was applied."""


def _chunks(tensor: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The flattened tensor in views of at most ``DOT_CHUNK`` elements."""
    return tensor.reshape(-1).split(DOT_CHUNK)


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum(a * b) accumulated in float32, holding at most ``DOT_CHUNK`` float32 products at once."""
    if a.numel() <= DOT_CHUNK:
        return (a.float() * b.float()).sum()
    return torch.stack(
        [(x.float() * y.float()).sum() for x, y in zip(_chunks(a), _chunks(b), strict=True)]
    ).sum()


def float32_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum of all elements accumulated in float32, without a whole-tensor float32 copy."""
    if tensor.numel() <= DOT_CHUNK:
        return tensor.float().sum()
    return torch.stack([c.sum(dtype=torch.float32) for c in _chunks(tensor)]).sum()


def _dots(
    forget_grads: Sequence[torch.Tensor], retain_grads: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per tensor: g_F . g_R, ||g_F||^2 and ||g_R||^2 (float32)."""
    pairs = list(zip(forget_grads, retain_grads, strict=True))
    dots = torch.stack([_dot(f, r) for f, r in pairs])
    ff = torch.stack([_dot(f, f) for f, _ in pairs])
    rr = torch.stack([_dot(r, r) for _, r in pairs])
    return dots, ff, rr


def _combine(
    g_f: torch.Tensor,
    g_r: torch.Tensor,
    dot: torch.Tensor,
    rr: torch.Tensor,
    conflict: torch.Tensor,
    conflict_weights: tuple[float, float],
    align_weights: tuple[float, float],
    inplace: bool,
) -> torch.Tensor:
    # conflict: a_c (g_F - c g_R) + b_c g_R = a_c g_F + (b_c - a_c c) g_R ; aligned: a_a g_F + b_a g_R
    coef = dot / rr.clamp_min(EPS)
    a_c, b_c = conflict_weights
    a_a, b_a = align_weights
    alpha = torch.where(conflict, torch.full_like(dot, a_c), torch.full_like(dot, a_a))
    beta = torch.where(conflict, b_c - a_c * coef, torch.full_like(dot, b_a))
    # in place, the same roundings as out of place: (alpha g_F) and (beta g_R) each rounded, then summed
    if inplace and g_f.is_contiguous():
        return g_f.mul_(alpha.to(g_f.dtype)).add_(beta.to(g_r.dtype) * g_r)
    return alpha.to(g_f.dtype) * g_f + beta.to(g_r.dtype) * g_r


def resolve_gradient_conflict(
    forget_grads: Sequence[torch.Tensor],
    retain_grads: Sequence[torch.Tensor],
    mode: str = "per_tensor",
    conflict_weights: tuple[float, float] = (0.8, 1.2),
    align_weights: tuple[float, float] = (0.1, 1.9),
    inplace: bool = False,
) -> ProjectionResult:
    """Combine per-loss gradients as FALCON's Step 2.2.

    Args:
        forget_grads, retain_grads: gradients of L_F and L_R for the same trainable tensors.
        mode: ``per_tensor`` (one decision per tensor, official code), ``global`` (one decision on
            the flattened gradient) or ``none`` (plain sum g_F + g_R: no projection, no reweighting).
        inplace: write each combined gradient into its forget gradient's storage (the trainer does:
            g_F is not used afterwards) instead of allocating a new tensor; same values. A
            non-contiguous g_F (an expanded view, say) gets a new tensor instead.
    """
    if len(forget_grads) != len(retain_grads):
        raise ValueError(f"{len(forget_grads)} forget grads vs {len(retain_grads)} retain grads")
    if mode == "none":
        dots, ff, rr = _dots(forget_grads, retain_grads)
        cos = dots.sum() / (ff.sum().sqrt() * rr.sum().sqrt()).clamp_min(EPS)
        pairs = zip(forget_grads, retain_grads, strict=True)
        grads = [f.add_(r) if inplace and f.is_contiguous() else f + r for f, r in pairs]
        return ProjectionResult(grads, cos.reshape(1), torch.zeros(1, dtype=torch.bool, device=cos.device))
    if mode not in ("per_tensor", "global"):
        raise ValueError(f"unknown projection mode {mode!r}; expected per_tensor, global or none")

    dots, ff, rr = _dots(forget_grads, retain_grads)
    if mode == "global":
        dots, ff, rr = dots.sum(0, keepdim=True), ff.sum(0, keepdim=True), rr.sum(0, keepdim=True)
    cos = dots / (ff.sqrt() * rr.sqrt()).clamp_min(EPS)
    conflict = cos < 0
    grads = []
    for i, (f, r) in enumerate(zip(forget_grads, retain_grads, strict=True)):
        j = 0 if mode == "global" else i
        grads.append(_combine(f, r, dots[j], rr[j], conflict[j], conflict_weights, align_weights, inplace))
    return ProjectionResult(grads, cos, conflict)
