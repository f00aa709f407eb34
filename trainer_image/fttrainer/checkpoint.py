"""Resumable distributed checkpoints (torch.distributed.checkpoint).

Layout under ``checkpoint_dir``::

    step-40/            # complete: every rank's shard + .metadata + COMPLETE
    step-60/
    .tmp-step-80/       # being written (or abandoned by a killed pod: ignored, then removed)

A checkpoint holds the sharded model (its trainable parameters: a LoRA run's adapter, not its frozen base)
and optimizer state (``get_state_dict``/``set_state_dict``, so
each rank writes only its own shards), the learning-rate scheduler and the loop state (step,
examples seen, RNG). All ranks write into ``.tmp-step-N``; after a barrier the first process of each
node renames it to ``step-N`` and writes ``COMPLETE``, so a pod killed mid-write leaves no
checkpoint that looks valid. On start the latest complete checkpoint is loaded automatically. The
last ``keep`` (default 2) are kept.

DCP expects ``checkpoint_dir`` to be one filesystem shared by all nodes (a ReadWriteMany PVC) when
there is more than one node.
"""

from __future__ import annotations

import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from fttrainer.adapters import state_dict_options
from fttrainer.parallel import Dist, all_reduce_min

log = logging.getLogger(__name__)

COMPLETE = "COMPLETE"
_STEP_DIR = re.compile(r"^step-(\d+)$")


@dataclass
class LoopState:
    step: int = 0
    examples: int = 0
    tokens: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"step": self.step, "examples": self.examples, "tokens": self.tokens}


def step_dir(root: Path, step: int) -> Path:
    return root / f"step-{step}"


def complete_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint, oldest first."""
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and (p / COMPLETE).exists() and (p / ".metadata").exists():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest(root: Path) -> tuple[int, Path] | None:
    found = complete_checkpoints(root)
    return found[-1] if found else None


def agreed_latest(root: Path, d: Dist) -> tuple[int, Path] | None:
    """The newest checkpoint every rank can read, or None (collective).

    With ``checkpoint_dir`` on shared storage all ranks see the same directories. Without it (an
    emptyDir per pod) a node may see a checkpoint another lacks; then nobody resumes rather than
    some ranks loading while others start over (which would hang in the first collective).
    """
    found = dict(complete_checkpoints(root))
    step = all_reduce_min(max(found, default=-1), d)
    if step < 0:
        return None
    if all_reduce_min(int(step in found), d) == 0:
        log.warning("checkpoint step-%d is not visible to every rank: starting from scratch", step)
        return None
    return step, found[step]


def _rng_state() -> dict[str, torch.Tensor]:
    """RNG streams (dropout); every rank draws the same numbers, so rank 0's copy serves all."""
    rng = {"rng": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda_rng"] = torch.cuda.get_rng_state()
    return rng


def _state(
    model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler
) -> dict[str, Any]:
    # frozen parameters (a LoRA run's base) are left out: they are the model's, not the run's
    model_sd, optim_sd = get_state_dict(model, optimizer, options=state_dict_options(model))
    return {"model": model_sd, "optim": optim_sd, "scheduler": scheduler.state_dict()}


def save(
    root: Path,
    loop: LoopState,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    d: Dist,
    keep: int = 2,
) -> Path:
    """Collective: every rank must call it at the same step."""
    final = step_dir(root, loop.step)
    tmp = root / f".tmp-step-{loop.step}"
    if d.is_local_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True, exist_ok=True)
    d.barrier()
    state = _state(model, optimizer, scheduler)
    state["loop"] = {**loop.to_dict(), **_rng_state()}
    dcp.save(state, checkpoint_id=str(tmp))
    d.barrier()
    if d.is_local_main and tmp.exists():
        try:
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
            (final / COMPLETE).write_text(f"{loop.step}\n")
        except FileNotFoundError:  # another node's first process renamed the shared directory first
            pass
        for _, old in complete_checkpoints(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
        for stale in root.glob(".tmp-step-*"):
            if stale != tmp:
                shutil.rmtree(stale, ignore_errors=True)
    d.barrier()
    log.info("checkpoint: saved step %d to %s", loop.step, final)
    return final


def load(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> LoopState:
    """Load a complete checkpoint into the (already sharded) model, optimizer and scheduler."""
    state = _state(model, optimizer, scheduler)
    state["loop"] = {**LoopState().to_dict(), **_rng_state()}
    dcp.load(state, checkpoint_id=str(path))
    set_state_dict(
        model,
        optimizer,
        model_state_dict=state["model"],
        optim_state_dict=state["optim"],
        options=state_dict_options(model),
    )
    scheduler.load_state_dict(state["scheduler"])
    loop = state["loop"]
    torch.set_rng_state(loop["rng"])
    if "cuda_rng" in loop:
        torch.cuda.set_rng_state(loop["cuda_rng"])
    return LoopState(step=int(loop["step"]), examples=int(loop["examples"]), tokens=int(loop["tokens"]))
