"""Streaming file uploads: ``multipart/form-data`` parsed as it arrives, the file validated row by row and written
to the bucket at the same time, memory bounded whatever the file's size.

FastAPI's ``UploadFile`` spools the whole file first (memory up to 1 MB, then a temporary file): twice the I/O,
the API pod's disk, and not a byte validated before the last one arrived. Here::

    request body ─> python-multipart's MultipartParser (callbacks) ─> the file part, in pieces of ~1 MiB
        ├─> validator thread: ftcrd.dataset.RowValidator (gunzip with a byte cap, rows as the trainer parses them)
        └─> writer thread:    sha256 + storage.ObjectWriter (a resumable upload holding one chunk)

Each thread takes pieces from a queue of :data:`QUEUE_PIECES`; a slow stage makes the request's reading wait
(TCP back-pressure) instead of filling memory, so one upload holds about ``2 x QUEUE_PIECES`` pieces, one upload
chunk and one row. The object is committed only after the last row is validated: a bad row, a size limit or a
quota cancels the upload (nothing appears in the bucket), and the rest of the body is read and dropped so the
client receives its 4xx rather than a reset connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import queue
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from ftcrd.dataset import GZIP_MAGIC, DatasetError, RowCounts, RowValidator
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from ftapi.errors import APIError, too_large
from ftapi.settings import Settings
from ftapi.storage import ArtifactStore, ObjectWriter

log = logging.getLogger("ftapi.uploads")

PIECE = 1 << 20
"""File bytes handed to the threads at a time."""
QUEUE_PIECES = 4
MAX_FIELD_BYTES = 64 * 1024
"""Largest non-file form field (purpose, expires_after[...])."""
FILE_FIELD = "file"
_END, _CANCEL = object(), object()


class _Stage(threading.Thread):
    """Calls ``step(piece)`` for every queued piece, then ``end()`` or ``cancel()``. After a failure it keeps taking
    (and dropping) pieces, so the producer never waits on a stage that stopped."""

    def __init__(
        self, name: str, step: Callable[[bytes], None], end: Callable[[], Any], cancel: Callable[[], None]
    ) -> None:
        super().__init__(name=name, daemon=True)
        self._step, self._end, self._cancel = step, end, cancel
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._loop = asyncio.get_running_loop()
        self._room = asyncio.Semaphore(QUEUE_PIECES)
        self._done = asyncio.Event()
        self.error: BaseException | None = None
        self.result: Any = None

    def run(self) -> None:
        try:
            while True:
                item = self._queue.get()
                if item is _CANCEL:
                    self._cancel()
                    return
                if item is _END:
                    if self.error is None:
                        self.result = self._end()
                    return
                if self.error is None:
                    try:
                        self._step(item)
                    except BaseException as exc:
                        self.error = exc
                self._signal(self._room.release)
        except BaseException as exc:
            self.error = self.error or exc
        finally:
            self._signal(self._done.set)

    def _signal(self, callback: Callable[[], Any]) -> None:
        with contextlib.suppress(RuntimeError):  # the event loop is closed (the server stopped): nobody waits
            self._loop.call_soon_threadsafe(callback)

    async def put(self, piece: bytes) -> None:
        await self._room.acquire()
        self._queue.put(piece)

    async def end(self) -> None:
        """Finish and wait for the thread (``result`` or ``error`` is then set)."""
        self._queue.put(_END)
        await self._done.wait()

    def stop(self) -> None:
        """Cancel, without waiting, unless the stage already ended."""
        if not self._done.is_set():
            self._queue.put(_CANCEL)


@dataclass
class Form:
    """What the multipart body held besides the file's bytes."""

    fields: dict[str, str] = field(default_factory=dict)
    filename: str | None = None
    file_bytes: int = 0
    complete: bool = False


class FormReader:
    """Incremental ``multipart/form-data``: :meth:`feed` returns the file part's bytes found in a chunk; the other
    fields are collected (at most :data:`MAX_FIELD_BYTES` each)."""

    def __init__(self, content_type: str, max_file_bytes: int) -> None:
        kind, params = parse_options_header(content_type)
        boundary = params.get(b"boundary")
        if kind != b"multipart/form-data" or not boundary:
            raise APIError(
                400, "The request must be multipart/form-data with a 'file' part", code="invalid_value", param="file"
            )
        self.form = Form()
        self.max_file_bytes = max_file_bytes
        self._out: list[bytes] = []
        self._header_name, self._header_value = bytearray(), bytearray()
        self._headers: dict[str, bytes] = {}
        self._name: str | None = None
        self._value = bytearray()
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._part_begin,
                "on_header_field": lambda d, s, e: self._header_name.extend(d[s:e]),
                "on_header_value": lambda d, s, e: self._header_value.extend(d[s:e]),
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._part_data,
                "on_part_end": self._part_end,
                "on_end": self._end,
            },
        )

    def _part_begin(self) -> None:
        self._headers, self._name, self._value = {}, None, bytearray()

    def _header_end(self) -> None:
        self._headers[self._header_name.decode("latin-1").lower()] = bytes(self._header_value)
        self._header_name, self._header_value = bytearray(), bytearray()

    def _headers_finished(self) -> None:
        _, params = parse_options_header(self._headers.get("content-disposition", b""))
        name = params.get(b"name", b"").decode("utf-8", "replace")
        if name == FILE_FIELD:
            if self.form.filename is not None:
                raise APIError(400, "Only one 'file' part may be sent", code="invalid_value", param="file")
            self.form.filename = params.get(b"filename", b"").decode("utf-8", "replace")
        self._name = name

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._name == FILE_FIELD:
            self.form.file_bytes += end - start
            if self.form.file_bytes > self.max_file_bytes:
                raise file_too_large(self.max_file_bytes)
            self._out.append(data[start:end])
        else:
            self._value.extend(data[start:end])
            if len(self._value) > MAX_FIELD_BYTES:
                raise APIError(413, f"Form field '{self._name}' is too long", code="field_too_large", param=self._name)

    def _part_end(self) -> None:
        if self._name and self._name != FILE_FIELD:
            try:
                self.form.fields[self._name] = self._value.decode("utf-8")
            except UnicodeDecodeError:
                raise APIError(400, f"Form field '{self._name}' is not UTF-8", param=self._name) from None

    def _end(self) -> None:
        self.form.complete = True

    def feed(self, chunk: bytes) -> list[bytes]:
        try:
            self._parser.write(chunk)
        except MultipartParseError as exc:
            raise APIError(400, f"Malformed multipart body: {exc}", code="invalid_value", param="file") from None
        out, self._out = self._out, []
        return out


