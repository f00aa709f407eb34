"""``/v1/finetunejobs``: the FineTuneJob resource itself (spec and status), for kubectl-minded users."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from ftcrd.names import API_VERSION, KIND

from ftapi import mapping
from ftapi.deps import Kube, Tenant
from ftapi.responses import NativeJob, NativeJobList, error_responses
from ftapi.routers.common import get_job

router = APIRouter(prefix="/v1/finetunejobs", tags=["native"])


@router.get(
    "",
    summary="List FineTuneJobs in the caller's namespace",
    response_model=NativeJobList,
    responses=error_responses(401, 503),
)
async def list_finetunejobs(tenant: Tenant, k8s: Kube) -> dict[str, Any]:
    items = [mapping.native(j) for j in mapping.sort_jobs(await k8s.list_ftj(tenant.namespace))]
    return {"apiVersion": API_VERSION, "kind": f"{KIND}List", "items": items}


@router.get(
    "/{name}",
    summary="Get a FineTuneJob's spec and status",
    response_model=NativeJob,
    responses=error_responses(401, 404, 503),
)
async def get_finetunejob(name: str, tenant: Tenant, k8s: Kube) -> dict[str, Any]:
    job = mapping.native(await get_job(k8s, tenant.namespace, name))
    job["openai"] = {"id": name, "status": mapping.openai_status(job)}
    return job
