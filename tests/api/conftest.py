"""The API as a real subprocess against the local control plane, with least-privilege credentials.

``api_server`` (module scope): installs the CRD, creates an API namespace with ServiceAccount
``finetune-api`` bound to the RBAC in deploy/base/api (keys Role + per-tenant RoleBindings of
ClusterRole finetune-api-tenant), two tenant namespaces and a keys Secret with one key for each,
mints a token for the ServiceAccount (``kubectl create token``), writes a kubeconfig with that token
(NOT admin) and runs ``python -m ftapi`` (uvicorn) on a free port until /readyz answers.
``start_api(..., webhooks={0: (url, secret)})`` gives tenant 0's key a webhook endpoint and signing secret;
``ApiServer.restart()`` stops the process and starts a new one (same port, settings and cluster state).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import secrets
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.cluster import Cluster, unique_name, wait_for
from tests.support.gcs import GcsEmulator

ROOT = Path(__file__).resolve().parents[2]
RBAC = ROOT / "deploy" / "base" / "api"
CRD = ROOT / "crds" / "finetunejob.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ApiServer:
    url: str
    cluster: Cluster
    api_namespace: str
    tenants: dict[str, str]  # namespace -> key
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def ns_a(self) -> str:
        return next(iter(self.tenants))

    @property
    def ns_b(self) -> str:
        return list(self.tenants)[1]

    def key(self, namespace: str) -> str:
        return self.tenants[namespace]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def launch(self) -> None:
        """Start ``python -m ftapi`` and wait until /readyz answers (the log is appended to)."""
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ftapi"], env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        proc = self.proc

        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"ftapi exited {proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=3) as r:
                    return r.status == 200
            except OSError:
                return False

        wait_for(ready, 60, 0.3, f"ftapi ready on {self.url}")

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.launch()

    def objects(self, namespace: str) -> dict[str, list[str]]:
        """FineTuneJobs and ConfigMaps (minus kube-root-ca.crt) in a namespace, by name."""
        ftj = self.cluster.get_json("finetunejobs", namespace=namespace)["items"]
        cms = self.cluster.get_json("configmaps", namespace=namespace)["items"]
        return {
            "finetunejobs": sorted(o["metadata"]["name"] for o in ftj),
            "configmaps": sorted(o["metadata"]["name"] for o in cms if o["metadata"]["name"] != "kube-root-ca.crt"),
        }


def _rendered(path: Path, api_ns: str) -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    for d in docs:
        if d["metadata"].get("namespace") == "finetune-system":
            d["metadata"]["namespace"] = api_ns
        for s in d.get("subjects") or []:
            if s.get("namespace") == "finetune-system":
                s["namespace"] = api_ns
    return docs


def sa_kubeconfig(cluster: Cluster, namespace: str, sa: str, path: Path) -> Path:
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    ctx = admin["contexts"][0]["context"]
    server = next(c for c in admin["clusters"] if c["name"] == ctx["cluster"])["cluster"]
    token = cluster.kubectl("create", "token", sa, "-n", namespace, "--duration=2h").stdout.strip()
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": server}],
        "users": [{"name": sa, "user": {"token": token}}],
        "contexts": [{"name": "api", "context": {"cluster": "local", "user": sa, "namespace": namespace}}],
        "current-context": "api",
    }
    path.write_text(yaml.safe_dump(cfg))
    path.chmod(0o600)
    return path


def ensure_crd(cluster: Cluster) -> None:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/finetunejobs.finetune.dev")


def start_api(
    cluster: Cluster,
    tmp: Path,
    *,
    gcs: GcsEmulator,
    extra_env: dict[str, str] | None = None,
    tenants: int = 2,
    webhooks: dict[int, tuple[str | None, str]] | None = None,
) -> Iterator[ApiServer]:
    ensure_crd(cluster)
    api_ns = unique_name("ftapi-sys")
    tenant_ns = [unique_name(f"ftapi-tenant-{c}") for c in "abc"[:tenants]]
    for ns in [api_ns, *tenant_ns]:
        cluster.kubectl("create", "namespace", ns)
        cluster.kubectl("label", "namespace", ns, "finetune-operator.test=true")
    try:
        docs = [
            *_rendered(RBAC / "serviceaccount.yaml", api_ns),
            *_rendered(RBAC / "role.yaml", api_ns),
            *_rendered(RBAC / "clusterrole-tenant.yaml", api_ns),
        ]
        binding = _rendered(RBAC / "tenant-rolebinding.yaml", api_ns)[0]
        for ns in tenant_ns:
            b = json.loads(json.dumps(binding))
            b["metadata"]["namespace"] = ns
            docs.append(b)
        keys = {ns: "ftk-test-" + secrets.token_urlsafe(24) for ns in tenant_ns}
        entries: list[dict[str, Any]] = [
            # communityId is bound to the key: these tenants' webhook tests name any (tests/security binds them)
            {
                "name": f"tenant-{i}",
                "sha256": hashlib.sha256(k.encode()).hexdigest(),
                "namespace": ns,
                "communities": ["*"],
            }
            for i, (ns, k) in enumerate(keys.items())
        ]
        data = {}
        for index, (url, secret) in (webhooks or {}).items():
            entries[index]["webhook"] = {"url": url, "secretKey": f"webhook-{index}"}
            data[f"webhook-{index}"] = base64.b64encode(secret.encode()).decode()
        data["keys.yaml"] = base64.b64encode(yaml.safe_dump(entries).encode()).decode()
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "finetune-api-keys", "namespace": api_ns},
                "data": data,
            }
        )
        cluster.apply(docs)
        wait_for(
            lambda: cluster.kubectl("get", "serviceaccount", "finetune-api", "-n", api_ns, check=False).returncode == 0,
            30,
            0.2,
            "ServiceAccount finetune-api",
        )
        kubeconfig = sa_kubeconfig(cluster, api_ns, "finetune-api", tmp / "api.kubeconfig")
        port = free_port()
        log_path = tmp / "api.log"
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(str(ROOT / p) for p in ("crds", "api")),
            "FTAPI_HOST": "127.0.0.1",
            "FTAPI_PORT": str(port),
            "FTAPI_KUBECONFIG": str(kubeconfig),
            "FTAPI_KEYS_NAMESPACE": api_ns,
            "FTAPI_KEYS_REFRESH_SECONDS": "2",
            "FTAPI_MAX_BODY_BYTES": str(2_000_000),
            "FTAPI_LOG_LEVEL": "debug",
            # uploaded files go to the emulator's bucket, each server under its own prefix
            **gcs.env(),
            "FTAPI_FILES_BUCKET": gcs.bucket,
            "FTAPI_FILES_PREFIX": f"files-{api_ns}",
            **(extra_env or {}),
        }
        env.pop("KUBECONFIG", None)
        server = ApiServer(f"http://127.0.0.1:{port}", cluster, api_ns, keys, log_path, None, env)
        server.launch()
        try:
            yield server
        finally:
            server.stop()
    finally:
        if not os.environ.get("FTO_KEEP_NAMESPACES"):
            for ns in [api_ns, *tenant_ns]:
                cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


@pytest.fixture(scope="module")
def api_server(cluster: Cluster, gcs: GcsEmulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    yield from start_api(cluster, tmp_path_factory.mktemp("ftapi"), gcs=gcs)
