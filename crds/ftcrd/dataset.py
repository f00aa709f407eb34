"""Training datasets: the one parser, shared by the API (at upload) and the trainer.

No torch (pydantic-core's JSON parser is the only compiled part), so the API rejects a bad upload with exactly the message the trainer would
have failed with, before any GPU is reserved.

Three containers (``DatasetSpec.format``): ``novalto``, a JSON list of row objects (the original
microservice's payload); ``jsonl`` and ``openai``, one row object per line. Content may be
gzip-compressed (detected by its magic bytes). Every container takes every row shape, so a JSONL file
mixing shapes is fine:

* plain preference pair ``{"prompt", "chosen", "rejected"}`` (strings) -> :class:`PreferenceRow`;
* OpenAI DPO ``{"input": {"messages": [...], "tools": [...]}, "preferred_output": [...],
  "non_preferred_output": [...]}``; the OpenAI spec's schema spells the outputs
  ``preferred_completion``/``non_preferred_completion``, accepted too -> :class:`PreferenceRow` with
  messages;
* OpenAI supervised ``{"messages": [...], "tools": [...]}``, assistant messages optionally carrying
  ``weight`` 0 (context) or 1 (trained, the default) -> :class:`ConversationRow`.

Messages may be multi-turn, carry ``content`` as a list of text parts, assistant ``tool_calls`` with
``content: null``, and ``tool``/``function`` results (:mod:`ftcrd.messages`). Errors name the row
(line of a JSONL file, 1-based index of a JSON list) and the field.

Everything is read as a stream (:class:`RowValidator`, :func:`iter_rows`; the byte level is
:mod:`ftcrd.jsonstream`): a 500 MB file is validated with a few MB of memory, and size limits
(:class:`DatasetTooLarge`) end a decompression bomb early. JSONL lines end with ``\n``.
:meth:`RowValidator.check` (the API, which keeps no rows) first asks :func:`ftcrd.rowcheck.quick_kind`, which
accepts the common rows without building them; every other row, and every refusal, is :func:`parse_row`'s.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any, Literal

from ftcrd.jsonstream import (  # noqa: F401 (re-exported: the errors belong to the dataset's vocabulary)
    DEFAULT_MAX_ROW_BYTES,
    GZIP_MAGIC,
    ContainerDecoder,
    DatasetError,
    DatasetTooLarge,
)
from ftcrd.messages import (
    FieldError,
    Message,
    check_text,
    fail,
    parse_messages,
    parse_tools,
)
from ftcrd.rowcheck import DEFAULT_MAX_FIELD_CHARS, NON_PREFERRED_KEYS, OUTPUT_ROLES, PREFERRED_KEYS, quick_kind

TruncationSide = Literal["keep_end", "keep_start"]
"""Which end of a too-long prompt is kept: the end, nearest the reply (default), or the start (the
reference implementation's choice for most datasets)."""
TRUNCATION_SIDES: tuple[TruncationSide, ...] = ("keep_end", "keep_start")
ROW_SHAPES = (
    'Each row must be {"messages": [...]} (supervised), OpenAI\'s DPO shape {"input": {"messages": [...]}, '
    '"preferred_output": [...], "non_preferred_output": [...]}, or {"prompt", "chosen", "rejected"}.'
)
"""What a row may look like, for error messages that point a user at the accepted shapes."""


def _reply_text(messages: tuple[Message, ...]) -> str:
    """Several reply messages as plain text, each after the first on its own ``role: `` line."""
    return "".join([messages[0].plain(), *("\n" + m.line() for m in messages[1:])])


@dataclass(frozen=True)
class PreferenceRow:
    """One preference pair: a plain ``prompt`` with string replies, or a chat (``messages`` the
    prompt's turns, ``chosen_messages``/``rejected_messages`` the replies' turns). ``chosen`` and
    ``rejected`` are always the replies as plain text (for tokenizers without a chat template)."""

    chosen: str
    rejected: str
    prompt: str | None = None
    messages: tuple[Message, ...] | None = None
    chosen_messages: tuple[Message, ...] | None = None
    rejected_messages: tuple[Message, ...] | None = None
    tools: tuple[dict[str, Any], ...] | None = None
    number: int = field(default=0, compare=False)  # the row's number in error messages

    is_pair = True

    def prompt_text(self) -> str:
        """The prompt as plain text, for tokenizers without a chat template."""
        if self.prompt is not None:
            return self.prompt
        assert self.messages is not None
        return "\n".join(m.line() for m in self.messages) + "\nassistant: "

    def chosen_turns(self) -> tuple[Message, ...]:
        return self.chosen_messages or (Message("assistant", self.chosen, path="chosen"),)

    def rejected_turns(self) -> tuple[Message, ...]:
        return self.rejected_messages or (Message("assistant", self.rejected, path="rejected"),)

    def text_fields(self) -> list[tuple[str, str]]:
        """(field path, text) of every text in the row."""
        if self.messages is None:
            assert self.prompt is not None
            return [("prompt", self.prompt), ("chosen", self.chosen), ("rejected", self.rejected)]
        turns = (*self.messages, *self.chosen_turns(), *self.rejected_turns())
        return [item for m in turns for item in m.text_fields()]

    def texts(self) -> list[str]:
        return [text for _, text in self.text_fields()]


@dataclass(frozen=True)
class ConversationRow:
    """A supervised conversation: the assistant messages with weight 1 are trained, everything else
    (earlier turns, weight-0 assistant turns) is context."""

    messages: tuple[Message, ...]
    tools: tuple[dict[str, Any], ...] | None = None
    number: int = field(default=0, compare=False)

    is_pair = False

    def trained_turns(self) -> list[int]:
        return [i for i, m in enumerate(self.messages) if m.role == "assistant" and m.weight]

    def text_fields(self) -> list[tuple[str, str]]:
        return [item for m in self.messages for item in m.text_fields()]

    def texts(self) -> list[str]:
        return [text for _, text in self.text_fields()]


Row = PreferenceRow | ConversationRow


def _tools(obj: dict[str, Any], where: str) -> tuple[dict[str, Any], ...] | None:
    """``tools`` (or the legacy ``functions``) of ``obj``; ``where`` prefixes the field names."""
    if obj.get("tools") is not None and obj.get("functions") is not None:
        fail(where + "functions", "use either tools or the legacy functions, not both")
    if obj.get("tools") is not None:
        return parse_tools(obj["tools"], where + "tools") or None
    if obj.get("functions") is not None:
        return parse_tools(obj["functions"], where + "functions", legacy=True) or None
    return None


def _output(obj: dict[str, Any], keys: tuple[str, str], max_chars: int) -> tuple[Message, ...]:
    present = [k for k in keys if k in obj]
    if not present:
        fail(keys[0], "is missing")
    if len(present) > 1:
        fail(keys[1], f"use either '{keys[0]}' or '{keys[1]}', not both")
    key = present[0]

    def assistant_or_tool(m: Message) -> None:
        if m.role not in OUTPUT_ROLES:
            fail(
                m.path + ".role", f"reply messages must have role 'assistant' (or 'tool' between them), got {m.role!r}"
            )

    messages = parse_messages(obj[key], key, max_chars, check=assistant_or_tool)
    if messages[0].role != "assistant":
        fail(key, "first message must have role 'assistant'")
    if messages[-1].role != "assistant":
        fail(key, "last message must have role 'assistant'")
    return messages


def _openai_pair(obj: dict[str, Any], max_chars: int, number: int) -> PreferenceRow:
    inp = obj.get("input")
    if not isinstance(inp, dict):
        fail("input", "must be an object with a 'messages' list")
    messages = parse_messages(inp.get("messages"), "input.messages", max_chars)
    tools = _tools(inp, "input.")
    outer = _tools(obj, "")
    if tools and outer:
        fail("tools", "give the tools once, in input.tools")
    chosen = _output(obj, PREFERRED_KEYS, max_chars)
    rejected = _output(obj, NON_PREFERRED_KEYS, max_chars)
    return PreferenceRow(
        chosen=_reply_text(chosen),
        rejected=_reply_text(rejected),
        messages=messages,
        chosen_messages=chosen,
        rejected_messages=rejected,
        tools=tools or outer,
        number=number,
    )


def _conversation(obj: dict[str, Any], max_chars: int, number: int) -> ConversationRow:
    for key in (*PREFERRED_KEYS, *NON_PREFERRED_KEYS, "input"):
        if key in obj:
            fail(key, "a row has either 'messages' (supervised) or 'input' with preferred/non-preferred outputs (DPO)")
    messages = parse_messages(obj.get("messages"), "messages", max_chars, allow_weight=True)
    if messages[0].role == "assistant":
        fail("messages[0].role", "a conversation must start with a system, developer or user message")
    row = ConversationRow(messages=messages, tools=_tools(obj, ""), number=number)
    if not row.trained_turns():
        fail("messages", "has no assistant message to train on (one without weight, or with weight 1, is needed)")
    return row


def _plain_pair(obj: dict[str, Any], max_chars: int, number: int) -> PreferenceRow:
    def text(key: str) -> str:
        if key not in obj:
            fail(key, "is missing")
        return check_text(obj[key], key, max_chars)

    prompt = text("prompt")
    return PreferenceRow(prompt=prompt, chosen=text("chosen"), rejected=text("rejected"), number=number)


def parse_row(obj: Any, row: int, max_chars: int = DEFAULT_MAX_FIELD_CHARS) -> Row:
    """Validate one decoded row (``row``: its number in messages)."""
    if not isinstance(obj, dict):
        raise DatasetError(f"must be a JSON object, got {type(obj).__name__}", row=row)
    try:
        if "messages" in obj:
            return _conversation(obj, max_chars, row)
        if "input" in obj or any(k in obj for k in (*PREFERRED_KEYS, *NON_PREFERRED_KEYS)):
            return _openai_pair(obj, max_chars, row)
        return _plain_pair(obj, max_chars, row)
    except FieldError as exc:
        raise DatasetError(exc.detail, row=row, field=exc.field) from None


Format = Literal["novalto", "jsonl", "openai"]
CompressionMode = Literal["auto", "none", "gzip"]
READ_BLOCK = 1 << 20
"""Bytes read from a file per step by :func:`iter_rows`."""


@dataclass
class RowCounts:
    """What a validated dataset holds (the API records these with an uploaded file)."""

    rows: int = 0
    pairs: int = 0  # preference pairs; the other rows are supervised conversations
    first_conversation: int | None = None  # number of the first supervised row, for error messages
    content_bytes: int = 0  # decoded (decompressed) size


def supervised_row(number: int) -> DatasetError:
    """Row ``number`` is supervised where a preference method needs pairs (the API words a file's record so)."""
    return DatasetError(
        "is a supervised row without a rejected reply; preference methods (dpo, ipo) need pairs: "
        '{"input", "preferred_output", "non_preferred_output"} or {"prompt", "chosen", "rejected"}',
        row=number,
        field="messages",
    )


class RowValidator:
    """Push the bytes of a dataset (gzip or not, in pieces of any size) in; get validated rows out.

    The one parser of the API (at upload, as the bytes arrive) and of the trainer (:func:`iter_rows`), so both
    refuse the same row with the same message. Memory is bounded by the row size limits, never the file size.
    ``require_pairs``: the method compares a chosen and a rejected reply (DPO, IPO), so supervised ``messages``
    rows are refused; supervised fine-tuning takes every row (the chosen reply of a pair).
    """

    def __init__(
        self,
        fmt: Format = "jsonl",
        compression: CompressionMode = "auto",
        *,
        max_rows: int | None = None,
        max_field_chars: int = DEFAULT_MAX_FIELD_CHARS,
        min_rows: int = 1,
        require_pairs: bool = False,
        max_bytes: int | None = None,
        max_row_bytes: int = DEFAULT_MAX_ROW_BYTES,
    ) -> None:
        self.decoder = ContainerDecoder(fmt, compression, max_bytes=max_bytes, max_row_bytes=max_row_bytes)
        self.max_rows = max_rows
        self.max_field_chars = max_field_chars
        self.min_rows = min_rows
        self.require_pairs = require_pairs
        self.counts = RowCounts()

    def _count(self, number: int, is_pair: bool) -> None:
        if not is_pair:
            if self.require_pairs:
                raise supervised_row(number)
            if self.counts.first_conversation is None:
                self.counts.first_conversation = number
        else:
            self.counts.pairs += 1
        self.counts.rows += 1
        if self.max_rows is not None and self.counts.rows > self.max_rows:
            raise DatasetError(f"has more than {self.max_rows} rows")
        self.counts.content_bytes = self.decoder.bytes_out

    def _rows(self, values: Iterable[tuple[int, Any]]) -> Iterator[Row]:
        for number, obj in values:
            row = parse_row(obj, number, self.max_field_chars)
            self._count(number, row.is_pair)
            yield row

    def _check(self, values: Iterable[tuple[int, Any]]) -> None:
        """As :meth:`_rows` without building the rows: :func:`quick_kind` first, :func:`parse_row` where it
        cannot tell (and for every refusal, so the messages are the same)."""
        max_chars = self.max_field_chars
        for number, obj in values:
            is_pair = quick_kind(obj, max_chars)
            if is_pair is None:
                is_pair = parse_row(obj, number, max_chars).is_pair
            self._count(number, is_pair)

    def _end(self) -> None:
        self.counts.content_bytes = self.decoder.bytes_out
        if self.counts.rows < self.min_rows:
            raise DatasetError(f"has {self.counts.rows} rows; at least {self.min_rows} needed")

    def feed(self, data: bytes) -> Iterator[Row]:
        """The rows ``data`` completes, validated lazily (consume them before feeding more)."""
        yield from self._rows(self.decoder.feed(data))
        self.counts.content_bytes = self.decoder.bytes_out

    def close(self) -> Iterator[Row]:
        """The last rows; raises when the content ends badly or has fewer than ``min_rows`` rows."""
        yield from self._rows(self.decoder.close())
        self._end()

    def check(self, data: bytes) -> None:
        """Validate ``data`` (a piece of the stream) without keeping its rows (the same acceptance, errors and
        counts as :meth:`feed`, faster)."""
        self._check(self.decoder.feed(data))
        self.counts.content_bytes = self.decoder.bytes_out

    def finish(self) -> RowCounts:
        """Validate the end of the stream; the counts of the whole dataset."""
        self._check(self.decoder.close())
        self._end()
        return self.counts


def iter_rows(stream: IO[bytes], validator: RowValidator, block: int = READ_BLOCK) -> Iterator[Row]:
    """Every row of ``stream`` (a binary file), read ``block`` bytes at a time; ``validator.counts`` counts them."""
    while data := stream.read(block):
        yield from validator.feed(data)
    yield from validator.close()


def load_rows(
    data: bytes,
    fmt: Format = "novalto",
    compression: CompressionMode = "auto",
    *,
    max_rows: int | None = None,
    max_field_chars: int = DEFAULT_MAX_FIELD_CHARS,
    min_rows: int = 1,
    require_pairs: bool = False,
) -> list[Row]:
    """Decode and validate a whole dataset held in memory; raises :class:`DatasetError` at the first bad row.
    (A file is read with :func:`iter_rows`, an upload pushed through :class:`RowValidator`.)"""
    validator = RowValidator(
        fmt,
        compression,
        max_rows=max_rows,
        max_field_chars=max_field_chars,
        min_rows=min_rows,
        require_pairs=require_pairs,
    )
    return [*validator.feed(data), *validator.close()]


def rows_to_novalto(rows: list[dict[str, str]]) -> bytes:
    """The canonical compressed form the API stores in a dataset ConfigMap."""
    return gzip.compress(json.dumps(rows, ensure_ascii=False, separators=(",", ":")).encode(), mtime=0)


def held_out_rows(rows: int, validation_fraction: float) -> int:
    """How many of ``rows`` the trainer holds out for evaluation (at least one when the fraction is positive and
    there are two rows or more; never all of them), so the API knows the training rows before a job runs."""
    held = int(rows * validation_fraction)
    if validation_fraction > 0 and held == 0 and rows >= 2:
        held = 1
    return max(0, min(held, rows - 1))
