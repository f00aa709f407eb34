"""LoRA-DPO in one process (``fttrainer.adapters`` through the real ``fttrainer.loop.Trainer`` on a one-rank group):

* loss, rewards, accuracy, log-probs and adapter gradients equal TRL's ``DPOTrainer`` + ``peft`` on the same batch
  (TRL builds its own PEFT model from the same ``LoraConfig``; its reference is the base, adapters disabled);
* the reference log-probs of the disabled adapter are the base model's, bit for bit, padded and packed;
* a precomputed reference table equals the online reference;
* a checkpoint holds the adapter and optimizer state only, and restores them;
* the export is peft's format (``PeftModel.from_pretrained`` reproduces the trained model) and the merged
  export is the base plus ``(alpha / r) * B @ A``.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import torch
from ftcrd.types import AdapterSpec
from fttrainer import adapters, checkpoint
from fttrainer.logprobs import sequence_logps
from fttrainer.loop import LossSpec, precompute_reference_logps
from fttrainer.packing import layout
from packing_cases import LOSSES, PAD, make_trainer, one_rank, skewed_examples, tiny_llama

from tests.support.lora import merged_by_hand

pytest.importorskip("trl")

from test_parity import BETA, ROWS, make_model, make_tokenizer  # the full-DPO parity test's rows and models

TOL = 1e-5
SPEC = AdapterSpec(r=4, alpha=8, dropout=0.0)


@pytest.fixture(scope="module")
def d():
    return one_rank()


def trained_looking(model: Any, seed: int = 0) -> Any:
    """lora_B is zero at init (policy = reference, A's gradient zero): give it values, as after some training."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.2)
    return model


def lora_grads(model: Any) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


# ---------------------------------------------------------------------------------------------- TRL + peft


@pytest.fixture(scope="module")
def trl_lora(tmp_path_factory):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    tok = make_tokenizer()
    base = make_model(len(tok), seed=1)
    trainer: Any = DPOTrainer(
        model=copy.deepcopy(base),
        ref_model=None,
        args=DPOConfig(
            output_dir=str(tmp_path_factory.mktemp("trl-lora")),
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
        ),
        train_dataset=Dataset.from_list(ROWS),
        processing_class=tok,
        peft_config=adapters.lora_config(SPEC),  # TRL wraps the base itself: its reference is the disabled adapter
    )
    assert "ref" not in trainer.model.peft_config  # a fresh adapter: no reference copy, the base is the reference
    trained_looking(trainer.model)
    adapter = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" in n}
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(ROWS))])
    trainer.model.train()
    trainer._metrics["train"].clear()
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    return {
        "tok": tok,
        "base": base,
        "adapter": adapter,
        "loss": loss.item(),
        "metrics": {k: v[-1] for k, v in trainer._metrics["train"].items()},
        "grads": lora_grads(trainer.model),
    }


def test_lora_dpo_loss_rewards_and_adapter_gradients_equal_trl_peft(d, trl_lora):
    from ftcrd.dataset import PreferenceRow
    from fttrainer.data import tokenize_rows

    policy = adapters.wrap(copy.deepcopy(trl_lora["base"]), SPEC)
    params = dict(policy.named_parameters())
    assert params.keys() >= trl_lora["adapter"].keys() and len(trl_lora["adapter"]) > 0
    with torch.no_grad():
        for name, value in trl_lora["adapter"].items():
            params[name].copy_(value)
    rows = [PreferenceRow(prompt=r["prompt"], chosen=r["chosen"], rejected=r["rejected"]) for r in ROWS]
    examples = tokenize_rows(rows, trl_lora["tok"], max_length=128, max_prompt_length=64)
    n = len(rows)
    trainer = make_trainer(d, policy, policy, examples, LossSpec("dpo", beta=BETA), batch_size=n)
    summed, sums, _ = trainer._micro_batch(list(range(n)), train=True)
    (summed / n).backward()  # the loop's scaling: the mean over the step's examples

    got = (sums / n).tolist()  # loss, accuracy, margin, chosen, rejected rewards, chosen, rejected log-probs
    want = trl_lora["metrics"]
    assert abs(want["rewards/margins"]) > 1e-3  # the adapter moved the policy away from the reference
    assert summed.item() / n == pytest.approx(trl_lora["loss"], abs=TOL)
    assert got[0] == pytest.approx(trl_lora["loss"], abs=TOL)
    assert got[1] == pytest.approx(want["rewards/accuracies"], abs=1e-6)
    for i, key in ((2, "rewards/margins"), (3, "rewards/chosen"), (4, "rewards/rejected")):
        assert got[i] == pytest.approx(want[key], abs=TOL, rel=TOL), key
    for i, key in ((5, "logps/chosen"), (6, "logps/rejected")):
        assert got[i] == pytest.approx(want[key], abs=TOL, rel=TOL), key

    ours = lora_grads(policy)
    assert ours.keys() == trl_lora["grads"].keys()  # only the adapter is trained, on both sides
    assert all("lora_" in name for name in ours)
    for name, grad in trl_lora["grads"].items():
        torch.testing.assert_close(ours[name], grad, atol=TOL, rtol=1e-4, msg=name)
    assert max(g.abs().max().item() for g in ours.values()) > 1e-4


