"""Uploaded files' bookkeeping: records, quotas, expiry, and the dataset a job reads from a file.

A file's bytes are one object, ``gs://<files bucket>/<files prefix>/<namespace>/<file id>`` (:mod:`ftapi.uploads`
writes it). Its *record* is a small ConfigMap ``file-<24 hex>`` in the tenant's namespace holding metadata only:
label ``finetune.dev/file=true`` and annotations (filename, purpose, created-at, bytes, rows, pairs,
first-supervised-row, sha256, object, format, expires-at). Why a ConfigMap and not the object's own metadata:
the namespace is the tenant boundary the API already enforces (its RBAC, the key's namespace), a record is one
``get`` by id, a tenant's files are one label-selected list, and a job references its file by id in the same
namespace; the bucket is only asked for bytes. Lists ask for metadata only (``PartialObjectMetadataList``), so
not even a record written with a payload by an earlier version is read whole.

Quotas (:class:`ftapi.settings.Quota`, per namespace): files and their bytes at upload, unfinished jobs at
creation; over a quota is 429 ``quota_exceeded``, naming the quota and the usage. Expiry: a file's
``expires_at`` comes from ``expires_after`` (OpenAI's ``{anchor: created_at, seconds}``) or the configured default;
an expired file is gone at once for every route, and :class:`Sweeper` deletes its object and record (once no
unfinished job uses it).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Any

from ftcrd import names
from ftcrd.dataset import DatasetError, supervised_row
from ftcrd.types import DatasetSource, DatasetSpec
from kubernetes_asyncio.client.exceptions import ApiException

from ftapi import mapping
from ftapi.auth import KeyStore
from ftapi.errors import APIError, not_found
from ftapi.k8s import K8s
from ftapi.settings import Settings
from ftapi.storage import ArtifactStore

log = logging.getLogger("ftapi.files")

FILE_SELECTOR = f"{names.LABEL_FILE}=true"
FILE_ID = re.compile(r"^file-[0-9a-f]{24}$")
ACTIVE_FILE_LABELS = (names.LABEL_TRAINING_FILE, names.LABEL_VALIDATION_FILE)


def object_location(settings: Settings, namespace: str, file_id: str) -> tuple[str, str]:
    """(bucket, object name) of a file's bytes."""
    parts = [p for p in settings.files_prefix.strip("/").split("/") if p]
    return settings.bucket_for_files, "/".join([*parts, namespace, file_id])


def _ann(record: dict[str, Any]) -> dict[str, str]:
    return dict((record.get("metadata") or {}).get("annotations") or {})


def _int(ann: dict[str, str], key: str) -> int | None:
    try:
        return int(ann[key])
    except (KeyError, ValueError):
        return None


def expires_at(record: dict[str, Any]) -> int | None:
    return _int(_ann(record), names.ANN_EXPIRES_AT)


def is_expired(record: dict[str, Any], now: float | None = None) -> bool:
    when = expires_at(record)
    return when is not None and when <= (time.time() if now is None else now)


def expiry(settings: Settings, fields: dict[str, str], created: int) -> int | None:
    """``expires_at`` from the form's ``expires_after[seconds]`` (``expires_after[anchor]``, when sent, must be
    ``created_at``, the only anchor OpenAI has; leaving it out means the same), else the default."""
    anchor, seconds = fields.get("expires_after[anchor]"), fields.get("expires_after[seconds]")
    if anchor not in (None, "created_at"):
        raise APIError(400, "expires_after.anchor must be 'created_at'", code="invalid_value", param="expires_after")
    if seconds is None:  # (the anchor alone, or nothing: the only anchor there is, with the default period)
        return None if settings.file_expiry_seconds is None else created + settings.file_expiry_seconds
    low, high = settings.file_expiry_min_seconds, settings.file_expiry_max_seconds
    try:
        value = int(seconds or "")
    except ValueError:
        value = -1
    if not low <= value <= high:
        raise APIError(
            400,
            f"expires_after.seconds must be an integer from {low} to {high}",
            code="invalid_value",
            param="expires_after",
        )
    return created + value


