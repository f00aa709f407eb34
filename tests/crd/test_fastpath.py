"""The upload's fast paths against the parser they stand in for: ``ftcrd.jsonstream.loads_line`` (pydantic-core's
JSON parser) against ``json.loads``, ``ftcrd.rowcheck.quick_kind`` against ``ftcrd.dataset.parse_row``, and
``RowValidator.check`` (the API's path) against ``RowValidator.feed`` (the trainer's): the same rows accepted, the
same values, the same errors. Generated inputs (hypothesis) plus the cases known to differ between the parsers."""

from __future__ import annotations

import json
import string
from typing import Any

import pytest
from ftcrd.dataset import DatasetError, RowValidator, parse_row
from ftcrd.jsonstream import loads_line
from ftcrd.messages import ROLES
from ftcrd.rowcheck import quick_kind
from ftdev.synthetic import BAD_ROW
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

FUZZ = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ------------------------------------------------------------------------------------------ JSON lines


def json_loads(raw: bytes) -> tuple[str, Any]:
    """What the slow path decides: ("ok", value) or ("error", the exception type)."""
    try:
        return "ok", json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        return "error", type(exc).__name__


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
KNOWN = [
    b'"\\ud800"',  # a lone surrogate escape: json.loads takes it, pydantic-core does not
    b'"\\udc00\\ud800"',
    b"[" * 300 + b"]" * 300,  # deeper than pydantic-core's limit
    b'{"a": 1, "a": 2, "b": 3}',  # duplicate keys: the last value, at the first position
    b"NaN",
    b"[Infinity, -Infinity, 1e400, -0, -0.0, 1E5, 9007199254740993, 0.30000000000000004]",
    b"01",
    b"1.",
    b"[1,]",
    b"{} x",
    b'"a\x00"',
    b'"a\x7f"',
    b'"\xff"',
    b'"\xed\xa0\x80"',  # a surrogate encoded in UTF-8
    b"\xef\xbb\xbf{}",  # a byte order mark
    b"\x0c{}",
    b"{}\r",
    b"1" * 5000,  # past Python's digit limit for int()
    b"null",
]


@pytest.mark.parametrize("raw", KNOWN)
def test_fast_json_decides_as_json_loads_on_the_known_differences(raw):
    fast = loads_line(raw)
    if fast is not None:
        slow = json_loads(raw)
        assert slow[0] == "ok"
        assert repr(slow[1]) == repr(fast)  # nan, 1 vs 1.0, -0.0, key order


def test_fast_json_takes_the_ordinary_rows():
    row = {"input": {"messages": [{"role": "user", "content": "é 😀 \u2028"}]}, "w": [1, 2.5, True, None]}
    raw = json.dumps(row).encode()
    assert loads_line(raw) == row
    assert loads_line(json.dumps(row, ensure_ascii=False).encode() + b"\r") == row


@FUZZ
@given(value=json_values, ascii_only=st.booleans(), cut=st.integers(0, 400), insert=st.binary(max_size=3))
@example(value="x", ascii_only=False, cut=1, insert=b"\\ud800")
def test_fast_json_never_takes_what_json_loads_refuses_and_decodes_alike(value, ascii_only, cut, insert):
    raw = json.dumps(value, ensure_ascii=ascii_only).encode()
    for line in (raw, raw[:cut] + insert + raw[cut:]):
        fast = loads_line(line)
        if fast is not None:
            slow = json_loads(line)
            assert slow[0] == "ok", line
            assert repr(slow[1]) == repr(fast), line


# ------------------------------------------------------------------------------------------ rows

MAX = 8  # a small field limit, so generated texts cross it
BLANKS = " \t\x1c\x85\u3000\u2028"  # whitespace to str.strip(), some of it not to other languages
texts = st.sampled_from(["", " ", "\x1c", "\u3000", "a", " a ", "x" * MAX, "x" * (MAX + 1)]) | st.text(
    st.sampled_from(BLANKS) | st.characters(), max_size=MAX + 1
)
good_texts = st.text(st.sampled_from("ab" + BLANKS), min_size=1, max_size=MAX).filter(lambda t: t.strip())
anything = st.none() | st.integers(-1, 2) | st.booleans() | st.just([]) | st.just({}) | st.lists(texts, max_size=1)
roles = st.sampled_from([*sorted(ROLES), "robot", "Assistant"])
KEYS = ["role", "content", "weight", "name", "tool_calls", "tool_call_id", "function_call", "tools", "functions"]
KEYS += ["input", "messages", "prompt", "chosen", "rejected", "preferred_output", "preferred_completion"]
KEYS += ["non_preferred_output", "non_preferred_completion", "extra"]


def message(role: str, text: str) -> dict[str, Any]:
    return {"role": role, "content": text}


