"""Per-sequence summed response log-probs from a causal LM, without materialising ``[tokens, vocab]`` logits.

The model runs its own forward (so FSDP2's root hooks gather and free the LM head as usual), but for that call
its output embedding (``lm_head``) is swapped for a scoring head that takes the final hidden states and returns
the summed log-probs of each sequence's labelled next tokens:

* only positions whose target is labelled are scored (``SequenceBatch.positions``; the prompt, the padding and the
  last position of each sequence never reach the vocabulary projection);
* the projection and log-softmax run **chunk by chunk** over those positions (:class:`ChunkedTokenLogps`): each
  chunk's logits (``chunk_tokens x vocab``, float32) live only inside the chunk; backward recomputes them from the
  saved hidden states and the per-token log-sum-exp (one extra ``hidden @ W.T`` per chunk) instead of keeping the
  log-softmax of every position alive. When all scored positions fit in one chunk there is nothing to save and
  they take the plain path (logits and log-softmax kept, no recomputation);
* per-token log-probs are summed per sequence by segment id (``index_add``), so padded and packed batches give the
  same sums;
* on request (:func:`sequence_logps_and_hits`, sft's token accuracy) the number of scored tokens the model's greedy
  choice gets right, per sequence, from the same logits (one argmax per chunk, nothing kept for backward).

Models whose logits are not ``lm_head(hidden)`` (final-logit soft-capping, logit scales) or whose head is not a
plain ``nn.Linear`` (e.g. a LoRA-wrapped head) take the reference path: the model's own logits, then the same
position selection and float32 log-softmax. ``chunked=False`` selects that path too (the unchunked baseline).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fttrainer import varlen
from fttrainer.packing import SequenceBatch
from fttrainer.parallel import compute_context

CHUNK_BYTES = 64 * 2**20  # float32 logits per chunk when the chunk size is automatic
# config attributes that make the logits something other than lm_head(hidden)
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier")


def auto_chunk_tokens(vocab: int) -> int:
    """Tokens per chunk so one chunk's float32 logits stay within :data:`CHUNK_BYTES` (at least 16)."""
    return max(16, CHUNK_BYTES // (4 * vocab))


def _compute_dtype(hidden: torch.Tensor) -> torch.dtype:
    """The projection's dtype: autocast's when autocast is on (as ``nn.Linear`` would compute), else the input's."""
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return hidden.dtype


def _chunk_logits(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype, out: torch.dtype
) -> torch.Tensor:
    logits = F.linear(hidden.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype))
    return logits.to(out)


