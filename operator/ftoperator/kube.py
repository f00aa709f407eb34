"""A thin asynchronous Kubernetes client: JSON over aiohttp with kopf's own login (no client library).

The operator authenticates exactly as kopf does (:func:`connection_info`: the in-cluster ServiceAccount,
else ``$KUBECONFIG``) and talks plain JSON: no generated model classes. Importing kubernetes_asyncio (or
the sync client) costs ~70 MB of RSS and a second of CPU at start for nothing the operator needs;
``python -m ftoperator`` keeps them out of the process entirely.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import aiohttp
import kopf
from ftcrd.types import GROUP, KIND, PLURAL, VERSION

from ftoperator.settings import Settings

MERGE_PATCH = "application/merge-patch+json"
SA_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"
log = logging.getLogger("ftoperator.kube")


def connection_info(
    settings: kopf.OperatorSettings, logger: logging.Logger | logging.LoggerAdapter[Any]
) -> kopf.ConnectionInfo:
    """In-cluster ServiceAccount (token re-read on every call: kubelet rotates it), else $KUBECONFIG."""
    info: kopf.ConnectionInfo | None = None
    host = os.environ.get("KUBERNETES_SERVICE_HOST", "")
    if host and not os.environ.get("KUBECONFIG") and os.path.exists(SA_TOKEN):
        info = kopf.login_with_service_account(settings=settings, logger=logger)
        if info is not None:
            # kopf assumes https://kubernetes.default.svc (port 443); use the address the kubelet injects, as
            # client-go's rest.InClusterConfig does (the process node's apiserver is not on 443).
            port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
            address = f"[{host}]" if ":" in host else host
            info = dataclasses.replace(info, server=f"https://{address}:{port}")
    if info is None:
        info = kopf.login_with_kubeconfig(settings=settings, logger=logger)
    if info is None:
        raise kopf.LoginError("neither an in-cluster ServiceAccount nor a kubeconfig is available")
    return info


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


METADATA_ONLY = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"

# Collection paths of the child kinds (namespaced).
PATHS = {
    ("v1", "ServiceAccount"): "/api/v1/namespaces/{ns}/serviceaccounts",
    ("v1", "Secret"): "/api/v1/namespaces/{ns}/secrets",
    ("v1", "PersistentVolumeClaim"): "/api/v1/namespaces/{ns}/persistentvolumeclaims",
    ("v1", "Service"): "/api/v1/namespaces/{ns}/services",
    ("v1", "Pod"): "/api/v1/namespaces/{ns}/pods",
    ("v1", "Event"): "/api/v1/namespaces/{ns}/events",
    ("rbac.authorization.k8s.io/v1", "Role"): "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles",
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings",
    ("batch/v1", "Job"): "/apis/batch/v1/namespaces/{ns}/jobs",
    (f"{GROUP}/{VERSION}", KIND): f"/apis/{GROUP}/{VERSION}/namespaces/{{ns}}/{PLURAL}",
}


def collection_path(api_version: str, kind: str, namespace: str) -> str:
    return PATHS[(api_version, kind)].format(ns=namespace)


class Kube:
    def __init__(self, settings: kopf.OperatorSettings, connections: int) -> None:
        self.settings = settings
        self.connections = connections
        self.session: aiohttp.ClientSession | None = None
        self.server = ""

    def _open(self) -> None:
        info = connection_info(self.settings, log)
        self.server = info.server.rstrip("/")
        # No total/pool-wait timeout: under a burst, requests queue for a pooled connection (that wait is
        # not the server's fault); connecting and reading are bounded.
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.connections, ssl=info.as_ssl_context()),
            headers={**info.as_http_headers(), "User-Agent": "finetune-operator"},
            cookie_jar=aiohttp.DummyCookieJar(),  # the apiserver sets none; filtering the jar cost ~0.3 ms a request
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60),
        )

    @classmethod
    async def connect(cls, kopf_settings: kopf.OperatorSettings, settings: Settings) -> Kube:
        kube = cls(kopf_settings, settings.api_connections)
        kube._open()
        return kube

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    async def request(
        self,
        method: str,
        path: str,
        body: object = None,
        *,
        query: Mapping[str, str] | None = None,
        content_type: str = "application/json",
        accept: str = "application/json",
    ) -> dict[str, Any]:
        for attempt in (1, 2):
            if self.session is None:
                self._open()
            assert self.session is not None
            data = None if body is None else json.dumps(body)
            headers = {"Accept": accept, "Content-Type": content_type}
            async with self.session.request(
                method, self.server + path, data=data, params=query, headers=headers
            ) as resp:
                text = await resp.text()
                if resp.status == 401 and attempt == 1:  # rotated token: log in again once
                    await self.close()
                    self.session = None
                    continue
                if not 200 <= resp.status <= 299:
                    raise ApiError(resp.status, text, method, path)
                return json.loads(text) if text else {}
        raise AssertionError("unreachable")

    # -- conveniences ---------------------------------------------------------------------------

    async def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        md = obj["metadata"]
        return await self.request("POST", collection_path(obj["apiVersion"], obj["kind"], md["namespace"]), obj)

    async def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any]:
        return await self.request("GET", f"{collection_path(api_version, kind, namespace)}/{name}")

    async def get_metadata(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        """Only the object's metadata (PartialObjectMetadata): the admission check reads the labels of Secrets it
        may name, and their data never enters the operator."""
        path = f"{collection_path('v1', kind, namespace)}/{name}"
        return await self.request("GET", path, accept=METADATA_ONLY)

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
            f"{GROUP}/{VERSION}", KIND, namespace, name, {"status": status}, subresource="status"
        )