def new_record(
    file_id: str,
    *,
    filename: str,
    purpose: str,
    created_by: str,
    created_at: int,
    expires: int | None,
    uri: str,
    sha256: str,
    size: int,
    rows: int,
    pairs: int,
    first_supervised: int | None,
    fmt: str,
) -> dict[str, Any]:
    """The record ConfigMap of a stored file (metadata only)."""
    ann = {
        names.ANN_FILENAME: filename,
        names.ANN_PURPOSE: purpose,
        names.ANN_CREATED_AT: str(created_at),
        names.ANN_BYTES: str(size),
        names.ANN_ROWS: str(rows),
        names.ANN_PAIRS: str(pairs),
        names.ANN_SHA256: sha256,
        names.ANN_OBJECT: uri,
        names.ANN_FORMAT: fmt,
    }
    if first_supervised is not None:
        ann[names.ANN_FIRST_SUPERVISED] = str(first_supervised)
    if expires is not None:
        ann[names.ANN_EXPIRES_AT] = str(expires)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": file_id,
            "labels": {names.LABEL_FILE: "true", names.LABEL_CREATED_BY: created_by},
            "annotations": ann,
        },
    }


async def list_records(k8s: K8s, namespace: str, *, with_expired: bool = False) -> list[dict[str, Any]]:
    """The namespace's file records (metadata only); expired ones only when asked for."""
    records = await k8s.list_configmap_metadata(namespace, FILE_SELECTOR)
    now = time.time()
    return [r for r in records if with_expired or not is_expired(r, now)]


async def get_record(k8s: K8s, namespace: str, file_id: str, param: str = "file_id") -> dict[str, Any]:
    """The file's record in the caller's namespace. A missing (or expired) file is 404 on /v1/files/{id} and
    400 when a job creation refers to it (param training_file / validation_file), as OpenAI does."""
    missing = not_found("file", file_id, param=param)
    if param != "file_id":
        missing.status_code, missing.code = 400, "invalid_file"
    if not FILE_ID.match(file_id):
        raise missing
    try:
        record = await k8s.get_configmap(namespace, file_id)
    except ApiException as exc:
        if exc.status == 404:
            raise missing from None
        raise
    if ((record.get("metadata") or {}).get("labels") or {}).get(names.LABEL_FILE) != "true" or is_expired(record):
        raise missing
    return record


# --- quotas -----------------------------------------------------------------------------------------------


def _over(what: str, limit: int, used: int, namespace: str) -> APIError:
    return APIError(
        429,
        f"Quota exceeded: namespace {namespace} may hold {limit} {what} and has {used}. Delete files or wait "
        "for jobs to finish, or ask the operator of this service for a larger quota.",
        code="quota_exceeded",
        type="quota_exceeded",
        headers={"x-should-retry": "false"},
    )


def check_file_quota(settings: Settings, namespace: str, records: list[dict[str, Any]], adding: int) -> None:
    """429 when one more file of ``adding`` bytes would put the namespace over its file or byte quota."""
    quota = settings.quota_for(namespace)
    if len(records) + 1 > quota.files:
        raise _over("files", quota.files, len(records), namespace)
    used = sum(_int(_ann(r), names.ANN_BYTES) or 0 for r in records)
    if used + adding > quota.bytes:
        raise _over(f"bytes of files (this one: {adding})", quota.bytes, used, namespace)


async def check_active_jobs(k8s: K8s, settings: Settings, namespace: str, name: str) -> None:
    """429 when the namespace already has its quota of unfinished jobs (a retry naming an existing job passes)."""
    jobs = await k8s.list_ftj(namespace)
    if any((j.get("metadata") or {}).get("name") == name for j in jobs):
        return
    active = sum(1 for j in jobs if not mapping.is_terminal(j) and not mapping.is_cancelled(j))
    limit = settings.quota_for(namespace).active_jobs
    if active >= limit:
        raise _over("unfinished fine-tuning jobs", limit, active, namespace)


# --- jobs reading a file -----------------------------------------------------------------------------------


