"""The application factory: ``create_app(settings)``; ``python -m ftapi`` serves it with uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

from ftapi import errors, openapi
from ftapi.auth import KeyStore
from ftapi.deps import AppState
from ftapi.filerecords import Sweeper
from ftapi.k8s import K8s
from ftapi.middleware import Guard
from ftapi.notify import Notifier
from ftapi.routers import files, health, jobs, native, webhook
from ftapi.routers.common import single_query_values
from ftapi.settings import Settings
from ftapi.uploads import file_too_large

VERSION = "0.1.0"
DESCRIPTION = """\
Creates FineTuneJobs (DPO preference fine-tuning on Kubernetes) and reports on them.

* **Seed webhook**: `POST /trigger-finetune`, the original microservice's payload; answers 202 at once.
* **OpenAI-compatible**: `/v1/files` and `/v1/fine_tuning/jobs`, so `OpenAI(base_url=..., api_key=...)` works.
* **Native**: `/v1/finetunejobs/{name}`, the resource's spec and status.

Every endpoint except `/healthz`, `/readyz` and `/metrics` needs `Authorization: Bearer <key>`; a key is
bound to one namespace. Errors are `{"error": {"message", "type", "param", "code"}}`; request-shape errors
are 400 with the field in `param` (422 on the seed webhook). Jobs that end are announced with signed
`fine_tuning.job.succeeded|failed|cancelled` webhook events (Standard Webhooks) to the key's endpoint.
"""


MULTIPART_SLACK_BYTES = 64 * 1024
"""Room for the multipart framing and small fields around an upload's file."""


def create_app(settings: Settings | None = None, *, k8s: K8s | None = None) -> FastAPI:
    settings = settings or Settings()
    state = AppState(settings=settings, k8s=k8s)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = state.k8s is None
        if owned:
            state.k8s = await K8s.connect(settings.kubeconfig, settings.request_timeout_seconds)
        assert state.k8s is not None
        state.keys = KeyStore(
            state.k8s,
            settings.keys_namespace,
            settings.keys_secret_name,
            settings.keys_secret_key,
            settings.keys_refresh_seconds,
        )
        tasks = [asyncio.create_task(Sweeper(state.k8s, state.keys, state.store, settings).run(), name="ftapi-expiry")]
        if settings.notify_enabled:
            tasks.append(asyncio.create_task(Notifier(state.k8s, state.keys, settings).run(), name="ftapi-notify"))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            state.store.close()
            if owned and state.k8s is not None:
                await state.k8s.close()
                state.k8s = None

    app = FastAPI(
        title="finetune-operator API",
        version=VERSION,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.ftapi = state
    if k8s is not None:  # tests that inject a client without running the lifespan
        state.keys = KeyStore(
            k8s,
            settings.keys_namespace,
            settings.keys_secret_name,
            settings.keys_secret_key,
            settings.keys_refresh_seconds,
        )
    errors.install(app)
    # An upload's body may hold a whole file (plus the multipart framing); every other body the general limit.
    upload_limit = settings.max_file_bytes + MULTIPART_SLACK_BYTES
    app.add_middleware(
        Guard,
        max_body_bytes=settings.max_body_bytes,
        metrics=state.metrics,
        limits={("POST", "/v1/files"): (upload_limit, file_too_large(settings.max_file_bytes))},
    )
    routers = (health.router, webhook.router, files.upload_router(settings), files.router, jobs.router, native.router)
    for router in routers:
        app.include_router(router, dependencies=[Depends(single_query_values)])
    openapi.install(app, settings)
    return app


def openapi_document() -> str:
    """The OpenAPI document, deterministic (sorted keys), as checked in at api/openapi.json."""
    app = create_app(Settings(kubeconfig="unused"))
    return json.dumps(app.openapi(), indent=2, sort_keys=True) + "\n"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.name == "ftapi.access":
            try:
                payload = json.loads(msg)
            except ValueError:
                payload = {"message": msg}
        else:
            payload = {"message": msg}
        out = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            **payload,
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out)


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # The Kubernetes client logs whole response bodies at debug, the keys Secret's data among them: never below
    # info, whatever the API's own level (tests/security/test_secret_scan.py runs the API at debug).
    logging.getLogger("kubernetes_asyncio.client.rest").setLevel(max(logging.INFO, root.level))


def main() -> None:
    import uvicorn

    settings = Settings()
    configure_logging(settings.log_level)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        access_log=False,
        log_config=None,
        proxy_headers=True,
        server_header=False,
    )
