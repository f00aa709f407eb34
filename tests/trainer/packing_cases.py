"""Shared helpers of the packing/chunked tests: a tiny random Llama, examples of very different lengths, and a
``fttrainer.loop.Trainer`` on a one-rank process group (in this process) or under torchrun."""

from __future__ import annotations

import copy
import random
import tempfile
from pathlib import Path
from typing import Any

import torch
from fttrainer.data import Example, Schedule
from fttrainer.loop import LoopConfig, LossSpec, Trainer
from fttrainer.losses import IGNORE_INDEX
from fttrainer.parallel import Dist

VOCAB = 101
PAD = 0


def tiny_llama(seed: int, dtype: torch.dtype = torch.float64, layers: int = 2) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=PAD,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():  # larger than the default init, so the two models' log-probs differ visibly
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.15)
    return model.to(dtype)


def skewed_examples(n: int, seed: int = 0, conversations: int = 0) -> list[Example]:
    """Pairs whose prompt (1-60 tokens) and replies (1-90 tokens) differ a lot within a batch; the last
    ``conversations`` examples have no rejected reply (supervised conversations)."""
    rng = random.Random(seed)

    def toks(k: int) -> list[int]:
        return [rng.randint(3, VOCAB - 1) for _ in range(k)]

    out = []
    for i in range(n):
        prompt = toks(rng.choice([1, 2, 5, 17, 40, 60]))
        chosen = [*toks(rng.choice([1, 3, 12, 50, 90])), 2]
        rejected = [*toks(rng.choice([1, 4, 25, 70])), 2]
        if i >= n - conversations:
            rejected = []
        out.append(
            Example(
                index=i,
                chosen_input_ids=prompt + chosen,
                chosen_labels=[IGNORE_INDEX] * len(prompt) + chosen,
                rejected_input_ids=prompt + rejected if rejected else [],
                rejected_labels=[IGNORE_INDEX] * len(prompt) + rejected if rejected else [],
                prompt_length=len(prompt),
            )
        )
    return out


def one_rank() -> Dist:
    """This process as a one-rank group (created once per process)."""
    import torch.distributed as dist
    from fttrainer.parallel import init_distributed
    from torch.distributed.device_mesh import init_device_mesh

    if not dist.is_initialized():
        return init_distributed()
    mesh = init_device_mesh("cpu", (1,), mesh_dim_names=("fsdp",))
    return Dist(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), mesh=mesh)


class NoReport:
    def progress(self, **kw: Any) -> None: ...

    def checkpoint(self, *a: Any) -> None: ...


LOSSES = {
    "dpo": LossSpec("dpo", beta=0.1),
    "ipo": LossSpec("ipo", beta=0.5),
    "cdpo": LossSpec("dpo", beta=0.1, label_smoothing=0.2),
    "sft": LossSpec("sft"),
}


def make_trainer(
    d: Dist,
    policy: Any,
    reference: Any,
    examples: list[Example],
    loss: LossSpec,
    *,
    batch_size: int,
    accumulation: int = 1,
    optimizer: str = "SGD",
    lr: float = 0.05,
    reference_logps: torch.Tensor | None = None,
    **loop: Any,
) -> Trainer:
    cfg = LoopConfig(
        lr=lr,
        optimizer=optimizer,
        warmup_steps=0,
        max_grad_norm=1e9,
        eval_every=10**12,
        eval_batch_size=batch_size,
        do_first_eval=False,
        checkpoint_every=10**9,
        checkpoint_dir=Path(tempfile.mkdtemp(prefix="packing-")),
        **loop,
    )
    schedule = Schedule.create(
        list(range(len(examples))),
        batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        world_size=d.world_size,
        seed=0,
        n_epochs=1,
        n_examples=None,
    )
    return Trainer(
        cfg=cfg,
        loss=loss,
        d=d,
        policy=policy,
        reference=reference if loss.needs_reference else None,
        examples=examples,
        schedule=schedule,
        eval_indices=[],
        pad_token_id=PAD,
        reporter=NoReport(),
        reference_logps=reference_logps,
    )


def copies(model: Any, n: int) -> list[Any]:
    return [copy.deepcopy(model) for _ in range(n)]


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)
