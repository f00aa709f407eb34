"""Errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.

Every failure path ends here: request-shape errors become 400 ``invalid_request_error`` naming the field in
``param`` (the seed webhook keeps its documented 422), Kubernetes ``ApiException``s map to 4xx/503, and
anything unexpected is logged server-side and answered 503 (see :mod:`ftapi.middleware`), so no input
produces a 500. A 409 that retrying cannot fix carries ``x-should-retry: false`` (the openai client retries
409s otherwise); a 405 carries ``Allow``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from typing import Any

import aiohttp
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from kubernetes_asyncio.client.exceptions import ApiException
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("ftapi.errors")

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "server_error",
}


class APIError(Exception):
    """An error a client can act on."""

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
        retryable: bool = False,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.code = code
        self.param = param
        self.type = type or ERROR_TYPES.get(status_code, "invalid_request_error")
        self.headers = headers
        self.retryable = retryable


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


SEED_PATH = "/trigger-finetune"
"""The seed webhook answers schema errors with 422, as the original microservice's FastAPI did."""


def request_error_status(path: str) -> int:
    return 422 if path == SEED_PATH else 400


def error_response(exc: APIError, path: str = "") -> JSONResponse:
    status = exc.status_code
    if status == 422 and path and path != SEED_PATH:
        status = 400  # OpenAI's routes: every request-shape error is a 400 (openai.BadRequestError)
    headers = dict(exc.headers or {})
    if status == 409 and not exc.retryable:
        headers["x-should-retry"] = "false"
    body = error_body(exc.message, exc.type, exc.param, exc.code)
    return JSONResponse(body, status_code=status, headers=headers or None)


def not_found(what: str, ident: str, param: str | None = None) -> APIError:
    return APIError(404, f"No such {what}: '{ident}'", code="not_found", param=param)


_TYPE_TAG = re.compile(
    r"^(constrained-\w+|int|float|str|bool|none|bytes|list\[.*\]|dict\[.*\]|literal\[.*\]|"
    r"function-\w+\[.*\]|lax-or-strict\[.*\]|json-or-python\[.*\]|is-instance\[.*\]|model\[.*\]|[A-Z]\w*)$"
)


def field_path(loc: Sequence[int | str]) -> str:
    """('body', 'dataset', 2, 'chosen') -> 'dataset[2].chosen'; union-member tags are dropped."""
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header", "form", "cookie"):
        parts = parts[1:]
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _TYPE_TAG.match(part):
            continue
        elif out:
            out += f".{part}"
        else:
            out = str(part)
    return out or "body"


def _short(value: Any) -> str:
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def describe_validation_errors(errors: Sequence[Any]) -> tuple[str, str]:
    """One readable message naming every bad field (first field first), and that field as ``param``."""
    grouped: dict[str, list[str]] = {}
    got: dict[str, str] = {}
    for err in errors:
        kind = err.get("type", "")
        if kind == "json_invalid":
            detail = (err.get("ctx") or {}).get("error", err.get("msg", ""))
            return f"request body is not valid JSON ({detail})", "body"
        path = field_path(err.get("loc", ()))
        if kind == "invalid_method":  # the discriminator of method: name its field
            path += ".type"
        msg = str(err.get("msg", "invalid"))
        bucket = grouped.setdefault(path, [])
        if msg not in bucket:
            bucket.append(msg)
        if kind != "missing" and "input" in err and not isinstance(err["input"], dict | list):
            got.setdefault(path, _short(err["input"]))
    messages = []
    for path, msgs in list(grouped.items())[:5]:
        text = f"{path}: " + " or ".join(msgs)
        if path in got:
            text += f" (got {got[path]})"
        messages.append(text)
    if len(grouped) > 5:
        messages.append(f"and {len(grouped) - 5} more fields")
    return "; ".join(messages), next(iter(grouped), "body")


