"""The chunked log-prob head (``fttrainer.logprobs``) against the unchunked computation, in float64: per-token
log-probs and their gradients (hidden states, head weight and bias), per-sequence sums through a real model
(padded and packed), and the loss the trainer backpropagates; plus the bf16-autocast path the GPU runs."""

from __future__ import annotations

import copy

import pytest
import torch
from fttrainer.logprobs import ChunkedTokenLogps, auto_chunk_tokens, scoring_head_supported, sequence_logps, token_logps
from fttrainer.losses import batch_logps
from fttrainer.packing import layout
from packing_cases import LOSSES, PAD, make_trainer, max_abs_diff, one_rank, skewed_examples, tiny_llama

TOL = 1e-6


def _inputs(n: int = 37, hidden: int = 24, vocab: int = 150, bias: bool = True):
    g = torch.Generator().manual_seed(0)
    h = torch.randn(n, hidden, generator=g, dtype=torch.float64, requires_grad=True)
    w = (torch.randn(vocab, hidden, generator=g, dtype=torch.float64) * 0.5).requires_grad_()
    b = (torch.randn(vocab, generator=g, dtype=torch.float64)).requires_grad_() if bias else None
    targets = torch.randint(0, vocab, (n,), generator=g)
    upstream = torch.randn(n, generator=g, dtype=torch.float64)
    return h, w, b, targets, upstream


def _grads(*tensors):
    return [t.grad.clone() for t in tensors if t is not None]


@pytest.mark.parametrize("chunk", [1, 5, 16, 37, 1000])
@pytest.mark.parametrize("bias", [True, False])
def test_chunked_token_logps_equal_unchunked_values_and_gradients(chunk, bias):
    h, w, b, targets, upstream = _inputs(bias=bias)
    want = token_logps(h, w, b, targets, chunk=None)
    (want * upstream).sum().backward()
    want_grads = _grads(h, w, b)
    for t in (h, w, b):
        if t is not None:
            t.grad = None
    got = token_logps(h, w, b, targets, chunk=chunk)
    (got * upstream).sum().backward()
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, atol=TOL, rtol=0)
    for g_got, g_want in zip(_grads(h, w, b), want_grads, strict=True):
        torch.testing.assert_close(g_got, g_want, atol=TOL, rtol=0)


def test_chunked_logps_pass_gradcheck():
    h, w, b, targets, _ = _inputs(n=6, hidden=4, vocab=9)
    assert torch.autograd.gradcheck(lambda h, w, b: ChunkedTokenLogps.apply(h, w, b, targets, 4), (h, w, b))


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_sequence_logps_chunked_equal_the_models_own_logits(packed):
    """Through a real model: the chunked head equals the model's own full logits (and the loss module's
    ``batch_logps`` on them, computed here in float64), values and parameter gradients."""
    model = tiny_llama(seed=11)
    assert scoring_head_supported(model)
    examples = skewed_examples(6, seed=12)
    batch = layout(examples, pairs=True, packed=packed, pad_token_id=PAD)
    weights = torch.linspace(-1, 1, batch.rows, dtype=torch.float64)
    results = []
    for chunked in (False, True):
        m = copy.deepcopy(model)
        got = sequence_logps(m, batch, chunked=chunked, chunk_tokens=13)
        (got * weights).sum().backward()
        results.append((got.detach(), {n: p.grad for n, p in m.named_parameters()}))
    torch.testing.assert_close(results[1][0], results[0][0], atol=TOL, rtol=0)
    assert max_abs_diff(results[1][1], results[0][1]) <= TOL
    # and both equal the plain computation on the padded batch's full logits
    padded = layout(examples, pairs=True, packed=False, pad_token_id=PAD)
    with torch.no_grad():
        logits = model(input_ids=padded.input_ids, attention_mask=padded.attention_mask).logits
    labels = torch.full_like(padded.input_ids, -100)
    for i, e in enumerate([*examples, *examples]):
        lab = e.chosen_labels if i < len(examples) else e.rejected_labels
        labels[i, : len(lab)] = torch.tensor(lab)
    reference = batch_logps(logits.double(), labels)  # float32 inside: compare at float32 precision
    torch.testing.assert_close(results[1][0], reference.double(), atol=1e-3, rtol=1e-5)


@pytest.mark.parametrize("loss_name", ["dpo", "ipo", "sft"])
def test_trainer_loss_chunked_equals_unchunked(loss_name):
    d = one_rank()
    examples = skewed_examples(8, seed=13)
    policy, reference = tiny_llama(seed=13), tiny_llama(seed=14).eval().requires_grad_(False)
    out = []
    for chunked in (False, True):
        model = copy.deepcopy(policy)
        trainer = make_trainer(
            d, model, reference, examples, LOSSES[loss_name], batch_size=8, chunked_logps=chunked, logits_chunk_tokens=9
        )
        summed, metric_sums, _ = trainer._micro_batch(list(range(8)), train=True)
        summed.backward()
        out.append((summed.item(), metric_sums, {n: p.grad for n, p in model.named_parameters()}))
    assert out[1][0] == pytest.approx(out[0][0], abs=TOL)
    torch.testing.assert_close(out[1][1], out[0][1], atol=TOL, rtol=0)
    assert max_abs_diff(out[1][2], out[0][2]) <= TOL


def test_chunked_under_bf16_autocast_matches_unchunked_autocast():
    """The one-rank GPU policy computes under bf16 autocast: the chunked head projects in bf16 like nn.Linear
    would and accumulates its log-softmax in float32 (here on CPU autocast, which follows the same rules)."""
    h, w, _b, targets, upstream = _inputs(n=40, hidden=32, vocab=200)
    h32, w32 = h.detach().float().requires_grad_(), w.detach().float().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = token_logps(h32, w32, None, targets, chunk=None)
    (want * upstream.float()).sum().backward()
    want_grads = _grads(h32, w32)
    h32.grad = w32.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = token_logps(h32, w32, None, targets, chunk=8)
    (got * upstream.float()).sum().backward()
    assert got.dtype == torch.float32 and w32.grad is not None and w32.grad.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=2e-2, rtol=2e-2)
    for g_got, g_want in zip(_grads(h32, w32), want_grads, strict=True):
        torch.testing.assert_close(g_got, g_want, atol=2e-2, rtol=5e-2)


def test_auto_chunk_size_bounds_the_chunk_logits():
    assert auto_chunk_tokens(32000) * 32000 * 4 <= 64 * 2**20
    assert auto_chunk_tokens(8192) == 2048
    assert auto_chunk_tokens(10**9) == 16
