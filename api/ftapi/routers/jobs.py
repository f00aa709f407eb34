"""``/v1/fine_tuning/jobs``: OpenAI's fine-tuning API over FineTuneJobs."""

from __future__ import annotations

import base64
import json
import secrets
from typing import Any

from fastapi import APIRouter, Request
from ftcrd import names
from ftcrd.dataset import DatasetError, load_rows
from ftcrd.types import ConfigMapSource, DatasetSource, MethodSpec, ModelSpec, TrackingSpec, WandbSpec
from kubernetes_asyncio.client.exceptions import ApiException

from ftapi import hyper, lora, mapping
from ftapi.auth import Tenant as TenantInfo
from ftapi.deps import Config, Kube, State, Tenant
from ftapi.errors import APIError, not_found
from ftapi.k8s import K8s
from ftapi.responses import CheckpointList, EventList, FineTuningJob, JobList, error_responses
from ftapi.routers.common import IdempotencyKey, Limit, clamp, create_idempotent, get_job, update_job
from ftapi.routers.files import dataset_error, get_file
from ftapi.schemas import JobCreate
from ftapi.settings import CatalogModel, Settings
from ftapi.specbuild import (
    base_learning_rate,
    build_job,
    dataset_from_configmap,
    new_job_name,
    request_digest,
    resolve_model,
)

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["fine-tuning"])

PREFERENCE_METHODS = frozenset({"dpo"})


def _check_job_id(job_id: str) -> None:
    if not mapping.valid_job_name(job_id):
        raise not_found("fine-tuning job", job_id, param="fine_tuning_job_id")


async def _rows(k8s: K8s, settings: Settings, namespace: str, file_id: str, *, param: str, pairs: bool) -> int:
    """The file's row count, parsed again with the trainer's parser: a DPO job needs preference pairs, which a
    supervised (messages) file does not have, and limits may have changed since the upload."""
    cm = await get_file(k8s, namespace, file_id, param=param)
    data = base64.b64decode((cm.get("binaryData") or {}).get(names.FILE_DATA_KEY, ""))
    try:
        rows = load_rows(
            data,
            "jsonl",
            max_rows=settings.max_rows,
            max_field_chars=settings.max_field_chars,
            min_rows=settings.min_rows,
            require_pairs=pairs,
        )
    except DatasetError as exc:
        raise dataset_error(exc, param) from None
    return len(rows)


def _tracking(body: JobCreate, settings: Settings, job: str) -> TrackingSpec | None:
    if not body.integrations:
        return None
    wandb = body.integrations[0].wandb
    key = settings.wandb_api_key_secret
    secret = None
    if key:
        name, _, item = key.partition("/")
        secret = {"name": name, "key": item or "api-key"}
    return TrackingSpec(
        wandb=WandbSpec.model_validate(
            {
                "project": wandb.project,
                "name": wandb.name or job,
                "entity": wandb.entity,
                "tags": wandb.tags,
                "api_key_secret": secret,
            }
        )
    )


def _annotations(body: JobCreate, tenant: TenantInfo, base_lr: float, digest: str | None) -> dict[str, str]:
    out = {
        names.ANN_OPENAI_MODEL: body.model,
        names.ANN_TRAINING_FILE: body.training_file,
        names.ANN_BASE_LR: repr(base_lr),
    }
    if body.validation_file:
        out[names.ANN_VALIDATION_FILE] = body.validation_file
    if body.suffix is not None:
        out[names.ANN_SUFFIX] = body.suffix
    if body.metadata is not None:
        out[names.ANN_METADATA] = json.dumps(body.metadata, sort_keys=True)
    if digest:
        out[names.ANN_IDEMPOTENCY] = digest
    if tenant.webhook is not None and tenant.webhook.url:
        out[names.ANN_NOTIFY] = tenant.name
    return out


async def _model(
    settings: Settings, k8s: K8s, namespace: str, model: str
) -> tuple[CatalogModel, dict[str, Any] | None]:
    """(the base model, spec.model.from) of an OpenAI ``model``: a catalog name, or a previous job of the caller's
    namespace to start from, named by its ``fine_tuned_model`` (its artifact's gs:// URI) or by its id. The
    operator resolves the job to its verified artifact (and waits while that job still runs)."""
    if model in settings.models:
        return settings.models[model], None
    source: dict[str, Any] | None = None
    if model.startswith("gs://"):
        found = [j for j in await k8s.list_ftj(namespace) if mapping.fine_tuned_model(j) == model]
        source = found[0] if found else None
    elif mapping.valid_job_name(model):
        try:
            source = await k8s.get_ftj(namespace, model)
        except ApiException as exc:
            if exc.status != 404:
                raise
    if source is None:
        return resolve_model(settings, model), None  # 400 model_not_found, listing the catalog
    base = ModelSpec.model_validate((source.get("spec") or {}).get("model") or {})
    return CatalogModel(name=base.name, preset=base.preset), {"job": source["metadata"]["name"]}


