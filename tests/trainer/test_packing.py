"""Padding-free (packed) micro-batches against padded ones, in float64 on a tiny random Llama, through the real
``fttrainer.loop.Trainer`` (one rank in this process): the same loss, rewards, log-probs and gradients for dpo,
ipo, cdpo and sft on rows of very different lengths, full fine-tuning and a LoRA adapter; the token-budget
micro-batching; and the packed layout itself (positions restart, targets and attention stay inside a sequence).
"""

from __future__ import annotations

import copy

import pytest
import torch
from fttrainer.logprobs import sequence_logps
from fttrainer.losses import IGNORE_INDEX
from fttrainer.packing import layout, micro_batch_tokens, token_budget_micro_batches
from packing_cases import LOSSES, PAD, make_trainer, max_abs_diff, one_rank, skewed_examples, tiny_llama

TOL = 1e-5


@pytest.fixture(scope="module")
def d():
    return one_rank()


def grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("loss_name", ["dpo", "ipo", "cdpo", "sft"])
def test_packed_equals_padded_loss_rewards_and_gradients(d, loss_name):
    loss = LOSSES[loss_name]
    examples = skewed_examples(8, seed=1, conversations=3 if loss_name == "sft" else 0)
    lengths = [e.n_tokens for e in examples]
    assert max(lengths) > 8 * min(lengths), lengths  # "very different lengths"
    policy, reference = tiny_llama(seed=1), tiny_llama(seed=2).eval().requires_grad_(False)
    results = {}
    for packed in (False, True):
        model = copy.deepcopy(policy)
        trainer = make_trainer(d, model, reference, examples, loss, batch_size=8, packing=packed)
        summed, metric_sums, counts = trainer._micro_batch(list(range(8)), train=True)
        summed.backward()
        results[packed] = (summed.item(), metric_sums, counts, grads(model))
    padded, packed_ = results[False], results[True]
    assert packed_[0] == pytest.approx(padded[0], abs=TOL)
    # loss, reward accuracy, margin, chosen/rejected rewards, chosen/rejected log-probs
    torch.testing.assert_close(packed_[1], padded[1], atol=TOL, rtol=0)
    assert packed_[2] == padded[2]  # rows and real tokens counted
    assert padded[3], "no gradient"
    assert max_abs_diff(packed_[3], padded[3]) <= TOL
    if loss_name != "sft":
        assert abs(padded[1][2].item()) > 1e-2, "rewards are all zero: the comparison would mean little"


def test_trainer_steps_packed_padded_and_token_budget_give_the_same_weights(d):
    """Whole optimizer steps (two micro-batches of 4 each): padded, packed, and packed cut by a token budget into
    a different number of forwards, end with the same metrics and weights."""
    examples = skewed_examples(16, seed=3)
    policy, reference = tiny_llama(seed=3), tiny_llama(seed=4).eval().requires_grad_(False)
    runs = {
        "padded": {},
        "packed": {"packing": True},
        "packed+budget": {"packing": True, "max_tokens_per_micro_batch": 200},
        "padded+budget": {"max_tokens_per_micro_batch": 300},
        "unchunked": {"packing": True, "chunked_logps": False},
    }
    out = {}
    for name, loop in runs.items():
        model = copy.deepcopy(policy)
        trainer = make_trainer(d, model, reference, examples, LOSSES["dpo"], batch_size=8, accumulation=2, **loop)
        forwards = len(trainer.micro_batches(0))
        metrics = [trainer.step() for _ in range(2)]
        out[name] = (metrics, weights(model), forwards)
    assert out["padded"][2] == 2 and out["packed+budget"][2] > 2, {k: v[2] for k, v in out.items()}
    base_metrics, base_weights, _ = out["padded"]
    assert max_abs_diff(base_weights, weights(policy)) > 1e-3  # the steps moved the weights
    for name, (metrics, w, _) in out.items():
        for got, want in zip(metrics, base_metrics, strict=True):
            for key in ("loss", "rewardAccuracy", "rewardMargin", "rewardsChosen", "logpsRejected", "gradNorm"):
                assert got[key] == pytest.approx(want[key], abs=TOL), (name, key)
            assert got["tokens"] == want["tokens"], name
        assert max_abs_diff(w, base_weights) <= TOL, name


