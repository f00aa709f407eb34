"""The one dataset parser, streaming (ftcrd.jsonstream, ftcrd.dataset.RowValidator): the same rows and errors
whatever the pieces the bytes arrive in, and size limits that end a decompression bomb early."""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
import textwrap

import pytest
from ftcrd.dataset import DatasetError, DatasetTooLarge, RowValidator, iter_rows, load_rows
from ftcrd.jsonstream import ContainerDecoder, Gunzip
from ftdev.synthetic import BAD_ROW, gzip_bomb

ROWS = [
    {"prompt": f"p{i} \u2028 é", "chosen": "c" * (i % 50 + 1), "rejected": "r", "extra": [1, 2.5, True, None]}
    for i in range(120)
]
SFT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
PIECES = (1, 2, 3, 7, 64, 1000, 10**9)


def decode(data: bytes, fmt: str, step: int, **kw) -> list:
    d = ContainerDecoder(fmt, **kw)  # type: ignore[arg-type]
    out = []
    for i in range(0, len(data), step):
        out += [v for _, v in d.feed(data[i : i + step])]
    return out + [v for _, v in d.close()]


CONTAINERS = [
    ("jsonl", "\n".join(json.dumps(r, ensure_ascii=False) for r in ROWS).encode() + b"\r\n\n"),
    ("novalto", json.dumps(ROWS, ensure_ascii=False).encode()),
    ("novalto", json.dumps(ROWS, indent=2).encode()),
]


@pytest.mark.parametrize(("fmt", "raw"), CONTAINERS, ids=["jsonl", "novalto-compact", "novalto-indented"])
@pytest.mark.parametrize("compressed", [False, True])
def test_same_values_whatever_the_pieces(fmt, raw, compressed):
    data = gzip.compress(raw) if compressed else raw
    for step in PIECES:
        assert decode(data, fmt, step) == ROWS, step


def test_novalto_scalars_cut_at_any_byte():
    raw = b'[1, 22, true, null, 3.5e3, "x", -0.0]'
    for step in PIECES:
        assert decode(raw, "novalto", step) == json.loads(raw)


@pytest.mark.parametrize(
    "bad",
    [
        b'[{"a":1},{"b":2]',
        b'[{"a":1}\n,\n {"b":x}]',
        b'[{"a":1}',
        b"",
        b"x",
        b"[1] 2",
        b"  \n\n",
        b'[{"a": "\\uZZZZ"}]',
    ],
)
def test_novalto_errors_name_the_place_json_names(bad):
    """Line and column as json.loads reports them, however the bytes were cut."""
    try:
        json.loads(bad)
    except json.JSONDecodeError as exc:
        expected = f"{exc.msg} at line {exc.lineno} column {exc.colno}"
    for step in (1, 3, 1000):
        with pytest.raises(DatasetError) as err:
            decode(bad, "novalto", step)
        assert expected in str(err.value), (step, str(err.value))


def test_novalto_must_be_a_list():
    with pytest.raises(DatasetError, match="a JSON list of objects, got dict"):
        decode(b'{"a": 1}', "novalto", 1)


def test_jsonl_errors_name_the_line():
    data = b'{"a": 1}\n\n{"b":\n'
    for step in PIECES:
        with pytest.raises(DatasetError) as err:
            decode(data, "jsonl", step)
        assert err.value.row == 3 and "not valid JSON" in err.value.detail
    with pytest.raises(DatasetError) as err:
        decode(b'{"a": 1}\n{"a": "\xff"}\n', "jsonl", 5)
    assert err.value.row == 2 and "UTF-8" in err.value.detail


def test_concatenated_gzip_members_and_truncation():
    data = gzip.compress(b'{"a": 1}\n') + gzip.compress(b'{"a": 2}\n') + b"\0\0"
    assert decode(data, "jsonl", 3) == [{"a": 1}, {"a": 2}]
    with pytest.raises(DatasetError, match="not valid gzip"):
        decode(gzip.compress(b'{"a": 1}\n')[:-3], "jsonl", 4)
    with pytest.raises(DatasetError, match="trailing garbage"):
        decode(gzip.compress(b'{"a": 1}\n') + b"junk", "jsonl", 1000)


