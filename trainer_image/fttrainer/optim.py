"""The optimizer, its warmup schedule and the global gradient-norm clip, for sharded (FSDP2) or plain
parameters."""

from __future__ import annotations

import typing
from typing import Any

import torch
from ftcrd.types import Optimizer
from torch import nn
from torch.distributed.tensor import DTensor

OPTIMIZERS: tuple[Optimizer, ...] = typing.get_args(Optimizer)


def build_optimizer(name: str, params: Any, lr: float) -> torch.optim.Optimizer:
    """``torch.optim.<name>(params, lr=lr)``; Adam/AdamW over plain (unsharded) CUDA parameters use the fused
    kernel (one launch per step instead of a foreach chain; same algorithm and state layout)."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")
    params = list(params)
    cls = getattr(torch.optim, name)
    kwargs: dict[str, Any] = {}
    tensors = [p for p in params if isinstance(p, torch.Tensor)]
    if name in ("Adam", "AdamW") and tensors and all(p.is_cuda and not isinstance(p, DTensor) for p in tensors):
        kwargs["fused"] = True
    optimizer: torch.optim.Optimizer = cls(params, lr=lr, **kwargs)
    return optimizer


def warmup_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup to the peak learning rate over ``warmup_steps``, then constant (the reference's)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / (warmup_steps + 1)))


def clip_grad_norm(params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """Global gradient norm over sharded (DTensor) or plain gradients, then clip (torchtitan's recipe).

    Returns the norm as a 0-d tensor on the device (no host sync here; the step reads it together with
    the metrics)."""
    grads = [p.grad for p in params if p.grad is not None]
    total = torch.nn.utils.get_total_norm(grads, norm_type=2.0, foreach=True)
    if isinstance(total, DTensor):
        total = total.full_tensor()
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, total, foreach=True)
    return total
