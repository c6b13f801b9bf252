"""Step 2.1a: Principal Offset Vectors (POV) from the frozen model's forget activations.

The paper (Sec. 3.2) builds the contrastive positive by pushing a random direction away from the
principal subspace of the forget activations:

    H+ = f( r (I - w sum_{i=1..K} v_i v_i^T), eps ),   then normalised,

with v_1..v_K the top right singular vectors of the frozen forget activations, r a random vector,
w the offset weight and f a nonlinearity with noise eps (here tanh(x + eps * n), n ~ N(0, I)).
"""

from __future__ import annotations

import torch


def principal_directions(activations: torch.Tensor, rank: int) -> torch.Tensor:
    """Top-``rank`` right singular vectors v_1..v_K of an (N, D) activation matrix, as a (K, D)
    float32 tensor.

    ``rank`` is clipped to min(N, D). The SVD runs in float32 on the activations' device.
    """
    if activations.dim() != 2:
        raise ValueError(f"activations must be (N, D), got shape {tuple(activations.shape)}")
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    matrix = activations.float()
    _, _, vh = torch.linalg.svd(matrix, full_matrices=False)
    return vh[: min(rank, vh.shape[0])].contiguous()


def principal_offset_vector(
    directions: torch.Tensor,
    weight: float,
    noise: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """H+ = normalise(tanh(r (I - w V^T V) + eps * n)) for a (K, D) orthonormal ``directions`` V.

    ``r`` and ``n`` are standard normal draws from ``generator`` (so the vector follows the
    Trainer's seed and is reproducible); the result is a unit-norm float32 vector of shape (D,).
    With ``weight`` = 1 and no noise, r's component in span(v_1..v_K) is removed exactly before f.
    """
    dim = directions.shape[-1]
    device = directions.device
    r = torch.randn(dim, generator=generator, device="cpu").to(device)
    offset = r - weight * directions.T @ (directions @ r)
    offset = torch.tanh(offset + noise * torch.randn(dim, generator=generator, device="cpu").to(device))
    return offset / offset.norm().clamp_min(1e-12)
