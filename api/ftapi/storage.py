"""The API's object storage (Firebase Storage / GCS) through the client the trainer uses: firebase-admin's
``storage.bucket()``, i.e. google-cloud-storage. It reads the trainer's uploads (results files) and holds the
uploaded files: streamed in by :mod:`ftapi.uploads` (:class:`ObjectWriter`), streamed out, deleted.

Credentials as for the trainer (``fttrainer.upload``): anonymous against an emulator
(``STORAGE_EMULATOR_HOST``, which google-cloud-storage honours), else ``GOOGLE_APPLICATION_CREDENTIALS`` (a
service-account key) or the application-default chain (workload identity). The client library is imported
lazily: an API image without it still serves everything but result files (503 there).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import uuid
from collections.abc import Callable
from typing import IO, Any, TypeVar

from ftcrd import bucket_access

from ftapi.errors import APIError

log = logging.getLogger("ftapi.storage")
T = TypeVar("T")


def _credentials() -> Any:
    """The bucket's credentials, by the rule the API shares with the trainer (ftcrd.bucket_access)."""
    from firebase_admin import credentials
    from google.auth.credentials import AnonymousCredentials

    return bucket_access.credentials(
        anonymous=AnonymousCredentials, key_file=credentials.Certificate, default=credentials.ApplicationDefault
    )


class ArtifactStore:
    """Reads objects from buckets; one firebase app for the process, created on first use."""

    def __init__(self, timeout: float = 15.0) -> None:
        self.timeout = timeout
        self._app: Any = None
        self._opening = threading.Lock()  # worker threads of concurrent requests open the app once

    def _open(self) -> Any:
        with self._opening:
            return self._open_app()

    def _open_app(self) -> Any:
        if self._app is None:
            import firebase_admin

            self._app = firebase_admin.initialize_app(
                _credentials(), bucket_access.app_options(), name=f"ftapi-storage-{uuid.uuid4().hex[:8]}"
            )
        return self._app

    def bucket(self, bucket: str) -> Any:
        """A google-cloud-storage Bucket (blocking calls: use it from a worker thread)."""
        from firebase_admin import storage

        return storage.bucket(bucket, app=self._open())

    def _read(self, bucket: str, name: str) -> bytes | None:
        from google.api_core import exceptions

        handle = self.bucket(bucket)
        try:
            data: bytes = handle.blob(name).download_as_bytes(timeout=self.timeout)
        except exceptions.NotFound:
            return None
        return data

    async def read(self, bucket: str, name: str) -> bytes | None:
        """The object's bytes, or None when it does not exist; 503 when storage cannot be reached."""
        try:
            return await asyncio.to_thread(self._read, bucket, name)
        except ImportError:
            log.error("reading gs://%s/%s: the storage client (firebase-admin) is not installed", bucket, name)
            raise APIError(
                503, "Result files are not available: this API has no storage client", code="storage_unavailable"
            ) from None
        except Exception as exc:  # network, credentials, permissions: the type only, messages may hold URLs
            log.error("reading gs://%s/%s failed: %s", bucket, name, type(exc).__name__)
            raise APIError(503, "Storage unavailable; retry later", code="storage_unavailable") from None

    async def call(self, what: str, fn: Callable[[], T]) -> T:
        """``fn()`` in a worker thread; 503 (logged with ``what`` and the type only) when storage fails."""
        try:
            return await asyncio.to_thread(fn)
        except ImportError:
            log.error("%s: the storage client (firebase-admin) is not installed", what)
            raise APIError(
                503, "Storage is not available: this API has no storage client", code="storage_unavailable"
            ) from None
        except Exception as exc:
            log.error("%s failed: %s", what, type(exc).__name__)
            raise APIError(503, "Storage unavailable; retry later", code="storage_unavailable") from None

    async def delete(self, bucket: str, name: str) -> None:
        """Delete an object (already gone is fine)."""

        def delete() -> None:
            from google.api_core import exceptions

            with contextlib.suppress(exceptions.NotFound):
                self.bucket(bucket).blob(name).delete(timeout=self.timeout)

        await self.call(f"deleting gs://{bucket}/{name}", delete)

    async def write(self, bucket: str, name: str, data: bytes, content_type: str) -> None:
        """Store a small object in one request, never over an existing one (``ifGenerationMatch: 0``)."""

        def write() -> None:
            self.bucket(bucket).blob(name).upload_from_string(
                data, content_type=content_type, if_generation_match=0, timeout=self.timeout
            )

        await self.call(f"writing gs://{bucket}/{name}", write)

    def reader(self, bucket: str, name: str, chunk_size: int) -> IO[bytes]:
        """The object as a file to read from (blocking; ranged requests of ``chunk_size`` bytes)."""
        reader: IO[bytes] = self.bucket(bucket).blob(name).open("rb", chunk_size=chunk_size)
        return reader

    def close(self) -> None:
        if self._app is not None:
            import firebase_admin

            firebase_admin.delete_app(self._app)
            self._app = None


class ObjectWriter:
    """One object written as a stream of pieces (blocking; from one worker thread), with a resumable upload in
    chunks of ``chunk_size`` bytes: at most one chunk is held in memory, and nothing exists in the bucket until
    :meth:`commit` sends the last one. :meth:`abort` cancels the upload session instead. Never overwrites an
    existing object (``ifGenerationMatch: 0``)."""

    def __init__(self, store: ArtifactStore, bucket: str, name: str, *, chunk_size: int, content_type: str) -> None:
        self.uri = f"gs://{bucket}/{name}"
        self._blob = store.bucket(bucket).blob(name, chunk_size=chunk_size)
        self._writer = self._blob.open("wb", ignore_flush=True, content_type=content_type, if_generation_match=0)

    def write(self, data: bytes) -> None:
        self._writer.write(data)

    def commit(self) -> dict[str, Any]:
        """Finish the upload; the object's size and checksums as the server stored them."""
        try:
            self._writer.close()
        except BaseException:
            self.abort()
            raise
        self._blob.reload()
        return {"size": self._blob.size, "crc32c": self._blob.crc32c, "md5": self._blob.md5_hash}

    def abort(self) -> None:
        """Drop the upload: the resumable session is cancelled (best effort; GCS expires an abandoned session
        anyway) and the writer is closed *without* its final chunk. This matters: the writer is a file object, and
        one merely left behind is closed when it is garbage-collected, and closing it commits the object."""
        try:
            self._writer.terminate()
        except Exception as exc:
            log.info("cancelling the upload session of %s: %s", self.uri, type(exc).__name__)
            self._writer._buffer.close()  # what terminate() ends with: close() then sends nothing
