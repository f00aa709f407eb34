"""Preference losses (DPO, conservative DPO, IPO, reference-free) and the SFT loss.

Pure functions over per-example summed log-probabilities, following the reference implementation
(eric-mitchell/direct-preference-optimization, ``trainers.preference_loss``):

* DPO (Rafailov et al. 2023): ``-log sigmoid(beta * ((pi_c - pi_r) - (ref_c - ref_r)))``;
* conservative DPO: the same with labels flipped with probability ``label_smoothing``;
* IPO (Azar et al. 2023): ``((pi_c - pi_r) - (ref_c - ref_r) - 1 / (2 beta)) ** 2``;
* reference-free: the reference log-ratio is taken as 0 (a uniform reference).

The implicit rewards are ``beta * (policy_logps - reference_logps)``, detached.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def preference_loss(  # noqa: PLR0917 (the reference implementation's signature)
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
    beta: float,
    label_smoothing: float = 0.0,
    ipo: bool = False,
    reference_free: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-example losses and implicit rewards, each of shape ``(batch,)``."""
    pi_logratios = policy_chosen_logps - policy_rejected_logps
    ref_logratios = reference_chosen_logps - reference_rejected_logps
    logits = pi_logratios if reference_free else pi_logratios - ref_logratios
    if ipo:
        losses = (logits - 1 / (2 * beta)) ** 2
    else:
        losses = -F.logsigmoid(beta * logits) * (1 - label_smoothing) - F.logsigmoid(-beta * logits) * label_smoothing
    chosen_rewards = beta * (policy_chosen_logps - reference_chosen_logps).detach()
    rejected_rewards = beta * (policy_rejected_logps - reference_rejected_logps).detach()
    return losses, chosen_rewards, rejected_rewards


def batch_logps(logits: torch.Tensor, labels: torch.Tensor, average: bool = False) -> torch.Tensor:
    """Log-probability of ``labels`` under ``logits`` per sequence, ignoring ``-100`` positions.

    ``logits`` is ``(batch, length, vocab)`` and ``labels`` ``(batch, length)``: the token at position
    ``t + 1`` is predicted by the logits at ``t``. With ``average`` the sum is divided by the number of
    labelled tokens (the SFT-style mean), otherwise it is the summed log-likelihood DPO uses.
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} do not match")
    labels = labels[:, 1:].clone()
    logits = logits[:, :-1, :]
    mask = labels != IGNORE_INDEX
    labels[~mask] = 0
    per_token = torch.gather(logits.float().log_softmax(-1), dim=2, index=labels.unsqueeze(2)).squeeze(2)
    total = (per_token * mask).sum(-1)
    if average:
        return total / mask.sum(-1).clamp(min=1)
    return total


def sft_loss(policy_chosen_logps: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of the chosen responses (per example), as the reference's ``sft`` loss."""
    return -policy_chosen_logps
