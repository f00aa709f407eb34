"""Reading the trainer's uploads (Firebase Storage / GCS) with the client the trainer writes them with:
firebase-admin's ``storage.bucket()``, i.e. google-cloud-storage.

Credentials as for the trainer (``fttrainer.upload``): anonymous against an emulator
(``STORAGE_EMULATOR_HOST``, which google-cloud-storage honours), else ``GOOGLE_APPLICATION_CREDENTIALS`` (a
service-account key) or the application-default chain (workload identity). The client library is imported
lazily: an API image without it still serves everything but result files (503 there).
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from pathlib import Path
from typing import Any

from ftcrd.names import ENV_CREDENTIALS

from ftapi.errors import APIError

log = logging.getLogger("ftapi.storage")

DEFAULT_PROJECT = "finetune-local"


def _credentials() -> Any:
    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        return AnonymousCredentials()
    from firebase_admin import credentials

    key = os.environ.get(ENV_CREDENTIALS)
    if key and Path(key).is_file():
        try:
            return credentials.Certificate(key)
        except ValueError:
            pass  # another ADC file type: the default chain reads it
    return credentials.ApplicationDefault()


class ArtifactStore:
    """Reads objects from buckets; one firebase app for the process, created on first use."""

    def __init__(self, timeout: float = 15.0) -> None:
        self.timeout = timeout
        self._app: Any = None

    def _open(self) -> Any:
        if self._app is None:
            import firebase_admin

            options: dict[str, Any] = {}
            project = os.environ.get("GOOGLE_CLOUD_PROJECT") or os.environ.get("GCLOUD_PROJECT")
            if os.environ.get("STORAGE_EMULATOR_HOST"):
                options["projectId"] = project or DEFAULT_PROJECT
            elif project:
                options["projectId"] = project
            self._app = firebase_admin.initialize_app(
                _credentials(), options, name=f"ftapi-storage-{uuid.uuid4().hex[:8]}"
            )
        return self._app

    def _read(self, bucket: str, name: str) -> bytes | None:
        from firebase_admin import storage
        from google.api_core import exceptions

        handle = storage.bucket(bucket, app=self._open())
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

    def close(self) -> None:
        if self._app is not None:
            import firebase_admin

            firebase_admin.delete_app(self._app)
            self._app = None