def file_rows(record: dict[str, Any], settings: Settings, *, pairs: bool) -> int:
    """The file's row count from its record, checked for a job: a DPO job needs preference pairs only (the first
    supervised row is named), and the row limits may have changed since the upload. Raises DatasetError."""
    ann = _ann(record)
    rows = _int(ann, names.ANN_ROWS) or 0
    if rows > settings.max_rows:
        raise DatasetError(f"has more than {settings.max_rows} rows")
    if rows < settings.min_rows:
        raise DatasetError(f"has {rows} rows; at least {settings.min_rows} needed")
    counted = _int(ann, names.ANN_PAIRS)
    if pairs and counted is not None and counted < rows:
        raise supervised_row(_int(ann, names.ANN_FIRST_SUPERVISED) or 1)
    return rows


def file_source(record: dict[str, Any]) -> dict[str, Any]:
    """The fields of a ``DatasetSource`` reading the file: its object (with sha256, size and rows, which the
    trainer verifies), or the ConfigMap itself for a file stored inline by an earlier version."""
    ann = _ann(record)
    uri = ann.get(names.ANN_OBJECT)
    if not uri:
        name = (record.get("metadata") or {}).get("name", "")
        return {"config_map": {"name": name, "key": names.FILE_DATA_KEY}, "format": "jsonl", "compression": "gzip"}
    return {
        "object": {
            "uri": uri,
            "sha256": ann.get(names.ANN_SHA256),
            "size_bytes": _int(ann, names.ANN_BYTES),
            "rows": _int(ann, names.ANN_ROWS),
        },
        "format": ann.get(names.ANN_FORMAT) or "jsonl",
        "compression": "auto",
    }


def training_dataset(settings: Settings, record: dict[str, Any]) -> DatasetSpec:
    extra = {} if settings.validation_fraction is None else {"validation_fraction": settings.validation_fraction}
    return DatasetSpec.model_validate({**file_source(record), **extra})


def validation_dataset(record: dict[str, Any]) -> DatasetSource:
    return DatasetSource.model_validate(file_source(record))


# --- deletion and expiry -------------------------------------------------------------------------------------


async def jobs_using(k8s: K8s, namespace: str, file_id: str) -> list[str]:
    """Unfinished jobs training or validating on the file."""
    users = [job for label in ACTIVE_FILE_LABELS for job in await k8s.list_ftj(namespace, f"{label}={file_id}")]
    return sorted({j["metadata"]["name"] for j in users if not mapping.is_terminal(j) and not mapping.is_cancelled(j)})


async def delete_file(k8s: K8s, store: ArtifactStore, namespace: str, record: dict[str, Any]) -> None:
    """The object first, then the record: a failure in between leaves a record to delete again, never an object
    nobody knows about."""
    uri = _ann(record).get(names.ANN_OBJECT)
    if uri:
        bucket, _, name = uri.removeprefix("gs://").partition("/")
        await store.delete(bucket, name)
    try:
        await k8s.delete_configmap(namespace, (record.get("metadata") or {}).get("name", ""))
    except ApiException as exc:
        if exc.status != 404:
            raise


class Sweeper:
    """Deletes expired files, in every namespace an API key uses, every ``expiry_sweep_seconds``."""

    def __init__(self, k8s: K8s, keys: KeyStore, store: ArtifactStore, settings: Settings) -> None:
        self.k8s, self.keys, self.store, self.settings = k8s, keys, store, settings

    async def run(self) -> None:
        while True:
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the apiserver, the bucket or the key table may be briefly unavailable
                log.warning("expiry sweep failed: %s", type(exc).__name__)
            await asyncio.sleep(self.settings.expiry_sweep_seconds)

    async def sweep(self) -> int:
        """One round; returns how many files were deleted."""
        deleted = 0
        for namespace in sorted({entry.namespace for entry in await self.keys.entries()}):
            now = time.time()
            for record in await list_records(self.k8s, namespace, with_expired=True):
                if not is_expired(record, now):
                    continue
                file_id = record["metadata"]["name"]
                users = await jobs_using(self.k8s, namespace, file_id)
                if users:
                    log.info("file %s/%s expired; kept while %s use it", namespace, file_id, ", ".join(users))
                    continue
                await delete_file(self.k8s, self.store, namespace, record)
                log.info("file %s/%s expired and was deleted", namespace, file_id)
                deleted += 1
        return deleted
