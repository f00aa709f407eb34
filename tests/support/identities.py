"""Acting as someone other than the cluster admin: a namespace user with only FineTuneJob rights (impersonation),
a ServiceAccount token bound to a pod (what a trainer pod holds), and kubectl with exactly that token.

    user = namespace_user(cluster, ns)                    # Role: FineTuneJobs only
    user.kubectl("create", "-f", "-", input=...)          # kubectl --as=<user>
    token = pod_bound_token(cluster, ns, "finetune-trainer", pod_name)
    as_token(cluster, token, tmp_path).kubectl("patch", ...)
"""

from __future__ import annotations

import base64
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from ftcrd.names import GROUP, PLURAL, VERSION

from tests.support.cluster import KUBECTL, Cluster


@dataclass
class Identity:
    """kubectl as one identity: ``--as`` impersonation, or a kubeconfig holding a bearer token."""

    cluster: Cluster
    impersonate: str | None = None
    kubeconfig: Path | None = None
    token: str | None = None
    server: str = ""
    ca_file: Path | None = None

    def kubectl(self, *args: str, check: bool = False, input: str | None = None) -> subprocess.CompletedProcess[str]:
        if self.kubeconfig is not None:
            cmd = [KUBECTL, "--kubeconfig", str(self.kubeconfig), *args]
            return subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=120, check=check)
        return self.cluster.kubectl(f"--as={self.impersonate}", *args, check=check, input=input)

    def create(self, obj: dict[str, Any], namespace: str) -> subprocess.CompletedProcess[str]:
        return self.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(obj))

    def patch_status(self, namespace: str, name: str, patch: dict[str, Any]) -> tuple[int, str]:
        """A merge patch of a FineTuneJob's status with the token alone, as a trainer sends it (kubectl would GET
        first, which a trainer may not): (HTTP status, body)."""
        import ssl

        import httpx

        assert self.token is not None and self.ca_file is not None
        r = httpx.patch(
            f"{self.server}/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{name}/status",
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/merge-patch+json"},
            content=json.dumps(patch),
            verify=ssl.create_default_context(cafile=str(self.ca_file)),
            timeout=30,
        )
        return r.status_code, r.text


def namespace_user(cluster: Cluster, namespace: str, user: str = "alice") -> Identity:
    """``user`` with a Role allowing FineTuneJobs (and their status) in ``namespace`` and nothing else."""
    cluster.apply(
        [
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": {"name": "finetunejobs-only", "namespace": namespace},
                "rules": [{"apiGroups": [GROUP], "resources": [PLURAL], "verbs": ["create", "get", "list", "patch"]}],
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": f"finetunejobs-only-{user}", "namespace": namespace},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "finetunejobs-only"},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
            },
        ]
    )
    return Identity(cluster, impersonate=user)


def parked_pod(cluster: Cluster, namespace: str, name: str, service_account: str) -> tuple[str, str]:
    """A pod that is never scheduled (only its identity matters): (name, uid)."""
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name},
            "spec": {
                "serviceAccountName": service_account,
                "nodeSelector": {"finetune.dev/test": "never-scheduled"},
                "containers": [{"name": "trainer", "image": "none"}],
            },
        },
        namespace,
    )
    return name, cluster.get_json("pod", name, namespace=namespace)["metadata"]["uid"]


def pod_bound_token(cluster: Cluster, namespace: str, service_account: str, pod: tuple[str, str]) -> str:
    """A token of ``service_account`` bound to ``pod`` (as the kubelet projects it into the pod)."""
    bound = ["--bound-object-kind=Pod", f"--bound-object-name={pod[0]}", f"--bound-object-uid={pod[1]}"]
    return cluster.kubectl("create", "token", service_account, "-n", namespace, "--duration=10m", *bound).stdout.strip()


def as_token(cluster: Cluster, token: str, workdir: Path, name: str = "token") -> Identity:
    """kubectl with only ``token`` (the admin's server and CA, none of its credentials)."""
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    server = dict(admin["clusters"][0]["cluster"])
    if "certificate-authority" in server:
        ca_path = Path(server.pop("certificate-authority"))
        ca_path = ca_path if ca_path.is_absolute() else cluster.kubeconfig.parent / ca_path
        server["certificate-authority-data"] = base64.b64encode(ca_path.read_bytes()).decode()
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": server}],
        "users": [{"name": name, "user": {"token": token}}],
        "contexts": [{"name": name, "context": {"cluster": "local", "user": name}}],
        "current-context": name,
    }
    path = workdir / f"{name}.kubeconfig"
    path.write_text(yaml.safe_dump(cfg))
    path.chmod(0o600)
    ca = workdir / f"{name}-ca.crt"
    ca.write_bytes(base64.b64decode(server["certificate-authority-data"]))
    return Identity(cluster, kubeconfig=path, token=token, server=server["server"], ca_file=ca)