# ---------------------------------------------------------------------------------------------- reference


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_disabled_adapter_reference_is_the_base_model_exactly(d, packed):
    base = tiny_llama(seed=3, dtype=torch.float32)
    policy = trained_looking(adapters.wrap(copy.deepcopy(base), SPEC))
    examples = skewed_examples(6, seed=2)
    trainer = make_trainer(d, policy, policy, examples, LOSSES["dpo"], batch_size=6, packing=packed)
    batch = layout(examples, pairs=True, packed=packed, pad_token_id=PAD)
    chosen, rejected = trainer._reference_logps(batch, 6)
    base_logps = sequence_logps(base, batch)
    assert torch.equal(torch.cat([chosen, rejected]), base_logps)  # bit for bit
    with torch.no_grad():
        assert (sequence_logps(policy, batch) - base_logps).abs().max() > 0.1  # the adapter is on for the policy
    assert trainer.params and all(p.requires_grad for p in trainer.params)
    assert len(trainer.params) == sum(1 for n, _ in policy.named_parameters() if "lora_" in n)


def test_precomputed_reference_equals_the_online_one(d):
    base = tiny_llama(seed=4)
    policy = trained_looking(adapters.wrap(copy.deepcopy(base), SPEC))
    examples = skewed_examples(6, seed=3)
    with adapters.reference_context(policy, policy):
        table = precompute_reference_logps(policy, examples, d, 4, PAD)
    online = make_trainer(d, policy, policy, examples, LOSSES["dpo"], batch_size=6)
    batch = layout(examples, pairs=True, packed=False, pad_token_id=PAD)
    chosen, rejected = online._reference_logps(batch, 6)
    torch.testing.assert_close(table[:, 0], chosen.float(), atol=TOL, rtol=0)
    torch.testing.assert_close(table[:, 1], rejected.float(), atol=TOL, rtol=0)


def test_a_policy_without_adapter_cannot_be_its_own_reference(d):
    model = tiny_llama(seed=5)
    with pytest.raises(ValueError, match="adapter"):
        adapters.reference_context(model, model)


# ---------------------------------------------------------------------------------------------- checkpoints


def test_checkpoint_holds_only_the_adapter_and_its_optimizer_state(d, tmp_path):
    import torch.distributed.checkpoint as dcp

    base = tiny_llama(seed=6, dtype=torch.float32)
    examples = skewed_examples(4, seed=4)
    policy = adapters.wrap(copy.deepcopy(base), SPEC)
    trainer = make_trainer(d, policy, policy, examples, LOSSES["dpo"], batch_size=4, optimizer="AdamW", lr=1e-2)
    trainer.step()
    path = checkpoint.save(
        tmp_path, trainer.state, model=policy, optimizer=trainer.optimizer, scheduler=trainer.scheduler, d=d
    )
    keys = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
    model_keys = [k for k in keys if k.startswith("model.")]
    optim_keys = [k for k in keys if k.startswith("optim.state.")]
    assert model_keys and all(".lora_A." in k or ".lora_B." in k for k in model_keys), model_keys[:4]
    assert optim_keys and all(".lora_" in k for k in optim_keys), optim_keys[:4]
    assert not any("base_layer" in k or "embed_tokens" in k or "lm_head" in k for k in keys)

    fresh = adapters.wrap(copy.deepcopy(base), SPEC.model_copy(update={"r": 4}))
    other = make_trainer(d, fresh, fresh, examples, LOSSES["dpo"], batch_size=4, optimizer="AdamW", lr=1e-2)
    state = checkpoint.load(path, fresh, other.optimizer, other.scheduler)
    assert state.step == 1
    want, got = dict(policy.named_parameters()), dict(fresh.named_parameters())
    for name, p in want.items():  # the adapter restored, the base (not in the checkpoint) untouched and equal
        assert torch.equal(got[name], p), name
    assert other.optimizer.state_dict()["state"].keys() == trainer.optimizer.state_dict()["state"].keys()


# ---------------------------------------------------------------------------------------------- export


class Tokenizer:
    def save_pretrained(self, path: Any) -> None: ...


def test_export_is_peft_format_and_the_merged_model_is_base_plus_adapter(d, tmp_path):
    from fttrainer.export import export
    from peft import PeftModel
    from safetensors.torch import load_file

    base = tiny_llama(seed=7, dtype=torch.float32)
    policy = trained_looking(adapters.wrap(copy.deepcopy(base), SPEC), seed=1)
    spec = SPEC.model_copy(update={"export_merged": True})
    out = export(
        policy, policy.config, Tokenizer(), tmp_path / "export", d=d, step=1, examples=4, metrics={},
        adapter=spec, base_model="org/base", revision="main",
    )  # fmt: skip
    assert out is not None
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors", "merged"]
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM"
    assert (config["r"], config["lora_alpha"], config["base_model_name_or_path"]) == (4, 8, "org/base")
    assert config["revision"] == "main" and config["inference_mode"] is True
    tensors = load_file(out / "adapter_model.safetensors")
    # the names vLLM's LoRA loader expects: base_model.model.<module>.lora_{A,B}.weight
    assert tensors and all(k.startswith("base_model.model.") and k.endswith((".lora_A.weight", ".lora_B.weight"))
                           for k in tensors)  # fmt: skip

    loaded = PeftModel.from_pretrained(copy.deepcopy(base), str(out)).eval()
    batch = layout(skewed_examples(4, seed=5), pairs=True, packed=False, pad_token_id=PAD)
    with torch.no_grad():
        assert torch.equal(sequence_logps(loaded, batch), sequence_logps(policy.eval(), batch))

    merged = load_file(out / "merged" / "model.safetensors")
    expected = merged_by_hand(base.state_dict(), tensors, spec.alpha, spec.r)
    assert merged.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(merged[key], value, atol=TOL, rtol=0, msg=key)
    assert max((merged[k] - base.state_dict()[k]).abs().max().item() for k in merged) > 1e-3
