"""Tokenisation, the train/validation split, distributed batching and collation.

Tokenisation (:class:`RowTokenizer`, :func:`tokenize_row`):

* **Chat rows** (OpenAI DPO rows and supervised ``messages`` rows) of a tokenizer with a chat template
  are rendered as whole conversations, as TRL does: a pair's prompt turns with the generation prompt,
  then prompt + chosen turns and prompt + rejected turns as conversations; each reply's tokens are the
  tail after the prefix both share with the prompt, so they include the template's end-of-turn marker
  (``<|im_end|>``, ``<|eot_id|>``, ...) and whatever the template writes after it, and never an EOS
  the template does not write. A supervised conversation is rendered once, up to its last trained
  turn; each trained assistant turn (weight 1) is the tail of "the conversation up to and including
  it" after "the conversation before it, with the generation prompt"; everything else is context.
  ``tools`` reach the template; content parts reach it as parts when the template iterates them (a
  probe render decides), otherwise joined into one string. BOS is whatever the template writes.
* **Plain rows**, and chat rows of tokenizers without a template (rendered as ``role: text`` lines),
  follow the reference implementation (``preference_datasets.tokenize_batch_element``): prompt and
  replies tokenised separately, EOS appended to each reply. The prompt starts with the special tokens
  the tokenizer itself puts before a text (BOS for Llama-style tokenizers, nothing for GPT-2- or
  Qwen-style ones), as at inference.
* No text may contain one of the tokenizer's special tokens (the reference asserts EOS is absent): it
  would be encoded as a control token, and the template writes those itself.
* **Truncation** (the reference's rule): when prompt + the longer reply exceed ``max_length`` the
  prompt is cut to ``max_prompt_length`` tokens, keeping its end (``keep_end``, the default: the turn
  nearest the reply) or its start (``keep_start``); a leading BOS survives either way. If that is still
  too long the replies are cut to fit. A supervised conversation is cut the same way, its "prompt"
  being everything before the first trained token. Labels are the sequence with every untrained
  position set to -100.

Data order is a pure function of ``(seed, step)``: the split shuffles with ``seed`` and epoch ``e``
shuffles the training indices with ``seed + 1 + e``. A global batch of ``batch_size`` examples is cut
into ``gradient_accumulation_steps * world_size`` equal chunks; rank ``r`` takes chunk
``micro * world_size + r`` for micro-batch ``micro``. Resuming at step ``N`` therefore needs no sampler
state, and 1 node x 2 processes sees exactly the data 2 nodes x 1 process sees.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from ftcrd.dataset import ConversationRow, DatasetError, PreferenceRow, Row, TruncationSide, held_out_rows
from ftcrd.messages import Message

from fttrainer.losses import IGNORE_INDEX

log = logging.getLogger("fttrainer")
_PARTS_PROBE = "fttrainer content-parts probe"


@dataclass(frozen=True)
class Example:
    """One tokenised row; ``index`` is its position in the parsed dataset. A supervised conversation
    (no rejected reply) has empty ``rejected_*`` lists."""

    index: int
    chosen_input_ids: list[int]
    chosen_labels: list[int]
    rejected_input_ids: list[int]
    rejected_labels: list[int]
    prompt_length: int

    @property
    def n_tokens(self) -> int:
        return len(self.chosen_input_ids) + len(self.rejected_input_ids)

    @property
    def is_pair(self) -> bool:
        return bool(self.rejected_input_ids)


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _special_prefix(tokenizer: Any) -> list[int]:
    """The special tokens the tokenizer puts before a text of its own accord (BOS, or nothing)."""
    plain = list(tokenizer("a", add_special_tokens=False)["input_ids"])
    full = list(tokenizer("a", add_special_tokens=True)["input_ids"])
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return full[:start]
    return []


def _template_takes_parts(tokenizer: Any) -> bool:
    """Whether the chat template iterates a list of content parts (else parts are joined into a string)."""
    probe = [{"role": "user", "content": [{"type": "text", "text": _PARTS_PROBE}]}]
    try:
        text = str(tokenizer.apply_chat_template(probe, tokenize=False))
    except Exception:  # any failure of the probe means "give it strings", which every template takes
        return False
    return _PARTS_PROBE in text and "'type'" not in text and '"type"' not in text


def _special_pattern(tokenizer: Any) -> re.Pattern[str] | None:
    tokens = set(tokenizer.all_special_tokens)
    tokens |= {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
    tokens = {t for t in tokens if t}
    if not tokens:
        return None
    return re.compile("|".join(re.escape(t) for t in sorted(tokens, key=len, reverse=True)))


class RowTokenizer:
    """Turns parsed rows into token ids with one tokenizer (see the module doc for the rules)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.eos: int | None = tokenizer.eos_token_id
        self.bos: int | None = tokenizer.bos_token_id
        self.has_template = bool(getattr(tokenizer, "chat_template", None))
        self.takes_parts = self.has_template and _template_takes_parts(tokenizer)
        self.prefix = _special_prefix(tokenizer)
        self.special = _special_pattern(tokenizer)
        self._warned = False

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _eos(self) -> int:
        if self.eos is None:
            raise ValueError("the tokenizer has no EOS token and no chat template: replies could not be terminated")
        return self.eos

    def check_text(self, row: Row) -> None:
        """Refuse text containing a special token of the tokenizer (naming the row and field)."""
        if self.special is None:
            return
        for path, text in row.text_fields():
            found = self.special.search(text)
            if found:
                raise DatasetError(
                    f"contains {found.group()!r}, a special token of the model's tokenizer; remove it (control "
                    "tokens come from the chat template, never from the text)",
                    row=row.number,
                    field=path,
                )

    def render(self, row: Row, messages: Sequence[Message], *, generation: bool = False) -> list[int]:
        """Token ids of ``messages`` rendered through the chat template (with the row's tools)."""
        dicts = [m.template_dict(self.takes_parts) for m in messages]
        tools = list(row.tools) if row.tools else None
        try:
            out = self.tokenizer.apply_chat_template(
                dicts, tools=tools, add_generation_prompt=generation, tokenize=True, return_dict=True
            )
        except Exception as exc:  # jinja's TemplateError (raise_exception), TypeError, ValueError from a template
            raise DatasetError(
                f"the model's chat template refused this conversation: {exc}".splitlines()[0], row=row.number
            ) from None
        return list(out["input_ids"])

    def pair(self, row: PreferenceRow) -> tuple[list[int], list[int], list[int]]:
        """(prompt, chosen reply, rejected reply) token ids, untruncated."""
        if row.messages is not None and self.has_template:
            prompt = self.render(row, row.messages, generation=True)
            chosen = self.render(row, [*row.messages, *row.chosen_turns()])
            rejected = self.render(row, [*row.messages, *row.rejected_turns()])
            n = min(common_prefix_length(prompt, chosen), common_prefix_length(prompt, rejected))
            self._warn_if_cut(prompt, n)
            for field, reply in (("chosen", chosen[n:]), ("rejected", rejected[n:])):
                if not reply:
                    raise DatasetError(
                        f"the model's chat template renders no tokens for the {field} reply", row=row.number
                    )
            return chosen[:n], chosen[n:], rejected[n:]
        eos = self._eos()
        prompt_ids = self.prefix + self.encode(row.prompt_text())
        return prompt_ids, [*self.encode(row.chosen), eos], [*self.encode(row.rejected), eos]

    def conversation(self, row: ConversationRow) -> tuple[list[int], list[int]]:
        """(input ids, labels) of a supervised conversation up to its last trained turn, untruncated."""
        trained = row.trained_turns()
        messages = row.messages[: trained[-1] + 1]
        if not self.has_template:
            return self._plain_conversation(messages, set(trained))
        ids = self.render(row, messages)
        labels = [IGNORE_INDEX] * len(ids)
        for i in trained:
            before = self.render(row, messages[:i], generation=True)
            upto = ids if i == trained[-1] else self.render(row, messages[: i + 1])
            if ids[: len(upto)] != upto:
                raise DatasetError(
                    "the model's chat template renders the earlier turns differently once later turns follow, so "
                    "this turn's tokens cannot be located in the conversation; put each trained assistant turn in "
                    "a row of its own",
                    row=row.number,
                    field=messages[i].path,
                )
            start = common_prefix_length(before, upto)
            self._warn_if_cut(before, start)
            if start == len(upto):
                raise DatasetError(
                    "the model's chat template renders no tokens for this turn", row=row.number, field=messages[i].path
                )
            labels[start : len(upto)] = upto[start:]
        return ids, labels

    def _warn_if_cut(self, prompt: list[int], shared: int) -> None:
        """As TRL: the reply starts where prompt and conversation diverge, and that is said once."""
        if shared < len(prompt) and not self._warned:
            self._warned = True
            log.warning(
                "the chat template renders the prompt alone differently from the prompt followed by a reply; "
                "training starts where they diverge (%r is not in the training sequence)",
                self.tokenizer.decode(prompt[shared:]),
            )

    def _plain_conversation(self, messages: Sequence[Message], trained: set[int]) -> tuple[list[int], list[int]]:
        """No template: ``role: text`` lines, each trained reply tokenised on its own and ended with EOS."""
        eos = self._eos()
        ids, labels = list(self.prefix), [IGNORE_INDEX] * len(self.prefix)
        context = ""
        for i, message in enumerate(messages):
            separator = "\n" if i else ""
            if i not in trained:
                context += separator + message.line()
                continue
            context_ids = self.encode(context + separator + "assistant: ")
            reply = [*self.encode(message.plain()), eos]
            ids += context_ids + reply
            labels += [IGNORE_INDEX] * len(context_ids) + reply
            context = ""
        return ids, labels

    def cut_prompt(self, prompt: list[int], max_prompt_length: int, side: TruncationSide) -> list[int]:
        if len(prompt) <= max_prompt_length:
            return prompt
        if side == "keep_start":
            return prompt[:max_prompt_length]
        keep = 1 if self.bos is not None and prompt[0] == self.bos and max_prompt_length > 1 else 0
        return prompt[:keep] + prompt[len(prompt) - (max_prompt_length - keep) :]