def test_decompression_is_capped_before_the_bomb_is_spent():
    out = io.BytesIO()
    gzip_bomb(out, 64 << 20)
    bomb = out.getvalue()
    assert (64 << 20) / len(bomb) > 1000
    g = Gunzip(max_bytes=4 << 20)
    with pytest.raises(DatasetTooLarge) as err:
        for _ in g.feed(bomb):
            pass
    assert err.value.limit == 4 << 20 and g.out <= (4 << 20) + (1 << 20)
    # through the parser: zeros are one endless line, stopped by the row limit long before the content limit
    with pytest.raises(DatasetTooLarge) as err:
        decode(bomb, "jsonl", 1 << 20, max_bytes=32 << 20, max_row_bytes=1 << 20)
    assert err.value.row == 1 and err.value.limit == 1 << 20


def test_content_limit_on_valid_rows():
    rows = gzip.compress(b"".join(json.dumps(r).encode() + b"\n" for r in ROWS) * 50)
    with pytest.raises(DatasetTooLarge, match="more than 100000 bytes"):
        decode(rows, "jsonl", 4096, max_bytes=100_000)
    plain = json.dumps(ROWS).encode()
    with pytest.raises(DatasetTooLarge, match="larger than 1000 bytes"):
        decode(plain, "novalto", 300, max_bytes=1000)
    with pytest.raises(DatasetTooLarge, match="longer than 100 bytes"):
        decode(plain, "novalto", 300, max_row_bytes=100)


BOUNDED = textwrap.dedent(
    """
    import resource, sys
    from ftcrd.dataset import DatasetTooLarge, RowValidator
    from ftdev.synthetic import gzip_bomb
    import io
    out = io.BytesIO()
    gzip_bomb(out, int(sys.argv[1]))
    bomb = out.getvalue()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    v = RowValidator("jsonl", max_bytes=int(sys.argv[1]) // 2)
    try:
        for i in range(0, len(bomb), 65536):
            v.check(bomb[i : i + 65536])
    except DatasetTooLarge as exc:
        print(type(exc).__name__, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
    """
)


def test_a_bomb_costs_megabytes_not_its_size():
    """In a fresh interpreter: validating a 1 GiB bomb raises its peak memory by a few MiB at most."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    p = subprocess.run(
        [sys.executable, "-c", BOUNDED, str(1 << 30)], capture_output=True, text=True, env=env, check=True
    )
    kind, grown_mib = p.stdout.split()
    assert kind == "DatasetTooLarge" and int(grown_mib) < 64, p.stdout


def test_validator_counts_pairs_and_supervised_rows():
    data = b"".join(json.dumps(r).encode() + b"\n" for r in [ROWS[0], SFT, ROWS[1], SFT])
    v = RowValidator("jsonl")
    for i in range(0, len(data), 10):
        v.check(data[i : i + 10])
    counts = v.finish()
    assert (counts.rows, counts.pairs, counts.first_conversation, counts.content_bytes) == (4, 2, 2, len(data))
    with pytest.raises(DatasetError) as err:
        load_rows(data, "jsonl", require_pairs=True)
    assert err.value.row == 2 and err.value.field == "messages"


def test_iter_rows_reads_a_file_in_blocks(tmp_path):
    path = tmp_path / "d.jsonl.gz"
    lines = [json.dumps(r) for r in ROWS] + [json.dumps(BAD_ROW)]
    path.write_bytes(gzip.compress("\n".join(lines).encode()))
    v = RowValidator("jsonl")
    seen = []
    with path.open("rb") as f, pytest.raises(DatasetError) as err:
        for row in iter_rows(f, v, block=37):
            seen.append(row.prompt)
    assert seen == [r["prompt"] for r in ROWS] and err.value.row == len(ROWS) + 1
    assert err.value.field == "non_preferred_output"
