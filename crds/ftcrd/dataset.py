"""Preference datasets: parsing and validation shared by the API and the trainer.

Pure Python (no torch), so the API rejects a bad upload with exactly the message the
trainer would have failed with, before any GPU is reserved.

Three on-disk shapes are accepted:

* ``novalto``: a JSON list of ``{"prompt", "chosen", "rejected"}`` objects (the original
  microservice's payload);
* ``jsonl``: one such object per line;
* ``openai``: OpenAI's DPO JSONL, ``{"input": {"messages": [...]}, "preferred_output":
  [{"role": "assistant", "content": ...}], "non_preferred_output": [...]}``.

Each row may use either object shape whatever the container, so a JSONL file mixing
both is fine. Content may be gzip-compressed (detected by its magic bytes).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

GZIP_MAGIC = b"\x1f\x8b"
ROLES = frozenset({"system", "user", "assistant", "developer", "tool"})
DEFAULT_MAX_FIELD_CHARS = 200_000


class DatasetError(ValueError):
    """A dataset problem a user can fix; ``str()`` names the row and the field."""

    def __init__(self, message: str, *, row: int | None = None, field: str | None = None) -> None:
        where = []
        if row is not None:
            where.append(f"row {row}")
        if field is not None:
            where.append(f"field '{field}'")
        super().__init__(": ".join([*where, message]))
        self.row = row
        self.field = field
        self.detail = message


@dataclass(frozen=True)
class Message:
    role: str
    content: str


@dataclass(frozen=True)
class PreferenceRow:
    """One preference pair. Exactly one of ``prompt`` (plain text) or ``messages`` (chat) is set."""

    chosen: str
    rejected: str
    prompt: str | None = None
    messages: tuple[Message, ...] | None = None

    def prompt_text(self) -> str:
        """The prompt as plain text, for tokenizers without a chat template."""
        if self.prompt is not None:
            return self.prompt
        assert self.messages is not None
        turns = [f"{m.role}: {m.content}" for m in self.messages]
        return "\n".join(turns) + "\nassistant: "


def decompress(data: bytes, compression: Literal["auto", "none", "gzip"] = "auto") -> bytes:
    if compression == "gzip" or (compression == "auto" and data[:2] == GZIP_MAGIC):
        try:
            return gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise DatasetError(f"content is not valid gzip ({exc})") from None
    return data


def _text(obj: dict[str, Any], key: str, row: int, max_chars: int, *, prefix: str = "") -> str:
    name = prefix + key
    if key not in obj:
        raise DatasetError("is missing", row=row, field=name)
    value = obj[key]
    if not isinstance(value, str):
        raise DatasetError(f"must be a string, got {type(value).__name__}", row=row, field=name)
    if not value.strip():
        raise DatasetError("must be a non-empty string", row=row, field=name)
    if len(value) > max_chars:
        raise DatasetError(f"is {len(value)} characters long; the limit is {max_chars}", row=row, field=name)
    return value


def _messages(value: Any, row: int, field: str, max_chars: int) -> tuple[Message, ...]:
    if not isinstance(value, list) or not value:
        raise DatasetError("must be a non-empty list of messages", row=row, field=field)
    out = []
    for i, msg in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(msg, dict):
            raise DatasetError("must be an object with role and content", row=row, field=where)
        role = msg.get("role")
        if role not in ROLES:
            raise DatasetError(f"role must be one of {sorted(ROLES)}, got {role!r}", row=row, field=where + ".role")
        out.append(Message(role=role, content=_text(msg, "content", row, max_chars, prefix=where + ".")))
    return tuple(out)


def _assistant_reply(value: Any, row: int, field: str, max_chars: int) -> str:
    messages = _messages(value, row, field, max_chars)
    if messages[-1].role != "assistant":
        raise DatasetError("last message must have role 'assistant'", row=row, field=field)
    return "".join(m.content for m in messages if m.role == "assistant")


def parse_row(obj: Any, row: int, max_chars: int = DEFAULT_MAX_FIELD_CHARS) -> PreferenceRow:
    """Validate one decoded row (1-based ``row`` for messages)."""
    if not isinstance(obj, dict):
        raise DatasetError(f"must be a JSON object, got {type(obj).__name__}", row=row)
    if "input" in obj or "preferred_output" in obj:
        inp = obj.get("input")
        if not isinstance(inp, dict):
            raise DatasetError("must be an object with a 'messages' list", row=row, field="input")
        messages = _messages(inp.get("messages"), row, "input.messages", max_chars)
        for key in ("preferred_output", "non_preferred_output"):
            if key not in obj:
                raise DatasetError("is missing", row=row, field=key)
        chosen = _assistant_reply(obj["preferred_output"], row, "preferred_output", max_chars)
        rejected = _assistant_reply(obj["non_preferred_output"], row, "non_preferred_output", max_chars)
        return PreferenceRow(chosen=chosen, rejected=rejected, messages=messages)
    prompt = _text(obj, "prompt", row, max_chars)
    chosen = _text(obj, "chosen", row, max_chars)
    rejected = _text(obj, "rejected", row, max_chars)
    return PreferenceRow(prompt=prompt, chosen=chosen, rejected=rejected)


def _decoded_rows(text: str, fmt: str) -> Iterator[tuple[int, Any]]:
    if fmt == "novalto":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
        if not isinstance(data, list):
            raise DatasetError(f"novalto datasets are a JSON list of objects, got {type(data).__name__}")
        yield from enumerate(data, start=1)
        return
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"line is not valid JSON: {exc.msg} at column {exc.colno}", row=lineno) from None


def load_rows(
    data: bytes,
    fmt: Literal["novalto", "jsonl", "openai"] = "novalto",
    compression: Literal["auto", "none", "gzip"] = "auto",
    *,
    max_rows: int | None = None,
    max_field_chars: int = DEFAULT_MAX_FIELD_CHARS,
    min_rows: int = 1,
) -> list[PreferenceRow]:
    """Decode and validate a whole dataset; raises :class:`DatasetError` at the first bad row."""
    raw = decompress(data, compression)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"is not UTF-8 text (byte {exc.start})") from None
    rows: list[PreferenceRow] = []
    for index, obj in _decoded_rows(text, fmt):
        rows.append(parse_row(obj, index, max_field_chars))
        if max_rows is not None and len(rows) > max_rows:
            raise DatasetError(f"has more than {max_rows} rows")
    if len(rows) < min_rows:
        raise DatasetError(f"has {len(rows)} rows; at least {min_rows} needed")
    return rows


def rows_to_novalto(rows: list[dict[str, str]]) -> bytes:
    """The canonical compressed form the API stores in a dataset ConfigMap."""
    return gzip.compress(json.dumps(rows, ensure_ascii=False, separators=(",", ":")).encode(), mtime=0)
