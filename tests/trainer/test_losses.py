"""Hand-computed values for the preference losses."""

from __future__ import annotations

import math

import pytest
import torch
from fttrainer.losses import IGNORE_INDEX, batch_logps, preference_loss, sft_loss


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def test_dpo_at_reference_is_ln2():
    losses, chosen, rejected = preference_loss(t(-3.0, -7.0), t(-5.0, -1.0), t(-3.0, -7.0), t(-5.0, -1.0), beta=0.1)
    assert torch.allclose(losses, t(math.log(2), math.log(2)))
    assert torch.equal(chosen, t(0.0, 0.0)) and torch.equal(rejected, t(0.0, 0.0))


def test_dpo_hand_value():
    # policy log-ratio (-1) - (-4) = 3, reference (-2) - (-3) = 1 -> logits 2, beta 0.5 -> -log sigmoid(1)
    losses, chosen, rejected = preference_loss(t(-1.0), t(-4.0), t(-2.0), t(-3.0), beta=0.5)
    assert losses.item() == pytest.approx(math.log(1 + math.exp(-1.0)))
    assert chosen.item() == pytest.approx(0.5 * (-1.0 + 2.0))
    assert rejected.item() == pytest.approx(0.5 * (-4.0 + 3.0))


def test_cdpo_label_smoothing_hand_value():
    eps, beta = 0.1, 0.5
    losses, _, _ = preference_loss(t(-1.0), t(-4.0), t(-2.0), t(-3.0), beta=beta, label_smoothing=eps)
    z = beta * 2.0
    expected = (1 - eps) * math.log(1 + math.exp(-z)) + eps * math.log(1 + math.exp(z))
    assert losses.item() == pytest.approx(expected)


def test_ipo_hand_value():
    losses, _, _ = preference_loss(t(-1.0), t(-4.0), t(-2.0), t(-3.0), beta=0.25, ipo=True)
    assert losses.item() == pytest.approx((2.0 - 1 / (2 * 0.25)) ** 2)  # = 0
    losses, _, _ = preference_loss(t(-1.0), t(-2.0), t(-2.0), t(-2.0), beta=0.1, ipo=True)
    assert losses.item() == pytest.approx((1.0 - 5.0) ** 2)


def test_reference_free_ignores_reference():
    losses, chosen, _ = preference_loss(t(-1.0), t(-4.0), t(-100.0), t(0.0), beta=0.5, reference_free=True)
    assert losses.item() == pytest.approx(math.log(1 + math.exp(-1.5)))
    # rewards still use the reference log-probs, as in the reference implementation
    assert chosen.item() == pytest.approx(0.5 * 99.0)


def test_loss_gradient_flows_to_policy_only():
    pc = t(-1.0).requires_grad_()
    pr = t(-2.0).requires_grad_()
    losses, chosen, _ = preference_loss(pc, pr, t(-1.0), t(-2.0), beta=1.0)
    losses.sum().backward()
    assert pc.grad is not None and pc.grad.item() == pytest.approx(-0.5)
    assert pr.grad is not None and pr.grad.item() == pytest.approx(0.5)
    assert not chosen.requires_grad


def test_batch_logps_masks_prompt_and_padding():
    # vocab 3, uniform logits except where we want certainty
    logits = torch.zeros(1, 4, 3, dtype=torch.float64)
    logits[0, 1, 2] = 10.0  # predicts token at position 2
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 2, 1]])
    got = batch_logps(logits, labels)
    expected = (10.0 - math.log(math.exp(10.0) + 2)) + math.log(1 / 3)
    assert got.item() == pytest.approx(expected)
    avg = batch_logps(logits, labels, average=True)
    assert avg.item() == pytest.approx(expected / 2)


def test_batch_logps_all_masked_is_zero():
    logits = torch.randn(2, 3, 5)
    labels = torch.full((2, 3), IGNORE_INDEX)
    assert torch.equal(batch_logps(logits, labels), torch.zeros(2))
    assert torch.equal(batch_logps(logits, labels, average=True), torch.zeros(2))


def test_sft_loss():
    assert torch.equal(sft_loss(t(-2.0, -3.0)), t(2.0, 3.0))
