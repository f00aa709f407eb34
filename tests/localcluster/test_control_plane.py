"""The control plane itself: real binaries answering, authorization wired, the process node registered."""

from __future__ import annotations

import calendar
import json
import subprocess
import time

import pytest

from tests.support.cluster import CLUSTER_SH, ROOT, Cluster

pytestmark = pytest.mark.cluster


def pinned_kube_version() -> str:
    for line in (ROOT / "localcluster" / "versions.env").read_text().splitlines():
        if line.startswith("KUBE_VERSION="):
            return line.split("=", 1)[1].strip()
    raise AssertionError("KUBE_VERSION missing from localcluster/versions.env")


def test_kubectl_version_reports_the_built_apiserver(cluster: Cluster):
    out = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert out["serverVersion"]["gitVersion"] == pinned_kube_version()
    assert out["clientVersion"]["gitVersion"].startswith("v1.")


def test_readyz_and_livez(cluster: Cluster):
    assert cluster.kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"
    verbose = cluster.kubectl("get", "--raw", "/readyz?verbose").stdout
    assert "[+]etcd ok" in verbose
    assert "readyz check passed" in verbose
    assert cluster.kubectl("get", "--raw", "/livez").stdout.strip() == "ok"


def test_cluster_sh_status_and_idempotent_up(cluster: Cluster):
    status = subprocess.run(["bash", str(CLUSTER_SH), "status"], capture_output=True, text=True, check=False)
    assert status.returncode == 0, status.stdout + status.stderr
    for component in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "processnode"):
        assert f"{component}" in status.stdout and "stopped" not in status.stdout
    before = (cluster.state_dir / "run" / "kube-apiserver.pid").read_text()
    up = subprocess.run(["bash", str(CLUSTER_SH), "up"], capture_output=True, text=True, check=False, timeout=300)
    assert up.returncode == 0, up.stderr
    assert up.stdout.strip().splitlines()[-1] == f"export KUBECONFIG={cluster.kubeconfig}"
    assert "reusing" in up.stderr
    assert (cluster.state_dir / "run" / "kube-apiserver.pid").read_text() == before


def test_auth_can_i(cluster: Cluster, namespace: str):
    assert cluster.kubectl("auth", "can-i", "*", "*", "--all-namespaces").stdout.strip() == "yes"
    sa = f"system:serviceaccount:{namespace}:default"
    # The default ServiceAccount has no RBAC grants: RBAC (not AlwaysAllow) is in force.
    denied = cluster.kubectl("auth", "can-i", "create", "pods", "-n", namespace, "--as", sa, check=False)
    assert denied.returncode == 1 and denied.stdout.strip() == "no"
    cluster.kubectl("create", "role", "pod-reader", "--verb=get,list", "--resource=pods", "-n", namespace)
    cluster.kubectl(
        "create",
        "rolebinding",
        "pod-reader",
        "--role=pod-reader",
        f"--serviceaccount={namespace}:default",
        "-n",
        namespace,
    )
    assert cluster.kubectl("auth", "can-i", "list", "pods", "-n", namespace, "--as", sa).stdout.strip() == "yes"
    assert (
        cluster.kubectl("auth", "can-i", "delete", "pods", "-n", namespace, "--as", sa, check=False).stdout.strip()
        == "no"
    )
    # The Node authorizer: the node may read its own Node but not delete others' namespaces.
    node = "system:node:process-node"
    assert (
        cluster.kubectl(
            "auth", "can-i", "get", "nodes/process-node", "--as", node, "--as-group", "system:nodes"
        ).stdout.strip()
        == "yes"
    )
    assert (
        cluster.kubectl(
            "auth", "can-i", "delete", "namespaces", "--as", node, "--as-group", "system:nodes", check=False
        ).stdout.strip()
        == "no"
    )


def test_process_node_is_ready_with_gpus_and_heartbeats(cluster: Cluster):
    node = cluster.get_json("node", "process-node")
    conditions = {c["type"]: c for c in node["status"]["conditions"]}
    assert conditions["Ready"]["status"] == "True"
    assert not node["spec"].get("taints"), node["spec"].get("taints")
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == "2"
    assert node["status"]["capacity"]["cpu"] == "16"
    assert node["status"]["capacity"]["memory"] == "64Gi"
    lease = cluster.get_json("lease", "process-node", namespace="kube-node-lease")
    assert lease["spec"]["holderIdentity"] == "process-node"
    renewed = calendar.timegm(time.strptime(lease["spec"]["renewTime"].split(".")[0], "%Y-%m-%dT%H:%M:%S"))
    assert time.time() - renewed < 30, lease["spec"]["renewTime"]


def test_controllers_publish_ca_and_serviceaccounts(cluster: Cluster, namespace: str):
    # Root-CA publisher and the service-account controller ran for the fresh namespace.
    cm = cluster.get_json("configmap", "kube-root-ca.crt", namespace=namespace)
    assert cm["data"]["ca.crt"] == (cluster.state_dir / "pki" / "ca.crt").read_text()
    assert cluster.get_json("serviceaccount", "default", namespace=namespace)["metadata"]["name"] == "default"
