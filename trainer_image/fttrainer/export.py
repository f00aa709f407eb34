"""Export the trained policy: a Hugging Face directory plus the original service's ``policy.pt``.

Collective: every rank takes part in gathering the full (unsharded) state dict, which lands on rank
0's CPU only (``full_state_dict=True, cpu_offload=True``). Rank 0 then builds the model skeleton on
the meta device (no memory for a second copy of random weights), assigns the gathered tensors, and
writes ``export_dir`` (safetensors weights, config, generation config, tokenizer) and
``export_dir/policy.pt``: ``{"step_idx", "state", "metrics"}`` as the reference implementation's
``policy.pt``.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from fttrainer.parallel import Dist

log = logging.getLogger(__name__)


def export(
    model: nn.Module,
    hf_config: Any,
    tokenizer: Any,
    export_dir: Path,
    *,
    d: Dist,
    step: int,
    examples: int,
    metrics: dict[str, float],
    dtype: torch.dtype = torch.float32,
) -> Path | None:
    """Returns ``export_dir`` on rank 0, ``None`` elsewhere."""
    gathered = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not d.is_main:
        d.barrier()
        return None
    from transformers import AutoModelForCausalLM

    state: dict[str, torch.Tensor] = {}
    for name, value in gathered.items():
        assert isinstance(value, torch.Tensor), name
        state[name] = value.to(dtype) if value.is_floating_point() else value
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(hf_config, dtype=dtype)
    skeleton.load_state_dict(state, assign=True, strict=True)
    if getattr(hf_config, "tie_word_embeddings", False):
        skeleton.tie_weights()

    tmp = export_dir.with_name(export_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    skeleton.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    torch.save({"step_idx": examples, "step": step, "state": state, "metrics": metrics}, tmp / "policy.pt")
    shutil.rmtree(export_dir, ignore_errors=True)
    tmp.rename(export_dir)
    log.info("export: wrote %s", export_dir)
    d.barrier()
    return export_dir
