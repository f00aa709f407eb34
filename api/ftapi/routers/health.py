"""Liveness, readiness (the apiserver answers) and Prometheus metrics; no key needed."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ftapi.deps import State, current_tenant
from ftapi.responses import Health, Readiness, error_responses

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="Liveness", response_model=Health)
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness: the Kubernetes apiserver answers",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "The apiserver does not answer"}},
)
async def readyz(state: State) -> JSONResponse:
    try:
        assert state.k8s is not None
        version = await state.k8s.server_version()
    except Exception as exc:
        return JSONResponse({"status": "unavailable", "reason": f"apiserver: {type(exc).__name__}"}, status_code=503)
    return JSONResponse({"status": "ok", "kubernetes": version})


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={
        200: {
            "description": "Prometheus text format",
            "content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}},
        },
        **error_responses(401),
    },
)
async def metrics(request: Request, state: State) -> Response:
    if not state.settings.metrics_public:
        await current_tenant(request, None)
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
