"""The operator as a test dependency: ``python -m ftoperator`` as a subprocess with the repo's RBAC.

Usage (a plugin of tests/conftest.py)::

    def test_x(operator, namespace, cluster):
        cluster.apply(ftj_body, namespace)
        ...
        operator.kill(); operator.start()      # restart mid-job
        assert "create-workload" in operator.logs()

The session fixture ``operator``:

* applies the CRD (crds/finetunejob.yaml) and deploy/base/operator's ServiceAccount, ClusterRole,
  ClusterRoleBinding and kopf peering CRDs/object, as the admin;
* mints a token for ServiceAccount finetune-system/finetune-operator (``kubectl create token``) and writes a
  kubeconfig with it, so the operator runs with exactly the repo's RBAC (never admin): a missing verb
  fails the tests;
* runs the operator with free liveness/metrics ports and logs to a file under the session's tmp dir;
* allows the PriorityClasses :data:`TEST_PRIORITY_CLASSES` (the Kueue preemption tests' low and high classes) in
  both enforcers of the admission rules: the policies' ConfigMap and the operator's environment. The deploy
  default allows none.

Peering: the operator joins ClusterKopfPeering ``finetune-operator``. Each start uses a higher priority
than the previous one (and than replicas of earlier test sessions), so a restarted or second session's
operator takes over at once instead of pausing behind a killed replica's heartbeat.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from ftcrd.admission import LIST_KEYS
from ftcrd.names import ADMISSION_CONFIG
from ftdev import free_port

from tests.support import PYTHONPATH, ROOT
from tests.support.cluster import Cluster, wait_for

OPERATOR_NAMESPACE = "finetune-system"
OPERATOR_SA = "finetune-operator"
DEPLOY = ROOT / "deploy" / "base"
RBAC_FILES = (
    "operator/serviceaccount.yaml",
    "operator/clusterrole.yaml",
    "operator/clusterrolebinding.yaml",
    "operator/peering.yaml",
    "trainer/own-job-policy.yaml",  # what narrows each namespace's trainer identity to its own job
    "admission/policies.yaml",  # what a FineTuneJob may name (the operator enforces the same rules)
)
TEST_PRIORITY_CLASSES = ("fto-test-low", "fto-test-high")
"""The PriorityClasses test jobs may use (tests/support/kueue.py creates them with values 100 and 1000)."""
ALLOWED_PRIORITY_CLASSES_KEY = LIST_KEYS["priority_classes"]
ALLOWED_PRIORITY_CLASSES = ", ".join(TEST_PRIORITY_CLASSES)


def with_test_allow_lists(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``docs`` with the admission rules' ConfigMap allowing :data:`TEST_PRIORITY_CLASSES`."""
    for doc in docs:
        if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == ADMISSION_CONFIG:
            doc["data"][ALLOWED_PRIORITY_CLASSES_KEY] = ALLOWED_PRIORITY_CLASSES
    return docs


def apply_admission_policies(cluster: Cluster) -> None:
    """deploy/base's admission policies with the tests' allow-lists (admin; idempotent)."""
    docs = [d for d in yaml.safe_load_all((DEPLOY / "admission/policies.yaml").read_text()) if d]
    cluster.apply(with_test_allow_lists(docs))


