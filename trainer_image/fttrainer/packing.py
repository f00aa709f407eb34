"""How one micro-batch's sequences are laid out for a forward, and how a rank's share of a step is cut
into micro-batches.

Two layouts of the same rows (chosen sequences first, then the rejected ones, as :func:`fttrainer.data.collate`):

* **padded** ``[rows, longest]``, right padding and a 2-D attention mask: every row costs the longest row;
* **packed** (padding-free) ``[1, total tokens]``: the sequences concatenated, position ids restarting at 0
  for each, and attention that cannot cross a sequence boundary (:mod:`fttrainer.varlen`). The forward costs
  the real tokens only.

Both carry the *next-token targets* (each sequence's labels shifted by one inside the sequence, so no target
crosses into the next sequence) and the flat positions whose target is labelled: the LM head scores only those
(:mod:`fttrainer.logprobs`), and the per-token log-probs are summed per sequence by segment id.

Token-budget micro-batching (:func:`token_budget_micro_batches`) changes only how a rank's share of a step is cut
into forwards, never which examples a step or a rank sees: the data order stays a function of (seed, step)
(:class:`fttrainer.data.Schedule`), so resume is unaffected.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch

from fttrainer.data import Example
from fttrainer.losses import IGNORE_INDEX


@dataclass(frozen=True)
class SequenceBatch:
    """The sequences of one micro-batch, ready for one forward, plus what the LM head needs to score them.

    ``keep`` trailing positions of every model row reach the LM head (``logits_to_keep``); ``positions`` index the
    flattened ``[model rows, keep]`` window at the labelled targets, ``targets`` are the token ids there and
    ``segments`` the output row (sequence) each belongs to. ``lengths`` are the real tokens of every row (host)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor | None  # padded layout
    position_ids: torch.Tensor | None  # packed layout
    cu_seqlens: torch.Tensor | None  # packed: int32 [rows + 1] sequence boundaries (flash-attention's cu_seqlens)
    bounds: tuple[int, ...]  # packed: the same boundaries on the host (no device sync to read them)
    keep: int
    positions: torch.Tensor
    targets: torch.Tensor
    segments: torch.Tensor
    rows: int
    lengths: tuple[int, ...]
    index: torch.Tensor  # dataset indices of the examples (host)

    @property
    def packed(self) -> bool:
        return self.position_ids is not None

    @property
    def width(self) -> int:
        """Positions per model row (the longest sequence, or all tokens when packed)."""
        return int(self.input_ids.shape[1])

    def to(self, device: torch.device) -> SequenceBatch:
        """On ``device`` (on CUDA through pinned memory, asynchronously); ``index`` and the host fields stay."""

        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            if t is None:
                return None
            if device.type == "cuda":
                return t.pin_memory().to(device, non_blocking=True)
            return t.to(device)

        moved = {
            name: move(getattr(self, name))
            for name in (
                "input_ids",
                "attention_mask",
                "position_ids",
                "cu_seqlens",
                "positions",
                "targets",
                "segments",
            )
        }
        return replace(self, **moved)  # type: ignore[arg-type]

    def forward_kwargs(self) -> dict[str, object]:
        """Model keyword arguments: the padding mask, or the packed position ids and sequence boundaries (the
        ``cu_seq_lens_*``/``max_length_*`` names are transformers' flash-attention varlen arguments)."""
        if not self.packed:
            return {"input_ids": self.input_ids, "attention_mask": self.attention_mask}
        longest = max(b - a for a, b in itertools.pairwise(self.bounds))
        return {
            "input_ids": self.input_ids,
            "attention_mask": None,
            "position_ids": self.position_ids,
            "cu_seq_lens_q": self.cu_seqlens,
            "cu_seq_lens_k": self.cu_seqlens,
            "max_length_q": longest,
            "max_length_k": longest,
            "packed_bounds": self.bounds,
        }


def sequences(examples: Sequence[Example], pairs: bool) -> tuple[list[list[int]], list[list[int]]]:
    """(input ids, labels) of the rows a forward scores: every chosen sequence, then (``pairs``) every rejected one."""
    seqs = [e.chosen_input_ids for e in examples]
    labels = [e.chosen_labels for e in examples]
    if pairs:
        seqs += [e.rejected_input_ids for e in examples]
        labels += [e.rejected_labels for e in examples]
    return seqs, labels


def _shifted(labels: list[int]) -> list[int]:
    """Next-token targets of one sequence: position t is scored against token t + 1; the last has none."""
    return [*labels[1:], IGNORE_INDEX]


