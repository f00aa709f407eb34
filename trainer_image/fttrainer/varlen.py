"""Attention over packed sequences (padding-free batches) for transformers models.

A packed batch is one row of concatenated sequences with position ids restarting per sequence
(:mod:`fttrainer.packing`). Attention must stay inside each sequence. transformers would build a dense
block-diagonal ``[tokens, tokens]`` mask for that (memory and work quadratic in the *total* tokens); instead the
model's attention implementation is switched to ``fttrainer_packed``, registered here:

* with ``packed_bounds`` in the forward's keyword arguments (our packed batches), each sequence attends causally
  to itself only: on CUDA through ``torch.nn.attention.varlen.varlen_attn`` (flash-attention varlen: one kernel over
  ``cu_seqlens``), elsewhere (CPU, or where that kernel refuses the dtype/shape) one causal SDPA call per sequence.
  Work is the sum of the squared sequence lengths, as in a padded batch without its padding.
* without it (padded batches, a model shared with other code), it is exactly transformers' ``sdpa``
  implementation, mask creation included (packing needs the model to be on ``sdpa``, transformers' default).

The switch is per model config (``_attn_implementation`` is not saved by ``save_pretrained``) and does not depend
on full fine-tuning: an adapter-wrapped (PEFT) model forwards the keyword arguments to the same attention modules.
"""

from __future__ import annotations

import inspect
import itertools
import logging
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

NAME = "fttrainer_packed"
_warned: set[str] = set()


def _per_sequence(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    *,
    bounds: tuple[int, ...],
    dropout: float,
    scaling: float | None,
) -> torch.Tensor:
    """Causal SDPA over each ``bounds`` segment of ``[1, heads, tokens, dim]`` tensors; ``[1, tokens, heads, dim]``."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    outs = []
    for start, end in itertools.pairwise(bounds):
        seg = slice(start, end)
        out, _ = sdpa_attention_forward(
            module,
            query[:, :, seg],
            key[:, :, seg],
            value[:, :, seg],
            None,
            dropout=dropout,
            scaling=scaling,
            is_causal=True,
        )
        outs.append(out)
    return torch.cat(outs, dim=1)


def _torch_varlen(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, kwargs: dict[str, Any], scaling: float | None
) -> torch.Tensor:
    """One flash-attention varlen call (``torch.nn.attention.varlen``); ``[1, tokens, heads, dim]``.

    The argument spelling changed across torch releases (``is_causal`` before ``window_size``), so it is read
    from the signature."""
    from torch.nn.attention.varlen import varlen_attn

    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # [tokens, heads, dim]
    params = inspect.signature(varlen_attn).parameters
    extra: dict[str, Any] = {}
    if "window_size" in params:
        extra["window_size"] = (-1, 0)  # causal
    else:
        extra["is_causal"] = True
    if q.shape[1] != k.shape[1]:
        if "enable_gqa" in params:
            extra["enable_gqa"] = True
        else:
            groups = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    if scaling is not None and "scale" in params:
        extra["scale"] = scaling
    cu = kwargs["cu_seq_lens_q"]
    longest = int(kwargs["max_length_q"])
    out = varlen_attn(q, k, v, cu, cu, longest, longest, **extra)
    if isinstance(out, tuple):  # (output, aux) when aux outputs are requested
        out = out[0]
    return out.unsqueeze(0)


@torch.compiler.disable  # a Python loop over host boundaries: keep it out of compiled blocks (graph break)
def packed_attention(  # noqa: PLR0917 (transformers' attention interface)
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers attention interface: per-sequence causal attention for packed batches, else the base one."""
    bounds = kwargs.get("packed_bounds")
    if bounds is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    if query.shape[0] != 1:
        raise ValueError(f"a packed batch has one row, got {query.shape[0]}")
    if query.is_cuda and dropout == 0.0 and "varlen" not in _warned:
        try:
            return _torch_varlen(query, key, value, kwargs, scaling), None
        except (ImportError, RuntimeError, TypeError, ValueError) as exc:  # kernel unavailable for this dtype/shape
            _warned.add("varlen")
            log.warning(
                "flash-attention varlen unavailable (%s); packed attention runs one SDPA call per sequence", exc
            )
    return _per_sequence(module, query, key, value, bounds=tuple(bounds), dropout=dropout, scaling=scaling), None


def _packed_mask(**kwargs: Any) -> Any:
    """Mask creation for ``fttrainer_packed``: none without a padding mask (a packed batch, whose boundaries do the
    masking, or an unpadded one, which SDPA runs with ``is_causal``), else sdpa's."""
    from transformers.masking_utils import sdpa_mask

    if kwargs.get("attention_mask") is None:
        return None
    return sdpa_mask(**kwargs)


_registered = False


def register() -> None:
    global _registered  # noqa: PLW0603 (register once per process)
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, packed_attention)
    AttentionMaskInterface.register(NAME, _packed_mask)
    _registered = True


def enable(model: nn.Module) -> None:
    """Switch ``model`` to packed-capable attention (idempotent). Its sub-configs follow (transformers' setter)."""
    register()
    config = getattr(model, "config", None)
    if config is None:
        raise ValueError(f"{type(model).__name__} has no transformers config: packing needs a transformers model")
    current = config._attn_implementation
    if current == NAME:
        return
    if current != "sdpa":
        raise ValueError(f"packing needs a model on sdpa attention (transformers' default); this one uses {current!r}")
    config._attn_implementation = NAME
