"""Tokenize once per job: the rows a run uses, tokenized by :func:`fttrainer.data.tokenize_row`, stored flat on
disk and read back memory-mapped, so a resumed or restarted run (with the data cache on storage that survives
the pod) skips tokenization and no rank holds the examples as Python lists.

``<data cache>/tokens-<key>/`` (``key``: sha256 of :data:`CACHE_VERSION`, the dataset's sha256 and how it is
read, the tokenizer's fingerprint, the length settings and the set of rows)::

    part-<p>/tokens.bin   int32, per example its chosen sequence then its rejected sequence
    part-<p>/mask.bin     uint8 per token: 1 where it is trained (its label is the token), 0 where it is -100
    index.npy             int64 (examples, 6): dataset index, part, offset in the part, chosen length,
                          rejected length, prompt length
    meta.json             written last; the folder appears by a rename, so one without it does not exist

Who tokenizes: every process of a node, a share each (part ``p`` = the ``local rank``: every
``LOCAL_WORLD_SIZE``-th used row), into ``.tokens-<key>.node-<n>/``; the node's first process merges the
indexes and renames the folder into place; three barriers keep the node's processes in step. Which rows: a
run that goes over every row tokenizes all of them; a run limited to fewer examples
(``hyperparameters.examples``) only the rows its schedule and evaluation use (:func:`rows_used`), so a few
steps on a large dataset do not tokenize the whole of it.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from array import array
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, overload

import numpy as np
from ftcrd.conditions import Reason
from ftcrd.dataset import DatasetError

from fttrainer.config import InvalidInput
from fttrainer.data import Example, RowTokenizer, Schedule, tokenize_row
from fttrainer.datasource import DatasetFile, cache_dir
from fttrainer.losses import IGNORE_INDEX

ENV_NODE_RANK = "GROUP_RANK"
"""torchrun's rank of this node (its processes share a node-local building folder)."""
ENV_LOCAL_WORLD_SIZE = "LOCAL_WORLD_SIZE"
"""torchrun's number of processes on this node (each tokenizes a share)."""

log = logging.getLogger("fttrainer")

CACHE_VERSION = 1
"""Bump when tokenization changes what it produces for the same inputs."""
_BUFFER = 1 << 20


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """What decides the token ids: the tokenizer's full definition, its special tokens and chat template."""
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:  # a slow tokenizer: its vocabulary and merges are what its name points at
        h.update(str(getattr(tokenizer, "name_or_path", "")).encode())
        h.update(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode())
    h.update(json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str).encode())
    h.update(str(getattr(tokenizer, "chat_template", None)).encode())
    return h.hexdigest()


def rows_used(schedule: Schedule, eval_indices: Iterable[int], rows: int) -> list[int] | None:
    """The dataset indices a run reads: None for all of them (the run covers every training row), else the rows of
    its steps (all within the first epoch, whose order is one permutation) and of its evaluation."""
    if schedule.total_steps >= schedule.steps_per_epoch:
        return None
    order = schedule.epoch_order(0)
    used = {schedule.train[i] for i in order[: schedule.total_steps * schedule.batch_size]}
    used.update(eval_indices)
    return None if len(used) >= rows else sorted(used)


def cache_key(dataset: DatasetFile, tokenizer: Any, hp: Any, used: list[int] | None) -> str:
    ds = dataset.spec
    h = hashlib.sha256(f"v{CACHE_VERSION}\0{dataset.sha256}\0{ds.format}\0{ds.compression}\0".encode())
    h.update(tokenizer_fingerprint(tokenizer).encode())
    h.update(f"\0{hp.max_length}\0{hp.max_prompt_length}\0{hp.truncation_side}\0".encode())
    h.update(b"all" if used is None else array("q", used).tobytes())
    return h.hexdigest()[:32]


class Examples(Sequence[Example]):
    """A sequence of examples built one at a time by :meth:`example`; a slice is a list of them."""

    @abc.abstractmethod
    def example(self, i: int) -> Example: ...

    @overload
    def __getitem__(self, i: int) -> Example: ...
    @overload
    def __getitem__(self, i: slice) -> list[Example]: ...
    def __getitem__(self, i: int | slice) -> Example | list[Example]:
        if isinstance(i, slice):
            return [self.example(j) for j in range(*i.indices(len(self)))]
        return self.example(i)