def test_packed_equals_padded_with_a_lora_adapter(d):
    """The packed path does not depend on full fine-tuning: a PEFT LoRA policy gets the same adapter gradients."""
    from peft import LoraConfig, get_peft_model

    examples = skewed_examples(6, seed=5)
    reference = tiny_llama(seed=6).eval().requires_grad_(False)
    base = tiny_llama(seed=5)
    torch.manual_seed(0)
    lora = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"]))
    with torch.no_grad():  # a trained-looking adapter (B is zero at init, which would hide errors in A's gradient)
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    results = {}
    for packed in (False, True):
        model = copy.deepcopy(lora)
        trainer = make_trainer(d, model, reference, examples, LOSSES["dpo"], batch_size=6, packing=packed)
        summed, metric_sums, _ = trainer._micro_batch(list(range(6)), train=True)
        summed.backward()
        results[packed] = (summed.item(), metric_sums, grads(model))
    assert results[True][0] == pytest.approx(results[False][0], abs=TOL)
    torch.testing.assert_close(results[True][1], results[False][1], atol=TOL, rtol=0)
    names = set(results[False][2])
    assert names and all("lora_" in n for n in names), sorted(names)[:4]
    assert max_abs_diff(results[True][2], results[False][2]) <= TOL


def test_packed_layout_positions_targets_and_segments():
    examples = skewed_examples(3, seed=7)
    batch = layout(examples, pairs=True, packed=True, pad_token_id=PAD)
    seqs = [e.chosen_input_ids for e in examples] + [e.rejected_input_ids for e in examples]
    assert batch.input_ids.shape == (1, sum(map(len, seqs)))
    assert batch.bounds[-1] == batch.input_ids.shape[1] and len(batch.bounds) == len(seqs) + 1
    assert batch.position_ids[0].tolist() == [p for s in seqs for p in range(len(s))]
    assert batch.cu_seqlens.tolist() == list(batch.bounds) and batch.cu_seqlens.dtype == torch.int32
    # every scored position predicts the next token of its own sequence
    start = batch.input_ids.shape[1] - batch.keep
    ids = batch.input_ids[0]
    for pos, target, seg in zip(batch.positions.tolist(), batch.targets.tolist(), batch.segments.tolist(), strict=True):
        absolute = start + pos
        assert batch.bounds[seg] <= absolute < batch.bounds[seg + 1] - 1
        assert ids[absolute + 1].item() == target
    # as many scored positions as labelled tokens after the first of each sequence
    labels = [e.chosen_labels for e in examples] + [e.rejected_labels for e in examples]
    assert len(batch.positions) == sum(sum(t != IGNORE_INDEX for t in lab[1:]) for lab in labels)
    padded = layout(examples, pairs=True, packed=False, pad_token_id=PAD)
    assert padded.lengths == batch.lengths and len(padded.positions) == len(batch.positions)


def test_packed_attention_does_not_cross_sequences():
    """Changing every token of one sequence leaves the log-probs of the others unchanged."""
    model = tiny_llama(seed=8)
    examples = skewed_examples(3, seed=9)
    before = sequence_logps(model, layout(examples, pairs=True, packed=True, pad_token_id=PAD))
    changed = list(examples)
    e = changed[1]
    changed[1] = type(e)(
        index=e.index,
        chosen_input_ids=[(t * 7 + 3) % 97 + 3 for t in e.chosen_input_ids],
        chosen_labels=e.chosen_labels,
        rejected_input_ids=e.rejected_input_ids,
        rejected_labels=e.rejected_labels,
        prompt_length=e.prompt_length,
    )
    after = sequence_logps(model, layout(changed, pairs=True, packed=True, pad_token_id=PAD))
    others = [i for i in range(6) if i != 1]
    torch.testing.assert_close(after[others], before[others], atol=1e-12, rtol=0)
    assert abs(after[1].item() - before[1].item()) > 1e-3


def test_token_budget_cuts_each_share_within_budget_and_equal_counts():
    examples = skewed_examples(24, seed=10)
    shares = [list(range(0, 12)), list(range(12, 24))]
    budget = 260
    for packed in (True, False):
        cuts = [
            token_budget_micro_batches(shares, r, examples, budget=budget, pairs=True, packed=packed) for r in (0, 1)
        ]
        assert len(cuts[0]) == len(cuts[1]) > 1  # FSDP: the same number of forwards on every rank
        for rank, cut in enumerate(cuts):
            assert sorted(i for mb in cut for i in mb) == shares[rank]  # the same examples, each once
            for mb in cut:
                tokens = micro_batch_tokens([examples[i] for i in mb], pairs=True, packed=packed)
                assert tokens <= budget or len(mb) == 1
        again = token_budget_micro_batches(shares, 0, examples, budget=budget, pairs=True, packed=packed)
        assert again == cuts[0]  # a function of the shares and lengths: resumable
    with pytest.raises(ValueError, match="positive"):
        token_budget_micro_batches(shares, 0, examples, budget=0, pairs=True, packed=True)
