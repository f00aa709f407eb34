"""Packed training under FSDP2 with two real processes (torchrun, gloo): the same weights as padded training.

The test starts ``torchrun --nproc-per-node 2`` on this very file; each worker builds a tiny float64 Llama
(policy and frozen reference) exactly as ``fttrainer.train`` does (``parallel.build_sharded``: rank-0 load,
``fully_shard`` per block + root, broadcast), trains a few AdamW steps of ``fttrainer.loop.Trainer`` on
length-skewed pairs in several variants, and rank 0 writes each variant's full state dict. Variants: padded;
padded through the model's own (unchunked) LM head; packed; packed with a token budget (a different number of forwards per step) and selective activation
checkpointing; packed with precomputed reference log-probs.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
VARIANTS: dict[str, dict] = {
    "padded": {},
    "padded+unchunked": {"chunked_logps": False},  # the model's own LM head: checks the chunked head's gradients
    "packed": {"packing": True},
    "packed+budget+selective": {"packing": True, "max_tokens_per_micro_batch": 220, "checkpointing": "selective"},
    "packed+precompute": {"packing": True, "precompute": True},
}
STEPS = 3


def worker(out: Path) -> None:
    from fttrainer.loop import precompute_reference_logps
    from fttrainer.parallel import build_sharded, init_distributed
    from packing_cases import LOSSES, PAD, make_trainer, skewed_examples, tiny_llama
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    d = init_distributed()
    examples = skewed_examples(32, seed=30)
    for name, variant in VARIANTS.items():
        loop = {k: v for k, v in variant.items() if k not in ("checkpointing", "precompute")}
        policy = build_sharded(
            lambda: tiny_llama(seed=30),
            lambda: tiny_llama(seed=30),
            "LlamaDecoderLayer",
            d,
            mixed_precision=False,
            activation_checkpointing=variant.get("checkpointing", False),
        )
        reference = build_sharded(
            lambda: tiny_llama(seed=31),
            lambda: tiny_llama(seed=31),
            "LlamaDecoderLayer",
            d,
            mixed_precision=False,
            frozen=True,
        )
        table = None
        if variant.get("precompute"):
            table = precompute_reference_logps(reference, examples, d, 8, PAD, packing=True)
            reference = None
        trainer = make_trainer(
            d,
            policy,
            reference,
            examples,
            LOSSES["dpo"],
            batch_size=8,
            accumulation=2,
            optimizer="AdamW",
            lr=1e-3,
            reference_logps=table,
            **loop,
        )
        metrics = [trainer.step() for _ in range(STEPS)]
        forwards = len(trainer.micro_batches(0))
        state = get_model_state_dict(policy, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if d.is_main:
            torch.save({"state": state, "metrics": metrics, "forwards": forwards}, out / f"{name}.pt")
        d.barrier()


def test_packed_fsdp2_two_processes_same_weights_as_padded(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "MASTER_", "LOCAL_"))}
    env.update(
        PYTHONPATH=os.pathsep.join(str(p) for p in (ROOT / "crds", ROOT / "trainer_image", HERE)),
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
    )
    cmd = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc-per-node=2"]
    cmd += [str(Path(__file__).resolve()), "--out", str(tmp_path)]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-6000:]
    assert "FSDP2: sharded 2 LlamaDecoderLayer blocks + root over 2 rank(s)" in output

    results = {name: torch.load(tmp_path / f"{name}.pt", weights_only=True) for name in VARIANTS}
    base = results["padded"]
    assert base["forwards"] == 2 and results["packed+budget+selective"]["forwards"] > 2
    for name, result in results.items():
        assert result["state"].keys() == base["state"].keys(), name
        worst = max((result["state"][k] - base["state"][k]).abs().max().item() for k in base["state"])
        assert worst <= 1e-5, f"{name}: max weight difference {worst:g}"
        for got, want in zip(result["metrics"], base["metrics"], strict=True):
            assert abs(got["loss"] - want["loss"]) <= 1e-5, name
            assert got["tokens"] == want["tokens"], name
    from packing_cases import tiny_llama

    initial = tiny_llama(seed=30).state_dict()
    moved = max((base["state"][k] - initial[k]).abs().max().item() for k in base["state"])
    assert moved > 1e-4, moved  # the steps trained something: equal weights are not just the initial ones


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.INFO)
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    worker(parser.parse_args().out)
