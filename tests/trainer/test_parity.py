"""Our DPO maths equals TRL's ``DPOTrainer`` on the same batch and model (TRL is a test-only dependency).

TRL builds the batch (its tokenisation and collation: ``[chosen; rejected]`` concatenated along the batch,
left-flushed, ``completion_mask`` marking response tokens) and computes its loss and metrics with
``compute_loss``; we take the very same tensors through ``fttrainer.losses.batch_logps`` (labels -100
outside the completion) and ``preference_loss``, and compare loss, ``rewards/chosen``,
``rewards/rejected``, ``rewards/accuracies``, ``rewards/margins`` and ``logps/*`` to 1e-5, and the policy
gradients. Finally ``fttrainer.data`` tokenises and collates the same rows into exactly TRL's tokens and
response masks, so the loss from our own batch equals TRL's too.

Only sigmoid DPO is compared: TRL 1.16's ``sigmoid`` loss has no label smoothing (our cDPO follows the
reference implementation's conservative DPO), and TRL's ``ipo`` divides log-ratios by the completion
length where the reference implementation (and we) use summed log-probabilities.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

pytest.importorskip("trl")

from fttrainer.losses import batch_logps, preference_loss

ROWS = [
    {"prompt": "What colour is the sky?", "chosen": " Blue, on a clear day.", "rejected": " Green."},
    {"prompt": "Two plus two?", "chosen": " Four.", "rejected": " Five, if you ask nicely, or maybe six."},
    {"prompt": "Name a fruit that is yellow.", "chosen": " A banana.", "rejected": " A car."},
    {"prompt": "Say hello.", "chosen": " Hello there!", "rejected": " Goodbye forever and ever."},
]
BETA = 0.1


def make_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([r[k] for r in ROWS for k in ("prompt", "chosen", "rejected")], trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )


def make_model(vocab: int, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = LlamaForCausalLM(cfg)
    # Larger weights than the default init (std 0.02) so log-probs differ visibly between the two models.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.2)
    return model.float()


@pytest.fixture(scope="module")
def trl_side(tmp_path_factory):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    tok = make_tokenizer()
    policy = make_model(len(tok), seed=1)
    reference = make_model(len(tok), seed=2)
    pristine = copy.deepcopy(policy), copy.deepcopy(reference)  # before TRL touches them
    args = DPOConfig(
        output_dir=str(tmp_path_factory.mktemp("trl")),
        beta=BETA,
        loss_type=["sigmoid"],
        bf16=False,
        fp16=False,
        use_cpu=True,
        report_to=[],
        per_device_train_batch_size=len(ROWS),
        max_length=128,
        logging_steps=1,
        save_strategy="no",
        gradient_checkpointing=False,
        seed=0,
    )
    trainer: Any = DPOTrainer(
        model=policy,
        ref_model=reference,
        args=args,
        train_dataset=Dataset.from_list(ROWS),
        processing_class=tok,
    )
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(ROWS))])
    trainer.model.train()
    trainer._metrics["train"].clear()
    loss = trainer.compute_loss(trainer.model, batch)
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    return {
        "batch": batch,
        "loss": loss.detach(),
        "metrics": metrics,
        "policy": pristine[0],
        "reference": pristine[1],
    }


def ours(trl_side):
    batch = trl_side["batch"]
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    policy, reference = trl_side["policy"].train(), trl_side["reference"].eval()
    logits = policy(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    with torch.no_grad():
        ref_logits = reference(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
        ).logits
    logps = batch_logps(logits, labels)
    ref_logps = batch_logps(ref_logits, labels)
    pc, pr = logps.chunk(2)
    rc, rr = ref_logps.chunk(2)
    losses, chosen_rewards, rejected_rewards = preference_loss(pc, pr, rc, rr, beta=BETA)
    return {
        "loss": losses.mean(),
        "rewards/chosen": chosen_rewards.mean().item(),
        "rewards/rejected": rejected_rewards.mean().item(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean().item(),
        "rewards/margins": (chosen_rewards - rejected_rewards).mean().item(),
        "logps/chosen": pc.mean().item(),
        "logps/rejected": pr.mean().item(),
        "grad_loss": losses.mean(),
    }


def test_batch_is_nontrivial(trl_side):
    b = trl_side["batch"]
    assert b["input_ids"].shape[0] == 2 * len(ROWS)
    assert int(b["completion_mask"].sum()) > 2 * len(ROWS)
    # the models differ, so rewards are not all zero and the check below means something
    assert abs(trl_side["metrics"]["rewards/margins"]) > 1e-3


def test_dpo_loss_rewards_accuracy_match_trl(trl_side):
    got = ours(trl_side)
    want = trl_side["metrics"]
    assert got["loss"].item() == pytest.approx(trl_side["loss"].item(), abs=1e-5)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected"):
        assert got[key] == pytest.approx(want[key], abs=1e-5, rel=1e-5), key
    assert got["rewards/accuracies"] == pytest.approx(want["rewards/accuracies"], abs=1e-6)


def test_gradients_match_trl(trl_side, tmp_path):
    """Same loss, same gradient: the policy gradient of our loss equals TRL's."""
    batch = trl_side["batch"]
    trl_policy = copy.deepcopy(trl_side["policy"])
    ref = copy.deepcopy(trl_side["reference"])
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    trainer: Any = DPOTrainer(
        model=trl_policy,
        ref_model=ref,
        args=DPOConfig(
            output_dir=str(tmp_path),
            beta=BETA,
            bf16=False,
            use_cpu=True,
            report_to=[],
            per_device_train_batch_size=len(ROWS),
            max_length=128,
            save_strategy="no",
            gradient_checkpointing=False,
        ),
        train_dataset=Dataset.from_list(ROWS),
        processing_class=make_tokenizer(),
    )
    trainer.model.train()
    trainer.compute_loss(trainer.model, batch).backward()
    got = ours(trl_side)
    got["grad_loss"].backward()
    ours_params = dict(trl_side["policy"].named_parameters())
    for name, p in trainer.model.named_parameters():
        assert p.grad is not None and ours_params[name].grad is not None, name
        torch.testing.assert_close(ours_params[name].grad, p.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_our_tokenisation_and_collation_give_trls_batch(trl_side):
    """From the same rows, fttrainer.data builds the tokens TRL trains on (prompt, response, EOS; prompt masked),
    so the whole path, not only the maths, matches."""
    from ftcrd.dataset import PreferenceRow
    from fttrainer.data import collate, tokenize_rows

    tok = make_tokenizer()
    rows = [PreferenceRow(prompt=r["prompt"], chosen=r["chosen"], rejected=r["rejected"]) for r in ROWS]
    ours_batch = collate(tokenize_rows(rows, tok, max_length=128, max_prompt_length=64), tok.pad_token_id)
    theirs = trl_side["batch"]
    for i in range(2 * len(ROWS)):
        n_ours = int(ours_batch["attention_mask"][i].sum())
        n_theirs = int(theirs["attention_mask"][i].sum())
        assert n_ours == n_theirs, i
        assert ours_batch["input_ids"][i, :n_ours].tolist() == theirs["input_ids"][i, :n_theirs].tolist(), i
        ours_labelled = (ours_batch["labels"][i, :n_ours] != -100).tolist()
        assert ours_labelled == theirs["completion_mask"][i, :n_theirs].bool().tolist(), i

    # and the loss from our own batch equals TRL's
    policy, reference = trl_side["policy"], trl_side["reference"]
    with torch.no_grad():
        kw = {"input_ids": ours_batch["input_ids"], "attention_mask": ours_batch["attention_mask"], "use_cache": False}
        logps = batch_logps(policy(**kw).logits, ours_batch["labels"])
        ref_logps = batch_logps(reference(**kw).logits, ours_batch["labels"])
    n = len(ROWS)
    losses, _, _ = preference_loss(logps[:n], logps[n:], ref_logps[:n], ref_logps[n:], beta=BETA)
    assert losses.mean().item() == pytest.approx(trl_side["loss"].item(), abs=1e-5)
