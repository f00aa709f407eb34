"""ServiceAccount tokens: RBAC limits what they may do; a pod's projected token reaches the apiserver."""

from __future__ import annotations

import json
import ssl
import subprocess
import urllib.error
import urllib.request
from typing import Any

import pytest

from tests.support.cluster import KUBECTL, Cluster, pod_condition, py_container, wait_for

pytestmark = pytest.mark.cluster


def restricted_account(cluster: Cluster, namespace: str) -> None:
    """ServiceAccount ``reporter`` may only get/list ConfigMaps in the namespace."""
    cluster.kubectl("create", "serviceaccount", "reporter", "-n", namespace)
    cluster.kubectl("create", "role", "cm-reader", "--verb=get,list", "--resource=configmaps", "-n", namespace)
    cluster.kubectl(
        "create",
        "rolebinding",
        "cm-reader",
        "--role=cm-reader",
        f"--serviceaccount={namespace}:reporter",
        "-n",
        namespace,
    )


def call(cluster: Cluster, token: str, path: str, method: str = "GET", body: Any = None) -> int:
    ctx = ssl.create_default_context(cafile=str(cluster.state_dir / "pki" / "ca.crt"))
    server = json.loads(cluster.kubectl("config", "view", "-o", "json").stdout)["clusters"][0]["cluster"]["server"]
    req = urllib.request.Request(
        server + path,
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


def test_restricted_token_is_refused_outside_its_role(cluster: Cluster, namespace: str):
    restricted_account(cluster, namespace)
    token = cluster.kubectl("create", "token", "reporter", "-n", namespace, "--duration=10m").stdout.strip()
    assert call(cluster, token, f"/api/v1/namespaces/{namespace}/configmaps") == 200
    assert call(cluster, token, f"/api/v1/namespaces/{namespace}/configmaps/kube-root-ca.crt") == 200
    # Verbs and resources outside the Role: 403 from the apiserver.
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}
    assert call(cluster, token, f"/api/v1/namespaces/{namespace}/configmaps", "POST", cm) == 403
    assert call(cluster, token, f"/api/v1/namespaces/{namespace}/configmaps/kube-root-ca.crt", "DELETE") == 403
    assert call(cluster, token, f"/api/v1/namespaces/{namespace}/secrets") == 403
    assert call(cluster, token, "/api/v1/namespaces/default/configmaps") == 403
    assert call(cluster, "not-a-token", f"/api/v1/namespaces/{namespace}/configmaps") == 401
    server = json.loads(cluster.kubectl("config", "view", "-o", "json").stdout)["clusters"][0]["cluster"]["server"]
    as_sa = [
        KUBECTL,
        "--kubeconfig",
        "/dev/null",
        "--server",
        server,
        "--token",
        token,
        "--certificate-authority",
        str(cluster.state_dir / "pki" / "ca.crt"),
        "-n",
        namespace,
    ]
    allowed = subprocess.run(
        [*as_sa, "get", "configmap", "kube-root-ca.crt", "-o", "name"], capture_output=True, text=True, check=False
    )
    assert allowed.returncode == 0 and allowed.stdout.strip() == "configmap/kube-root-ca.crt", allowed.stderr
    denied = subprocess.run(
        [*as_sa, "delete", "configmap", "kube-root-ca.crt"], capture_output=True, text=True, check=False
    )
    assert denied.returncode != 0
    assert "Error from server (Forbidden)" in denied.stderr and "cannot delete resource" in denied.stderr


IN_POD_SCRIPT = """
import json, os, pathlib, subprocess
from kubernetes import client, config
from kubernetes.client.rest import ApiException

sa_dir = pathlib.Path("/var/run/secrets/kubernetes.io/serviceaccount")
ns = (sa_dir / "namespace").read_text()
config.load_incluster_config()
v1 = client.CoreV1Api()
result = {"namespace": ns, "files": sorted(p.name for p in sa_dir.iterdir() if not p.name.startswith(".."))}
result["listed"] = sorted(cm.metadata.name for cm in v1.list_namespaced_config_map(ns).items)
try:
    v1.create_namespaced_config_map(ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="nope")))
    result["create"] = 201
except ApiException as exc:
    result["create"] = exc.status
try:
    v1.list_namespaced_secret(ns)
    result["secrets"] = 200
except ApiException as exc:
    result["secrets"] = exc.status
host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"]
token = (sa_dir / "token").read_text()
curl = subprocess.run(
    ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", str(sa_dir / "ca.crt"),
     "-H", "Authorization: Bearer " + token,
     f"https://kubernetes.default.svc:{port}/api/v1/namespaces/{ns}/configmaps"],
    capture_output=True, text=True)
result.update(curl=curl.stdout, curlErr=curl.stderr, host=host)
pathlib.Path("/dev/termination-log").write_text(json.dumps(result))
import time
time.sleep(float(os.environ.get("LINGER", "0")))
"""


def test_projected_token_lets_an_in_pod_client_call_the_apiserver(cluster: Cluster, namespace: str):
    restricted_account(cluster, namespace)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "in-cluster"},
        "spec": {
            "serviceAccountName": "reporter",
            "restartPolicy": "Never",
            "containers": [py_container(IN_POD_SCRIPT, env=[{"name": "LINGER", "value": "120"}])],
        },
    }
    cluster.apply(pod, namespace)

    def message() -> dict[str, Any] | None:
        p = cluster.get_json("pod", "in-cluster", namespace=namespace)
        if p["status"].get("phase") == "Failed":
            raise AssertionError(cluster.pod_log(namespace, "in-cluster"))
        path = cluster.pod_dir(namespace, "in-cluster") / "main.termination-log"
        text = path.read_text() if path.exists() else ""
        return json.loads(text) if text else None

    result = wait_for(message, 60, 0.3, "the in-pod client's result")
    assert result["namespace"] == namespace
    assert result["files"] == ["ca.crt", "namespace", "token"]
    assert "kube-root-ca.crt" in result["listed"]
    assert result["create"] == 403
    assert result["secrets"] == 403
    assert result["curl"] == "200", result["curlErr"]
    assert result["host"] == "127.0.0.1"

    # The token is a bound TokenRequest token: valid while the pod lives, refused once it is gone.
    p = cluster.get_json("pod", "in-cluster", namespace=namespace)
    assert pod_condition(p, "Ready")["status"] == "True"
    volume = next(v["name"] for v in p["spec"]["volumes"] if v["name"].startswith("kube-api-access-"))
    token = (cluster.pod_dir(namespace, "in-cluster") / "volumes" / volume / "token").read_text()
    claims = json.loads(_b64url(token.split(".")[1]))
    assert claims["sub"] == f"system:serviceaccount:{namespace}:reporter"
    assert claims["kubernetes.io"]["pod"]["name"] == "in-cluster"
    assert call(cluster, token, f"/api/v1/namespaces/{namespace}/configmaps") == 200
    cluster.kubectl("delete", "pod", "in-cluster", "-n", namespace, "--wait=true", "--timeout=60s")
    wait_for(
        lambda: call(cluster, token, f"/api/v1/namespaces/{namespace}/configmaps") == 401,
        30,
        0.5,
        "the bound token to be rejected after pod deletion",
    )


def _b64url(s: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))