@router.post(
    "",
    summary="Create a fine-tuning job (supervised by default; Idempotency-Key supported)",
    response_model=FineTuningJob,
    responses=error_responses(400, 401, 409, 503),
)
async def create_job(
    *,
    body: JobCreate,
    tenant: Tenant,
    k8s: Kube,
    settings: Config,
    state: State,
    idempotency: IdempotencyKey = None,
) -> dict[str, Any]:
    model, model_from = await _model(settings, k8s, tenant.namespace, body.model)
    method_type = body.method_type()
    pairs = method_type in PREFERENCE_METHODS
    rows = await _rows(k8s, settings, tenant.namespace, body.training_file, param="training_file", pairs=pairs)
    if body.validation_file:
        await _rows(k8s, settings, tenant.namespace, body.validation_file, param="validation_file", pairs=pairs)
    requested, param_prefix = body.chosen_hyperparameters()
    data = hyper.training_data(
        settings, rows, separate_validation=body.validation_file is not None, param="training_file"
    )
    hyperparameters = hyper.resolve(requested, settings=settings, data=data, param_prefix=param_prefix)
    hyperparameters["seed"] = body.seed if body.seed is not None else secrets.randbelow(2**31)
    beta = hyper.beta(requested)
    adapter = lora.from_training_type(body.training_type, settings)

    name = new_job_name(tenant.namespace, idempotency)
    digest = request_digest("openai", body.model_dump(mode="json", exclude={"seed"} if body.seed is None else None))
    base_lr = base_learning_rate(settings)
    dataset = dataset_from_configmap(settings, body.training_file, names.FILE_DATA_KEY, "jsonl")
    labels = {names.LABEL_CREATED_BY: "api", names.LABEL_TRAINING_FILE: body.training_file}
    annotations = _annotations(body, tenant, base_lr, digest if idempotency else None)
    if names.ANN_NOTIFY in annotations:
        labels[names.LABEL_NOTIFY] = "pending"
    if body.validation_file:
        labels[names.LABEL_VALIDATION_FILE] = body.validation_file
        dataset = dataset.model_copy(
            update={
                "validation_fraction": 0.0,
                "validation": DatasetSource.model_validate(
                    {
                        "config_map": ConfigMapSource(name=body.validation_file, key=names.FILE_DATA_KEY),
                        "format": "jsonl",
                        "compression": "gzip",
                    }
                ),
            }
        )
    ftj = build_job(
        settings,
        name=name,
        namespace=tenant.namespace,
        model=model,
        dataset=dataset,
        method=MethodSpec.model_validate(
            {
                "type": "sft" if method_type == "supervised" else "dpo",
                **({"beta": beta} if beta else {}),
                "adapter": adapter,
            }
        ),
        hyperparameters=hyperparameters,
        community_id=tenant.namespace,
        labels=labels,
        annotations=annotations,
        tracking=_tracking(body, settings, name),
        model_from=model_from,
    )
    job, created = await create_idempotent(
        k8s, tenant.namespace, ftj, None, idempotent=idempotency is not None, digest=digest
    )
    if created:
        state.metrics.jobs_created.labels("openai").inc()
    return mapping.to_openai_job(job)


def _metadata_filter(request: Request) -> dict[str, str] | None:
    """``metadata[k]=v`` terms; ``metadata=null`` (an empty dict here) asks for jobs without metadata."""
    wanted: dict[str, str] = {}
    for name, value in request.query_params.items():
        if name == "metadata":
            if value != "null":
                raise APIError(400, "metadata: use metadata[key]=value, or metadata=null", param="metadata")
            return {}
        if name.startswith("metadata["):
            key = name[len("metadata[") : -1]
            if not name.endswith("]") or "][" in key:  # metadata[a][b]: a nested object, metadata holds strings
                raise APIError(400, f"{name}: use metadata[key]=value (one level)", param="metadata")
            wanted[key] = value
    return wanted or None


@router.get(
    "",
    summary="List fine-tuning jobs (newest first, cursor pagination)",
    description="Filter on metadata as OpenAI does: `metadata[key]=value` (every term must match), or "
    "`metadata=null` for the jobs without metadata. (Not declared as a deepObject parameter: query values are "
    "text, so a document could not tell the strings it promises from numbers rendered as text.)",
    response_model=JobList,
    responses=error_responses(400, 401, 503),
)
async def list_jobs(
    *,
    request: Request,
    tenant: Tenant,
    k8s: Kube,
    settings: Config,
    after: str | None = None,
    limit: Limit = 20,
) -> dict[str, Any]:
    wanted = _metadata_filter(request)
    jobs = [mapping.to_openai_job(j) for j in mapping.sort_jobs(await k8s.list_ftj(tenant.namespace))]
    if wanted == {}:
        jobs = [j for j in jobs if not j["metadata"]]
    elif wanted:
        jobs = [j for j in jobs if all((j["metadata"] or {}).get(k) == v for k, v in wanted.items())]
    return mapping.paginate(jobs, after, clamp(limit, settings.max_list_limit), key=lambda j: str(j["id"]))


