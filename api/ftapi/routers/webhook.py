"""``POST /trigger-finetune``: the original microservice's webhook, answered at once with 202.

Schema errors answer 422 here (the seed's FastAPI did), everything else as on the OpenAI routes. An optional
``callbackUrl`` is notified when the job ends, signed like the key's own webhook (ftapi.notify).
"""

from __future__ import annotations

import base64
import hashlib

from fastapi import APIRouter, Response
from ftcrd import names
from ftcrd.dataset import DatasetError, load_rows, rows_to_novalto

from ftapi import hyper, lora, webhooks
from ftapi.auth import Tenant as TenantInfo
from ftapi.deps import Config, Kube, State, Tenant
from ftapi.errors import APIError
from ftapi.responses import error_responses
from ftapi.routers.common import IdempotencyKey, create_idempotent
from ftapi.schemas import SeedAccepted, SeedTrigger
from ftapi.settings import Settings
from ftapi.specbuild import (
    build_job,
    dataset_from_configmap,
    new_job_name,
    request_digest,
    resolve_model,
    too_large,
    webhook_method,
)

router = APIRouter(tags=["webhook"])


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
        **error_responses(400, 401, 409, 413, 422, 503),
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
    if len(data) > settings.configmap_budget_bytes:
        raise too_large(len(data), settings)
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
    configmap_name = f"{name}-dataset"
    ftj = build_job(
        settings,
        name=name,
        namespace=tenant.namespace,
        model=model,
        dataset=dataset_from_configmap(settings, configmap_name, names.DATASET_KEY, "novalto"),
        method=webhook_method(settings).model_copy(update={"adapter": adapter}),
        hyperparameters=hyperparameters,
        community_id=body.communityId,
        labels=labels,
        annotations=annotations,
    )
    configmap = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": configmap_name,
            "labels": {names.LABEL_JOB: name, names.LABEL_COMMUNITY: body.communityId},
        },
        "binaryData": {names.DATASET_KEY: base64.b64encode(data).decode()},
    }
    job, created = await create_idempotent(
        k8s, tenant.namespace, ftj, configmap, idempotent=idempotency is not None, digest=digest
    )
    if created:
        state.metrics.jobs_created.labels("webhook").inc()
    job_name = job["metadata"]["name"]
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
