"""An in-memory stand-in for ftapi.k8s.K8s, for router tests without a cluster."""

from __future__ import annotations

import base64
import copy
import itertools
import json
import uuid
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import yaml
from ftapi.auth import hash_key
from kubernetes_asyncio.client.exceptions import ApiException


def _err(status: int, message: str) -> ApiException:
    exc = ApiException(status=status, reason=message)
    exc.body = json.dumps({"kind": "Status", "message": message, "code": status})
    return exc


def _merge(dst: dict[str, Any], patch: dict[str, Any]) -> None:
    for k, v in patch.items():
        if v is None:
            dst.pop(k, None)
        elif isinstance(v, dict) and isinstance(dst.get(k), dict):
            _merge(dst[k], v)
        else:
            dst[k] = copy.deepcopy(v)


def _selected(obj: dict[str, Any], selector: str | None) -> bool:
    if not selector:
        return True
    labels = obj["metadata"].get("labels") or {}
    for term in selector.split(","):
        k, _, v = term.partition("=")
        if labels.get(k) != v:
            return False
    return True


class FakeK8s:
    def __init__(self, keys: dict[str, str] | None = None, keys_namespace: str = "finetune-system") -> None:
        self.ftjs: dict[tuple[str, str], dict[str, Any]] = {}
        self.configmaps: dict[tuple[str, str], dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self.rv = itertools.count(1)
        self.fail_configmap_create = False
        self.keys = keys or {}
        self.keys_namespace = keys_namespace
        self.clock = 1_700_000_000

    def _stamp(self, obj: dict[str, Any], namespace: str) -> None:
        self.clock += 1
        meta = obj.setdefault("metadata", {})
        meta["namespace"] = namespace
        meta["uid"] = str(uuid.uuid4())
        meta["resourceVersion"] = str(next(self.rv))
        meta["creationTimestamp"] = datetime.fromtimestamp(self.clock, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    async def server_version(self) -> str:
        return "v-fake"

    async def create_ftj(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        key = (namespace, body["metadata"]["name"])
        if key in self.ftjs:
            raise _err(409, f'finetunejobs.finetune.dev "{key[1]}" already exists')
        obj = copy.deepcopy(body)
        self._stamp(obj, namespace)
        self.ftjs[key] = obj
        return copy.deepcopy(obj)

    async def get_ftj(self, namespace: str, name: str) -> dict[str, Any]:
        if (namespace, name) not in self.ftjs:
            raise _err(404, f'finetunejobs.finetune.dev "{name}" not found')
        return copy.deepcopy(self.ftjs[(namespace, name)])

    async def list_ftj(self, namespace: str, label_selector: str | None = None) -> list[dict[str, Any]]:
        return [
            copy.deepcopy(o) for (ns, _), o in self.ftjs.items() if ns == namespace and _selected(o, label_selector)
        ]

    async def patch_ftj(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        obj = self.ftjs.get((namespace, name))
        if obj is None:
            raise _err(404, "not found")
        patch = copy.deepcopy(patch)
        rv = (patch.get("metadata") or {}).pop("resourceVersion", None)
        if rv is not None and rv != obj["metadata"]["resourceVersion"]:
            raise _err(409, "the object has been modified")
        _merge(obj, patch)
        obj["metadata"]["resourceVersion"] = str(next(self.rv))
        return copy.deepcopy(obj)

    async def delete_ftj(self, namespace: str, name: str) -> None:
        if self.ftjs.pop((namespace, name), None) is None:
            raise _err(404, "not found")
        for key, cm in list(self.configmaps.items()):
            owners = cm["metadata"].get("ownerReferences") or []
            if key[0] == namespace and any(o["name"] == name for o in owners):
                del self.configmaps[key]

    async def create_configmap(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        if self.fail_configmap_create:
            raise _err(422, "ConfigMap is invalid: []: Too long: must have at most 1048576 bytes")
        key = (namespace, body["metadata"]["name"])
        if key in self.configmaps:
            raise _err(409, "already exists")
        obj = copy.deepcopy(body)
        self._stamp(obj, namespace)
        self.configmaps[key] = obj
        return copy.deepcopy(obj)

    async def get_configmap(self, namespace: str, name: str) -> dict[str, Any]:
        if (namespace, name) not in self.configmaps:
            raise _err(404, f'configmaps "{name}" not found')
        return copy.deepcopy(self.configmaps[(namespace, name)])

    async def list_configmaps(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        return [
            copy.deepcopy(o)
            for (ns, _), o in self.configmaps.items()
            if ns == namespace and _selected(o, label_selector)
        ]

    async def list_configmap_metadata(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        """As the apiserver's PartialObjectMetadataList: metadata only."""
        return [{"metadata": o["metadata"]} for o in await self.list_configmaps(namespace, label_selector)]

    async def delete_configmap(self, namespace: str, name: str) -> None:
        if self.configmaps.pop((namespace, name), None) is None:
            raise _err(404, "not found")

    async def list_events(self, namespace: str, kind: str, name: str) -> list[dict[str, Any]]:
        return [
            copy.deepcopy(e)
            for e in self.events
            if e["metadata"]["namespace"] == namespace and e["involvedObject"]["name"] == name
        ]

    async def read_secret(self, namespace: str, name: str) -> Any:
        if namespace != self.keys_namespace or name != "finetune-api-keys":
            raise _err(404, "not found")
        entries = [
            {"name": f"key-{ns}", "sha256": hash_key(k), "namespace": ns, "communities": ["*"]}
            for k, ns in self.keys.items()
        ]
        data = base64.b64encode(yaml.safe_dump(entries).encode()).decode()
        return SimpleNamespace(data={"keys.yaml": data})

    async def close(self) -> None:
        pass