def file_too_large(limit: int) -> APIError:
    return too_large(
        f"The file is larger than {limit} bytes, the largest file this service accepts (as uploaded and after "
        "decompression).",
        code="file_too_large",
        param="file",
    )


@dataclass
class Received:
    """A validated file, committed to the bucket."""

    form: Form
    counts: RowCounts
    sha256: str
    size: int  # bytes as uploaded (and stored)
    gzip: bool
    uri: str


class UploadRefused(Exception):
    """The upload stopped before commit; ``error`` is what to answer (an APIError or the parser's DatasetError)."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


async def receive(
    body: AsyncIterator[bytes],
    content_type: str,
    *,
    settings: Settings,
    store: ArtifactStore,
    bucket: str,
    name: str,
    check_form: Callable[[Form], None],
    check_size: Callable[[int], None],
) -> Received:
    """Read a multipart upload from ``body``, validate its ``file`` part and store it as ``gs://bucket/name``.

    ``check_form`` runs on the other fields as soon as the file starts and again at the end, ``check_size`` on
    the file's size before the commit; either raises an APIError to refuse. Raises :class:`UploadRefused`; nothing
    is left in the bucket then."""
    reader = FormReader(content_type, settings.max_file_bytes)
    validator = RowValidator(
        "jsonl",
        max_rows=settings.max_rows,
        max_field_chars=settings.max_field_chars,
        min_rows=settings.min_rows,
        max_bytes=settings.max_file_bytes,
    )
    sha = hashlib.sha256()
    state: dict[str, Any] = {"writer": None, "size": 0, "gzip": False}

    def write(piece: bytes) -> None:
        if state["writer"] is None:
            state["gzip"] = piece[: len(GZIP_MAGIC)] == GZIP_MAGIC
            kind = "application/gzip" if state["gzip"] else "application/jsonl"
            state["writer"] = ObjectWriter(
                store, bucket, name, chunk_size=settings.upload_chunk_bytes, content_type=kind
            )
        sha.update(piece)
        state["size"] += len(piece)
        state["writer"].write(piece)

    def commit() -> dict[str, Any]:
        if state["writer"] is None:
            write(b"")
        result: dict[str, Any] = state["writer"].commit()
        return result

    def cancel() -> None:
        if state["writer"] is not None:
            state["writer"].abort()

    check = _Stage("ftapi-validate", validator.check, validator.finish, lambda: None)
    upload = _Stage("ftapi-upload", write, commit, cancel)
    check.start()
    upload.start()
    failure: Exception | None = None
    pending = bytearray()
    checked_form = False

    async def forward(piece: bytes) -> None:
        await check.put(piece)
        await upload.put(piece)

    try:
        async for chunk in body:
            if failure is not None:
                continue  # read the rest of the body so the client gets the answer
            try:
                for data in reader.feed(chunk):
                    if not checked_form:
                        check_form(reader.form)
                        checked_form = True
                    pending += data
                if len(pending) >= PIECE:
                    await forward(bytes(pending))
                    pending.clear()
                failure = _stage_failure(check, upload)
            except APIError as exc:
                failure = exc
        if failure is not None:
            raise UploadRefused(failure)
        if pending:
            await forward(bytes(pending))
        if not reader.form.complete:
            raise UploadRefused(APIError(400, "The multipart body ended early", code="invalid_value", param="file"))
        if reader.form.filename is None:
            raise UploadRefused(APIError(400, "The 'file' part is missing", code="invalid_value", param="file"))
        _refuse_on(check_form, reader.form)
        await check.end()
        if check.error is not None:
            raise UploadRefused(_refusal(check.error))
        _refuse_on(check_size, state["size"])
        await upload.end()
        if upload.error is not None:
            raise UploadRefused(_refusal(upload.error))
    except BaseException:  # refused, or the client went away: drop the upload (no waiting: it may be a cancel)
        check.stop()
        upload.stop()
        raise
    return Received(
        form=reader.form,
        counts=validator.counts,
        sha256=sha.hexdigest(),
        size=state["size"],
        gzip=state["gzip"],
        uri=f"gs://{bucket}/{name}",
    )


def _refuse_on(check: Callable[[Any], None], value: Any) -> None:
    try:
        check(value)
    except APIError as exc:
        raise UploadRefused(exc) from None


def _stage_failure(*stages: _Stage) -> Exception | None:
    for stage in stages:
        if stage.error is not None:
            return _refusal(stage.error)
    return None


def _refusal(error: BaseException) -> Exception:
    """A stage's failure as the answer: the parser's own errors as they are (the router words them), an
    object-storage failure as 503 (type only in the log: messages may hold URLs)."""
    if isinstance(error, DatasetError | APIError):
        return error
    log.error("upload to the bucket failed: %s", type(error).__name__)
    return APIError(503, "Storage unavailable; retry the upload later", code="storage_unavailable")
