"""``/v1/files``: training JSONL uploads, stored gzip-compressed in ConfigMaps ``file-<id>``, and the
results files of succeeded jobs (``file-results-<job>``, see :mod:`ftapi.results`)."""

from __future__ import annotations

import base64
import gzip
import re
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, Response, UploadFile
from ftcrd import names
from ftcrd.dataset import GZIP_MAGIC, ROW_SHAPES, DatasetError
from kubernetes_asyncio.client.exceptions import ApiException

from ftapi import mapping, results
from ftapi.deps import Config, Kube, State, Store, Tenant
from ftapi.errors import APIError, not_found
from ftapi.k8s import K8s
from ftapi.responses import FileDeleted, FileList, FileObject, error_responses
from ftapi.routers.common import Limit, clamp
from ftapi.specbuild import FILE_PREFIX, check_rows, new_file_id, too_large

router = APIRouter(prefix="/v1/files", tags=["files"])
UPLOAD_MEDIA_TYPES = "application/jsonl, application/gzip"
"""What the multipart ``file`` part holds: JSONL, optionally gzip-compressed (stated in the OpenAPI document)."""

FILE_SELECTOR = f"{names.LABEL_FILE}=true"
_FILE_ID = re.compile(r"^file-[0-9a-f]{24}$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._ ()+-]")


async def get_file(k8s: K8s, namespace: str, file_id: str, param: str = "file_id") -> dict[str, Any]:
    """The file's ConfigMap in the caller's namespace. A missing file is 404 on /v1/files/{id} and 400
    when a job creation refers to it (param training_file / validation_file), as OpenAI does."""
    missing = not_found("file", file_id, param=param)
    if param != "file_id":
        missing.status_code, missing.code = 400, "invalid_file"
    if not _FILE_ID.match(file_id):
        raise missing
    try:
        cm = await k8s.get_configmap(namespace, file_id)
    except ApiException as exc:
        if exc.status == 404:
            raise missing from None
        raise
    if ((cm.get("metadata") or {}).get("labels") or {}).get(names.LABEL_FILE) != "true":
        raise missing
    return cm


def dataset_error(exc: DatasetError, param: str = "file") -> APIError:
    """A file the parser refused, as OpenAI words it; ``param`` names the field that carried the file."""
    where = f"line {exc.row}: " if exc.row is not None else ""
    field = f"field '{exc.field}': " if exc.field else ""
    return APIError(
        400,
        f"Invalid file format: {where}{field}{exc.detail}. {ROW_SHAPES}",
        code="invalid_file_format",
        param=param,
    )


@router.post(
    "",
    summary="Upload a training JSONL file (purpose=fine-tune)",
    response_model=FileObject,
    responses=error_responses(400, 401, 413, 503),
    openapi_extra={
        "requestBody": {"content": {"multipart/form-data": {"encoding": {"file": {"contentType": UPLOAD_MEDIA_TYPES}}}}}
    },
)
async def create_file(
    *,
    tenant: Tenant,
    k8s: Kube,
    settings: Config,
    state: State,
    file: Annotated[UploadFile, File(description="JSONL, one row per line (optionally gzip); see docs/api.md")],
    purpose: Annotated[Literal["fine-tune"], Form(description="Must be 'fine-tune'")],
) -> dict[str, Any]:
    data = await file.read()
    try:
        rows = check_rows(settings, data, "jsonl")
    except DatasetError as exc:
        raise dataset_error(exc) from None
    stored = data if data[:2] == GZIP_MAGIC else gzip.compress(data, mtime=0)
    if len(stored) > settings.configmap_budget_bytes:
        raise too_large(len(stored), settings)
    file_id = new_file_id()
    filename = _UNSAFE.sub("_", (file.filename or "upload.jsonl").rsplit("/", 1)[-1])[:200] or "upload.jsonl"
    now = int(time.time())
    body = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": file_id,
            "labels": {names.LABEL_FILE: "true", names.LABEL_CREATED_BY: "api"},
            "annotations": {
                names.ANN_FILENAME: filename,
                names.ANN_PURPOSE: purpose,
                names.ANN_CREATED_AT: str(now),
                names.ANN_BYTES: str(len(data)),
                names.ANN_ROWS: str(rows),
            },
        },
        "binaryData": {names.FILE_DATA_KEY: base64.b64encode(stored).decode()},
    }
    cm = await k8s.create_configmap(tenant.namespace, body)
    state.metrics.files_created.inc()
    return mapping.file_object(cm)


