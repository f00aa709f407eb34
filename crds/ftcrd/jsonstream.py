"""Dataset containers decoded as a stream: bytes in (in pieces of any size), JSON values out, memory bounded.

:class:`ContainerDecoder` is the one byte-level reader behind :mod:`ftcrd.dataset`: the API pushes an upload
through it as the bytes arrive, the trainer pushes a file through it block by block, so neither ever holds a
whole dataset (or a whole decompressed dataset) in memory, and both see the same rows with the same numbers.

* **gzip** (``compression`` ``gzip``, or ``auto`` and the gzip magic bytes): decompressed incrementally, at
  most :data:`DECOMPRESS_PIECE` bytes of output per step, concatenated members allowed (as ``gzip.decompress``).
* **jsonl** / **openai**: one JSON value per line; lines end with ``\\n`` (a ``\\r`` before it is JSON
  whitespace); blank lines are skipped but counted, so a value's number is its line number. A line is decoded
  by pydantic-core's parser (Rust, on the bytes: 2-3x faster than ``json.loads``, the largest cost of an upload
  after the row checks); a line it refuses goes through ``json.loads``, which decides (see :func:`loads_line`).
* **novalto**: one JSON list; its elements are decoded one at a time (``json.JSONDecoder.raw_decode`` on a
  sliding window), numbered from 1.

Limits: ``max_bytes`` caps the decoded (decompressed) content, ``max_row_bytes`` a single line or list element;
crossing either raises :class:`DatasetTooLarge` (HTTP 413 at the API), which is how a decompression bomb ends:
after at most ``max_bytes`` of output and ``max_row_bytes`` of buffer, never after the bomb's full size.
"""

from __future__ import annotations

import codecs
import json
import zlib
from collections.abc import Iterable, Iterator
from typing import Any, Final, Literal

from pydantic_core import from_json

GZIP_MAGIC: Final = b"\x1f\x8b"
DECOMPRESS_PIECE: Final = 1 << 20
"""Most decompressed bytes produced per step: the gzip bound on memory, whatever the compression ratio."""
DEFAULT_MAX_ROW_BYTES: Final = 8 << 20
"""Longest line (JSONL) or list element (novalto) accepted; far above any row the field limits allow."""
_INCOMPLETE_TAIL = 8  # a JSON error this close to the end of the window may just be a value cut in two


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


class DatasetTooLarge(DatasetError):
    """The content, or one row of it, is over a size limit (``limit`` bytes)."""

    def __init__(self, message: str, *, limit: int, row: int | None = None) -> None:
        super().__init__(message, row=row)
        self.limit = limit


class Gunzip:
    """Incremental gzip decompression with a cap on the total output."""

    def __init__(self, max_bytes: int | None) -> None:
        self.max_bytes = max_bytes
        self.out = 0
        self._z = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._pending = b""  # compressed bytes of a next member, before its header is complete

    def _produced(self, piece: bytes) -> bytes:
        self.out += len(piece)
        if self.max_bytes is not None and self.out > self.max_bytes:
            raise DatasetTooLarge(
                f"decompresses to more than {self.max_bytes} bytes (the limit of a dataset file)", limit=self.max_bytes
            )
        return piece

    def feed(self, data: bytes) -> Iterator[bytes]:
        """Decompressed pieces of ``data`` (each at most :data:`DECOMPRESS_PIECE` bytes), produced one at a time
        as they are consumed, so memory holds one piece whatever the compression ratio."""
        data = self._pending + data
        self._pending = b""
        try:
            while True:
                if self._z.eof:  # another member follows (or zero padding, which gzip allows)
                    if not data.strip(b"\0"):
                        return
                    if len(data) < len(GZIP_MAGIC):
                        self._pending = data
                        return
                    if data[: len(GZIP_MAGIC)] != GZIP_MAGIC:
                        raise DatasetError("content is not valid gzip (trailing garbage after the compressed data)")
                    self._z = zlib.decompressobj(16 + zlib.MAX_WBITS)
                piece = self._z.decompress(data, DECOMPRESS_PIECE)
                data = self._z.unused_data if self._z.eof else self._z.unconsumed_tail
                if piece:
                    yield self._produced(piece)
                # A full piece may leave output inside zlib with no input left: ask again until it is drained.
                if not data and (self._z.eof or len(piece) < DECOMPRESS_PIECE):
                    return
        except zlib.error as exc:
            raise DatasetError(f"content is not valid gzip ({exc})") from None

    def close(self) -> Iterator[bytes]:
        yield from self.feed(b"")
        if not self._z.eof or self._pending:
            raise DatasetError(
                "content is not valid gzip (Compressed file ended before the end-of-stream marker was reached)"
            )


