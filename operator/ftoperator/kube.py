"""A thin asynchronous Kubernetes client: raw JSON over kubernetes_asyncio's authenticated ApiClient.

The generated model classes are skipped on purpose (``_preload_content=False``): the operator builds and
reads plain dicts, and deserialising every response into models costs more CPU than the reconcile itself.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from ftcrd.types import GROUP, PLURAL, VERSION
from kubernetes_asyncio import client, config

from ftoperator.settings import Settings

MERGE_PATCH = "application/merge-patch+json"


class ApiError(Exception):
    def __init__(self, status: int, body: str, method: str, path: str) -> None:
        self.status = status
        self.body = body
        try:
            parsed = json.loads(body)
            self.reason = str(parsed.get("reason") or "")
            self.message = str(parsed.get("message") or body)
        except ValueError:
            self.reason = ""
            self.message = body
        super().__init__(f"{method} {path}: {status} {self.reason}: {self.message}")


# Collection paths of the child kinds (namespaced).
PATHS = {
    ("v1", "ServiceAccount"): "/api/v1/namespaces/{ns}/serviceaccounts",
    ("v1", "Service"): "/api/v1/namespaces/{ns}/services",
    ("v1", "Pod"): "/api/v1/namespaces/{ns}/pods",
    ("v1", "Event"): "/api/v1/namespaces/{ns}/events",
    ("rbac.authorization.k8s.io/v1", "Role"): "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles",
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings",
    ("batch/v1", "Job"): "/apis/batch/v1/namespaces/{ns}/jobs",
    (f"{GROUP}/{VERSION}", "FineTuneJob"): f"/apis/{GROUP}/{VERSION}/namespaces/{{ns}}/{PLURAL}",
}


def collection_path(api_version: str, kind: str, namespace: str) -> str:
    return PATHS[(api_version, kind)].format(ns=namespace)


class Kube:
    def __init__(self, api: client.ApiClient) -> None:
        self.api = api

    @classmethod
    async def connect(cls, settings: Settings) -> Kube:
        cfg = client.Configuration()
        if os.environ.get("KUBERNETES_SERVICE_HOST") and not os.environ.get("KUBECONFIG"):
            config.load_incluster_config(client_configuration=cfg)
        else:
            await config.load_kube_config(client_configuration=cfg)
        cfg.connection_pool_maxsize = settings.api_connections
        return cls(client.ApiClient(configuration=cfg))

    async def close(self) -> None:
        await self.api.close()

    async def request(
        self,
        method: str,
        path: str,
        body: object = None,
        *,
        query: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        resp = await self.api.call_api(
            path,
            method,
            query_params=list((query or {}).items()),
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
            _preload_content=False,
            _return_http_data_only=True,
        )
        try:
            data = await resp.read()
        finally:
            resp.release()
        text = data.decode("utf-8", "replace")
        if not 200 <= resp.status <= 299:
            raise ApiError(resp.status, text, method, path)
        return json.loads(text) if text else {}

    # -- conveniences ---------------------------------------------------------------------------

    async def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        md = obj["metadata"]
        return await self.request("POST", collection_path(obj["apiVersion"], obj["kind"], md["namespace"]), obj)

    async def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any]:
        return await self.request("GET", f"{collection_path(api_version, kind, namespace)}/{name}")

    async def merge_patch(
        self, api_version: str, kind: str, namespace: str, name: str, patch: Mapping[str, Any], *, subresource: str = ""
    ) -> dict[str, Any]:
        path = f"{collection_path(api_version, kind, namespace)}/{name}" + (f"/{subresource}" if subresource else "")
        return await self.request("PATCH", path, patch, content_type=MERGE_PATCH)

    async def delete(
        self,
        api_version: str,
        kind: str,
        namespace: str,
        name: str,
        *,
        uid: str | None = None,
        propagation: str = "Background",
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": propagation}
        if uid:
            body["preconditions"] = {"uid": uid}
        return await self.request("DELETE", f"{collection_path(api_version, kind, namespace)}/{name}", body)

    async def patch_ftj_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> dict[str, Any]:
        return await self.merge_patch(
            f"{GROUP}/{VERSION}", "FineTuneJob", namespace, name, {"status": status}, subresource="status"
        )