class TokenizedDataset(Examples):
    """The cached examples, indexed by dataset row like the list :func:`fttrainer.data.tokenize_rows` returns;
    each :class:`Example` is built from the mapped arrays when asked for."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.meta = json.loads((folder / "meta.json").read_text())
        self.table = np.load(folder / "index.npy")  # dataset index, part, offset, chosen, rejected, prompt
        self.tokens: list[np.ndarray] = []
        self.mask: list[np.ndarray] = []
        for part in range(int(self.meta["parts"])):
            n = int(self.meta["partTokens"][part])
            where = folder / f"part-{part}"
            mapped = n > 0
            self.tokens.append(np.memmap(where / "tokens.bin", np.int32, "r", shape=(n,)) if mapped else _EMPTY)
            self.mask.append(np.memmap(where / "mask.bin", np.uint8, "r", shape=(n,)) if mapped else _EMPTY_MASK)
        self.position = np.full(int(self.meta["rows"]), -1, dtype=np.int64)
        self.position[self.table[:, 0]] = np.arange(len(self.table))

    @property
    def nbytes(self) -> int:
        """Size of the tokenized data (tokens, masks and index)."""
        return int(sum(t.nbytes for t in self.tokens) + sum(m.nbytes for m in self.mask) + self.table.nbytes)

    def __len__(self) -> int:
        return len(self.position)

    def example(self, i: int) -> Example:
        pos = int(self.position[i])
        if pos < 0:
            raise IndexError(f"row {i} is not among the rows tokenized for this run")
        index, part, offset, chosen, rejected, prompt = (int(v) for v in self.table[pos])
        ids = self.tokens[part][offset : offset + chosen + rejected]
        labels = np.where(self.mask[part][offset : offset + chosen + rejected] != 0, ids, IGNORE_INDEX)
        return Example(
            index=index,
            chosen_input_ids=ids[:chosen].tolist(),
            chosen_labels=labels[:chosen].tolist(),
            rejected_input_ids=ids[chosen:].tolist(),
            rejected_labels=labels[chosen:].tolist(),
            prompt_length=prompt,
        )


_EMPTY, _EMPTY_MASK = np.zeros(0, np.int32), np.zeros(0, np.uint8)


class Joined(Examples):
    """The training examples followed by a separate validation file's: row ``i`` of the validation file is
    example ``len(train) + i`` (its ``index`` shifted too), as if the two files were one dataset."""

    def __init__(self, train: Sequence[Example], validation: Sequence[Example]) -> None:
        self.train, self.validation = train, validation

    def __len__(self) -> int:
        return len(self.train) + len(self.validation)

    def example(self, i: int) -> Example:
        n = len(self.train)
        if i < n:
            return self.train[i]
        example = self.validation[i - n]
        return dataclasses.replace(example, index=example.index + n)


def _mask(ids: np.ndarray, labels: list[int]) -> bytes:
    """Labels as a mask over the tokens (the flat layout's form): each label is -100 or its own token."""
    label = np.asarray(labels, dtype=np.int64)
    trained = label != IGNORE_INDEX
    if not np.array_equal(label[trained], ids[trained]):
        raise AssertionError("a label is neither -100 nor the token at its position")
    return trained.astype(np.uint8).tobytes()


def build_part(
    dataset: DatasetFile, tokenizer: Any, hp: Any, used: list[int] | None, *, out: Path, part: int, parts: int
) -> int:
    """Tokenize this part's share of the used rows (every ``parts``-th, from position ``part``) into ``out``
    (tokens.bin, mask.bin, index.npy); returns its token count."""
    mine = None if used is None else set(used[part::parts])
    out.mkdir(parents=True)
    rt = RowTokenizer(tokenizer)
    index: list[tuple[int, int, int, int, int, int]] = []
    offset = 0
    with (
        (out / "tokens.bin").open("wb", buffering=_BUFFER) as tokens,
        (out / "mask.bin").open("wb", buffering=_BUFFER) as masks,
    ):
        for i, row in enumerate(dataset.rows()):
            if (mine is None and i % parts != part) or (mine is not None and i not in mine):
                continue
            ex = tokenize_row(row, i, rt, hp.max_length, hp.max_prompt_length, truncation_side=hp.truncation_side)
            ids = np.asarray(ex.chosen_input_ids + ex.rejected_input_ids, dtype=np.int32)
            tokens.write(ids.tobytes())
            masks.write(_mask(ids, ex.chosen_labels + ex.rejected_labels))
            index.append((i, part, offset, len(ex.chosen_input_ids), len(ex.rejected_input_ids), ex.prompt_length))
            offset += len(ids)
    np.save(out / "index.npy", np.array(index, dtype=np.int64).reshape(-1, 6))
    return offset


def finish(dataset: DatasetFile, building: Path, folder: Path, parts: int, seconds: float) -> dict[str, Any]:
    """Merge the parts' indexes and publish ``building`` as ``folder`` (a rename: complete or absent)."""
    tables = [np.load(building / f"part-{p}" / "index.npy") for p in range(parts)]
    table = np.concatenate(tables) if tables else np.zeros((0, 6), np.int64)
    np.save(building / "index.npy", table[np.argsort(table[:, 0], kind="stable")])
    part_tokens = [(building / f"part-{p}" / "tokens.bin").stat().st_size // 4 for p in range(parts)]
    meta = {
        "version": CACHE_VERSION,
        "rows": dataset.counts.rows,
        "examples": len(table),
        "parts": parts,
        "partTokens": part_tokens,
        "tokens": sum(part_tokens),
        "datasetSha256": dataset.sha256,
        "seconds": round(seconds, 3),
    }
    (building / "meta.json").write_text(json.dumps(meta))
    try:
        os.rename(building, folder)
    except OSError:  # another node's writer on shared storage won the race: same content
        if not (folder / "meta.json").is_file():
            raise
        shutil.rmtree(building, ignore_errors=True)
    return meta


def load_examples(dataset: DatasetFile, tokenizer: Any, hp: Any, d: Any, used: list[int] | None) -> TokenizedDataset:
    """The run's examples from the token cache, tokenizing first when this node has none yet. Every rank calls
    this: the processes of a node tokenize a share each (the node's first process merges), then all map the
    result. Raises ``InvalidInput(InvalidDataset)`` on every rank for a row the tokenizer refuses."""
    root = cache_dir(dataset.cfg)
    folder = root / f"tokens-{cache_key(dataset, tokenizer, hp, used)}"
    # one building folder per node: nodes sharing the storage never write into each other's
    node = int(os.environ.get(ENV_NODE_RANK, "0"))
    parts = int(os.environ.get(ENV_LOCAL_WORLD_SIZE, "1"))
    building = root / f".{folder.name}.node-{node}"
    plan = building / "plan"
    if d.is_local_main:
        root.mkdir(parents=True, exist_ok=True)
        if (folder / "meta.json").is_file():
            log.info("tokenized dataset reused from %s", folder)
        else:
            shutil.rmtree(building, ignore_errors=True)  # an interrupted attempt's
            building.mkdir()
            plan.write_text("build")
    d.barrier()  # the plan is decided: the node's processes all build, or none does
    t0 = time.monotonic()
    if plan.is_file():
        part = d.local_rank
        try:
            build_part(dataset, tokenizer, hp, used, out=building / f"part-{part}", part=part, parts=parts)
        except DatasetError as exc:
            (building / f"error-{part}.txt").write_text(str(exc))
    d.barrier()  # every part written
    errors = sorted(building.glob("error-*.txt")) if plan.is_file() else []
    if d.is_local_main and plan.is_file() and not errors:
        meta = finish(dataset, building, folder, parts, time.monotonic() - t0)
        log.info(
            "tokenized %d of %d rows (%d tokens, %d processes) in %.1fs into %s",
            meta["examples"],
            meta["rows"],
            meta["tokens"],
            parts,
            meta["seconds"],
            folder,
        )
    d.barrier()  # published
    if errors:
        raise InvalidInput(Reason.INVALID_DATASET, f"dataset: {errors[0].read_text()}")
    return TokenizedDataset(folder)