@router.get("", summary="List files", response_model=FileList, responses=error_responses(400, 401, 503))
async def list_files(
    *,
    tenant: Tenant,
    k8s: Kube,
    after: str | None = None,
    limit: Limit = 10000,
    order: Literal["asc", "desc"] = "desc",
    purpose: str | None = None,
) -> dict[str, Any]:
    """Uploaded files (results files are reached through their job's ``result_files``)."""
    items = [mapping.file_object(cm) for cm in await k8s.list_configmaps(tenant.namespace, FILE_SELECTOR)]
    if purpose:
        items = [f for f in items if f["purpose"] == purpose]
    items.sort(key=lambda f: (f["created_at"], f["id"]), reverse=order == "desc")
    return mapping.paginate(items, after, clamp(limit, 10000), key=lambda f: str(f["id"]))


@router.get(
    "/{file_id}",
    summary="Retrieve a file's metadata",
    response_model=FileObject,
    responses=error_responses(401, 404, 503),
)
async def retrieve_file(file_id: str, tenant: Tenant, k8s: Kube, settings: Config, store: Store) -> dict[str, Any]:
    if results.is_results_id(file_id):
        return (await results.load(k8s, store, settings, tenant.namespace, file_id))[0]
    return mapping.file_object(await get_file(k8s, tenant.namespace, file_id))


@router.get(
    "/{file_id}/content",
    summary="Download a file's content (JSONL; a results file is CSV)",
    response_class=Response,
    responses={
        200: {
            "description": "The file's bytes",
            "content": {
                "application/jsonl": {"schema": {"type": "string"}},
                "text/csv": {"schema": {"type": "string"}},
            },
        },
        **error_responses(401, 404, 503),
    },
)
async def file_content(file_id: str, tenant: Tenant, k8s: Kube, settings: Config, store: Store) -> Response:
    if results.is_results_id(file_id):
        _, csv = await results.load(k8s, store, settings, tenant.namespace, file_id)
        return Response(csv, media_type="text/csv")
    cm = await get_file(k8s, tenant.namespace, file_id)
    raw = base64.b64decode((cm.get("binaryData") or {}).get(names.FILE_DATA_KEY, ""))
    data = gzip.decompress(raw) if raw[:2] == GZIP_MAGIC else raw
    return Response(data, media_type="application/jsonl")


@router.delete(
    "/{file_id}",
    summary="Delete a file (409 while an unfinished job uses it)",
    response_model=FileDeleted,
    responses=error_responses(400, 401, 404, 409, 503),
)
async def delete_file(file_id: str, tenant: Tenant, k8s: Kube) -> dict[str, Any]:
    if results.is_results_id(file_id):
        raise APIError(400, "A results file goes with its fine-tuning job; delete the job instead", param="file_id")
    await get_file(k8s, tenant.namespace, file_id)
    users = [
        job
        for label in (names.LABEL_TRAINING_FILE, names.LABEL_VALIDATION_FILE)
        for job in await k8s.list_ftj(tenant.namespace, f"{label}={file_id}")
    ]
    active = sorted(
        {j["metadata"]["name"] for j in users if not mapping.is_terminal(j) and not mapping.is_cancelled(j)}
    )
    if active:
        raise APIError(
            409,
            f"File {file_id} is used by unfinished fine-tuning jobs: {', '.join(active)}; cancel them first",
            code="file_in_use",
            param="file_id",
        )
    try:
        await k8s.delete_configmap(tenant.namespace, file_id)
    except ApiException as exc:
        if exc.status != 404:
            raise
        raise not_found("file", file_id, param="file_id") from None
    return {"id": file_id, "object": "file", "deleted": True}


__all__ = ["FILE_PREFIX", "get_file", "router"]
