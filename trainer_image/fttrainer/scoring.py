"""Scoring a model on preference pairs, exactly as training sees them: rows are tokenised by
:func:`fttrainer.data.tokenize_rows` (EOS appended, the same truncation), batched by :func:`fttrainer.data.collate`
and summed by :func:`fttrainer.losses.batch_logps`, so a margin here is the policy log-ratio the DPO loss uses.

Used by the demo to compare a model before and after training on held-out pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from ftcrd.dataset import PreferenceRow

from fttrainer.data import collate, tokenize_rows
from fttrainer.losses import batch_logps


@dataclass(frozen=True)
class Preference:
    """How strongly a model prefers the chosen responses: the mean of ``log p(chosen) - log p(rejected)`` (nats)
    and the share of pairs where that difference is positive."""

    mean_margin: float
    chosen_share: float


def pair_margins(
    model: Any,
    tokenizer: Any,
    rows: Sequence[PreferenceRow],
    *,
    max_length: int,
    max_prompt_length: int,
    batch_size: int = 8,
) -> list[float]:
    """``log p(chosen | prompt) - log p(rejected | prompt)`` of each row under ``model`` (in eval mode, no grad)."""
    examples = tokenize_rows(rows, tokenizer, max_length, max_prompt_length)
    margins: list[float] = []
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            chunk = examples[start : start + batch_size]
            batch = collate(chunk, tokenizer.pad_token_id)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            logps = batch_logps(logits.float(), batch["labels"])
            n = len(chunk)
            margins += (logps[:n] - logps[n:]).tolist()
    return margins


def preference(margins: Sequence[float]) -> Preference:
    if not margins:
        raise ValueError("no pairs to score")
    return Preference(sum(margins) / len(margins), sum(m > 0 for m in margins) / len(margins))
