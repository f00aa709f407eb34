"""Helpers shared by the routers: idempotent creation and optimistic-concurrency patches."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Header, Query, Request
from ftcrd import names
from kubernetes_asyncio.client.exceptions import ApiException

from ftapi import mapping
from ftapi.errors import APIError, not_found
from ftapi.k8s import K8s, create_owned, find_ftj


async def create_idempotent(
    k8s: K8s,
    namespace: str,
    ftj: dict[str, Any],
    configmap: dict[str, Any] | None,
    *,
    idempotent: bool,
    digest: str,
) -> tuple[dict[str, Any], bool]:
    """Create the job (and its ConfigMap); returns (job, created). With an Idempotency-Key the name is
    derived from it, so a retry meets AlreadyExists and gets the existing job back."""
    try:
        return await create_owned(k8s, namespace, ftj, configmap), True
    except ApiException as exc:
        if exc.status != 409 or not idempotent:
            raise
    existing = await k8s.get_ftj(namespace, ftj["metadata"]["name"])
    ann = (existing.get("metadata") or {}).get("annotations") or {}
    if ann.get(names.ANN_IDEMPOTENCY) != digest:
        raise APIError(
            409,
            "This Idempotency-Key was already used with a different request; use a new key for a new job.",
            code="idempotency_key_reused",
            param="Idempotency-Key",
        )
    return existing, False


async def get_job(k8s: K8s, namespace: str, name: str) -> dict[str, Any]:
    """The job named by the path's ``fine_tuning_job_id``; 404 when there is none (or the id cannot name one)."""
    job = await find_ftj(k8s, namespace, name)
    if job is None:
        raise not_found("fine-tuning job", name, param="fine_tuning_job_id")
    return job


async def update_job(
    k8s: K8s,
    namespace: str,
    name: str,
    change: Callable[[dict[str, Any]], dict[str, Any] | None],
    action: str | None = None,
) -> dict[str, Any]:
    """Read-check-patch with the resourceVersion as precondition (retried on conflicts).
    ``change`` returns the merge patch, or None when nothing needs to change; it may raise APIError."""
    for _ in range(5):
        job = await get_job(k8s, namespace, name)
        patch = change(job)
        if patch is None:
            return job
        meta = patch.setdefault("metadata", {})
        meta["resourceVersion"] = job["metadata"]["resourceVersion"]
        if action:
            history = mapping.actions(job)[-19:]
            history.append({"action": action, "at": int(time.time())})
            meta.setdefault("annotations", {})[names.ANN_ACTIONS] = json.dumps(history, separators=(",", ":"))
        try:
            return await k8s.patch_ftj(namespace, name, patch)
        except ApiException as exc:
            if exc.status != 409:
                raise
    raise APIError(409, "The job is being changed concurrently; retry", code="conflict", retryable=True)


async def single_query_values(request: Request) -> None:
    """No query parameter of this API is a list: a repeated one is refused rather than silently cut to one."""
    seen: set[str] = set()
    for key, _ in request.query_params.multi_items():
        if key in seen:
            raise APIError(400, f"{key}: given more than once", code="invalid_value", param=key)
        seen.add(key)


Limit = Annotated[int, Query(description="Page size; values outside 1 to the maximum are clamped, as OpenAI does.")]


def clamp(limit: int, maximum: int) -> int:
    return max(1, min(limit, maximum))


IDEMPOTENCY_KEY_PATTERN = r"^[!-~]([ -~]{0,253}[!-~])?$"
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        pattern=IDEMPOTENCY_KEY_PATTERN,
        description="1 to 255 printable ASCII characters, no leading or trailing space: a retried POST with the "
        "same key returns the same job.",
    ),
]
