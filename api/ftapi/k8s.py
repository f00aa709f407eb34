"""A thin async wrapper over kubernetes_asyncio: FineTuneJobs, ConfigMaps, Events.

Everything is returned as wire-form dicts (camelCase keys), the same shape ``kubectl get -o json``
prints, so :mod:`ftapi.mapping` stays pure and testable without a cluster.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ftcrd.types import GROUP, PLURAL, VERSION
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from ftapi.errors import APIError, from_kubernetes
from ftapi.mapping import valid_job_name

log = logging.getLogger("ftapi.k8s")

THROTTLE_RETRIES = 4
THROTTLE_WAIT_MAX_S = 2.0
MERGE_PATCH = "application/merge-patch+json"
PARTIAL_METADATA = "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io"


def _retry_after(exc: ApiException, attempt: int) -> float:
    """The apiserver's Retry-After (seconds), else a short growing wait; never more than THROTTLE_WAIT_MAX_S."""
    try:
        headers: Any = exc.headers or {}
        wait = float(headers.get("Retry-After", ""))
    except ValueError:
        wait = 0.25 * 2**attempt
    return min(max(wait, 0.0), THROTTLE_WAIT_MAX_S)


def retrying_throttled(request: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """``request`` again when the apiserver answers 429 (API Priority and Fairness: too many requests in flight,
    also seen while a fresh apiserver sets up its priority levels). The request was not processed, so repeating
    it is safe for every verb; client-go does the same by itself, kubernetes_asyncio does not."""

    async def retrying(*args: Any, **kwargs: Any) -> Any:
        for attempt in range(THROTTLE_RETRIES - 1):
            try:
                return await request(*args, **kwargs)
            except ApiException as exc:
                if exc.status != 429:
                    raise
                await asyncio.sleep(_retry_after(exc, attempt))
        return await request(*args, **kwargs)

    return retrying


class K8s:
    def __init__(self, api_client: client.ApiClient, timeout: float = 15.0) -> None:
        self.api = api_client
        rest = api_client.rest_client
        rest.request = retrying_throttled(rest.request)  # type: ignore[method-assign,assignment]
        self.timeout = timeout
        self.core = client.CoreV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.version = client.VersionApi(api_client)

    @classmethod
    async def connect(cls, kubeconfig: str | None, timeout: float = 15.0) -> K8s:
        cfg = client.Configuration()
        if kubeconfig:
            await config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
        else:
            config.load_incluster_config(client_configuration=cfg)
        return cls(client.ApiClient(configuration=cfg), timeout)

    async def close(self) -> None:
        await self.api.close()

    def wire(self, obj: Any) -> dict[str, Any]:
        out = self.api.sanitize_for_serialization(obj)
        assert isinstance(out, dict)
        return out

    # --- health
    async def server_version(self) -> str:
        info = await self.version.get_code(_request_timeout=min(self.timeout, 5.0))
        return str(info.git_version)

    # --- FineTuneJobs
    async def create_ftj(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            out = await self.custom.create_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, body, _request_timeout=self.timeout
            )
        except ApiException as exc:
            if exc.status == 404:  # no such resource type (or namespace): not the caller's fault
                log.error("creating a FineTuneJob in %s: 404 (%s)", namespace, exc.reason)
                raise APIError(
                    503,
                    "FineTuneJobs cannot be created here (is the CRD installed and the namespace present?)",
                    code="service_unavailable",
                ) from None
            raise
        return dict(out)

    async def get_ftj(self, namespace: str, name: str) -> dict[str, Any]:
        out = await self.custom.get_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name, _request_timeout=self.timeout
        )
        return dict(out)

    async def list_ftj(self, namespace: str, label_selector: str | None = None) -> list[dict[str, Any]]:
        kwargs: dict[str, Any] = {"_request_timeout": self.timeout}
        if label_selector:
            kwargs["label_selector"] = label_selector
        try:
            out = await self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, **kwargs)
        except ApiException as exc:
            if exc.status == 404:
                raise APIError(
                    503, "FineTuneJobs cannot be listed (is the CRD installed?)", code="service_unavailable"
                ) from None
            raise
        return list(out.get("items", []))

    async def patch_ftj(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        out = await self.custom.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            name,
            patch,
            _content_type=MERGE_PATCH,  # type: ignore[call-arg]
            _request_timeout=self.timeout,
        )
        return dict(out)

    async def delete_ftj(self, namespace: str, name: str) -> None:
        await self.custom.delete_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name, propagation_policy="Background", _request_timeout=self.timeout
        )

    # --- ConfigMaps
    async def create_configmap(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        out = await self.core.create_namespaced_config_map(
            namespace,
            body,  # type: ignore[arg-type]
            _request_timeout=self.timeout,
        )
        return self.wire(out)

    async def get_configmap(self, namespace: str, name: str) -> dict[str, Any]:
        out = await self.core.read_namespaced_config_map(name, namespace, _request_timeout=self.timeout)
        return self.wire(out)

    async def list_configmaps(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        out = await self.core.list_namespaced_config_map(
            namespace, label_selector=label_selector, _request_timeout=self.timeout
        )
        return [self.wire(item) for item in out.items or []]

    async def list_configmap_metadata(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        """Metadata only (names, labels, annotations) of the matching ConfigMaps: the apiserver answers a
        PartialObjectMetadataList, so no data is sent, whatever the objects hold."""
        response = await self.api.call_api(
            f"/api/v1/namespaces/{namespace}/configmaps",
            "GET",
            query_params=[("labelSelector", label_selector)],
            header_params={"Accept": PARTIAL_METADATA},
            auth_settings=["BearerToken"],
            _preload_content=False,
            _request_timeout=self.timeout,
        )
        try:
            body = await response.read()
            if not 200 <= response.status <= 299:
                raise ApiException(status=response.status, reason=response.reason)
        finally:
            response.release()
        return list(json.loads(body).get("items") or [])

    async def delete_configmap(self, namespace: str, name: str) -> None:
        await self.core.delete_namespaced_config_map(name, namespace, _request_timeout=self.timeout)

    # --- Events and Secrets
    async def list_events(self, namespace: str, kind: str, name: str) -> list[dict[str, Any]]:
        selector = f"involvedObject.kind={kind},involvedObject.name={name}"
        out = await self.core.list_namespaced_event(namespace, field_selector=selector, _request_timeout=self.timeout)
        return [self.wire(item) for item in out.items or []]

    async def read_secret(self, namespace: str, name: str) -> Any:
        return await self.core.read_namespaced_secret(name, namespace, _request_timeout=self.timeout)


async def create_owned(
    k8s: K8s, namespace: str, ftj: dict[str, Any], configmap: dict[str, Any] | None
) -> dict[str, Any]:
    """Create the FineTuneJob, then (if given) its dataset ConfigMap owned by it.

    If the ConfigMap cannot be created the FineTuneJob is deleted again, so a failed create leaves
    neither object behind (and the ownerReference makes the garbage collector remove the ConfigMap
    whenever the job goes).
    """
    created = await k8s.create_ftj(namespace, ftj)
    if configmap is None:
        return created
    meta = created["metadata"]
    configmap.setdefault("metadata", {})["ownerReferences"] = [
        {
            "apiVersion": created["apiVersion"],
            "kind": created["kind"],
            "name": meta["name"],
            "uid": meta["uid"],
            "controller": True,
            "blockOwnerDeletion": False,
        }
    ]
    try:
        await k8s.create_configmap(namespace, configmap)
    except BaseException as exc:
        try:
            await k8s.delete_ftj(namespace, meta["name"])
        except ApiException as cleanup:
            if cleanup.status != 404:
                log.error(
                    "could not remove FineTuneJob %s/%s after a failed create: %s",
                    namespace,
                    meta["name"],
                    cleanup.status,
                )
        if isinstance(exc, ApiException):
            err = from_kubernetes(exc)
            err.message = f"Could not store the dataset ConfigMap, so no job was created: {err.message}"
            raise err from None
        raise
    return created


async def find_ftj(k8s: K8s, namespace: str, name: str) -> dict[str, Any] | None:
    """The FineTuneJob ``name``, or None when there is none: a name no job can have is not sent to the apiserver."""
    if not valid_job_name(name):
        return None
    try:
        return await k8s.get_ftj(namespace, name)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