def _scored(window: torch.Tensor, row_width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(flat positions, targets, row of each) of the labelled entries of a ``[rows, keep]`` target window."""
    flat = window.reshape(-1)
    positions = (flat != IGNORE_INDEX).nonzero().squeeze(1)
    return positions, flat[positions], positions // row_width


def _keep(first_labelled: int, width: int) -> int:
    return max(1, width - first_labelled) if first_labelled < width else 1


def layout(examples: Sequence[Example], *, pairs: bool, packed: bool, pad_token_id: int) -> SequenceBatch:
    """Lay out a micro-batch's rows (chosen first, then rejected when ``pairs``) padded or packed."""
    seqs, labels = sequences(examples, pairs)
    if any(not s for s in seqs):
        raise ValueError("an empty sequence cannot be scored (a supervised row in a preference batch?)")
    index = torch.tensor([e.index for e in examples], dtype=torch.long)
    lengths = tuple(len(s) for s in seqs)
    if packed:
        return _packed(seqs, labels, index, lengths)
    return _padded(seqs, labels, index, lengths, pad_token_id)


def _padded(
    seqs: list[list[int]], labels: list[list[int]], index: torch.Tensor, lengths: tuple[int, ...], pad_token_id: int
) -> SequenceBatch:
    rows, width = len(seqs), max(lengths)
    input_ids = torch.full((rows, width), pad_token_id, dtype=torch.long)
    targets = torch.full((rows, width), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((rows, width), dtype=torch.long)
    for i, (s, lab) in enumerate(zip(seqs, labels, strict=True)):
        input_ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        targets[i, : len(s)] = torch.tensor(_shifted(lab), dtype=torch.long)
        attention[i, : len(s)] = 1
    labelled = (targets != IGNORE_INDEX).any(0).nonzero()
    keep = _keep(int(labelled[0]) if len(labelled) else width, width)
    positions, flat_targets, segments = _scored(targets[:, width - keep :], keep)
    return SequenceBatch(
        input_ids=input_ids,
        attention_mask=attention,
        position_ids=None,
        cu_seqlens=None,
        bounds=(),
        keep=keep,
        positions=positions,
        targets=flat_targets,
        segments=segments,
        rows=rows,
        lengths=lengths,
        index=index,
    )


def _packed(
    seqs: list[list[int]], labels: list[list[int]], index: torch.Tensor, lengths: tuple[int, ...]
) -> SequenceBatch:
    bounds = [0]
    for n in lengths:
        bounds.append(bounds[-1] + n)
    total = bounds[-1]
    input_ids = torch.tensor([t for s in seqs for t in s], dtype=torch.long).unsqueeze(0)
    position_ids = torch.cat([torch.arange(n, dtype=torch.long) for n in lengths]).unsqueeze(0)
    targets = torch.tensor([t for lab in labels for t in _shifted(lab)], dtype=torch.long)
    labelled = (targets != IGNORE_INDEX).nonzero()
    keep = _keep(int(labelled[0]) if len(labelled) else total, total)
    positions, flat_targets, _ = _scored(targets[total - keep :].unsqueeze(0), keep)
    # the segment of each scored position: which sequence its absolute position falls in
    segments = torch.bucketize(positions + (total - keep), torch.tensor(bounds[1:]), right=True)
    return SequenceBatch(
        input_ids=input_ids,
        attention_mask=None,
        position_ids=position_ids,
        cu_seqlens=torch.tensor(bounds, dtype=torch.int32),
        bounds=tuple(bounds),
        keep=keep,
        positions=positions,
        targets=flat_targets,
        segments=segments,
        rows=len(seqs),
        lengths=lengths,
        index=index,
    )


# ---------------------------------------------------------------------------------------------- token budget


def micro_batch_tokens(examples: Sequence[Example], *, pairs: bool, packed: bool) -> int:
    """Tokens a forward of these examples processes: the real tokens when packed, rows x the longest when padded."""
    seqs, _ = sequences(examples, pairs)
    if not seqs:
        return 0
    return sum(len(s) for s in seqs) if packed else len(seqs) * max(len(s) for s in seqs)


def _fill(order: list[int], cost: Callable[[list[int]], int], budget: int) -> list[list[int]]:
    """Cut ``order`` into consecutive bins each within ``budget`` (an example over budget gets a bin of its own)."""
    bins: list[list[int]] = []
    for i in order:
        if bins and cost([*bins[-1], i]) <= budget:
            bins[-1].append(i)
        else:
            bins.append([i])
    return bins


def _split_to(bins: list[list[int]], count: int) -> list[list[int]]:
    """Split the fullest bins in halves until there are ``count`` (needs ``count`` <= examples)."""
    bins = [list(b) for b in bins]
    if count > sum(len(b) for b in bins):
        raise ValueError(f"cannot cut {sum(len(b) for b in bins)} examples into {count} micro-batches")
    while len(bins) < count:
        j = max(range(len(bins)), key=lambda k: (len(bins[k]), -k))
        b = bins.pop(j)
        half = len(b) // 2
        bins[j:j] = [b[:half], b[half:]]
    return bins


def token_budget_micro_batches(
    shares: Sequence[Sequence[int]],
    rank: int,
    examples: Sequence[Example],
    *,
    budget: int,
    pairs: bool,
    packed: bool,
) -> list[list[int]]:
    """This rank's micro-batches for one step when forwards are bounded by ``budget`` tokens.

    ``shares[r]`` are the dataset indices rank ``r`` trains on this step (the schedule's, unchanged). Each rank's
    share is sorted longest first (ties by index) and cut into consecutive micro-batches of at most ``budget``
    tokens (:func:`micro_batch_tokens`; sorting also groups similar lengths, which is what saves padding when not
    packed). FSDP needs every rank to run the same number of forwards, so every rank computes every rank's cut
    (all ranks know all lengths) and splits its fullest micro-batches until it has as many as the rank that needs
    the most. A function of the shares and lengths only: deterministic, and resumable like the data order.
    """
    if budget < 1:
        raise ValueError(f"max tokens per micro-batch must be positive, got {budget}")

    def cost(indices: list[int]) -> int:
        return micro_batch_tokens([examples[i] for i in indices], pairs=pairs, packed=packed)

    def length(i: int) -> int:
        return micro_batch_tokens([examples[i]], pairs=pairs, packed=True)

    cuts = [_fill(sorted(share, key=lambda i: (-length(i), i)), cost, budget) for share in shares]
    return _split_to(cuts[rank], max(len(c) for c in cuts))
