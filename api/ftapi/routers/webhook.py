"""``POST /trigger-finetune``: the original microservice's webhook, answered at once with 202.

Schema errors answer 422 here (the seed's FastAPI did), everything else as on the OpenAI routes. An optional
``callbackUrl`` is notified when the job ends, signed like the key's own webhook (ftapi.notify).
"""

from __future__ import annotations

import base64
import hashlib
import time
from typing import Any

from fastapi import APIRouter, Response
from ftcrd import names
from ftcrd.dataset import DatasetError, load_rows, rows_to_novalto
from ftcrd.types import DatasetSpec

from ftapi import filerecords, hyper, lora, webhooks
from ftapi.auth import Tenant as TenantInfo
from ftapi.deps import Config, Kube, State, Tenant
from ftapi.errors import APIError
from ftapi.k8s import K8s
from ftapi.responses import error_responses
from ftapi.routers.common import IdempotencyKey, create_idempotent
from ftapi.schemas import SeedAccepted, SeedTrigger
from ftapi.settings import Settings
from ftapi.specbuild import (
    build_job,
    dataset_from_configmap,
    new_file_id,
    new_job_name,
    request_digest,
    resolve_model,
    webhook_method,
)
from ftapi.storage import ArtifactStore

router = APIRouter(tags=["webhook"])
WEBHOOK_FILENAME = "webhook-dataset.json.gz"


def _callback(body: SeedTrigger, tenant: TenantInfo, settings: Settings) -> str | None:
    url = body.callbackUrl
    if url is None:
        return None
    problem = webhooks.url_problem(url, allow_http=settings.webhook_allow_http)
    if problem is None and (tenant.webhook is None or tenant.webhook.secret is None):
        problem = (
            "needs a webhook signing secret on this API key (keys.yaml: webhook.secretKey); ask the operator "
            "of this service to configure one"
        )
    if problem:
        raise APIError(422, f"callbackUrl {problem}", code="invalid_value", param="callbackUrl")
    return url