def loads_line(raw: bytes | bytearray) -> Any:
    """One JSONL line's value by the fast parser, or ``None`` when it refuses the line (``null`` itself is not a
    row either way). It refuses a superset of what ``json.loads`` refuses (and lone surrogate escapes, nesting
    deeper than 200 and non-UTF-8 bytes that ``json.loads`` may take), and decodes what both take to equal values
    (checked in tests/crd/test_fastpath.py); so the slow path, run on every refusal, keeps every error message
    and every acceptance exactly as ``json.loads`` decides them."""
    try:
        return from_json(raw)
    except ValueError:
        return None


class JsonLines:
    """JSONL: complete lines out of pieces of bytes; yields (line number, decoded value)."""

    def __init__(self, max_row_bytes: int) -> None:
        self.max_row_bytes = max_row_bytes
        self.line = 0  # lines completed so far
        self._partial = bytearray()

    def _decode(self, raw: bytes | bytearray, number: int) -> list[tuple[int, Any]]:
        value = loads_line(raw)
        if value is not None:
            return [(number, value)]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DatasetError(f"is not UTF-8 text (byte {exc.start} of the line)", row=number) from None
        if not text.strip():
            return []
        try:
            return [(number, json.loads(text))]
        except json.JSONDecodeError as exc:
            raise DatasetError(f"line is not valid JSON: {exc.msg} at column {exc.colno}", row=number) from None

    def _too_long(self) -> DatasetTooLarge:
        return DatasetTooLarge(
            f"is longer than {self.max_row_bytes} bytes (the limit of one row)",
            limit=self.max_row_bytes,
            row=self.line + 1,
        )

    def feed(self, data: bytes) -> list[tuple[int, Any]]:
        out: list[tuple[int, Any]] = []
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            if len(self._partial) + end - start > self.max_row_bytes:
                raise self._too_long()
            if self._partial:
                self._partial += data[start:end]
                raw: bytes | bytearray = self._partial
                self._partial = bytearray()
            else:
                raw = data[start:end]
            self.line += 1
            out += self._decode(raw, self.line)
            start = end + 1
        if len(self._partial) + len(data) - start > self.max_row_bytes:
            raise self._too_long()
        self._partial += data[start:]
        return out

    def close(self) -> list[tuple[int, Any]]:
        if not self._partial:
            return []
        self.line += 1
        raw, self._partial = self._partial, bytearray()
        return self._decode(raw, self.line)


class JsonList:
    """A JSON list decoded element by element; yields (1-based index, element)."""

    def __init__(self, max_row_bytes: int) -> None:
        self.max_row_bytes = max_row_bytes
        self.count = 0
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self._bytes_in = 0
        self._text = ""  # the undecoded window
        self._pos = 0  # where decoding continues in the window
        self._lines = 0  # newlines before the window
        self._column = 0  # characters after the last newline before the window
        self._state: Literal["start", "value", "comma", "end"] = "start"
        self._retry_at = 0  # a cut value is retried once the window has grown to this length

    def _where(self, pos: int) -> tuple[int, int]:
        """(line, column) of window position ``pos``, 1-based, counted from the start of the content."""
        newlines = self._text.count("\n", 0, pos)
        if newlines:
            return self._lines + newlines + 1, pos - self._text.rfind("\n", 0, pos)
        return self._lines + 1, self._column + pos + 1

    def _invalid(self, msg: str, pos: int) -> DatasetError:
        line, column = self._where(pos)
        return DatasetError(f"not valid JSON: {msg} at line {line} column {column}")

    def _skip_space(self) -> None:
        text, pos = self._text, self._pos
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        self._pos = pos

    def _compact(self) -> None:
        """Drop the decoded part of the window, keeping line/column bookkeeping."""
        done = self._text[: self._pos]
        newlines = done.count("\n")
        if newlines:
            self._lines += newlines
            self._column = len(done) - done.rfind("\n") - 1
        else:
            self._column += len(done)
        self._text = self._text[self._pos :]
        self._pos = 0

    def _step(self, final: bool) -> list[tuple[int, Any]]:
        out: list[tuple[int, Any]] = []
        decoder = json.JSONDecoder()
        while True:
            self._skip_space()
            text, pos = self._text, self._pos
            if pos >= len(text):
                break
            char = text[pos]
            if self._state == "start":
                if char != "[":
                    if char not in _VALUE_STARTS:
                        raise self._invalid("Expecting value", pos)
                    raise DatasetError(f"novalto datasets are a JSON list of objects, got {_kind(char)}")
                self._pos, self._state = pos + 1, "value"
            elif self._state in ("comma", "end"):
                if self._state == "end":
                    raise self._invalid("Extra data", pos)
                if char not in ",]":
                    raise self._invalid("Expecting ',' delimiter", pos)
                self._pos, self._state = pos + 1, "value" if char == "," else "end"
            else:  # a value, or the end of an empty list / after a trailing comma
                if char == "]" and self.count == 0:
                    self._pos, self._state = pos + 1, "end"
                    continue
                if not final and len(text) < self._retry_at:
                    break
                try:
                    value, end = decoder.raw_decode(text, pos)
                except json.JSONDecodeError as exc:
                    cut = exc.pos >= len(text) - _INCOMPLETE_TAIL or exc.msg.startswith("Unterminated string")
                    if final or not cut:
                        raise self._invalid(exc.msg, exc.pos) from None
                    self._wait(pos)
                    break
                if end >= len(text) - _INCOMPLETE_TAIL and not final and not isinstance(value, dict | list):
                    self._wait(pos)  # a number or literal at the very end may continue in the next piece
                    break
                self.count += 1
                out.append((self.count, value))
                self._pos, self._state, self._retry_at = end, "comma", 0
        self._compact()
        return out

    def _wait(self, pos: int) -> None:
        """The value at ``pos`` is cut by the end of the window: retry once the window has doubled (linear
        work for a long value) or the value is over the row limit."""
        pending = len(self._text) - pos
        if pending > self.max_row_bytes:
            raise DatasetTooLarge(
                f"is longer than {self.max_row_bytes} bytes (the limit of one row)",
                limit=self.max_row_bytes,
                row=self.count + 1,
            )
        self._retry_at = 2 * pending  # the window starts at this value once compacted

    def feed(self, data: bytes) -> list[tuple[int, Any]]:
        try:
            self._text += self._utf8.decode(data)
        except UnicodeDecodeError as exc:
            raise DatasetError(f"is not UTF-8 text (byte {self._bytes_in + exc.start})") from None
        self._bytes_in += len(data)
        return self._step(final=False)

    def close(self) -> list[tuple[int, Any]]:
        try:
            self._text += self._utf8.decode(b"", final=True)
        except UnicodeDecodeError as exc:
            raise DatasetError(f"is not UTF-8 text (byte {self._bytes_in + exc.start})") from None
        out = self._step(final=True)
        if self._state == "start":
            raise self._invalid("Expecting value", len(self._text))
        if self._state != "end":
            raise self._invalid("Expecting ',' delimiter" if self._state == "comma" else "Expecting value", 0)
        return out


