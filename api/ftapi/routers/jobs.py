"""``/v1/fine_tuning/jobs``: OpenAI's fine-tuning API over FineTuneJobs."""

from __future__ import annotations

import json
import re
import secrets
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from ftcrd import names
from ftcrd.types import MAX_NAME_LENGTH, MethodSpec, ModelSpec
from kubernetes_asyncio.client.exceptions import ApiException

from ftapi import mapping
from ftapi.deps import Config, Kube, State, Tenant
from ftapi.errors import APIError, not_found
from ftapi.k8s import K8s
from ftapi.routers.common import create_idempotent, get_job, idempotency_key, update_job
from ftapi.routers.files import get_file
from ftapi.schemas import DpoHyperparameters, Hyperparameters, JobCreate
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

_JOB_ID = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
Limit = Annotated[int, Query(ge=1, le=100, description="Page size (1-100)")]


def _check_job_id(job_id: str) -> None:
    if len(job_id) > 253 or not _JOB_ID.match(job_id):
        raise not_found("fine-tuning job", job_id, param="fine_tuning_job_id")


def _hyperparameters(hp: Hyperparameters | None, base_lr: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if hp is None:
        return out
    if isinstance(hp.batch_size, int):
        out["batchSize"] = hp.batch_size
    if isinstance(hp.n_epochs, int):
        out["epochs"] = hp.n_epochs
    if isinstance(hp.learning_rate_multiplier, int | float):
        lr = base_lr * float(hp.learning_rate_multiplier)
        if lr > 1:
            raise APIError(
                422,
                f"learning_rate_multiplier {hp.learning_rate_multiplier} gives a learning rate above 1 "
                f"(base {base_lr})",
                code="invalid_value",
                param="method.hyperparameters.learning_rate_multiplier",
            )
        out["learningRate"] = lr
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
    elif _JOB_ID.match(model) and len(model) <= MAX_NAME_LENGTH:
        try:
            source = await k8s.get_ftj(namespace, model)
        except ApiException as exc:
            if exc.status != 404:
                raise
    if source is None:
        return resolve_model(settings, model), None  # 400 model_not_found, listing the catalog
    base = ModelSpec.model_validate((source.get("spec") or {}).get("model") or {})
    return CatalogModel(name=base.name, preset=base.preset), {"job": source["metadata"]["name"]}


@router.post("", summary="Create a fine-tuning job (DPO by default; Idempotency-Key supported)")
async def create_job(
    *,
    body: JobCreate,
    tenant: Tenant,
    k8s: Kube,
    settings: Config,
    state: State,
    idempotency: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> dict[str, Any]:
    key = idempotency_key(idempotency)
    model, model_from = await _model(settings, k8s, tenant.namespace, body.model)
    method_type = body.method.type if body.method else "dpo"
    if method_type == "reinforcement":
        raise APIError(
            400,
            "method.type 'reinforcement' is not supported; use 'dpo' or 'supervised'",
            code="unsupported_method",
            param="method.type",
        )
    base_lr = base_learning_rate(settings)
    hp_in: Hyperparameters | None = body.hyperparameters
    beta: float | None = None
    if body.method and method_type == "dpo" and body.method.dpo and body.method.dpo.hyperparameters:
        dpo_hp: DpoHyperparameters = body.method.dpo.hyperparameters
        hp_in = dpo_hp
        beta = dpo_hp.beta if isinstance(dpo_hp.beta, int | float) else None
    if (
        body.method
        and method_type == "supervised"
        and body.method.supervised
        and body.method.supervised.hyperparameters
    ):
        hp_in = body.method.supervised.hyperparameters
    hyper = _hyperparameters(hp_in, base_lr)
    seed = body.seed if body.seed is not None else secrets.randbelow(2**31)
    hyper["seed"] = seed

    # files must exist in the caller's namespace (checked before anything is created)
    await get_file(k8s, tenant.namespace, body.training_file, param="training_file")
    if body.validation_file:
        await get_file(k8s, tenant.namespace, body.validation_file, param="validation_file")

    name = new_job_name(tenant.namespace, key)
    digest = request_digest("openai", body.model_dump(mode="json", exclude={"seed"} if body.seed is None else None))
    annotations = {
        names.ANN_OPENAI_MODEL: body.model,
        names.ANN_TRAINING_FILE: body.training_file,
        names.ANN_BASE_LR: repr(base_lr),
    }
    if body.validation_file:
        annotations[names.ANN_VALIDATION_FILE] = body.validation_file
    if body.suffix:
        annotations[names.ANN_SUFFIX] = body.suffix
    if body.metadata is not None:
        annotations[names.ANN_METADATA] = json.dumps(body.metadata, sort_keys=True)
    if key:
        annotations[names.ANN_IDEMPOTENCY] = digest
    method = MethodSpec.model_validate(
        {"type": "sft" if method_type == "supervised" else "dpo", **({"beta": beta} if beta else {})}
    )
    ftj = build_job(
        settings,
        name=name,
        namespace=tenant.namespace,
        model=model,
        dataset=dataset_from_configmap(settings, body.training_file, names.FILE_DATA_KEY, "jsonl"),
        method=method,
        hyperparameters=hyper,
        community_id=tenant.namespace,
        labels={names.LABEL_CREATED_BY: "api", names.LABEL_TRAINING_FILE: body.training_file},
        annotations=annotations,
        model_from=model_from,
    )
    job, created = await create_idempotent(k8s, tenant.namespace, ftj, None, idempotent=key is not None, digest=digest)
    if created:
        state.metrics.jobs_created.labels("openai").inc()
    return mapping.to_openai_job(job)


@router.get("", summary="List fine-tuning jobs (newest first, cursor pagination)")
async def list_jobs(
    *,
    request: Request,
    tenant: Tenant,
    k8s: Kube,
    after: str | None = None,
    limit: Limit = 20,
) -> dict[str, Any]:
    """``metadata[key]=value`` query parameters filter on the job's metadata, as OpenAI's API does."""
    wanted = {
        k[len("metadata[") : -1]: v
        for k, v in request.query_params.items()
        if k.startswith("metadata[") and k.endswith("]")
    }
    jobs = [mapping.to_openai_job(j) for j in mapping.sort_jobs(await k8s.list_ftj(tenant.namespace))]
    if wanted:
        jobs = [j for j in jobs if all((j["metadata"] or {}).get(k) == v for k, v in wanted.items())]
    return mapping.paginate(jobs, after, limit, key=lambda j: str(j["id"]))


@router.get("/{fine_tuning_job_id}", summary="Retrieve a fine-tuning job")
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


@router.post("/{fine_tuning_job_id}/cancel", summary="Cancel a job (annotation + suspend)", responses={409: {}})
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


@router.post("/{fine_tuning_job_id}/pause", summary="Pause a job (spec.runPolicy.suspend=true)", responses={409: {}})
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


@router.post("/{fine_tuning_job_id}/resume", summary="Resume a paused job", responses={409: {}})
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


@router.get("/{fine_tuning_job_id}/events", summary="Job events (Kubernetes Events and status transitions)")
async def list_events(
    *, fine_tuning_job_id: str, tenant: Tenant, k8s: Kube, after: str | None = None, limit: Limit = 20
) -> dict[str, Any]:
    _check_job_id(fine_tuning_job_id)
    job = await get_job(k8s, tenant.namespace, fine_tuning_job_id)
    events = await k8s.list_events(tenant.namespace, names.KIND, fine_tuning_job_id)
    return mapping.paginate(mapping.to_events(job, events), after, limit, key=lambda e: str(e["id"]))


@router.get("/{fine_tuning_job_id}/checkpoints", summary="Checkpoints the trainer saved")
async def list_checkpoints(
    *, fine_tuning_job_id: str, tenant: Tenant, k8s: Kube, after: str | None = None, limit: Limit = 10
) -> dict[str, Any]:
    _check_job_id(fine_tuning_job_id)
    job = await get_job(k8s, tenant.namespace, fine_tuning_job_id)
    return mapping.paginate(mapping.to_checkpoints(job), after, limit, key=lambda c: str(c["id"]))