@router.get(
    "/{fine_tuning_job_id}",
    summary="Retrieve a fine-tuning job",
    response_model=FineTuningJob,
    responses=error_responses(401, 404, 503),
)
async def retrieve_job(fine_tuning_job_id: str, tenant: Tenant, k8s: Kube) -> dict[str, Any]:
    _check_job_id(fine_tuning_job_id)
    return mapping.to_openai_job(await get_job(k8s, tenant.namespace, fine_tuning_job_id))


def _state_error(job: dict[str, Any], verb: str) -> APIError:
    return APIError(
        409,
        f"Cannot {verb} job {job['metadata']['name']}: it is {mapping.openai_status(job)}",
        code="invalid_job_state",
        param="fine_tuning_job_id",
    )


STATE_CHANGE_ERRORS = error_responses(401, 404, 409, 503)


@router.post(
    "/{fine_tuning_job_id}/cancel",
    summary="Cancel a job (annotation + suspend)",
    response_model=FineTuningJob,
    responses=STATE_CHANGE_ERRORS,
)
async def cancel_job(fine_tuning_job_id: str, tenant: Tenant, k8s: Kube) -> dict[str, Any]:
    _check_job_id(fine_tuning_job_id)

    def change(job: dict[str, Any]) -> dict[str, Any] | None:
        if mapping.is_cancelled(job):
            return None
        if mapping.is_terminal(job):
            raise _state_error(job, "cancel")
        return {
            "metadata": {"annotations": {names.ANN_CANCELLED: "true"}},
            "spec": {"runPolicy": {"suspend": True}},
        }

    job = await update_job(k8s, tenant.namespace, fine_tuning_job_id, change, action="cancelled")
    return mapping.to_openai_job(job)


@router.post(
    "/{fine_tuning_job_id}/pause",
    summary="Pause a job (spec.runPolicy.suspend=true)",
    response_model=FineTuningJob,
    responses=STATE_CHANGE_ERRORS,
)
async def pause_job(fine_tuning_job_id: str, tenant: Tenant, k8s: Kube) -> dict[str, Any]:
    _check_job_id(fine_tuning_job_id)

    def change(job: dict[str, Any]) -> dict[str, Any] | None:
        if mapping.is_cancelled(job) or mapping.is_terminal(job):
            raise _state_error(job, "pause")
        if mapping.is_suspended(job):
            return None
        return {"spec": {"runPolicy": {"suspend": True}}}

    job = await update_job(k8s, tenant.namespace, fine_tuning_job_id, change, action="paused")
    return mapping.to_openai_job(job)


@router.post(
    "/{fine_tuning_job_id}/resume",
    summary="Resume a paused job",
    response_model=FineTuningJob,
    responses=STATE_CHANGE_ERRORS,
)
async def resume_job(fine_tuning_job_id: str, tenant: Tenant, k8s: Kube) -> dict[str, Any]:
    _check_job_id(fine_tuning_job_id)

    def change(job: dict[str, Any]) -> dict[str, Any] | None:
        if mapping.is_cancelled(job) or mapping.is_terminal(job):
            raise _state_error(job, "resume")
        if not mapping.is_suspended(job):
            return None
        return {"spec": {"runPolicy": {"suspend": False}}}

    job = await update_job(k8s, tenant.namespace, fine_tuning_job_id, change, action="resumed")
    return mapping.to_openai_job(job)


@router.get(
    "/{fine_tuning_job_id}/events",
    summary="Job events (status transitions, notifications, Kubernetes Events)",
    response_model=EventList,
    responses=error_responses(400, 401, 404, 503),
)
async def list_events(
    *, fine_tuning_job_id: str, tenant: Tenant, k8s: Kube, settings: Config, after: str | None = None, limit: Limit = 20
) -> dict[str, Any]:
    _check_job_id(fine_tuning_job_id)
    job = await get_job(k8s, tenant.namespace, fine_tuning_job_id)
    events = await k8s.list_events(tenant.namespace, names.KIND, fine_tuning_job_id)
    page = clamp(limit, settings.max_list_limit)
    return mapping.paginate(mapping.to_events(job, events), after, page, key=lambda e: str(e["id"]))


@router.get(
    "/{fine_tuning_job_id}/checkpoints",
    summary="Checkpoints the trainer saved",
    response_model=CheckpointList,
    responses=error_responses(400, 401, 404, 503),
)
async def list_checkpoints(
    *, fine_tuning_job_id: str, tenant: Tenant, k8s: Kube, settings: Config, after: str | None = None, limit: Limit = 10
) -> dict[str, Any]:
    _check_job_id(fine_tuning_job_id)
    job = await get_job(k8s, tenant.namespace, fine_tuning_job_id)
    page = clamp(limit, settings.max_list_limit)
    return mapping.paginate(mapping.to_checkpoints(job), after, page, key=lambda c: str(c["id"]))