_VALUE_STARTS = frozenset('{"tfn-0123456789')


def _kind(char: str) -> str:
    """The type a JSON value starting with ``char`` decodes to, as Python names it."""
    return {"{": "dict", '"': "str", "t": "bool", "f": "bool", "n": "NoneType"}.get(char, "a number")


class ContainerDecoder:
    """Bytes of a dataset file (gzip or not) in, (row number, JSON value) out; see the module doc."""

    def __init__(
        self,
        fmt: Literal["novalto", "jsonl", "openai"],
        compression: Literal["auto", "none", "gzip"] = "auto",
        *,
        max_bytes: int | None = None,
        max_row_bytes: int = DEFAULT_MAX_ROW_BYTES,
    ) -> None:
        self.compression = compression
        self.max_bytes = max_bytes
        self.bytes_in = 0  # as fed (compressed, when gzip)
        self.bytes_out = 0  # decoded content
        self._gunzip: Gunzip | None = None
        self._head = b""  # the first bytes, until gzip can be told from plain text
        self._decided = compression != "auto"
        if compression == "gzip":
            self._gunzip = Gunzip(max_bytes)
        self._values: JsonLines | JsonList = JsonList(max_row_bytes) if fmt == "novalto" else JsonLines(max_row_bytes)

    def _content(self, pieces: Iterable[bytes]) -> Iterator[tuple[int, Any]]:
        for piece in pieces:
            self.bytes_out += len(piece)
            if self._gunzip is None and self.max_bytes is not None and self.bytes_out > self.max_bytes:
                raise DatasetTooLarge(
                    f"is larger than {self.max_bytes} bytes (the limit of a dataset file)", limit=self.max_bytes
                )
            yield from self._values.feed(piece)

    def feed(self, data: bytes) -> Iterator[tuple[int, Any]]:
        """The values completed by ``data``, decoded lazily: consume them before feeding more (a small
        compressed piece may hold many rows; they are produced one decompressed piece at a time)."""
        self.bytes_in += len(data)
        if not self._decided:
            self._head += data
            if len(self._head) < len(GZIP_MAGIC):
                return
            data, self._head, self._decided = self._head, b"", True
            if data[: len(GZIP_MAGIC)] == GZIP_MAGIC:
                self._gunzip = Gunzip(self.max_bytes)
        yield from self._content(self._gunzip.feed(data) if self._gunzip else [data])

    def close(self) -> Iterator[tuple[int, Any]]:
        """The last values; raises when the content ends inside a value or a gzip stream."""
        if not self._decided:  # fewer bytes than the magic: plain text
            self._decided = True
            yield from self._content([self._head])
        if self._gunzip is not None:
            yield from self._content(self._gunzip.close())
        yield from self._values.close()