async def _validation_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    message, param = describe_validation_errors(exc.errors())
    status = request_error_status(request.url.path)
    return error_response(APIError(status, message, code="invalid_value", param=param), request.url.path)


async def _api_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, APIError)
    return error_response(exc, request.url.path)


TOO_LARGE_FLAG = "ftapi.body_too_large"  # set in the ASGI scope by ftapi.middleware.Guard


def too_large(message: str, *, code: str, param: str | None = None) -> APIError:
    """413: a request body or a file over one of this service's limits; ``message`` names the limit."""
    return APIError(413, message, code=code, param=param)


def body_too_large(limit: int) -> APIError:
    return too_large(
        f"Request body exceeds the limit of {limit} bytes. Send a large dataset as a file (POST /v1/files, "
        "streamed into object storage); see docs/api.md, 'Large datasets'.",
        code="request_too_large",
    )


async def _http_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    limit = request.scope.get(TOO_LARGE_FLAG)
    if limit:  # the body reader hit the size limit mid-stream; FastAPI reports that as a parse error
        return error_response(body_too_large(int(limit)))
    status = exc.status_code
    headers = dict(exc.headers or {})
    if status == 404:
        message = f"Unknown path {request.url.path}"
    elif status == 405:
        allowed = allowed_methods(request)
        headers["Allow"] = ", ".join(allowed)
        message = f"Method {request.method} not allowed on {request.url.path}; allowed: {', '.join(allowed)}"
    else:
        message = str(exc.detail)
    if status >= 500:
        status = 503
    return error_response(APIError(status, message, code=None, headers=headers or None), request.url.path)


def allowed_methods(request: Request) -> list[str]:
    """The methods the OpenAPI document lists for this path (Starlette's own 405 names the first route's only)."""
    got = request.url.path.split("/")
    for template, operations in request.app.openapi()["paths"].items():
        want = template.split("/")
        if len(want) == len(got) and all(w == g or (w.startswith("{") and g) for w, g in zip(want, got, strict=True)):
            return sorted(method.upper() for method in operations)
    return []


def kubernetes_message(exc: ApiException) -> str:
    """The apiserver's Status.message (no credentials in there), or the reason."""
    try:
        body = json.loads(exc.body or "{}")
        if isinstance(body, dict) and body.get("message"):
            return str(body["message"])
    except (TypeError, ValueError):
        pass
    return str(exc.reason or "Kubernetes API error")


def from_kubernetes(exc: ApiException) -> APIError:
    status = exc.status or 0
    message = kubernetes_message(exc)
    if status == 404:
        return APIError(404, message, code="not_found")
    if status == 409:
        return APIError(409, message, code="conflict")
    if status in (400, 422):  # 400 on OpenAI routes (error_response)
        return APIError(422, f"Kubernetes rejected the object: {message}", code="invalid_resource")
    if status == 429:
        return APIError(429, "Kubernetes API is throttling requests; retry later", code="rate_limited")
    if status in (401, 403):
        log.error("apiserver refused the API's request (its RBAC, or an admission policy) (%s): %s", status, message)
        return APIError(503, "The service is not allowed to perform this operation; contact the operator", code="k8s")
    log.error("apiserver error %s: %s", status, message)
    return APIError(503, "Kubernetes API unavailable; retry later", code="service_unavailable")


async def _kubernetes_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiException)
    return error_response(from_kubernetes(exc), request.url.path)


async def _unreachable_handler(request: Request, exc: Exception) -> JSONResponse:
    log.error("apiserver unreachable: %s", type(exc).__name__)
    return error_response(APIError(503, "Kubernetes API unreachable; retry later", code="service_unavailable"))


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(APIError, _api_error_handler)
    app.add_exception_handler(StarletteHTTPException, _http_handler)
    app.add_exception_handler(ApiException, _kubernetes_handler)
    app.add_exception_handler(aiohttp.ClientError, _unreachable_handler)
    app.add_exception_handler(TimeoutError, _unreachable_handler)
