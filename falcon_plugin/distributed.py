"""Multi-process and DeepSpeed plumbing of FALCON's step (no-ops in a single plain process).

* :func:`all_reduce_mean` / :func:`broadcast_int`: the projection (paper Sec. 3.3) must see the
  *global* g_F and g_R, every rank must use rank 0's MI layer choice, and the logged metrics are
  the mean over ranks.
* :func:`deepspeed_forward_prologue` / :func:`deepspeed_forward_epilogue`: what
  ``DeepSpeedEngine.forward`` does around the model, which FALCON's direct layer calls bypass.
* :func:`gathered`, :func:`is_zero3`, :func:`zero3_gradient_hooks`: ZeRO-3 (partitioned parameters).
* :func:`drop_empty_param_groups`: DeepSpeed drops empty optimizer groups, the LR scheduler does not.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn


def is_distributed() -> bool:
    """Whether this process is one of several in an initialised ``torch.distributed`` group."""
    return (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_world_size() > 1
    )


def all_reduce_mean(grads: list[torch.Tensor]) -> list[torch.Tensor]:
    """Average tensors over processes with one all-reduce for the whole list (no-op in one process).

    Used for g_F and g_R (so the projection sees the global gradients) and, once per logging step, for
    the logged ``falcon/*`` metrics (so they are the mean over ranks, like the Trainer's ``loss``).
    """
    if not is_distributed():
        return grads
    flat = torch.cat([g.reshape(-1).float() for g in grads])
    torch.distributed.all_reduce(flat)
    flat /= torch.distributed.get_world_size()
    out, offset = [], 0
    for g in grads:
        out.append(flat[offset : offset + g.numel()].view_as(g).to(g.dtype))
        offset += g.numel()
    return out


def broadcast_int(value: int) -> int:
    """Rank 0's ``value`` on every rank (``value`` itself in a single process)."""
    if not is_distributed():
        return value
    backend = torch.distributed.get_backend()
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    tensor = torch.tensor([value], device=device)
    torch.distributed.broadcast(tensor, src=0)
    return int(tensor.item())


def is_zero3(params: Sequence[nn.Parameter]) -> bool:
    """Whether any of ``params`` is a DeepSpeed ZeRO-3 parameter (partitioned across processes)."""
    return any(hasattr(p, "ds_id") for p in params)


def gathered(params: Sequence[nn.Parameter]) -> Any:
    """``deepspeed.zero.GatheredParameters`` (read-only) if a ``param`` is ZeRO-3 partitioned, else no-op."""
    if not is_zero3(params):
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(params), modifier_rank=None)


def deepspeed_forward_prologue(engine: Any) -> None:
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


def deepspeed_forward_epilogue(engine: Any, loss: torch.Tensor) -> None:
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


def zero3_gradient_hooks(
    loss: torch.Tensor, trainable: Sequence[nn.Parameter], grads: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, list[Any]]:
    """ZeRO-3: ``loss`` itself, and hooks that replace each trainable tensor's gradient: (loss, hook handles).

    Under ZeRO-3 a parameter is an empty placeholder outside its module's forward/backward, so
    the surrogate ``sum(p * g)`` cannot be formed. Instead the engine backpropagates L_F + L_R
    through the modules (its hooks gather and release the parameters as usual) and a tensor hook
    on each trainable parameter swaps the gradient arriving there for ``s * g_combined``, where
    ``s`` is whatever factor the engine put on the loss (1/gradient_accumulation_steps, the fp16
    loss scale), recorded by an identity node at the root. The update is exactly the projected
    one; the cost is one more backward pass through layers first..l*. The caller removes the
    hooks (``handle.remove()``) when the training step ends.
    """
    scale: dict[str, torch.Tensor] = {}
    handles = []
    for param, grad in zip(trainable, grads, strict=True):

        def replace(incoming: torch.Tensor, grad: torch.Tensor = grad) -> torch.Tensor:
            return (scale["s"].to(incoming.dtype) * grad.to(incoming.dtype)).reshape(incoming.shape)

        handles.append(param.register_hook(replace))
    return _RecordScale.apply(loss, scale), handles


def drop_empty_param_groups(optimizer: Any) -> Any:
    """Remove empty parameter groups from ``optimizer`` (or the optimizer it wraps); returns it.

    FALCON trains only weight matrices, so the Trainer's no-weight-decay group is empty; DeepSpeed
    drops empty groups while the LR scheduler keeps one rate per group, and the first scheduler step
    fails (``zip() argument 2 is longer than argument 1``).
    """
    inner = getattr(optimizer, "optimizer", optimizer)
    inner.param_groups[:] = [group for group in inner.param_groups if group["params"]]
    return optimizer


__all__ = [
    "all_reduce_mean",
    "broadcast_int",
    "deepspeed_forward_epilogue",
    "deepspeed_forward_prologue",
    "drop_empty_param_groups",
    "gathered",
    "is_distributed",
    "is_zero3",
    "zero3_gradient_hooks",
]
