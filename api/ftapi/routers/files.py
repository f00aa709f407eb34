"""``/v1/files``: training JSONL uploads streamed into the bucket (:mod:`ftapi.uploads`) with a metadata-only
record per file (:mod:`ftapi.filerecords`), and the results files of succeeded jobs (``file-results-<job>``, see
:mod:`ftapi.results`)."""

from __future__ import annotations

import base64
import re
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse
from ftcrd import names
from ftcrd.dataset import GZIP_MAGIC, ROW_SHAPES, DatasetError, DatasetTooLarge
from ftcrd.jsonstream import Gunzip

from ftapi import filerecords, mapping, results
from ftapi.deps import Config, Kube, State, Store, Tenant
from ftapi.errors import APIError, too_large
from ftapi.filerecords import get_record
from ftapi.responses import FileDeleted, FileList, FileObject, error_responses
from ftapi.routers.common import Limit, clamp
from ftapi.settings import Settings
from ftapi.specbuild import FILE_PREFIX, new_file_id
from ftapi.storage import ArtifactStore
from ftapi.uploads import PIECE, Form, UploadRefused, file_too_large, receive

router = APIRouter(prefix="/v1/files", tags=["files"])
UPLOAD_MEDIA_TYPES = "application/jsonl, application/gzip"
"""What the multipart ``file`` part holds: JSONL, optionally gzip-compressed (stated in the OpenAPI document)."""
PURPOSE = "fine-tune"
_UNSAFE = re.compile(r"[^A-Za-z0-9._ ()+-]")


def dataset_error(exc: DatasetError, param: str = "file") -> APIError:
    """A file the parser refused, as OpenAI words it; ``param`` names the field that carried the file."""
    if isinstance(exc, DatasetTooLarge):
        where = f"line {exc.row}: " if exc.row is not None else ""
        return too_large(f"The file is too large: {where}{exc.detail}", code="file_too_large", param=param)
    where = f"line {exc.row}: " if exc.row is not None else ""
    field = f"field '{exc.field}': " if exc.field else ""
    return APIError(
        400,
        f"Invalid file format: {where}{field}{exc.detail}. {ROW_SHAPES}",
        code="invalid_file_format",
        param=param,
    )


def _upload_schema(settings: Settings) -> dict[str, Any]:
    return {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "purpose"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "JSONL, one row per line (optionally gzip); see docs/api.md. At most "
                            f"{settings.max_file_bytes} bytes, as uploaded and decompressed.",
                        },
                        "purpose": {"type": "string", "enum": [PURPOSE], "description": "Must be 'fine-tune'"},
                        "expires_after[anchor]": {
                            "type": "string",
                            "enum": ["created_at"],
                            "description": "The only anchor (the default when expires_after[seconds] is sent alone).",
                        },
                        "expires_after[seconds]": {
                            "type": "integer",
                            "minimum": settings.file_expiry_min_seconds,
                            "maximum": settings.file_expiry_max_seconds,
                            "description": "The file expires this long after its creation (default: "
                            f"{settings.file_expiry_seconds} seconds).",
                        },
                    },
                },
                "encoding": {"file": {"contentType": UPLOAD_MEDIA_TYPES}},
            }
        },
    }


def upload_route(settings: Settings) -> dict[str, Any]:
    """The upload route's declaration (its request body is read by hand, so the document states it)."""
    return {
        "summary": "Upload a training JSONL file (purpose=fine-tune), streamed and validated row by row",
        "response_model": FileObject,
        "responses": error_responses(400, 401, 413, 429, 503),
        "openapi_extra": {"requestBody": _upload_schema(settings)},
    }


