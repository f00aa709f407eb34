"""LoRA-DPO runs of the real trainer on CPU: FSDP2 over two torchrun processes (frozen base and adapter sharded,
only the adapter trained), the PEFT export, adapter-only checkpoints, kill + resume to the same adapter, and QLoRA
refused on a CPU node before anything is loaded."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.support.trainer import Run, Trainer, synthetic_rows

STEPS = 16  # 160 rows, 20% held out, batch 8, one epoch
# lr 3e-3 (TINY_ARGS) is a full fine-tuning rate; an adapter learns with a larger one. Dropout > 0 so that the
# resume test also shows the random draws are a function of the step.
LORA = ("adapter=lora", "adapter.r=8", "adapter.alpha=16", "adapter.dropout=0.1", "lr=2e-2", "checkpoint_every=4")


def export_dir(run: Run) -> Path:
    return run.run_dir / "checkpoints" / "export"


def ok(run: Run) -> Run:
    assert run.returncode == 0, f"exit {run.returncode}\n{run.output[-6000:]}"
    return run


def adapter(run: Run) -> dict[str, torch.Tensor]:
    return load_file(export_dir(run) / "adapter_model.safetensors")


@pytest.fixture(scope="module")
def dataset(trainer_session: Trainer) -> Path:
    return trainer_session.dataset(synthetic_rows(160), name="lora-pairs.json")


@pytest.fixture(scope="module")
def baseline(trainer_session: Trainer, dataset: Path) -> Run:
    return ok(trainer_session.torchrun("lora", dataset, *LORA, "adapter.export_merged=true"))


def test_two_process_fsdp2_lora_trains_the_adapter_only(baseline: Run):
    out = baseline.output
    assert "FSDP2: sharded 2 LlamaDecoderLayer blocks + root over 2 rank(s)" in out
    assert "lora adapter r=8 alpha=16" in out
    msg = baseline.termination_message()
    assert msg["status"] == "succeeded" and msg["steps"] == STEPS
    metrics = msg["metrics"]
    assert metrics["evalRewardAccuracy"] > 0.75, metrics
    assert metrics["evalLoss"] < math.log(2) - 0.2, metrics
    assert metrics["rewardMargin"] > 0 and metrics["gradNorm"] > 0
    print(f"lora baseline: {baseline.seconds:.1f}s, metrics {json.dumps(metrics)}")


def test_export_is_the_adapter_and_the_merged_model(baseline: Run):
    export = export_dir(baseline)
    names = sorted(p.name for p in export.iterdir())
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "merged"} <= set(names), names
    assert "model.safetensors" not in names and "policy.pt" not in names  # no full copy beside the adapter
    config = json.loads((export / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["lora_dropout"]) == (8, 16, 0.1)
    assert config["base_model_name_or_path"] == "tiny"
    tensors = adapter(baseline)
    assert tensors and all(".lora_A." in k or ".lora_B." in k for k in tensors)
    assert max(t.abs().max().item() for k, t in tensors.items() if ".lora_B." in k) > 0  # trained (B starts at 0)
    merged = sorted(p.name for p in (export / "merged").iterdir())
    assert {"config.json", "model.safetensors", "policy.pt", "tokenizer.json"} <= set(merged), merged


def test_checkpoints_hold_only_the_adapter(baseline: Run):
    import torch.distributed.checkpoint as dcp

    path = baseline.run_dir / "checkpoints" / f"step-{STEPS}"
    keys = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
    model_keys = [k for k in keys if k.startswith("model.")]
    assert model_keys and all(".lora_A." in k or ".lora_B." in k for k in model_keys), model_keys[:4]
    assert not any("base_layer" in k or "embed_tokens" in k for k in keys)


def test_resume_after_hard_exit_gives_the_same_adapter(baseline: Run, trainer_session: Trainer, dataset: Path):
    args = (*LORA, "adapter.export_merged=true", "exit_after_step=8")
    first = trainer_session.torchrun("lora-resumed", dataset, *args)
    assert first.returncode != 0 and "exit_after_step=8" in first.output, first.output[-3000:]
    assert (first.run_dir / "checkpoints" / "step-8" / "COMPLETE").exists()
    second = ok(trainer_session.torchrun("lora-resumed", dataset, *args))
    assert "resumed from step 8" in second.output
    assert second.termination_message()["attemptSteps"] == STEPS - 8
    want, got = adapter(baseline), adapter(second)
    assert want.keys() == got.keys()
    worst = max((want[k] - got[k]).abs().max().item() for k in want)
    assert worst <= 1e-6, f"max adapter difference {worst:g}"
    print(f"interrupted {first.seconds:.1f}s + resumed {second.seconds:.1f}s, max adapter difference {worst:g}")


def test_qlora_on_a_cpu_node_fails_fast_with_invalid_spec(trainer: Trainer):
    """A real model id with the hub offline: any attempt to read it would fail differently, and the tiny model
    (what the tiny preset builds instead of downloading) is never built."""
    run = trainer.python("qlora", trainer.dataset(synthetic_rows(16)), "model=zephyr", "adapter=qlora")
    assert run.returncode == 2, run.output[-3000:]
    msg = run.termination_message()
    assert msg["status"] == "failed" and msg["reason"] == "InvalidSpec", msg
    assert "qlora needs a GPU" in msg["message"] and "bitsandbytes" in msg["message"]
    assert "models loaded" not in run.output and "dataset:" not in run.output
    assert not trainer.tiny_cache.exists()