@st.composite
def valid_rows(draw: st.DrawFn) -> dict[str, Any]:
    """A row parse_row accepts (mostly: the roles drawn may break the order rules)."""

    def turns(role_choices: list[str], first: str | None = None) -> list[dict[str, Any]]:
        n = draw(st.integers(1, 3))
        out = [message(draw(st.sampled_from(role_choices)), draw(good_texts)) for _ in range(n)]
        if first is not None:
            out[0]["role"] = first
            out[-1]["role"] = first
        return out

    shape = draw(st.sampled_from(["dpo", "sft", "plain"]))
    if shape == "plain":
        return {key: draw(good_texts) for key in ("prompt", "chosen", "rejected")}
    if shape == "sft":
        return {"messages": [message("user", draw(good_texts)), *turns(sorted(ROLES))]}
    row: dict[str, Any] = {"input": {"messages": turns(sorted(ROLES))}}
    row[draw(st.sampled_from(["preferred_output", "preferred_completion"]))] = turns(["assistant", "tool"], "assistant")
    row[draw(st.sampled_from(["non_preferred_output", "non_preferred_completion"]))] = turns(
        ["assistant", "tool"], "assistant"
    )
    return row


def sites(value: Any) -> list[tuple[Any, Any]]:
    """Every (container, key or index) in ``value``."""
    out: list[tuple[Any, Any]] = []
    if isinstance(value, dict):
        for key, item in value.items():
            out += [(value, key), *sites(item)]
    elif isinstance(value, list):
        for i, item in enumerate(value):
            out += [(value, i), *sites(item)]
    return out


@st.composite
def rows(draw: st.DrawFn) -> Any:
    """A valid row with up to three changes: a value replaced (by a text, a role, anything), a key or element
    removed, a key added."""
    row = draw(valid_rows())
    for _ in range(draw(st.integers(0, 3))):
        places = sites(row)
        if not places:
            break
        container, key = draw(st.sampled_from(places))
        action = draw(st.sampled_from(["text", "role", "anything", "remove", "add"]))
        if action == "remove":
            del container[key]
        elif action == "add":
            target = container if isinstance(container, dict) else container[key]
            if isinstance(target, dict):
                target[draw(st.sampled_from(KEYS))] = draw(anything | texts | st.just([message("user", "u")]))
            elif isinstance(target, list):
                target.append(draw(st.just(message("assistant", "a")) | anything))
        else:
            container[key] = draw({"text": texts, "role": roles, "anything": anything}[action])
    return row


def parsed_kind(obj: Any) -> bool | str:
    """parse_row's verdict: is_pair, or the error message."""
    try:
        return parse_row(obj, 1, MAX).is_pair
    except DatasetError as exc:
        return str(exc)


USER = {"role": "user", "content": "hi"}
REPLY = {"role": "assistant", "content": "yes"}
ACCEPTED_QUICKLY = [
    ({"prompt": "p", "chosen": "c", "rejected": "r", "extra": 1}, True),
    ({"input": {"messages": [USER]}, "preferred_output": [REPLY], "non_preferred_output": [REPLY]}, True),
    ({"input": {"messages": [USER]}, "preferred_completion": [REPLY], "non_preferred_completion": [REPLY]}, True),
    ({"messages": [{"role": "system", "content": "s"}, USER, REPLY], "tools": None}, False),
]


@pytest.mark.parametrize(("row", "is_pair"), ACCEPTED_QUICKLY)
def test_quick_kind_takes_the_common_rows(row, is_pair):
    assert quick_kind(row, MAX) is is_pair
    assert parsed_kind(row) is is_pair


@FUZZ
@given(row=rows())
def test_quick_kind_only_answers_what_parse_row_answers(row):
    kind = quick_kind(row, MAX)
    if kind is not None:
        assert parsed_kind(row) is kind, row


# ------------------------------------------------------------------------------------------ the validator


def validate(data: bytes, *, fast: bool, **kw: Any) -> tuple[Any, ...]:
    v = RowValidator("jsonl", max_field_chars=MAX, **kw)
    try:
        for i in range(0, len(data), 7):
            if fast:
                v.check(data[i : i + 7])
            else:
                list(v.feed(data[i : i + 7]))
        counts = v.finish() if fast else (list(v.close()), v.counts)[1]
    except DatasetError as exc:
        return "error", str(exc), v.counts
    return "ok", counts


@pytest.mark.parametrize("require_pairs", [False, True])
@pytest.mark.parametrize(
    "bad",
    [None, BAD_ROW, {"prompt": "p", "chosen": " \u3000", "rejected": "r"}, {"messages": [REPLY]}, "[1,", "\ud800"],
)
def test_check_counts_and_refuses_as_feed(require_pairs, bad):
    lines = [json.dumps(row) for row, _ in ACCEPTED_QUICKLY] * 3
    if bad is not None:
        lines.insert(5, bad if isinstance(bad, str) and bad.startswith("[") else json.dumps(bad))
    data = "\n".join(["", *lines, " "]).encode("utf-8", "surrogatepass")
    fast = validate(data, fast=True, require_pairs=require_pairs)
    assert fast == validate(data, fast=False, require_pairs=require_pairs)
    assert fast[0] == ("ok" if bad is None and not require_pairs else "error")


@FUZZ
@given(batch=st.lists(rows(), min_size=1, max_size=4), letters=st.text(string.printable, max_size=3))
def test_check_and_feed_agree_on_generated_files(batch, letters):
    data = "\n".join([*(json.dumps(r) for r in batch), letters]).encode()
    assert validate(data, fast=True) == validate(data, fast=False)