async def create_file(request: Request, tenant: Tenant, k8s: Kube, settings: Config, state: State) -> dict[str, Any]:
    """The body is read here, as it arrives (FastAPI's form parsing would spool the whole file first)."""
    if state.uploads.locked():
        raise APIError(
            429,
            f"{settings.max_concurrent_uploads} uploads are in progress on this server; retry shortly",
            code="too_many_uploads",
            headers={"Retry-After": "2"},
        )
    namespace = tenant.namespace
    async with state.uploads:
        records = await filerecords.list_records(k8s, namespace)
        declared = int(request.headers.get("content-length") or 0)
        filerecords.check_file_quota(settings, namespace, records, min(declared, settings.max_file_bytes))
        file_id = new_file_id()
        bucket, name = filerecords.object_location(settings, namespace, file_id)
        created = int(time.time())
        expires: list[int | None] = [None]

        def check_form(form: Form) -> None:
            purpose = form.fields.get("purpose")
            if purpose is None and form.complete:
                raise APIError(400, "purpose: Field required", code="invalid_value", param="purpose")
            if purpose is not None and purpose != PURPOSE:
                raise APIError(
                    400,
                    f"purpose: Input should be 'fine-tune' (got {purpose[:40]!r})",
                    code="invalid_value",
                    param="purpose",
                )
            expires[0] = filerecords.expiry(settings, form.fields, created)

        try:
            got = await receive(
                request.stream(),
                request.headers.get("content-type", ""),
                settings=settings,
                store=state.store,
                bucket=bucket,
                name=name,
                check_form=check_form,
                check_size=lambda size: filerecords.check_file_quota(settings, namespace, records, size),
            )
        except UploadRefused as refused:
            if isinstance(refused.error, DatasetError):
                raise dataset_error(refused.error) from None
            raise refused.error from None
    filename = _UNSAFE.sub("_", (got.form.filename or "upload.jsonl").rsplit("/", 1)[-1])[:200] or "upload.jsonl"
    record = filerecords.new_record(
        file_id,
        filename=filename,
        purpose=PURPOSE,
        created_by="api",
        created_at=created,
        expires=expires[0],
        uri=got.uri,
        sha256=got.sha256,
        size=got.size,
        rows=got.counts.rows,
        pairs=got.counts.pairs,
        first_supervised=got.counts.first_conversation,
        fmt="jsonl",
    )
    try:
        cm = await k8s.create_configmap(namespace, record)
    except BaseException:
        await state.store.delete(bucket, name)  # no record, no object
        raise
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
    """Uploaded files, never expired ones (results files are reached through their job's ``result_files``)."""
    items = [mapping.file_object(r) for r in await filerecords.list_records(k8s, tenant.namespace)]
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
    return mapping.file_object(await get_record(k8s, tenant.namespace, file_id))


async def _object_content(store: ArtifactStore, uri: str, limit: int) -> AsyncIterator[bytes]:
    """The object's bytes as JSONL, gzip decompressed as it streams; the first piece is read before the answer
    starts, so a storage failure is still a 503."""
    bucket, _, name = uri.removeprefix("gs://").partition("/")
    reader = await store.call(f"opening {uri}", lambda: store.reader(bucket, name, PIECE))
    first = await store.call(f"reading {uri}", lambda: reader.read(PIECE))

    async def pieces() -> AsyncIterator[bytes]:
        gunzip = Gunzip(limit) if first[: len(GZIP_MAGIC)] == GZIP_MAGIC else None
        data = first
        try:
            while data:
                if gunzip is None:
                    yield data
                else:
                    for piece in gunzip.feed(data):
                        yield piece
                data = await store.call(f"reading {uri}", lambda: reader.read(PIECE))
            for piece in gunzip.close() if gunzip is not None else ():
                yield piece
        finally:
            reader.close()

    return pieces()


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
    record = await get_record(k8s, tenant.namespace, file_id)
    uri = ((record.get("metadata") or {}).get("annotations") or {}).get(names.ANN_OBJECT)
    if uri:
        return StreamingResponse(
            await _object_content(store, uri, settings.max_file_bytes), media_type="application/jsonl"
        )
    # A record with the bytes inline (written by an earlier version): small by construction.
    raw = base64.b64decode((record.get("binaryData") or {}).get(names.FILE_DATA_KEY, ""))
    gunzip = Gunzip(settings.max_file_bytes) if raw[: len(GZIP_MAGIC)] == GZIP_MAGIC else None
    data = b"".join([*gunzip.feed(raw), *gunzip.close()]) if gunzip else raw
    return Response(data, media_type="application/jsonl")


@router.delete(
    "/{file_id}",
    summary="Delete a file (409 while an unfinished job uses it)",
    response_model=FileDeleted,
    responses=error_responses(400, 401, 404, 409, 503),
)
async def delete_file(file_id: str, tenant: Tenant, k8s: Kube, store: Store) -> dict[str, Any]:
    if results.is_results_id(file_id):
        raise APIError(400, "A results file goes with its fine-tuning job; delete the job instead", param="file_id")
    record = await get_record(k8s, tenant.namespace, file_id)
    active = await filerecords.jobs_using(k8s, tenant.namespace, file_id)
    if active:
        raise APIError(
            409,
            f"File {file_id} is used by unfinished fine-tuning jobs: {', '.join(active)}; cancel them first",
            code="file_in_use",
            param="file_id",
        )
    await filerecords.delete_file(k8s, store, tenant.namespace, record)
    return {"id": file_id, "object": "file", "deleted": True}


def upload_router(settings: Settings) -> APIRouter:
    """``POST /v1/files``, declared for these settings (its document states their limits)."""
    upload = APIRouter(prefix="/v1/files", tags=["files"])
    upload.add_api_route("", create_file, methods=["POST"], **upload_route(settings))
    return upload


__all__ = ["FILE_PREFIX", "dataset_error", "file_too_large", "get_record", "router", "upload_router"]
