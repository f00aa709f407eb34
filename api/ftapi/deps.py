"""FastAPI dependencies: the configured state, the Kubernetes client and the caller's tenant."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CollectorRegistry, Counter, Histogram

from ftapi import auth
from ftapi.k8s import K8s
from ftapi.settings import Settings
from ftapi.storage import ArtifactStore


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "ftapi_requests_total", "HTTP requests", ["method", "route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "ftapi_request_duration_seconds", "HTTP request latency", ["method", "route"], registry=self.registry
        )
        self.jobs_created = Counter(
            "ftapi_jobs_created_total", "FineTuneJobs created", ["source"], registry=self.registry
        )
        self.files_created = Counter("ftapi_files_created_total", "Files uploaded", registry=self.registry)
        self.auth_failures = Counter("ftapi_auth_failures_total", "Rejected API keys", registry=self.registry)


@dataclass
class AppState:
    settings: Settings
    metrics: Metrics = field(default_factory=Metrics)
    k8s: K8s | None = None
    keys: auth.KeyStore | None = None
    store: ArtifactStore = field(default_factory=ArtifactStore)
    uploads: asyncio.Semaphore = field(init=False)

    def __post_init__(self) -> None:
        self.uploads = asyncio.Semaphore(self.settings.max_concurrent_uploads)  # uploads in progress


def get_state(request: Request) -> AppState:
    state = request.app.state.ftapi
    assert isinstance(state, AppState)
    return state


def get_settings(request: Request) -> Settings:
    return get_state(request).settings


def get_k8s(request: Request) -> K8s:
    k8s = get_state(request).k8s
    assert k8s is not None, "Kubernetes client not initialised"
    return k8s


bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <API key>")


async def current_tenant(
    request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> auth.Tenant:
    state = get_state(request)
    assert state.keys is not None
    try:
        tenant = await state.keys.authenticate(request.headers.get("authorization"))
    except Exception:
        state.metrics.auth_failures.inc()
        raise
    request.state.tenant = tenant.name
    return tenant


def get_store(request: Request) -> ArtifactStore:
    return get_state(request).store


Tenant = Annotated[auth.Tenant, Depends(current_tenant)]
Store = Annotated[ArtifactStore, Depends(get_store)]
Kube = Annotated[K8s, Depends(get_k8s)]
Config = Annotated[Settings, Depends(get_settings)]
State = Annotated[AppState, Depends(get_state)]
