"""Synthetic preference datasets of a chosen size, for the data-plane tests and ``bench/dataplane.py``.

Rows are OpenAI DPO rows (``input.messages``, ``preferred_output``, ``non_preferred_output``) of about
:data:`ROW_BYTES` bytes, words drawn from a fixed vocabulary with a seeded generator, so a size and a seed
always give the same bytes. ``bad_line`` replaces one line by a row with a missing reply (what the parser must
refuse, naming that line). :func:`gzip_bomb` writes a gzip member that decompresses to ``size`` zero bytes
without ever holding them.
"""

from __future__ import annotations

import hashlib
import json
import random
import string
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO

ROW_BYTES = 2000
_VOCABULARY_SIZE = 4096


@dataclass(frozen=True)
class Written:
    path: Path
    rows: int
    bytes: int
    sha256: str


def _vocabulary(rng: random.Random) -> list[str]:
    return ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 10))) for _ in range(_VOCABULARY_SIZE)]


def _row(rng: random.Random, words: list[str], number: int) -> dict[str, object]:
    def text(n: int) -> str:
        return " ".join(rng.choices(words, k=n))

    return {
        "input": {"messages": [{"role": "user", "content": f"Question {number}: {text(60)}?"}]},
        "preferred_output": [{"role": "assistant", "content": text(110)}],
        "non_preferred_output": [{"role": "assistant", "content": text(90)}],
    }


BAD_ROW = {
    "input": {"messages": [{"role": "user", "content": "This row has no non-preferred reply"}]},
    "preferred_output": [{"role": "assistant", "content": "fine"}],
}
"""The row :func:`write_jsonl` puts at ``bad_line``: the parser refuses it (field ``non_preferred_output``)."""


def write_jsonl(path: Path, size: int, *, seed: int = 0, bad_line: int | None = None) -> Written:
    """At least ``size`` bytes of preference JSONL in ``path`` (whole rows); the count and sha256 written."""
    rng = random.Random(seed)
    words = _vocabulary(rng)
    sha, written, rows = hashlib.sha256(), 0, 0
    with path.open("wb") as f:
        while written < size:
            rows += 1
            row = BAD_ROW if rows == bad_line else _row(rng, words, rows)
            line = json.dumps(row).encode() + b"\n"
            f.write(line)
            sha.update(line)
            written += len(line)
    return Written(path, rows, written, sha.hexdigest())


def gzip_bomb(out: IO[bytes], size: int, block: int = 1 << 20) -> int:
    """Write one gzip member of ``size`` zero bytes to ``out`` (about 1000:1); returns the compressed size."""
    z = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(block)
    n = 0
    for start in range(0, size, block):
        n += out.write(z.compress(zeros[: min(block, size - start)]))
    return n + out.write(z.flush())
