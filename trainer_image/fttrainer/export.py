"""Export the trained policy: a Hugging Face directory plus the original service's ``policy.pt``.

Collective: every rank takes part in gathering the full (unsharded) state dict, which lands on rank
0's CPU only (``full_state_dict=True, cpu_offload=True``). Rank 0 then builds the model skeleton on
the meta device (no memory for a second copy of random weights), assigns the gathered tensors, and
writes ``export_dir`` (safetensors weights, config, generation config, tokenizer) and
``export_dir/policy.pt``: ``{"step_idx", "state", "metrics"}`` as the reference implementation's
``policy.pt``. A LoRA run exports its adapter instead (``adapter_model.safetensors``, ``adapter_config.json``,
the tokenizer) and, with ``exportMerged``, the merged full model under ``merged/`` (:mod:`fttrainer.adapters`).

The export lives under the checkpoint directory (``<checkpoint_dir>/export``) and is marked complete by
``<checkpoint_dir>/export.json`` (:class:`KeptExport`: the job, a fingerprint of what determines the
weights, step, examples and full-precision metrics), written after the directory is in place. A trainer
restarted after a failed upload (exit code 3) finds it (:func:`find_kept_export`) and only uploads again:
an upload failure never costs a second training run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from ftcrd.trainer_config import TrainerConfig
from ftcrd.types import AdapterSpec
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from fttrainer import adapters
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
    adapter: AdapterSpec | None = None,
    base_model: str = "",
    revision: str | None = None,
) -> Path | None:
    """Returns ``export_dir`` on rank 0, ``None`` elsewhere. With ``adapter`` (a LoRA run) the export is the
    adapter in PEFT format plus, when asked, the merged model under ``merged/`` (:mod:`fttrainer.adapters`)."""
    merged = adapter is not None and adapter.export_merged
    # an adapter alone needs only the trainable tensors gathered; a merged export needs the base too
    gathered = get_model_state_dict(
        model,
        options=StateDictOptions(
            full_state_dict=True, cpu_offload=True, ignore_frozen_params=adapter is not None and not merged
        ),
    )
    if not d.is_main:
        d.barrier()
        return None
    tmp = export_dir.with_name(export_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if adapter is None:
        write_model(gathered, hf_config, tokenizer, tmp, step=step, examples=examples, metrics=metrics, dtype=dtype)
    else:
        adapters.write_adapter(model, gathered, tmp, base_model=base_model, revision=revision)
        tokenizer.save_pretrained(tmp)
        if merged:
            state = adapters.merged_state(gathered, hf_config, adapter)
            out = tmp / adapters.MERGED_DIR
            write_model(state, hf_config, tokenizer, out, step=step, examples=examples, metrics=metrics, dtype=dtype)
    shutil.rmtree(export_dir, ignore_errors=True)
    tmp.rename(export_dir)
    log.info("export: wrote %s", export_dir)
    d.barrier()
    return export_dir


def write_model(
    gathered: dict[str, Any],
    hf_config: Any,
    tokenizer: Any,
    out: Path,
    *,
    step: int,
    examples: int,
    metrics: dict[str, float],
    dtype: torch.dtype,
) -> None:
    """A full Hugging Face model directory (safetensors, config, tokenizer) and the reference's ``policy.pt``."""
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
    out.mkdir(parents=True, exist_ok=True)
    skeleton.save_pretrained(out)
    tokenizer.save_pretrained(out)
    torch.save({"step_idx": examples, "step": step, "state": state, "metrics": metrics}, out / "policy.pt")


EXPORT_DIR = "export"
MARKER = "export.json"


@dataclass(frozen=True)
class KeptExport:
    """A complete export under the checkpoint directory, and what the termination message needs of it."""

    job: str
    fingerprint: str
    step: int
    examples: int
    epoch: float
    metrics: dict[str, float] = field(default_factory=dict)


def export_dir(cfg: TrainerConfig) -> Path:
    return Path(cfg.run.checkpoint_dir) / EXPORT_DIR


def fingerprint(cfg: TrainerConfig) -> str:
    """sha256 of everything that determines the exported weights (not where they are uploaded)."""
    decisive = cfg.model_dump(mode="json", include={"job", "model", "method", "hyperparameters", "dataset"})
    return hashlib.sha256(json.dumps(decisive, sort_keys=True).encode()).hexdigest()


def mark_complete(
    cfg: TrainerConfig, *, step: int, examples: int, epoch: float, metrics: dict[str, float]
) -> KeptExport:
    """Rank 0, after :func:`export`: record that ``export_dir(cfg)`` is complete (atomically)."""
    kept = KeptExport(cfg.job, fingerprint(cfg), step, examples, epoch, dict(metrics))
    marker = Path(cfg.run.checkpoint_dir) / MARKER
    tmp = marker.with_name(marker.name + ".tmp")
    tmp.write_text(json.dumps(asdict(kept), indent=1, sort_keys=True))
    tmp.rename(marker)
    return kept


def find_kept_export(cfg: TrainerConfig) -> KeptExport | None:
    """The complete export of this very job and configuration, or None (then any stale marker is removed)."""
    marker = Path(cfg.run.checkpoint_dir) / MARKER
    try:
        kept = KeptExport(**json.loads(marker.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as exc:
        log.warning("ignoring unreadable %s (%s): training", marker, exc)
        kept = None
    if kept is not None and kept.job == cfg.job and kept.fingerprint == fingerprint(cfg):
        if export_dir(cfg).is_dir():
            return kept
        log.warning("%s names a complete export but %s is missing: training", marker, export_dir(cfg))
    elif kept is not None:
        log.warning("the export in %s is of another job or configuration (%s): training", marker.parent, kept.job)
    marker.unlink(missing_ok=True)
    return None
