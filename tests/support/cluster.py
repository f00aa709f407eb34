"""The local control plane (``localcluster/cluster.sh``) as test fixtures, and helpers for tests that use it.

The session fixture ``cluster`` yields a :class:`Cluster`; tests call ``cluster.kubectl(...)`` (the venv's real
kubectl against the real apiserver) or build a ``kubernetes`` client with :meth:`Cluster.api_client`.

* ``cluster`` (session): reuses a healthy running cluster (``cluster.sh status``) or starts one with ``up``; it
  runs ``down`` at the end only when it started the cluster and no other pytest session still uses it (sessions
  register under ``$FTO_STATE_DIR/users/``; ``FTO_KEEP_CLUSTER=1`` keeps it).
* ``namespace``: a fresh namespace whose ``default`` ServiceAccount and ``kube-root-ca.crt`` exist (pods can be
  created at once), deleted after the test (``FTO_KEEP_NAMESPACES=1`` keeps it).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from ftdev import cluster as localcluster
from ftdev.cluster import CLUSTER_SH, state_dir

from tests.support import ROOT

__all__ = ["CLUSTER_SH", "KUBECTL", "ROOT", "Cluster", "state_dir"]

VENV_BIN = Path(sys.executable).parent
KUBECTL = str(VENV_BIN / "kubectl")
T = TypeVar("T")


@dataclass
class Cluster:
    """A running local cluster: its admin kubeconfig, state directory and a kubectl helper."""

    kubeconfig: Path
    state_dir: Path
    started_here: bool = False
    env: dict[str, str] = field(default_factory=dict)

    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run the venv's kubectl with the admin kubeconfig; raises on failure when ``check``."""
        proc = subprocess.run(
            [KUBECTL, "--kubeconfig", str(self.kubeconfig), *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def get_json(self, *args: str, namespace: str | None = None) -> Any:
        ns = ["-n", namespace] if namespace else []
        return json.loads(self.kubectl("get", *args, *ns, "-o", "json").stdout)

    def apply(self, obj: dict[str, Any] | list[dict[str, Any]], namespace: str | None = None) -> None:
        """``kubectl apply`` one object or a list of objects given as dicts."""
        body = {"apiVersion": "v1", "kind": "List", "items": obj} if isinstance(obj, list) else obj
        ns = ["-n", namespace] if namespace else []
        self.kubectl("apply", *ns, "-f", "-", input=json.dumps(body))

    def api_client(self) -> Any:
        """A ``kubernetes`` sync ApiClient authenticated as cluster admin."""
        from kubernetes import client, config

        cfg = client.Configuration()
        config.load_kube_config(config_file=str(self.kubeconfig), client_configuration=cfg)
        return client.ApiClient(cfg)

    @property
    def pods_dir(self) -> Path:
        """Where the process node keeps per-pod directories (``<ns>_<name>_<uid>/``: logs, volumes)."""
        return self.state_dir / "pods"

    def pod_dir(self, namespace: str, name: str) -> Path:
        uid = self.get_json("pod", name, namespace=namespace)["metadata"]["uid"]
        return self.pods_dir / f"{namespace}_{name}_{uid}"

    def pod_log(self, namespace: str, name: str, container: str | None = None) -> str:
        """A container's stdout+stderr as written by the process node (works after the pod ended)."""
        pod = self.get_json("pod", name, namespace=namespace)
        container = container or pod["spec"]["containers"][0]["name"]
        path = self.pods_dir / f"{namespace}_{name}_{pod['metadata']['uid']}" / f"{container}.log"
        return path.read_text(errors="replace") if path.exists() else ""


def wait_for(predicate: Callable[[], T], timeout: float = 60, interval: float = 0.5, what: str = "") -> T:
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = predicate()
        except Exception as exc:  # keep polling through transient API errors
            last = exc
        if last and not isinstance(last, Exception):
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}: last={last!r}")
        time.sleep(interval)


def unique_name(prefix: str) -> str:
    """A DNS-1123 name: ``prefix`` sanitised and truncated, plus a random suffix."""
    base = re.sub(r"[^a-z0-9-]+", "-", prefix.lower()).strip("-")[:40].strip("-") or "t"
    return f"{base}-{uuid.uuid4().hex[:6]}"


def py_container(script: str, name: str = "main", **extra: Any) -> dict[str, Any]:
    """A container that runs a Python snippet (the process node ignores the image)."""
    import textwrap

    return {"name": name, "image": "python:3.11-slim", "command": ["python", "-c", textwrap.dedent(script)], **extra}


def free_port_block(n: int = 2) -> int:
    """A base port such that base..base+n-1 are free on 127.0.0.1 right now (pods share the host network)."""
    import socket

    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + n > 65535:
            continue
        try:
            socks = []
            for p in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port block")


def pod_condition(pod: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next((c for c in pod.get("status", {}).get("conditions") or [] if c["type"] == ctype), {})


def job_condition(job: dict[str, Any], ctype: str) -> bool:
    return any(c["type"] == ctype and c["status"] == "True" for c in job.get("status", {}).get("conditions") or [])


def pid_alive(pid: int) -> bool:
    """True when ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def _users(state: Path) -> list[Path]:
    live = []
    for marker in (state / "users").glob("*"):
        with contextlib.suppress(ValueError, OSError):
            os.kill(int(marker.name), 0)
            live.append(marker)
            continue
        marker.unlink(missing_ok=True)  # a crashed session's marker
    return live


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    state = state_dir()
    if localcluster.healthy():
        kubeconfig, started = state / "admin.kubeconfig", False
    else:
        # A control plane that answers but is incomplete (say the process node died) is repaired
        # by `up` but stays someone else's: only a cluster started from nothing is torn down.
        existed = localcluster.apiserver_answers(state)
        kubeconfig, started = localcluster.up(), not existed
    marker = state / "users" / str(os.getpid())
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    c = Cluster(
        kubeconfig=kubeconfig, state_dir=state, started_here=started, env={**os.environ, "KUBECONFIG": str(kubeconfig)}
    )
    try:
        yield c
    finally:
        marker.unlink(missing_ok=True)
        if started and not _users(state) and not os.environ.get("FTO_KEEP_CLUSTER"):
            localcluster.down()


@pytest.fixture
def namespace(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace (ready for pods: its ServiceAccount and CA ConfigMap exist), deleted after."""
    name = unique_name(request.node.name.split("[")[0].removeprefix("test_").replace("_", "-")[:30])
    cluster.kubectl("create", "namespace", name)
    cluster.kubectl("label", "namespace", name, "finetune-operator.test=true")
    wait_for(
        lambda: cluster.kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode == 0,
        30,
        0.2,
        f"ServiceAccount default in {name}",
    )
    wait_for(
        lambda: cluster.kubectl("get", "configmap", "kube-root-ca.crt", "-n", name, check=False).returncode == 0,
        30,
        0.2,
        f"kube-root-ca.crt in {name}",
    )
    try:
        yield name
    finally:
        if not os.environ.get("FTO_KEEP_NAMESPACES"):
            cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
