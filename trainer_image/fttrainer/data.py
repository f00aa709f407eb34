"""Tokenisation, the train/validation split, distributed batching and collation.

Tokenisation follows the reference implementation (``preference_datasets.tokenize_batch_element``):
prompt, chosen and rejected are tokenised separately (no special tokens), EOS is appended to each
response; if prompt + longer response exceed ``max_length`` the prompt keeps its last
``max_prompt_length`` tokens, and if that is still too long the responses are cut to fit. Labels are
the sequence with the prompt positions set to -100.

Data order is a pure function of ``(seed, step)``: the split shuffles with ``seed`` and epoch ``e``
shuffles the training indices with ``seed + 1 + e``. A global batch of ``batch_size`` examples is cut
into ``gradient_accumulation_steps * world_size`` equal chunks; rank ``r`` takes chunk
``micro * world_size + r`` for micro-batch ``micro``. Resuming at step ``N`` therefore needs no sampler
state, and 1 node x 2 processes sees exactly the data 2 nodes x 1 process sees.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from ftcrd.dataset import PreferenceRow

from fttrainer.losses import IGNORE_INDEX


@dataclass(frozen=True)
class Example:
    """One tokenised preference pair; ``index`` is its position in the parsed dataset."""

    index: int
    chosen_input_ids: list[int]
    chosen_labels: list[int]
    rejected_input_ids: list[int]
    rejected_labels: list[int]
    prompt_length: int

    @property
    def n_tokens(self) -> int:
        return len(self.chosen_input_ids) + len(self.rejected_input_ids)


def render_prompt(row: PreferenceRow, tokenizer: Any) -> str:
    """Plain prompts as they are; chat rows through the tokenizer's chat template when it has one."""
    if row.messages is None:
        assert row.prompt is not None
        return row.prompt
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": m.role, "content": m.content} for m in row.messages]
        rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return str(rendered)
    return row.prompt_text()


def tokenize_row(row: PreferenceRow, index: int, tokenizer: Any, max_length: int, max_prompt_length: int) -> Example:
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no EOS token")
    prompt = list(tokenizer(render_prompt(row, tokenizer), add_special_tokens=False)["input_ids"])
    chosen = [*tokenizer(row.chosen, add_special_tokens=False)["input_ids"], eos]
    rejected = [*tokenizer(row.rejected, add_special_tokens=False)["input_ids"], eos]

    longer = max(len(chosen), len(rejected))
    if len(prompt) + longer > max_length:
        prompt = prompt[-max_prompt_length:]  # keep the end: the question nearest the answer
    if len(prompt) + longer > max_length:
        budget = max_length - len(prompt)
        chosen, rejected = chosen[:budget], rejected[:budget]

    masked = [IGNORE_INDEX] * len(prompt)
    return Example(
        index=index,
        chosen_input_ids=prompt + chosen,
        chosen_labels=masked + chosen,
        rejected_input_ids=prompt + rejected,
        rejected_labels=masked + rejected,
        prompt_length=len(prompt),
    )


def tokenize_rows(
    rows: Sequence[PreferenceRow], tokenizer: Any, max_length: int, max_prompt_length: int
) -> list[Example]:
    return [tokenize_row(row, i, tokenizer, max_length, max_prompt_length) for i, row in enumerate(rows)]


def split_indices(n: int, validation_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, validation) dataset indices; at least one training row, validation may be empty."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = int(n * validation_fraction)
    if validation_fraction > 0 and n_val == 0 and n >= 2:
        n_val = 1
    n_val = min(n_val, n - 1)
    return sorted(order[n_val:]), sorted(order[:n_val])


@dataclass(frozen=True)
class Schedule:
    """Which examples each optimizer step uses, and how they are cut across ranks and micro-batches."""

    train: list[int]
    batch_size: int
    gradient_accumulation_steps: int
    world_size: int
    seed: int
    total_steps: int

    @classmethod
    def create(
        cls,
        train: list[int],
        *,
        batch_size: int,
        gradient_accumulation_steps: int,
        world_size: int,
        seed: int,
        n_epochs: int | None,
        n_examples: int | None,
    ) -> Schedule:
        if batch_size > len(train):
            raise ValueError(f"batch_size {batch_size} is larger than the {len(train)} training rows")
        total_examples = n_examples if n_examples is not None else (n_epochs or 1) * len(train)
        total_steps = max(1, total_examples // batch_size)
        return cls(train, batch_size, gradient_accumulation_steps, world_size, seed, total_steps)

    @property
    def steps_per_epoch(self) -> int:
        return len(self.train) // self.batch_size

    @property
    def micro_batch_size(self) -> int:
        return self.batch_size // (self.gradient_accumulation_steps * self.world_size)

    def epoch(self, step: int) -> float:
        return step / self.steps_per_epoch

    def global_batch(self, step: int) -> list[int]:
        epoch, within = divmod(step, self.steps_per_epoch)
        gen = torch.Generator().manual_seed(self.seed + 1 + epoch)
        order = torch.randperm(len(self.train), generator=gen).tolist()
        picked = order[within * self.batch_size : (within + 1) * self.batch_size]
        return [self.train[i] for i in picked]

    def micro_batches(self, step: int, rank: int) -> list[list[int]]:
        """This rank's micro-batches (dataset indices) for optimizer step ``step``."""
        batch = self.global_batch(step)
        size = self.micro_batch_size
        out = []
        for micro in range(self.gradient_accumulation_steps):
            chunk = micro * self.world_size + rank
            out.append(batch[chunk * size : (chunk + 1) * size])
        return out


def shard_for_eval(indices: list[int], rank: int, world_size: int, batch_size: int) -> list[tuple[list[int], int]]:
    """This rank's evaluation batches as (indices, real count), every rank getting the same number.

    Ranks take ``indices[rank::world_size]``, padded by repeating an index so all ranks run the same
    number of forward passes (FSDP collectives must line up); padded entries are not counted.
    """
    if not indices:
        return []
    per_rank = -(-len(indices) // world_size)
    mine = indices[rank::world_size]
    real = len(mine)
    mine = mine + [indices[0]] * (per_rank - real)
    out = []
    for start in range(0, per_rank, batch_size):
        chunk = mine[start : start + batch_size]
        counted = max(0, min(len(chunk), real - start))
        out.append((chunk, counted))
    return out


def collate(examples: Sequence[Example], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Chosen and rejected, concatenated into one ``(2 * batch, length)`` right-padded batch.

    The first half of the rows are the chosen sequences, the second half the rejected ones, so the
    policy (and reference) run ONE forward per micro-batch (the reference's ``concatenated_inputs``).
    """
    seqs = [e.chosen_input_ids for e in examples] + [e.rejected_input_ids for e in examples]
    labels = [e.chosen_labels for e in examples] + [e.rejected_labels for e in examples]
    length = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), length), pad_token_id, dtype=torch.long)
    label_t = torch.full((len(seqs), length), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(seqs), length), dtype=torch.long)
    for i, (s, lab) in enumerate(zip(seqs, labels, strict=True)):
        input_ids[i, : len(s)] = torch.tensor(s)
        label_t[i, : len(lab)] = torch.tensor(lab)
        attention[i, : len(s)] = 1
    return {
        "input_ids": input_ids,
        "labels": label_t,
        "attention_mask": attention,
        "index": torch.tensor([e.index for e in examples], dtype=torch.long),
    }
