"""Resumable distributed checkpoints (torch.distributed.checkpoint) on durable storage.

Layout under ``checkpoint_dir`` (a PersistentVolumeClaim in a pod, docs/operations.md)::

    step-40/            # complete: every rank's shard + .metadata + record.json + COMPLETE
    step-60/
    .tmp-step-80/       # being written (or abandoned by a pod that died: never resumed from, removed)
    export/ export.json # the kept export (fttrainer.export), source/ (fttrainer.source): not touched here

A checkpoint holds the sharded model (its trainable parameters: a LoRA run's adapter, not its frozen base)
and optimizer state (``get_state_dict``/``set_state_dict``: each rank
writes only its own shards), the learning-rate scheduler and the loop state (step, examples, tokens, RNG).
Every rank writes into ``.tmp-step-N``; after a barrier **one process per directory** (the :class:`Store`'s
owner) writes ``record.json`` and ``COMPLETE`` into it, syncs them and renames it to ``step-N``: the rename
is the commit, so a checkpoint whose writer died is never taken for a complete one. The owner alone then
deletes all but the newest ``keep`` checkpoints and any abandoned ``.tmp-step-*``. On shared storage (one
claim mounted by every node) the owner is global rank 0, so two nodes never rename or ``rmtree`` the same
directory; on per-node storage it is each node's first process (:func:`open_store` finds out which).

On start the newest checkpoint every rank can read is loaded (:func:`agreed_latest`). Multi-node resume
needs ``checkpoint_dir`` on storage shared by all nodes (a ReadWriteMany claim).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from ftcrd.conditions import ExitCode
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from fttrainer.adapters import state_dict_options
from fttrainer.parallel import Dist, all_reduce_min, broadcast_from_main

log = logging.getLogger(__name__)

COMPLETE = "COMPLETE"
RECORD = "record.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")
_PROBE = ".shared-probe"


@dataclass
class LoopState:
    step: int = 0
    examples: int = 0
    tokens: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"step": self.step, "examples": self.examples, "tokens": self.tokens}


@dataclass(frozen=True)
class Store:
    """A checkpoint directory and who may rename and delete in it."""

    root: Path
    owner: bool
    """This process commits (renames) and prunes: global rank 0 on shared storage, else each node's first."""
    keep: int = 2
    location: str | None = None
    """How users find ``root`` (``pvc://<claim>/<dir>``), for the status records; None: the path itself."""

    def where(self, path: Path) -> str:
        return f"{self.location.rstrip('/')}/{path.name}" if self.location else str(path)


def _fsync(path: Path) -> None:
    """Flush a file or directory entry to the storage (a node crash right after the rename keeps the commit)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on directories; the rename stays atomic
        pass
    finally:
        os.close(fd)


def open_store(root: Path, d: Dist, *, keep: int = 2, location: str | None = None) -> Store:
    """The store at ``root`` (collective): whether every node sees the same directory decides the owner.

    Global rank 0 writes a fresh token into ``root``; every node's first process reads it back. If all of
    them see it, the directory is shared and only rank 0 renames and deletes there."""
    token = broadcast_from_main(uuid.uuid4().hex, d)
    probe = root / _PROBE
    if d.is_main:
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / f"{_PROBE}.{token}"
        tmp.write_text(token)
        tmp.rename(probe)
    d.barrier()
    sees = 1
    if d.is_local_main:
        try:
            sees = int(probe.read_text() == token)
        except OSError:
            sees = 0
    shared = all_reduce_min(sees, d) == 1
    if not shared and d.is_local_main:
        root.mkdir(parents=True, exist_ok=True)
    owner = d.is_main if shared else d.is_local_main
    if d.is_main:
        log.info(
            "checkpoints in %s (%s storage), keeping %d", location or root, "shared" if shared else "per-node", keep
        )
    return Store(root=root, owner=owner, keep=keep, location=location)


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


def records(store: Store) -> list[dict[str, Any]]:
    """The status records (``status.checkpoints``) of the complete checkpoints in ``store``, oldest first."""
    out = []
    for step, path in complete_checkpoints(store.root):
        try:
            rec = json.loads((path / RECORD).read_text())
        except (OSError, ValueError):
            rec = {}
        out.append({**rec, "step": step, "path": store.where(path)})
    return out


def agreed_latest(root: Path, d: Dist) -> tuple[int, Path] | None:
    """The newest checkpoint every rank can read, or None (collective).

    With ``checkpoint_dir`` on shared storage all ranks see the same directories. Without it (an
    emptyDir per pod) a node may see a checkpoint another lacks; then nobody resumes rather than
    some ranks loading while others start over (which would hang in the first collective).
    """
    found = dict(complete_checkpoints(root))
    abandoned = sorted(p.name for p in root.glob(".tmp-step-*")) if root.is_dir() else []
    if abandoned and d.is_main:
        log.warning("ignoring incomplete checkpoint(s) %s (their writer died before the commit)", ", ".join(abandoned))
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


def _commit(store: Store, tmp: Path, final: Path, record: dict[str, Any]) -> None:
    """Owner only: the record and the marker into the written directory, synced, then the rename (the commit)."""
    (tmp / RECORD).write_text(json.dumps(record, sort_keys=True))
    marker = tmp / COMPLETE
    marker.write_text(f"{record['step']}\n")
    for p in (tmp / RECORD, marker, tmp):
        _fsync(p)
    shutil.rmtree(final, ignore_errors=True)  # a same-step leftover (never resumed: this step is newer)
    tmp.rename(final)
    _fsync(store.root)


def prune(store: Store, keep_tmp: Path | None = None) -> None:
    """Owner only: delete all but the newest ``keep`` complete checkpoints and abandoned ``.tmp-step-*``."""
    if not store.owner:
        return
    for _, old in complete_checkpoints(store.root)[: -store.keep]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in store.root.glob(".tmp-step-*"):
        if stale != keep_tmp:
            shutil.rmtree(stale, ignore_errors=True)


def save(
    store: Store,
    loop: LoopState,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    d: Dist,
    metrics: dict[str, float] | None = None,
    die_before_commit: bool = False,
) -> Path:
    """Collective: every rank must call it at the same step. ``die_before_commit`` is the test hook
    ``exit_during_checkpoint``: every rank exits hard once its shards are written, before the commit."""
    final = step_dir(store.root, loop.step)
    tmp = store.root / f".tmp-step-{loop.step}"
    if store.owner:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True, exist_ok=True)
    d.barrier()
    state = _state(model, optimizer, scheduler)
    state["loop"] = {**loop.to_dict(), **_rng_state()}
    dcp.save(state, checkpoint_id=str(tmp))
    d.barrier()
    if die_before_commit:
        log.warning("exit_during_checkpoint=%d: exiting before the checkpoint is complete (test hook)", loop.step)
        logging.shutdown()
        os._exit(ExitCode.STOPPED_AFTER_STEP)
    if store.owner:
        record = {
            "step": loop.step,
            "createdAt": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "metrics": {k: float(v) for k, v in (metrics or {}).items()},
        }
        _commit(store, tmp, final, record)
        prune(store)
    d.barrier()
    log.info("checkpoint: saved step %d to %s", loop.step, store.where(final))
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