@router.post(
    "/trigger-finetune",
    status_code=202,
    response_model=SeedAccepted,
    summary="Start a DPO fine-tune from the seed payload (never blocks on training)",
    responses={
        202: {
            "description": "Accepted; poll statusUrl (also in Location)",
            "headers": {"Location": {"description": "statusUrl", "schema": {"type": "string"}}},
        },
        **error_responses(400, 401, 403, 409, 413, 422, 429, 503),
    },
)
async def trigger_finetune(
    *,
    body: SeedTrigger,
    response: Response,
    tenant: Tenant,
    k8s: Kube,
    settings: Config,
    state: State,
    idempotency: IdempotencyKey = None,
) -> SeedAccepted:
    if not tenant.may_use(body.communityId):
        # the community is a folder under the tenant's prefix: a key names only its own (keys.yaml: communities)
        raise APIError(
            403,
            f"This API key may not write for communityId '{body.communityId}'; it may use: "
            + ", ".join(tenant.communities if tenant.communities is not None else (tenant.namespace,)),
            code="community_not_allowed",
            param="communityId",
        )
    rows = [{"prompt": r.prompt, "chosen": r.chosen, "rejected": r.rejected} for r in body.dataset]
    data = rows_to_novalto(rows)
    try:  # the trainer's own loader, on the exact bytes the trainer will read
        load_rows(
            data,
            "novalto",
            "gzip",
            max_rows=settings.max_rows,
            max_field_chars=settings.max_field_chars,
            min_rows=settings.min_rows,
        )
    except DatasetError as exc:
        param = "dataset"
        if exc.row is not None:
            param = f"dataset[{exc.row - 1}]" + (f".{exc.field}" if exc.field else "")
        raise APIError(422, f"{param}: {exc.detail}", code="invalid_dataset", param=param) from None
    callback = _callback(body, tenant, settings)
    adapter = lora.for_webhook(body, settings)
    try:  # the batch is fitted to the rows (the seed caller does not choose it)
        sized = hyper.training_data(settings, len(rows), separate_validation=False, param="dataset")
        hyperparameters = hyper.resolve(None, settings=settings, data=sized, param_prefix="", openai_auto=False)
    except APIError as exc:
        exc.status_code = 422
        raise

    model = resolve_model(settings, settings.webhook_model)
    name = new_job_name(tenant.namespace, idempotency)
    digest = request_digest(
        "seed",
        {
            "communityId": body.communityId,
            "sha256": hashlib.sha256(data).hexdigest(),
            "callbackUrl": callback,
            "adapter": adapter.wire() if adapter else None,
        },
    )
    labels = {names.LABEL_CREATED_BY: "api-webhook"}
    annotations = {names.ANN_OPENAI_MODEL: settings.webhook_model}
    if idempotency:
        annotations[names.ANN_IDEMPOTENCY] = digest
    if callback or (tenant.webhook is not None and tenant.webhook.url):
        annotations[names.ANN_NOTIFY] = tenant.name
        labels[names.LABEL_NOTIFY] = "pending"
    if callback:
        annotations[names.ANN_CALLBACK_URL] = callback

    def job(dataset: DatasetSpec) -> dict[str, Any]:
        return build_job(
            settings,
            name=name,
            namespace=tenant.namespace,
            model=model,
            dataset=dataset,
            method=webhook_method(settings).model_copy(update={"adapter": adapter}),
            hyperparameters=hyperparameters,
            community_id=body.communityId,
            labels=labels,
            annotations=annotations,
        )

    await filerecords.check_active_jobs(k8s, settings, tenant.namespace, name)
    if len(data) <= settings.configmap_budget_bytes:
        configmap_name = f"{name}-dataset"
        configmap = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": configmap_name,
                "labels": {names.LABEL_JOB: name, names.LABEL_COMMUNITY: body.communityId},
            },
            "binaryData": {names.DATASET_KEY: base64.b64encode(data).decode()},
        }
        created_job, created = await create_idempotent(
            k8s,
            tenant.namespace,
            job(dataset_from_configmap(settings, configmap_name, names.DATASET_KEY, "novalto")),
            configmap,
            idempotent=idempotency is not None,
            digest=digest,
        )
    else:  # too large for a ConfigMap: into the bucket, like an uploaded file
        record = await _store_dataset(k8s, state.store, settings, tenant.namespace, data=data, rows=len(rows))
        file_id = record["metadata"]["name"]
        labels[names.LABEL_TRAINING_FILE] = file_id
        annotations[names.ANN_TRAINING_FILE] = file_id
        try:
            created_job, created = await create_idempotent(
                k8s,
                tenant.namespace,
                job(filerecords.training_dataset(settings, record)),
                None,
                idempotent=idempotency is not None,
                digest=digest,
            )
        except BaseException:
            await filerecords.delete_file(k8s, state.store, tenant.namespace, record)
            raise
        if not created:  # a retry: the job that exists reads its own copy
            await filerecords.delete_file(k8s, state.store, tenant.namespace, record)
    if created:
        state.metrics.jobs_created.labels("webhook").inc()
    job_name = created_job["metadata"]["name"]
    base = settings.public_url.rstrip("/")
    status_url = f"{base}/v1/finetunejobs/{job_name}"
    response.headers["Location"] = status_url
    return SeedAccepted(
        jobName=job_name,
        namespace=tenant.namespace,
        communityId=body.communityId,
        rows=len(rows),
        statusUrl=status_url,
        openaiUrl=f"{base}/v1/fine_tuning/jobs/{job_name}",
    )


async def _store_dataset(
    k8s: K8s, store: ArtifactStore, settings: Settings, namespace: str, *, data: bytes, rows: int
) -> dict[str, Any]:
    """A dataset too large for a ConfigMap, stored like an uploaded file (object + record; quotas and expiry
    apply); returns the record."""
    records = await filerecords.list_records(k8s, namespace)
    filerecords.check_file_quota(settings, namespace, records, len(data))
    file_id = new_file_id()
    bucket, name = filerecords.object_location(settings, namespace, file_id)
    await store.write(bucket, name, data, "application/gzip")
    now = int(time.time())
    record = filerecords.new_record(
        file_id,
        filename=WEBHOOK_FILENAME,
        purpose="fine-tune",
        created_by="api-webhook",
        created_at=now,
        expires=filerecords.expiry(settings, {}, now),
        uri=f"gs://{bucket}/{name}",
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        rows=rows,
        pairs=rows,
        first_supervised=None,
        fmt="novalto",
    )
    try:
        return await k8s.create_configmap(namespace, record)
    except BaseException:
        await store.delete(bucket, name)
        raise
