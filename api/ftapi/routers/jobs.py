"""``/v1/fine_tuning/jobs``: OpenAI's fine-tuning API over FineTuneJobs."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.types import DecoratedCallable
from ftcrd import names
from ftcrd.dataset import DatasetError
from ftcrd.types import MethodSpec, ModelSpec, TrackingSpec, WandbSpec

from ftapi import hyper, lora, mapping
from ftapi.auth import Tenant as TenantInfo
from ftapi.deps import Config, Kube, State, Tenant
from ftapi.errors import APIError
from ftapi.filerecords import check_active_jobs, file_rows, get_record, training_dataset, validation_dataset
from ftapi.k8s import K8s, find_ftj
from ftapi.responses import CheckpointList, EventList, FineTuningJob, JobList, error_responses
from ftapi.routers.common import IdempotencyKey, Limit, clamp, create_idempotent, get_job, update_job
from ftapi.routers.files import dataset_error
from ftapi.schemas import JobCreate
from ftapi.settings import CatalogModel, Settings
from ftapi.specbuild import (
    base_learning_rate,
    build_job,
    new_job_name,
    request_digest,
    resolve_model,
)

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["fine-tuning"])

PREFERENCE_METHODS = frozenset({"dpo"})


async def _file(
    k8s: K8s, settings: Settings, namespace: str, file_id: str, *, param: str, pairs: bool
) -> tuple[dict[str, Any], int]:
    """(the file's record, its row count): a DPO job needs preference pairs, which a supervised (messages) file
    does not have, and limits may have changed since the upload (ftapi.filerecords.file_rows)."""
    record = await get_record(k8s, namespace, file_id, param=param)
    try:
        return record, file_rows(record, settings, pairs=pairs)
    except DatasetError as exc:
        raise dataset_error(exc, param) from None


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
    else:
        source = await find_ftj(k8s, namespace, model)
    if source is None:
        return resolve_model(settings, model), None  # 400 model_not_found, listing the catalog
    base = ModelSpec.model_validate((source.get("spec") or {}).get("model") or {})
    return CatalogModel(name=base.name, preset=base.preset), {"job": source["metadata"]["name"]}


@router.post(
    "",
    summary="Create a fine-tuning job (supervised by default; Idempotency-Key supported)",
    response_model=FineTuningJob,
    responses=error_responses(400, 401, 409, 429, 503),
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
    training, rows = await _file(
        k8s, settings, tenant.namespace, body.training_file, param="training_file", pairs=pairs
    )
    validation = None
    if body.validation_file:
        validation, _ = await _file(
            k8s, settings, tenant.namespace, body.validation_file, param="validation_file", pairs=pairs
        )
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
    dataset = training_dataset(settings, training)
    labels = {names.LABEL_CREATED_BY: "api", names.LABEL_TRAINING_FILE: body.training_file}
    annotations = _annotations(body, tenant, base_lr, digest if idempotency else None)
    if names.ANN_NOTIFY in annotations:
        labels[names.LABEL_NOTIFY] = "pending"
    if body.validation_file and validation is not None:
        labels[names.LABEL_VALIDATION_FILE] = body.validation_file
        dataset = dataset.model_copy(update={"validation_fraction": 0.0, "validation": validation_dataset(validation)})
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
    await check_active_jobs(k8s, settings, tenant.namespace, name)
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
    return _page(jobs, after, limit, settings)


def _page(items: list[dict[str, Any]], after: str | None, limit: int, settings: Settings) -> dict[str, Any]:
    """One page of an OpenAI list, its items named by their ``id`` (the ``after`` cursor)."""
    return mapping.paginate(items, after, clamp(limit, settings.max_list_limit), key=lambda i: str(i["id"]))


def _job_route(
    method: str, path: str, summary: str, model: type, *errors: int
) -> Callable[[DecoratedCallable], DecoratedCallable]:
    """A route about one job (``path`` starts with ``/{fine_tuning_job_id}``): besides ``errors`` it can answer
    401 (no tenant), 404 (no such job) and 503 (the apiserver is unavailable)."""
    return router.api_route(
        path,
        methods=[method],
        summary=summary,
        response_model=model,
        responses=error_responses(*sorted({401, 404, 503, *errors})),
    )


@_job_route("GET", "/{fine_tuning_job_id}", "Retrieve a fine-tuning job", FineTuningJob)
async def retrieve_job(fine_tuning_job_id: str, tenant: Tenant, k8s: Kube) -> dict[str, Any]:
    return mapping.to_openai_job(await get_job(k8s, tenant.namespace, fine_tuning_job_id))


def _state_error(job: dict[str, Any], verb: str) -> APIError:
    return APIError(
        409,
        f"Cannot {verb} job {job['metadata']['name']}: it is {mapping.openai_status(job)}",
        code="invalid_job_state",
        param="fine_tuning_job_id",
    )


def _state_change(verb: str, summary: str) -> Callable[[DecoratedCallable], DecoratedCallable]:
    """The route of a state change, ``POST /{id}/<verb>``: it answers the job as it is after the change, or 409."""
    return _job_route("POST", f"/{{fine_tuning_job_id}}/{verb}", summary, FineTuningJob, 409)


@_state_change("cancel", "Cancel a job (annotation + suspend)")
async def cancel_job(fine_tuning_job_id: str, tenant: Tenant, k8s: Kube) -> dict[str, Any]:

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


@_state_change("pause", "Pause a job (spec.runPolicy.suspend=true)")
async def pause_job(fine_tuning_job_id: str, tenant: Tenant, k8s: Kube) -> dict[str, Any]:
    return await _set_suspended(k8s, tenant.namespace, fine_tuning_job_id, suspend=True)


@_state_change("resume", "Resume a paused job")
async def resume_job(fine_tuning_job_id: str, tenant: Tenant, k8s: Kube) -> dict[str, Any]:
    return await _set_suspended(k8s, tenant.namespace, fine_tuning_job_id, suspend=False)


async def _set_suspended(k8s: K8s, namespace: str, job_id: str, *, suspend: bool) -> dict[str, Any]:
    """Pause (``suspend``) or resume a job: refused once it is cancelled or finished, a no-op when it already is."""
    verb, action = ("pause", "paused") if suspend else ("resume", "resumed")

    def change(job: dict[str, Any]) -> dict[str, Any] | None:
        if mapping.is_cancelled(job) or mapping.is_terminal(job):
            raise _state_error(job, verb)
        if mapping.is_suspended(job) == suspend:
            return None
        return {"spec": {"runPolicy": {"suspend": suspend}}}

    return mapping.to_openai_job(await update_job(k8s, namespace, job_id, change, action=action))


@_job_route(
    "GET",
    "/{fine_tuning_job_id}/events",
    "Job events (status transitions, notifications, Kubernetes Events)",
    EventList,
    400,
)
async def list_events(
    *, fine_tuning_job_id: str, tenant: Tenant, k8s: Kube, settings: Config, after: str | None = None, limit: Limit = 20
) -> dict[str, Any]:
    job = await get_job(k8s, tenant.namespace, fine_tuning_job_id)
    events = await k8s.list_events(tenant.namespace, names.KIND, fine_tuning_job_id)
    return _page(mapping.to_events(job, events), after, limit, settings)


@_job_route("GET", "/{fine_tuning_job_id}/checkpoints", "Checkpoints the trainer saved", CheckpointList, 400)
async def list_checkpoints(
    *, fine_tuning_job_id: str, tenant: Tenant, k8s: Kube, settings: Config, after: str | None = None, limit: Limit = 10
) -> dict[str, Any]:
    return _page(
        mapping.to_checkpoints(await get_job(k8s, tenant.namespace, fine_tuning_job_id)), after, limit, settings
    )
