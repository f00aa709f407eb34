"""Tokenisation, truncation, the split and distributed batching (no processes, no model)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ftcrd.dataset import Message, PreferenceRow
from fttrainer import tiny
from fttrainer.data import Schedule, collate, render_prompt, shard_for_eval, split_indices, tokenize_row
from fttrainer.losses import IGNORE_INDEX


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory):
    from transformers import AutoTokenizer

    texts = ["the quick brown fox jumps over the lazy dog " * 3, "hello world, yes no maybe"]
    path = tiny.ensure(Path(tmp_path_factory.mktemp("tiny")), texts, tiny.TinySpec())
    return AutoTokenizer.from_pretrained(path)


def ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def test_labels_mask_prompt_and_append_eos(tokenizer):
    row = PreferenceRow(prompt="the quick", chosen=" brown fox", rejected=" lazy dog")
    ex = tokenize_row(row, 3, tokenizer, max_length=64, max_prompt_length=32)
    p, c = ids(tokenizer, "the quick"), ids(tokenizer, " brown fox")
    assert ex.index == 3 and ex.prompt_length == len(p)
    assert ex.chosen_input_ids == p + c + [tokenizer.eos_token_id]
    assert ex.chosen_labels == [IGNORE_INDEX] * len(p) + c + [tokenizer.eos_token_id]
    assert ex.rejected_input_ids[: len(p)] == p


def test_long_prompt_keeps_its_end_then_responses_are_cut(tokenizer):
    prompt = "the quick brown fox jumps over the lazy dog " * 4
    row = PreferenceRow(prompt=prompt, chosen="hello world " * 10, rejected="yes")
    ex = tokenize_row(row, 0, tokenizer, max_length=20, max_prompt_length=8)
    assert ex.prompt_length == 8
    assert ex.chosen_input_ids[:8] == ids(tokenizer, prompt)[-8:]
    assert len(ex.chosen_input_ids) == 20  # chosen truncated to the remaining budget
    assert ex.rejected_input_ids[-1] == tokenizer.eos_token_id  # short one untouched


def test_chat_rows_use_the_chat_template(tokenizer):
    row = PreferenceRow(chosen="yes", rejected="no", messages=(Message("user", "hello"),))
    assert render_prompt(row, tokenizer) == "<|user|>\nhello<|endoftext|><|assistant|>\n"
    tokenizer_without = type("T", (), {"chat_template": None})()
    assert render_prompt(row, tokenizer_without) == "user: hello\nassistant: "


def test_split_is_deterministic_and_disjoint():
    train, val = split_indices(100, 0.1, seed=3)
    assert (train, val) == split_indices(100, 0.1, seed=3)
    assert len(val) == 10 and not set(train) & set(val) and set(train) | set(val) == set(range(100))
    assert split_indices(100, 0.1, seed=4) != (train, val)
    assert split_indices(5, 0.0, seed=0) == ([0, 1, 2, 3, 4], [])
    assert len(split_indices(3, 0.01, seed=0)[1]) == 1


def test_micro_batches_partition_the_global_batch():
    s = Schedule.create(
        list(range(40)), batch_size=8, gradient_accumulation_steps=2, world_size=2, seed=0, n_epochs=2, n_examples=None
    )
    assert s.total_steps == 10 and s.steps_per_epoch == 5 and s.micro_batch_size == 2
    for step in (0, 4, 5, 9):
        per_rank = [s.micro_batches(step, r) for r in range(2)]
        flat = sorted(i for rank in per_rank for micro in rank for i in micro)
        assert flat == sorted(s.global_batch(step))
        assert all(len(m) == 2 for rank in per_rank for m in rank)
    epoch0 = sorted(i for step in range(5) for i in s.global_batch(step))
    assert epoch0 == list(range(40))  # each epoch is a permutation
    assert s.global_batch(5) != s.global_batch(0)
    # n_examples overrides epochs
    s2 = Schedule.create(
        list(range(40)), batch_size=8, gradient_accumulation_steps=1, world_size=1, seed=0, n_epochs=1, n_examples=20
    )
    assert s2.total_steps == 2


def test_layout_independence():
    """1 node x 2 processes and 2 nodes x 1 process are both ranks 0 and 1 of world size 2."""
    a = Schedule.create(
        list(range(16)), batch_size=4, gradient_accumulation_steps=1, world_size=2, seed=1, n_epochs=1, n_examples=None
    )
    assert [a.micro_batches(0, r) for r in range(2)] == [[a.global_batch(0)[:2]], [a.global_batch(0)[2:]]]


def test_eval_shards_are_even_and_padded():
    shards = [shard_for_eval(list(range(5)), r, 2, batch_size=2) for r in range(2)]
    assert [len(s) for s in shards] == [2, 2]
    counted = sorted(i for s in shards for idx, n in s for i in idx[:n])
    assert counted == list(range(5))
    assert shard_for_eval([], 0, 2, 4) == []


def test_collate_concatenates_chosen_then_rejected(tokenizer):
    rows = [
        PreferenceRow(prompt="the", chosen=" quick brown", rejected=" dog"),
        PreferenceRow(prompt="hello", chosen=" world", rejected=" yes no maybe"),
    ]
    exs = [tokenize_row(r, i, tokenizer, 64, 32) for i, r in enumerate(rows)]
    b = collate(exs, pad_token_id=tokenizer.pad_token_id)
    assert b["input_ids"].shape[0] == 4
    assert b["input_ids"][0, : len(exs[0].chosen_input_ids)].tolist() == exs[0].chosen_input_ids
    assert b["input_ids"][2, : len(exs[0].rejected_input_ids)].tolist() == exs[0].rejected_input_ids
    lengths = b["attention_mask"].sum(1).tolist()
    assert lengths == [len(e.chosen_input_ids) for e in exs] + [len(e.rejected_input_ids) for e in exs]
    assert (b["labels"][b["attention_mask"] == 0] == IGNORE_INDEX).all()
    assert torch.equal(b["index"], torch.tensor([0, 1]))