def install_crd_and_rbac(cluster: Cluster) -> None:
    """CRD + the operator's ServiceAccount/RBAC/peering + the trainer's admission policy, applied as admin
    (idempotent)."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds" / "finetunejob.yaml"))
    cluster.kubectl("wait", "--for=condition=Established", "crd/finetunejobs.finetune.dev", "--timeout=60s")
    if cluster.kubectl("get", "namespace", OPERATOR_NAMESPACE, check=False).returncode != 0:
        cluster.kubectl("create", "namespace", OPERATOR_NAMESPACE, check=False)
    for name in RBAC_FILES:
        docs = [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]
        # The ClusterKopfPeering object needs its CRD established first.
        crds = [d for d in docs if d["kind"] == "CustomResourceDefinition"]
        rest = [d for d in docs if d["kind"] != "CustomResourceDefinition"]
        if crds:
            cluster.apply(crds)
            for crd in crds:
                cluster.kubectl(
                    "wait", "--for=condition=Established", f"crd/{crd['metadata']['name']}", "--timeout=60s"
                )
        if rest:
            cluster.apply(with_test_allow_lists(rest))


def token_kubeconfig(cluster: Cluster, path: Path, duration: str = "6h") -> Path:
    """A kubeconfig for the operator's ServiceAccount (TokenRequest), same server and CA as admin's."""
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    cl = admin["clusters"][0]["cluster"]
    token = cluster.kubectl(
        "create", "token", OPERATOR_SA, "-n", OPERATOR_NAMESPACE, f"--duration={duration}"
    ).stdout.strip()
    ca: dict[str, str] = {}
    if "certificate-authority-data" in cl:
        ca["certificate-authority-data"] = cl["certificate-authority-data"]
    elif "certificate-authority" in cl:
        ca_path = Path(cl["certificate-authority"])
        if not ca_path.is_absolute():
            ca_path = cluster.kubeconfig.parent / ca_path
        ca["certificate-authority-data"] = base64.b64encode(ca_path.read_bytes()).decode()
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": {"server": cl["server"], **ca}}],
        "users": [{"name": OPERATOR_SA, "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": "local", "user": OPERATOR_SA}}],
        "current-context": "operator",
    }
    path.write_text(yaml.safe_dump(cfg))
    path.chmod(0o600)
    return path


class OperatorProcess:
    """One operator replica (a subprocess); ``start``/``stop``/``kill`` may be called repeatedly."""

    _priority_base = int(time.time()) % 100_000_000  # later test sessions outrank earlier ones

    def __init__(self, cluster: Cluster, workdir: Path, *, name: str = "operator", env: dict[str, str] | None = None):
        self.cluster = cluster
        self.workdir = workdir
        self.name = name
        self.kubeconfig = workdir / f"{name}.kubeconfig"
        self.log_path = workdir / f"{name}.log"
        self.extra_env = dict(env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.command = [sys.executable, "-m", "ftoperator"]  # e.g. under cProfile for bench/operator_bench.py --profile
        self.starts = 0
        self.healthz_port = 0
        self.metrics_port = 0
        self.priority = 0

    def start(self, *, priority: int | None = None, wait_ready: bool = True) -> OperatorProcess:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        token_kubeconfig(self.cluster, self.kubeconfig)
        self.starts += 1
        OperatorProcess._priority_base += 10
        self.priority = priority if priority is not None else OperatorProcess._priority_base
        self.healthz_port, self.metrics_port = free_port(), free_port()
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("KUBERNETES_", "FTO_")) and k not in ("KUBECONFIG",)
        }
        env.update(
            KUBECONFIG=str(self.kubeconfig),
            PYTHONPATH=PYTHONPATH,
            PYTHONUNBUFFERED="1",
            FTO_LIVENESS_ENDPOINT=f"http://127.0.0.1:{self.healthz_port}/healthz",
            FTO_METRICS_PORT=str(self.metrics_port),
            FTO_PRIORITY=str(self.priority),
            FTO_PEERING_LIFETIME="10",
            FTO_TTL_SWEEP_SECONDS="2",
            FTO_IMAGE_PULL_GRACE_SECONDS="60",
            FTO_TRAINER_IMAGE="finetune-operator/trainer:test",
            FTO_HANDLER_BACKOFF="1",
            FTO_ALLOW_ENTRYPOINT_ANNOTATION="true",
            FTO_LOG_FORMAT="plain",
            **{ALLOWED_PRIORITY_CLASSES_KEY: ALLOWED_PRIORITY_CLASSES},
        )
        env.update(self.extra_env)
        with self.log_path.open("ab") as log:
            log.write(f"\n===== start #{self.starts} priority {self.priority} =====\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.command,
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if wait_ready:
            self.wait_healthy()
        return self

    @property
    def healthz_url(self) -> str:
        return f"http://127.0.0.1:{self.healthz_port}/healthz"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_healthy(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running():
                raise AssertionError(f"operator exited ({self.proc and self.proc.returncode}):\n{self.logs()[-4000:]}")
            try:
                with urllib.request.urlopen(self.healthz_url, timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"operator {self.name} not healthy after {timeout}s:\n{self.logs()[-4000:]}")

    def healthz(self) -> Any:
        with urllib.request.urlopen(self.healthz_url, timeout=5) as r:
            return json.loads(r.read() or b"{}")

    def metrics(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=5) as r:
            return r.read().decode()

    def stop(self, timeout: float = 30) -> None:
        """Graceful stop (SIGTERM; kopf withdraws from peering)."""
        if self.running():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def kill(self) -> None:
        """SIGKILL, as when a node dies: no cleanup, the peering heartbeat lingers until it expires."""
        if self.running():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(10)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def wait_admission_enforced(cluster: Cluster, timeout: float = 60) -> None:
    """Until the apiserver enforces the admission policies just applied (its policy cache follows the objects a
    moment later): a forbidden image and an unlabelled ServiceAccount are both refused at a server dry run."""
    from tests.support.ftj import tiny_ftj

    probes = [tiny_ftj("admission-probe-image", image="evil/probe:1"), tiny_ftj("admission-probe-sa")]
    probes[1]["spec"]["serviceAccountName"] = "default"  # exists in every namespace, never opted in

    def enforced() -> bool:
        for probe in probes:
            dry = cluster.kubectl(
                "create", "--dry-run=server", "-n", "default", "-f", "-", input=json.dumps(probe), check=False
            )
            if dry.returncode == 0:
                return False
        return True

    wait_for(enforced, timeout, 0.3, "the admission policies to be enforced")


@pytest.fixture(scope="session")
def operator_rbac(cluster: Cluster) -> Cluster:
    """CRD + operator RBAC installed (admin), without starting an operator; the admission policies enforced."""
    install_crd_and_rbac(cluster)
    wait_admission_enforced(cluster)
    return cluster


@pytest.fixture(scope="session")
def operator(operator_rbac: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    """The operator, running for the whole session with the repo's RBAC. Tests that stop or kill it must
    leave it running (``operator.start()``)."""
    proc = OperatorProcess(operator_rbac, tmp_path_factory.mktemp("operator"))
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()
        sys.stderr.write(f"\noperator log: {proc.log_path}\n")


@pytest.fixture
def running_operator(operator: OperatorProcess) -> OperatorProcess:
    """``operator``, (re)started if an earlier test left it stopped."""
    if not operator.running():
        operator.start()
    return operator