class ChunkedTokenLogps(torch.autograd.Function):
    """``log_softmax(hidden @ weight.T + bias)[i, targets[i]]`` for every row, ``chunk`` rows at a time. With a list
    for ``hits``, whether each row's target is the logits' argmax is appended to it (not differentiable)."""

    @staticmethod
    def forward(  # noqa: PLR0917 (autograd passes inputs positionally)
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        targets: torch.Tensor,
        chunk: int,
        hits: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        dtype = _compute_dtype(hidden)
        out_dtype = torch.promote_types(dtype, torch.float32)
        n = hidden.shape[0]
        logps = torch.empty(n, dtype=out_dtype, device=hidden.device)
        lse = torch.empty(n, dtype=out_dtype, device=hidden.device)
        hit = torch.empty(n, dtype=torch.bool, device=hidden.device) if hits is not None else None
        with torch.autocast(hidden.device.type, enabled=False):
            for start in range(0, n, chunk):
                end = min(start + chunk, n)
                logits = _chunk_logits(hidden[start:end], weight, bias, dtype, out_dtype)
                lse[start:end] = torch.logsumexp(logits, dim=-1)
                logps[start:end] = logits.gather(1, targets[start:end, None]).squeeze(1) - lse[start:end]
                if hit is not None:
                    hit[start:end] = logits.argmax(-1) == targets[start:end]
        if hits is not None and hit is not None:
            hits.append(hit)
        ctx.save_for_backward(hidden, weight, bias, targets, lse)
        ctx.chunk, ctx.dtype, ctx.out_dtype = chunk, dtype, out_dtype
        return logps

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        hidden, weight, bias, targets, lse = ctx.saved_tensors
        chunk, dtype, out_dtype = ctx.chunk, ctx.dtype, ctx.out_dtype
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h = torch.empty_like(hidden) if need_h else None
        acc = torch.promote_types(weight.dtype, torch.float32)  # accumulate the head's gradient in >= float32
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
        grad_b = torch.zeros(bias.shape, dtype=acc, device=bias.device) if need_b and bias is not None else None
        w = weight.to(dtype)
        grad = grad.to(out_dtype)
        with torch.autocast(hidden.device.type, enabled=False):
            for start in range(0, hidden.shape[0], chunk):
                end = min(start + chunk, hidden.shape[0])
                h = hidden[start:end].to(dtype)
                g = grad[start:end, None]
                logits = _chunk_logits(h, w, bias, dtype, out_dtype)
                # d logp / d logits = onehot(target) - softmax
                d = logits.sub_(lse[start:end, None]).exp_().mul_(-g)
                d.scatter_add_(1, targets[start:end, None], g)
                d = d.to(dtype)
                if grad_h is not None:
                    grad_h[start:end] = (d @ w).to(hidden.dtype)
                if grad_w is not None:
                    grad_w += (d.t() @ h).to(acc)
                if grad_b is not None:
                    grad_b += d.sum(0).to(acc)
        return (
            grad_h,
            None if grad_w is None else grad_w.to(weight.dtype),
            None if grad_b is None else grad_b.to(bias.dtype),
            *(None for _ in ctx.needs_input_grad[3:]),  # targets, chunk (and hits, when given)
        )


def token_logps(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    chunk: int | None,
    *,
    hits: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """Log-prob of ``targets`` under ``hidden @ weight.T + bias`` per row: in chunks of ``chunk`` rows when there
    are more rows than that (:class:`ChunkedTokenLogps`), else the plain way (the logits, within the chunk bound,
    and their float32 log-softmax kept for backward: no recomputation). ``hits``: see :class:`ChunkedTokenLogps`."""
    if chunk is None or hidden.shape[0] <= chunk:
        logits = F.linear(hidden, weight, bias)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        if hits is not None:
            hits.append(logits.detach().argmax(-1) == targets)
        return logits.log_softmax(-1).gather(1, targets[:, None]).squeeze(1)
    result: torch.Tensor = ChunkedTokenLogps.apply(hidden, weight, bias, targets, max(1, chunk), hits)
    return result


def segment_sums(per_token: torch.Tensor, batch: SequenceBatch) -> torch.Tensor:
    """Per-sequence sums of the scored positions' log-probs."""
    return per_token.new_zeros(batch.rows).index_add(0, batch.segments, per_token)


def _scored_hidden(hidden: torch.Tensor, batch: SequenceBatch) -> torch.Tensor:
    """The rows of ``[model rows, positions, features]`` that are scored (``batch.positions`` of the kept window)."""
    if hidden.shape[1] != batch.keep:
        hidden = hidden[:, -batch.keep :]
    return hidden.reshape(-1, hidden.shape[-1]).index_select(0, batch.positions)


def _base(model: nn.Module) -> nn.Module:
    get = getattr(model, "get_base_model", None)  # PEFT wrappers
    return get() if callable(get) else model


_ACCEPTS_LOGITS_TO_KEEP: dict[type, bool] = {}


def accepts_logits_to_keep(model: nn.Module) -> bool:
    cls = type(_base(model))
    if cls not in _ACCEPTS_LOGITS_TO_KEEP:
        _ACCEPTS_LOGITS_TO_KEEP[cls] = "logits_to_keep" in inspect.signature(cls.forward).parameters
    return _ACCEPTS_LOGITS_TO_KEEP[cls]


def output_embedding(model: nn.Module) -> nn.Linear | None:
    """The model's LM head if it is a plain ``nn.Linear`` (not, e.g., an adapter-wrapped one), else None."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    return head if type(head) is nn.Linear else None


def scoring_head_supported(model: nn.Module) -> bool:
    """Whether the model's logits are exactly its output embedding applied to the final hidden states."""
    if output_embedding(model) is None:
        return False
    config = getattr(model, "config", None)
    text = config.get_text_config() if config is not None and hasattr(config, "get_text_config") else config
    if any(getattr(text, name, None) not in (None, 1.0) for name in _LOGIT_TRANSFORMS):
        return False
    return getattr(text, "logits_scaling", None) in (None, 1.0)


@contextlib.contextmanager
def _scoring_head(
    model: nn.Module, batch: SequenceBatch, chunk: int | None, hits: list[torch.Tensor] | None = None
) -> Iterator[None]:
    """For the duration of one forward, the output embedding returns the per-sequence log-prob sums."""
    head = output_embedding(model)
    assert head is not None

    def score(hidden: torch.Tensor) -> torch.Tensor:
        return segment_sums(
            token_logps(_scored_hidden(hidden, batch), head.weight, head.bias, batch.targets, chunk, hits=hits), batch
        )

    previous = head.__dict__.get("forward")  # an instance-level forward someone else installed (hooks)
    head.forward = score  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        if previous is not None:
            head.forward = previous  # type: ignore[method-assign]
        else:
            del head.forward


def sequence_logps_and_hits(
    model: nn.Module, batch: SequenceBatch, *, chunked: bool = True, chunk_tokens: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`sequence_logps` and, per row, how many of its scored tokens are the model's greedy (argmax) choice
    (float, not differentiable): the numerator of sft's mean token accuracy."""
    hits: list[torch.Tensor] = []
    logps = _score(model, batch, chunked, chunk_tokens, hits)
    return logps, segment_sums(hits[0].to(logps.dtype), batch)


def sequence_logps(
    model: nn.Module, batch: SequenceBatch, *, chunked: bool = True, chunk_tokens: int = 0
) -> torch.Tensor:
    """Summed log-probs of every row's labelled tokens (chosen rows, then rejected), shape ``(rows,)``.

    ``batch`` is on the model's device (:meth:`SequenceBatch.to`). Packed batches switch the model to
    :mod:`fttrainer.varlen` attention first. ``chunked`` scores through the chunked head (``chunk_tokens``
    positions per chunk, 0 = :func:`auto_chunk_tokens`); otherwise, or where the model does not allow it
    (:func:`scoring_head_supported`), through the model's own logits. The forward runs in the model's
    :func:`~fttrainer.parallel.compute_context` (bf16 autocast for a one-rank GPU policy).
    """
    return _score(model, batch, chunked, chunk_tokens, None)


def _score(
    model: nn.Module, batch: SequenceBatch, chunked: bool, chunk_tokens: int, hits: list[torch.Tensor] | None
) -> torch.Tensor:
    if batch.packed:
        varlen.enable(_base(model))
    kwargs: dict[str, Any] = dict(batch.forward_kwargs(), use_cache=False)
    if accepts_logits_to_keep(model) and batch.keep < batch.width:
        kwargs["logits_to_keep"] = batch.keep
    if chunked and scoring_head_supported(model):
        head = output_embedding(model)
        assert head is not None
        vocab = int(head.weight.shape[0])
        chunk = chunk_tokens or auto_chunk_tokens(vocab)
        with compute_context(model), _scoring_head(model, batch, chunk, hits):
            out: torch.Tensor = model(**kwargs).logits
        return out
    with compute_context(model):
        logits = model(**kwargs).logits
    flat = _scored_hidden(logits, batch)
    if hits is not None:
        hits.append(flat.detach().argmax(-1) == batch.targets)
    per_token = flat.to(torch.promote_types(flat.dtype, torch.float32)).log_softmax(-1)
    return segment_sums(per_token.gather(1, batch.targets[:, None]).squeeze(1), batch)