def render_prompt(row: PreferenceRow, tokenizer: Any) -> str:
    """The prompt as text: chat rows through the tokenizer's chat template when it has one."""
    if row.messages is None or not getattr(tokenizer, "chat_template", None):
        return row.prompt_text()
    messages = [m.template_dict(False) for m in row.messages]
    tools = list(row.tools) if row.tools else None
    return str(tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=False))


def tokenize_row(
    row: Row,
    index: int,
    tokenizer: Any,
    max_length: int,
    max_prompt_length: int,
    *,
    truncation_side: TruncationSide = "keep_end",
) -> Example:
    """One row as an :class:`Example`; ``tokenizer``: a Hugging Face tokenizer or a :class:`RowTokenizer`
    (build one per dataset: it probes the template once). Raises :class:`DatasetError` for a row the
    tokenizer or its template cannot take."""
    rt = tokenizer if isinstance(tokenizer, RowTokenizer) else RowTokenizer(tokenizer)
    rt.check_text(row)
    if isinstance(row, ConversationRow):
        ids, labels = rt.conversation(row)
        first = next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), len(labels))
        head = rt.cut_prompt(ids[:first], max_prompt_length, truncation_side) if len(ids) > max_length else ids[:first]
        ids = (head + ids[first:])[:max_length]
        labels = ([IGNORE_INDEX] * len(head) + labels[first:])[:max_length]
        return Example(index, ids, labels, [], [], prompt_length=len(head))

    prompt, chosen, rejected = rt.pair(row)
    longer = max(len(chosen), len(rejected))
    if len(prompt) + longer > max_length:
        prompt = rt.cut_prompt(prompt, max_prompt_length, truncation_side)
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
    rows: Sequence[Row],
    tokenizer: Any,
    max_length: int,
    max_prompt_length: int,
    *,
    truncation_side: TruncationSide = "keep_end",
) -> list[Example]:
    rt = RowTokenizer(tokenizer)
    return [
        tokenize_row(row, i, rt, max_length, max_prompt_length, truncation_side=truncation_side)
        for i, row in enumerate(rows)
    ]


def split_indices(n: int, validation_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, validation) dataset indices; at least one training row, validation may be empty. How many rows are
    held out is :func:`ftcrd.dataset.held_out_rows`, the API's count, so the API knows the training rows."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = held_out_rows(n, validation_fraction)
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
    A supervised conversation's (empty) rejected row is all padding; ``sft`` uses only the first half.
    """
    seqs = [e.chosen_input_ids for e in examples] + [e.rejected_input_ids for e in examples]
    labels = [e.chosen_labels for e in examples] + [e.rejected_labels for e in examples]
    length = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), length), pad_token_id, dtype=torch.long)
    label_t = torch.full((len(seqs), length), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(seqs), length), dtype=torch.long)
    for i, (s, lab) in enumerate(zip(seqs, labels, strict=True)):
        input_ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        label_t[i, : len(lab)] = torch.tensor(lab, dtype=torch.long)
        attention[i, : len(s)] = 1
    return {
        "input_ids": input_ids,
        "labels": label_t,
        "attention_mask": attention,
        "index": torch.tensor([e.index for e in examples], dtype=torch.long),
    }
