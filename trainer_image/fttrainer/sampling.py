"""Completing a few held-out prompts at each evaluation (``spec.tracking.sampleDuringEval``), with the policy and,
when the run keeps one, the reference model: what the reference implementation's ``sample_during_eval`` did.

Every rank runs the same generations (a sharded model's forward is a collective): the same prompts, greedy
decoding, and ``synced_gpus`` so that a rank whose sequence ended keeps stepping until every rank's has.
The prompts are the first held-out examples' prompt tokens as the trainer tokenised them (chat rows through
the chat template, with the generation prompt), so a completion is what the model would answer there.
Rank 0 hands the decoded texts to :class:`fttrainer.tracking.RunRecorder` (trackers, status, Events).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fttrainer.data import Example
from fttrainer.parallel import Dist, compute_context

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Completion:
    """One prompt and what the models wrote after it (full length; shortening is the reader's business)."""

    prompt: str
    policy: str
    reference: str | None


class Sampler:
    """Greedy completions of fixed prompts by the policy and the reference, on every rank alike."""

    def __init__(self, tokenizer: Any, prompts: Sequence[Sequence[int]], max_new_tokens: int, d: Dist) -> None:
        self.tokenizer, self.prompts, self.max_new_tokens, self.d = (
            tokenizer,
            [list(p) for p in prompts],
            max_new_tokens,
            d,
        )

    @classmethod
    def from_examples(
        cls,
        examples: Sequence[Example],
        indices: Sequence[int],
        *,
        n: int,
        tokenizer: Any,
        max_new_tokens: int,
        d: Dist,
    ) -> Sampler:
        """The prompts of the first ``n`` examples of ``indices`` (the held-out ones)."""
        prompts = [examples[i].chosen_input_ids[: examples[i].prompt_length] for i in indices[:n]]
        return cls(tokenizer, [p for p in prompts if p], max_new_tokens, d)

    def __call__(self, policy: nn.Module, reference: nn.Module | None) -> list[Completion]:
        policy_texts = self.complete(policy)
        reference_texts: list[str | None] = [None] * len(policy_texts)
        if reference is not None:
            reference_texts = list(self.complete(reference))
        return [
            Completion(self.decode(p), out, ref)
            for p, out, ref in zip(self.prompts, policy_texts, reference_texts, strict=True)
        ]

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=True))

    def complete(self, model: nn.Module) -> list[str]:
        """Each prompt's greedy completion (one prompt per generate call: no padding side to get wrong)."""
        was_training = model.training
        model.eval()
        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        texts = []
        try:
            with torch.no_grad(), compute_context(model):
                for prompt in self.prompts:
                    ids = torch.tensor([prompt], dtype=torch.long, device=self.d.device)
                    out = model.generate(  # type: ignore[operator]
                        input_ids=ids,
                        attention_mask=torch.ones_like(ids),
                        max_new_tokens=self.max_new_tokens,
                        do_sample=False,
                        pad_token_id=pad,
                        synced_gpus=self.d.world_size > 1,
                    )
                    texts.append(self.decode(out[0, len(prompt) :].tolist()))
        finally:
            model.train(was_training)
        return texts
