"""Tokenize once per job: the rows a run uses, tokenized by :func:`fttrainer.data.tokenize_row`, stored flat on
disk and read back memory-mapped, so a resumed or restarted run (with the data cache on storage that survives
the pod) skips tokenization and no rank holds the examples as Python lists.

``<data cache>/tokens-<key>/`` (``key``: sha256 of :data:`CACHE_VERSION`, the dataset's sha256 and how it is
read, the tokenizer's fingerprint, the length settings and the set of rows)::

    tokens.bin   int32, per example its chosen sequence then its rejected sequence
    mask.bin     uint8 per token: 1 where it is trained (its label is the token itself), 0 where the label is -100
    index.npy    int64 (examples, 5): dataset index, offset in tokens.bin, chosen length, rejected length,
                 prompt length
    meta.json    written last, by a rename of the finished folder: a folder without it does not exist

Which rows: a run that goes over every row tokenizes all of them; a run limited to fewer examples
(``hyperparameters.examples``) tokenizes only the rows its schedule and evaluation use (:func:`rows_used`), so
a few steps on a large dataset do not tokenize the whole of it. The first process of each node writes the
cache, the others wait at a barrier and map it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
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
    ds = dataset.cfg.dataset
    h = hashlib.sha256(f"v{CACHE_VERSION}\0{dataset.sha256}\0{ds.format}\0{ds.compression}\0".encode())
    h.update(tokenizer_fingerprint(tokenizer).encode())
    h.update(f"\0{hp.max_length}\0{hp.max_prompt_length}\0{hp.truncation_side}\0".encode())
    h.update(b"all" if used is None else array("q", used).tobytes())
    return h.hexdigest()[:32]


class TokenizedDataset(Sequence[Example]):
    """The cached examples, indexed by dataset row like the list :func:`fttrainer.data.tokenize_rows` returns;
    each :class:`Example` is built from the mapped arrays when asked for."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.meta = json.loads((folder / "meta.json").read_text())
        self.table = np.load(folder / "index.npy")
        n_tokens = int(self.meta["tokens"])
        if n_tokens:
            self.tokens: np.ndarray = np.memmap(folder / "tokens.bin", dtype=np.int32, mode="r", shape=(n_tokens,))
            self.mask: np.ndarray = np.memmap(folder / "mask.bin", dtype=np.uint8, mode="r", shape=(n_tokens,))
        else:
            self.tokens, self.mask = np.zeros(0, np.int32), np.zeros(0, np.uint8)
        self.position = np.full(int(self.meta["rows"]), -1, dtype=np.int64)
        self.position[self.table[:, 0]] = np.arange(len(self.table))

    @property
    def nbytes(self) -> int:
        """Size of the tokenized data (tokens, masks and index)."""
        return int(self.tokens.nbytes + self.mask.nbytes + self.table.nbytes)

    def __len__(self) -> int:
        return len(self.position)

    @overload
    def __getitem__(self, i: int) -> Example: ...
    @overload
    def __getitem__(self, i: slice) -> list[Example]: ...
    def __getitem__(self, i: int | slice) -> Example | list[Example]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        pos = int(self.position[i])
        if pos < 0:
            raise IndexError(f"row {i} is not among the rows tokenized for this run")
        index, offset, chosen, rejected, prompt = (int(v) for v in self.table[pos])
        ids = self.tokens[offset : offset + chosen + rejected]
        labels = np.where(self.mask[offset : offset + chosen + rejected] != 0, ids, IGNORE_INDEX)
        return Example(
            index=index,
            chosen_input_ids=ids[:chosen].tolist(),
            chosen_labels=labels[:chosen].tolist(),
            rejected_input_ids=ids[chosen:].tolist(),
            rejected_labels=labels[chosen:].tolist(),
            prompt_length=prompt,
        )


def _mask(ids: np.ndarray, labels: list[int]) -> bytes:
    """Labels as a mask over the tokens (the flat layout's form): each label is -100 or its own token."""
    label = np.asarray(labels, dtype=np.int64)
    trained = label != IGNORE_INDEX
    if not np.array_equal(label[trained], ids[trained]):
        raise AssertionError("a label is neither -100 nor the token at its position")
    return trained.astype(np.uint8).tobytes()


def build(dataset: DatasetFile, tokenizer: Any, hp: Any, used: list[int] | None, folder: Path) -> dict[str, Any]:
    """Tokenize the used rows of ``dataset`` into ``folder`` (made atomically); returns its meta."""
    t0 = time.monotonic()
    wanted = None if used is None else set(used)
    tmp = Path(tempfile.mkdtemp(prefix=".tokens-", dir=folder.parent))
    rt = RowTokenizer(tokenizer)
    index: list[tuple[int, int, int, int, int]] = []
    offset = 0
    try:
        with (
            (tmp / "tokens.bin").open("wb", buffering=_BUFFER) as tokens,
            (tmp / "mask.bin").open("wb", buffering=_BUFFER) as masks,
        ):
            for i, row in enumerate(dataset.rows()):
                if wanted is not None and i not in wanted:
                    continue
                ex = tokenize_row(row, i, rt, hp.max_length, hp.max_prompt_length, truncation_side=hp.truncation_side)
                ids = np.asarray(ex.chosen_input_ids + ex.rejected_input_ids, dtype=np.int32)
                tokens.write(ids.tobytes())
                masks.write(_mask(ids, ex.chosen_labels + ex.rejected_labels))
                index.append((i, offset, len(ex.chosen_input_ids), len(ex.rejected_input_ids), ex.prompt_length))
                offset += len(ids)
        np.save(tmp / "index.npy", np.array(index, dtype=np.int64).reshape(-1, 5))
        meta = {
            "version": CACHE_VERSION,
            "rows": dataset.counts.rows,
            "examples": len(index),
            "tokens": offset,
            "datasetSha256": dataset.sha256,
            "seconds": round(time.monotonic() - t0, 3),
        }
        (tmp / "meta.json").write_text(json.dumps(meta))
        try:
            os.rename(tmp, folder)
        except OSError:  # another node's writer on shared storage won the race: same content
            if not (folder / "meta.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return meta


def load_examples(dataset: DatasetFile, tokenizer: Any, hp: Any, d: Any, used: list[int] | None) -> TokenizedDataset:
    """The run's examples from the token cache, tokenizing first when this node has none yet (every rank calls
    this; raises ``InvalidInput(InvalidDataset)`` on every rank for a row the tokenizer refuses)."""
    root = cache_dir(dataset.cfg)
    folder = root / f"tokens-{cache_key(dataset, tokenizer, hp, used)}"
    error = root / f"{folder.name}.error"
    if d.is_local_main:
        root.mkdir(parents=True, exist_ok=True)
        if (folder / "meta.json").is_file():
            log.info("tokenized dataset reused from %s", folder)
        else:
            error.unlink(missing_ok=True)
            try:
                meta = build(dataset, tokenizer, hp, used, folder)
                log.info(
                    "tokenized %d of %d rows (%d tokens) in %.1fs into %s",
                    meta["examples"],
                    meta["rows"],
                    meta["tokens"],
                    meta["seconds"],
                    folder,
                )
            except DatasetError as exc:
                error.write_text(str(exc))
    d.barrier()
    if error.is_file():
        raise InvalidInput(Reason.INVALID_DATASET, f"dataset: {error.read_text()}")
    return TokenizedDataset(folder)
