"""Pure ASGI middleware: request-size limit, structured access log, metrics, and the last line of
defence that turns any unhandled exception into a logged 503 (never a 500)."""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ftapi.deps import Metrics
from ftapi.errors import TOO_LARGE_FLAG, APIError, body_too_large, error_body

access_log = logging.getLogger("ftapi.access")
log = logging.getLogger("ftapi")


class BodyTooLarge(Exception):
    pass


def _json_response(status: int, body: dict[str, Any], request_id: str) -> tuple[Message, Message]:
    payload = json.dumps(body).encode()
    start: Message = {
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
            (b"x-request-id", request_id.encode()),
        ],
    }
    return start, {"type": "http.response.body", "body": payload}


class Guard:
    """``limits``: (method, path) -> (the body limit of that route, its 413 error), instead of ``max_body_bytes``."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        metrics: Metrics,
        limits: dict[tuple[str, str], tuple[int, APIError]] | None = None,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics
        self.limits = limits or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = dict(scope.get("headers") or [])
        request_id = headers.get(b"x-request-id", b"").decode("latin-1")[:64] or uuid.uuid4().hex
        state: dict[str, Any] = {"status": 0, "started": False}
        received = 0
        limit, error = self.limits.get(
            (scope.get("method", ""), scope.get("path", "")), (self.max_body_bytes, body_too_large(self.max_body_bytes))
        )
        too_large = error_body(error.message, error.type, error.param, error.code)

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    scope[TOO_LARGE_FLAG] = limit
                    raise BodyTooLarge()
            return message

        async def tracking_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                state["started"] = True
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            declared = int(headers.get(b"content-length", b"0") or 0)
        except ValueError:
            declared = 0
        try:
            if declared > limit:
                state["status"] = 413
                for msg in _json_response(413, too_large, request_id):
                    await send(msg)
            else:
                await self.app(scope, counting_receive, tracking_send)
        except Exception as exc:
            if isinstance(exc, BodyTooLarge) or scope.get(TOO_LARGE_FLAG):
                status, body = 413, too_large
            else:
                # Type and route only: arguments may carry request data.
                log.exception("unhandled %s on %s %s", type(exc).__name__, scope.get("method"), _route(scope))
                status = 503
                body = error_body(
                    "The server could not complete the request; it was logged. Retry later.",
                    "server_error",
                    None,
                    "internal_error",
                )
            if not state["started"]:
                state["status"] = status
                for msg in _json_response(status, body, request_id):
                    await send(msg)
        finally:
            elapsed = time.perf_counter() - started
            route = _route(scope)
            method = scope.get("method", "")
            status = state["status"] or 503
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(elapsed)
            scope_state = scope.get("state")
            tenant = scope_state.get("tenant") if isinstance(scope_state, dict) else None
            record = {
                "event": "access",
                "request_id": request_id,
                "method": method,
                "path": scope.get("path", ""),
                "route": route,
                "status": status,
                "duration_ms": round(elapsed * 1000, 2),
                "bytes_in": received or declared,
                "tenant": tenant,
                "client": (scope.get("client") or ("", 0))[0],
            }
            access_log.info(json.dumps(record))


def _route(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return str(path) if path else "unmatched"
