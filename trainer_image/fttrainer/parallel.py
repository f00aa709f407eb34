"""Process group, device mesh and FSDP2 sharding (or not: :func:`shard_or_not`).

Every run gets a process group (gloo on CPU, nccl on GPU) and a 1-D device mesh over all ranks; a
plain ``python -m fttrainer.train`` gets a one-rank group over an in-memory store.

With more than one rank, ``fully_shard`` wraps every transformer block (the preset's ``block_name``)
and the root module. On GPU the policy keeps fp32 master weights and computes in bf16 with fp32
gradient reduction (``MixedPrecisionPolicy``); on CPU everything is fp32.

With one rank the model stays a plain module on the device: FSDP over one rank shards nothing and
only adds work every step (bf16 copies of every parameter through ``MixedPrecisionPolicy``,
all-gather/reduce-scatter copy-in/out on a 1-rank mesh, DTensor dispatch in AdamW and the clip). The
GPU policy then computes under ``torch.autocast("cuda", dtype=torch.bfloat16)`` over fp32 master
weights (:func:`compute_context`), the same numerics as FSDP's bf16 policy and as a bare PyTorch/TRL
loop. Checkpoints (DCP ``get_state_dict``/``set_state_dict``) and export (full state dict) work the
same on both paths.

The frozen reference model goes through the same decision (sharded exactly like the policy, or a
plain module on the same device), in eval mode with ``requires_grad=False``, so its parameters live on
the same device and mesh as the policy's (TRL #6470 is the device-mismatch bug you get otherwise).
It is loaded in its preset's ``reference_dtype`` (bf16 on GPU) and computes in that dtype.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

log = logging.getLogger(__name__)
T = TypeVar("T")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class Dist:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    mesh: DeviceMesh

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_local_main(self) -> bool:
        return self.local_rank == 0

    def barrier(self) -> None:
        dist.barrier()


def init_distributed(timeout_s: int = 1800) -> Dist:
    """Join the torchrun job (or create a one-rank group outside torchrun)."""
    use_cuda = torch.cuda.is_available()
    backend = "nccl" if use_cuda else "gloo"
    timeout = datetime.timedelta(seconds=timeout_s)
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if use_cuda:
            torch.cuda.set_device(local_rank)
            dist.init_process_group(backend, timeout=timeout, device_id=torch.device("cuda", local_rank))
        else:
            dist.init_process_group(backend, timeout=timeout)
    else:
        rank, world, local_rank = 0, 1, 0
        if use_cuda:
            torch.cuda.set_device(0)
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
    device_type = "cuda" if use_cuda else "cpu"
    device = torch.device(device_type, local_rank) if use_cuda else torch.device("cpu")
    mesh = init_device_mesh(device_type, (world,), mesh_dim_names=("fsdp",))
    return Dist(rank=rank, world_size=world, local_rank=local_rank, device=device, mesh=mesh)


def find_blocks(model: nn.Module, block_name: str) -> list[nn.Module]:
    blocks = [m for m in model.modules() if type(m).__name__ == block_name]
    if not blocks:
        names = sorted({type(m).__name__ for m in model.modules() if "Layer" in type(m).__name__})
        raise ValueError(f"model has no module of class {block_name!r} (block_name); layer classes: {names}")
    return blocks


def _replace_child(root: nn.Module, old: nn.Module, new: nn.Module) -> None:
    for parent in root.modules():
        for name, child in parent.named_children():
            if child is old:
                setattr(parent, name, new)
                return
    raise ValueError("module not found in its root")


CHECKPOINT_POLICIES = ("full", "selective", "every_other")

# ops whose outputs selective checkpointing keeps (the matmuls and attention: the expensive ones to recompute);
# everything else in a block (norms, activations, rotary, residual adds) is recomputed in backward
_SAVED_OPS = (
    "mm",
    "addmm",
    "bmm",
    "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_cudnn_attention",
)


def _selective_context() -> Any:
    from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

    saved = {getattr(torch.ops.aten, name).default for name in _SAVED_OPS if hasattr(torch.ops.aten, name)}

    def policy(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> CheckpointPolicy:
        return CheckpointPolicy.MUST_SAVE if op in saved else CheckpointPolicy.PREFER_RECOMPUTE

    return create_selective_checkpoint_contexts(policy)


def apply_activation_checkpointing(model: nn.Module, block_name: str, policy: str = "full") -> None:
    """Wrap blocks so their activations are recomputed in backward (torchtitan style).

    * ``full``: every block keeps only its input; everything is recomputed (least memory, ~1 extra forward).
    * ``selective``: every block, but the outputs of its matmuls and attention are kept and only the cheap ops
      (norms, activation functions, rotary, adds) are recomputed (op-level selective checkpointing).
    * ``every_other``: full recomputation of every second block (blocks 0, 2, 4, ...): half the saving for half
      the recomputation.

    The wrapper sits outside ``fully_shard`` so FSDP's unshard hooks run once per recomputation;
    ``get_model_state_dict`` strips the wrapper's ``_checkpoint_wrapped_module`` from the names.
    """
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointImpl, checkpoint_wrapper

    if policy not in CHECKPOINT_POLICIES:
        raise ValueError(f"activation checkpointing policy must be one of {CHECKPOINT_POLICIES}, got {policy!r}")
    for i, block in enumerate(find_blocks(model, block_name)):
        if policy == "every_other" and i % 2:
            continue
        kwargs: dict[str, Any] = {"checkpoint_impl": CheckpointImpl.NO_REENTRANT}
        if policy == "selective":
            kwargs["context_fn"] = _selective_context
        _replace_child(model, block, checkpoint_wrapper(block, **kwargs))


def compile_blocks(model: nn.Module, block_name: str) -> int:
    """``torch.compile`` every block in place (names and state dict unchanged), after activation checkpointing
    (a checkpointed block is compiled with its wrapper) and before ``fully_shard``, as torchtitan does.

    Shapes change with every batch (padded widths, packed token counts), so the blocks compile with dynamic
    shapes; packed attention runs outside the graph (:mod:`fttrainer.varlen`). Returns the blocks compiled."""
    blocks = [m for m in model.modules() if type(m).__name__ == "CheckpointWrapper"] or find_blocks(model, block_name)
    for block in blocks:
        block.compile(dynamic=True)
    log.info("torch.compile: %d %s blocks", len(blocks), block_name)
    return len(blocks)


def shard(model: nn.Module, block_name: str, d: Dist, *, mixed_precision: bool) -> nn.Module:
    """``fully_shard`` each block (or its checkpoint wrapper), then the root (embeddings, norm, head)."""
    mp = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if mixed_precision
        else MixedPrecisionPolicy()
    )
    wrapped = [m for m in model.modules() if type(m).__name__ == "CheckpointWrapper"]
    blocks = wrapped or find_blocks(model, block_name)
    for block in blocks:
        fully_shard(block, mesh=d.mesh, mp_policy=mp)
    fully_shard(model, mesh=d.mesh, mp_policy=mp)
    log.info("FSDP2: sharded %d %s blocks + root over %d rank(s)", len(blocks), block_name, d.world_size)
    return model


_AUTOCAST_ATTR = "_fttrainer_autocast_dtype"


def shard_or_not(model: nn.Module, block_name: str, d: Dist, *, mixed_precision: bool) -> nn.Module:
    """The one place that decides how a model is wrapped for this world size.

    * ``world_size > 1``: FSDP2 (:func:`shard`), bf16 ``MixedPrecisionPolicy`` if ``mixed_precision``.
    * ``world_size == 1``: no ``fully_shard``. FSDP on one rank only adds copies every step (bf16
      parameter casts, 1-rank all-gather/reduce-scatter bookkeeping, DTensor overhead in the optimizer);
      the model is moved to the device and, if ``mixed_precision``, its forward runs under bf16 autocast
      (see :func:`compute_context`) over its fp32 master weights.
    """
    if d.world_size > 1:
        return shard(model, block_name, d, mixed_precision=mixed_precision)
    model.to(d.device)
    autocast = mixed_precision and d.device.type == "cuda"
    setattr(model, _AUTOCAST_ATTR, torch.bfloat16 if autocast else None)
    log.info(
        "one rank: plain %s module, no FSDP (%s)", type(model).__name__, "bf16 autocast" if autocast else "no autocast"
    )
    return model


def compute_context(model: nn.Module) -> contextlib.AbstractContextManager[Any]:
    """The context a forward of ``model`` runs in: bf16 autocast for a one-rank mixed-precision model, else none
    (FSDP2's ``MixedPrecisionPolicy`` casts by itself)."""
    dtype = getattr(model, _AUTOCAST_ATTR, None)
    if dtype is None:
        return contextlib.nullcontext()
    device_type = next(model.parameters()).device.type
    return torch.autocast(device_type, dtype=dtype)


def build_sharded(
    load_full: Callable[[], nn.Module],
    build_empty: Callable[[], nn.Module],
    block_name: str,
    d: Dist,
    *,
    mixed_precision: bool,
    activation_checkpointing: bool | str = False,
    frozen: bool = False,
    compile: bool = False,
) -> nn.Module:
    """Load the weights on rank 0 only, shard everywhere, broadcast the shards (one rank: load, no sharding).

    Rank 0 reads the checkpoint into CPU memory; every other rank builds the same architecture on the
    meta device (no memory, no disk reads), so a node with 8 GPUs holds one CPU copy of the model,
    not 8. After ``fully_shard`` the others materialise empty shards on their device and
    ``set_model_state_dict(broadcast_from_rank0=True)`` fills every rank's shards from rank 0's full
    state dict. Buffers that are not in the state dict (rotary-embedding tables) are broadcast too.

    ``activation_checkpointing``: False, True (= ``"full"``) or a policy of :func:`apply_activation_checkpointing`;
    ``compile``: :func:`compile_blocks` (after checkpointing, before sharding).
    """
    if d.is_main:
        model = load_full()
        full_state = model.state_dict()
    else:
        with torch.device("meta"):
            model = build_empty()
        full_state = {}
    if frozen:
        freeze(model)
    if activation_checkpointing:
        policy = "full" if activation_checkpointing is True else str(activation_checkpointing)
        apply_activation_checkpointing(model, block_name, policy)
    if compile:
        compile_blocks(model, block_name)
    shard_or_not(model, block_name, d, mixed_precision=mixed_precision)
    if d.world_size == 1:
        return model
    if not d.is_main:
        model.to_empty(device=d.device)
    set_model_state_dict(
        model, full_state, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=True)
    )
    for buf in model.buffers():
        dist.broadcast(buf, src=0)
    del full_state
    return model


def freeze(model: nn.Module) -> nn.Module:
    model.eval()
    model.requires_grad_(False)
    return model


def all_reduce_min(value: int, d: Dist) -> int:
    t = torch.tensor([value], dtype=torch.long, device=d.device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


def all_reduce_sum(values: list[float], d: Dist) -> list[float]:
    """Sum a few floats over all ranks (one collective)."""
    t = torch.tensor(values, dtype=torch.float64, device=d.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def broadcast_from_main(value: T, d: Dist) -> T:
    """Rank 0's ``value`` (any picklable object) on every rank; one collective."""
    box = [value]
    dist.broadcast_object_list(box, src=0, device=d.device if d.device.type == "cuda" else None)
    return box[0]
