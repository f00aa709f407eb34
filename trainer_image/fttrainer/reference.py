"""The reference model's log-probs computed once for every example (``precomputeReference``), so the
reference model can be dropped before training."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import nn

from fttrainer.data import Example, shard_for_eval
from fttrainer.logprobs import sequence_logps
from fttrainer.packing import layout
from fttrainer.parallel import Dist


def precompute_reference_logps(
    reference: nn.Module,
    examples: Sequence[Example],
    d: Dist,
    batch_size: int,
    pad_token_id: int,
    *,
    packing: bool = False,
    chunked_logps: bool = True,
    logits_chunk_tokens: int = 0,
) -> torch.Tensor:
    """Reference log-probs ``(n_examples, 2)`` (chosen, rejected) for every example, on every rank.

    Each rank computes its strided share (all ranks run the same number of forwards, as FSDP needs),
    then one all-gather gives everybody the whole table; the caller can then drop the reference model.
    Pass the loop's ``packing``/``chunked_logps``/``logits_chunk_tokens`` so the table is computed as the
    online reference would be.
    """
    world = d.world_size
    all_indices = list(range(len(examples)))
    rows: list[torch.Tensor] = []
    with torch.no_grad():
        for indices, _ in shard_for_eval(all_indices, d.rank, world, max(1, batch_size // world)):
            host = layout([examples[i] for i in indices], pairs=True, packed=packing, pad_token_id=pad_token_id)
            batch = host.to(d.device)
            logps = sequence_logps(reference, batch, chunked=chunked_logps, chunk_tokens=logits_chunk_tokens).double()
            n = len(indices)
            rows.append(torch.stack([host.index.double().to(d.device), logps[:n], logps[n:]], dim=1))
    mine = torch.cat(rows)
    gathered = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(gathered, mine)
    table = torch.empty(len(examples), 2, dtype=torch.float64)
    for part in (g.cpu() for g in gathered):
        table[part[:, 0].long()] = part[:, 1:]
    return table.float()
