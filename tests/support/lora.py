"""LoRA checks shared by the trainer and cluster tests: the merged model a LoRA adapter stands for, computed by hand
(``W + (alpha / r) * B @ A`` for every adapted linear layer), to compare a merged export with."""

from __future__ import annotations

import torch

PEFT_PREFIX = "base_model.model."


def merged_by_hand(
    base: dict[str, torch.Tensor], adapter: dict[str, torch.Tensor], alpha: int, r: int
) -> dict[str, torch.Tensor]:
    """``base`` (a plain model's state dict) plus the adapter (peft's file naming), in float64 and back."""
    merged = {k: v.clone() for k, v in base.items()}
    for key, a in adapter.items():
        if not key.endswith(".lora_A.weight"):
            continue
        module = key.removeprefix(PEFT_PREFIX).removesuffix(".lora_A.weight")
        b = adapter[key.replace(".lora_A.", ".lora_B.")]
        weight = merged[f"{module}.weight"]
        merged[f"{module}.weight"] = (weight.double() + (alpha / r) * (b.double() @ a.double())).to(weight.dtype)
    return merged
