"""fttrainer.report against the real local apiserver, with exactly the rights a trainer pod has: the
namespace's trainer identity as the operator creates it (Role: patch ``finetunejobs/status``), a token bound
to a pod of the job (TokenRequest, as the kubelet projects it) and the admission policy that narrows the
identity to that job (deploy/base/trainer/own-job-policy.yaml). Checks that what the Reporter sends survives
the CRD's structural schema (nothing pruned) and that the token cannot touch another job, not even one whose
name extends its own (the failure is logged, never raised)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from fttrainer.report import Reporter

from tests.support.operator_process import install_crd_and_rbac

pytestmark = pytest.mark.cluster


def job(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {
            "model": {"name": "tiny", "preset": "tiny"},
            "dataset": {"configMap": {"name": f"{name}-dataset"}},
            "resources": {"nodes": 1, "gpusPerNode": 0},
            "output": {"bucket": "finetune-test"},
            # No operator may start pods for it: only the status is exercised here.
            "runPolicy": {"suspend": True},
        },
    }


@pytest.fixture(scope="module")
def crd(cluster):
    install_crd_and_rbac(cluster)  # the CRD and the trainer's admission policy
    deadline = time.monotonic() + 60
    while cluster.kubectl("get", "ftj", "-A", check=False).returncode != 0:
        assert time.monotonic() < deadline, "FineTuneJob never became servable"
        time.sleep(1)


def trainer_pod(cluster, namespace: str, job_name: str) -> tuple[str, str]:
    """The namespace's trainer identity and a never-scheduled pod named like the job's first pod."""
    from ftoperator import builders

    cluster.apply(builders.render_trainer_identity(namespace), namespace)
    pod = f"{job_name}-0-abcde"
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": pod},
            "spec": {
                "serviceAccountName": builders.TRAINER_IDENTITY,
                "nodeSelector": {"finetune.dev/test": "never-scheduled"},
                "containers": [{"name": "trainer", "image": "none"}],
            },
        },
        namespace,
    )
    uid = cluster.get_json("pod", pod, "-n", namespace)["metadata"]["uid"]
    return pod, uid


def service_account_dir(cluster, namespace: str, into: Path, pod: tuple[str, str] | None) -> Path:
    """What a pod of the trainer ServiceAccount finds in /var/run/secrets/kubernetes.io/serviceaccount: a
    token bound to the pod (as the kubelet projects it), or, with ``pod=None``, an unbound one."""
    into.mkdir(parents=True, exist_ok=True)
    bound = ["--bound-object-kind=Pod", f"--bound-object-name={pod[0]}", f"--bound-object-uid={pod[1]}"] if pod else []
    token = cluster.kubectl(
        "create", "token", "finetune-trainer", "-n", namespace, "--duration=10m", *bound
    ).stdout.strip()
    (into / "token").write_text(token)
    ca = cluster.kubectl("get", "configmap", "kube-root-ca.crt", "-n", namespace, "-o", "json").stdout
    (into / "ca.crt").write_text(json.loads(ca)["data"]["ca.crt"])
    (into / "namespace").write_text(namespace)
    return into


def assert_report_denied(cluster, namespace: str, name: str, caplog) -> None:
    """A report for job ``name`` with the environment's token: refused by the admission policy, logged (never
    raised), and nothing lands in that job's status."""
    rep = Reporter.from_env(rank=0)
    with caplog.at_level("WARNING", logger="fttrainer.report"):
        rep.progress(step=1, total_steps=2, epoch=0.5, examples=8, stage="training", metrics={"loss": 1.0})
        rep.close()
    assert rep.failures >= 1 and rep.sent == 0
    assert "HTTP 403" in caplog.text and "finetune-trainer-own-job" in caplog.text
    status = json.loads(cluster.kubectl("get", "ftj", name, "-n", namespace, "-o", "json").stdout).get("status", {})
    assert "progress" not in status


def pod_env(cluster, monkeypatch, namespace: str, name: str, sa_dir: Path) -> None:
    server = yaml.safe_load(cluster.kubeconfig.read_text())["clusters"][0]["cluster"]["server"]
    host, port = server.removeprefix("https://").rsplit(":", 1)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", host)
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", port)
    monkeypatch.setenv("FTJ_NAME", name)
    monkeypatch.setenv("FTJ_NAMESPACE", namespace)
    monkeypatch.setenv("FTJ_SERVICEACCOUNT_DIR", str(sa_dir))
    monkeypatch.setenv("FTJ_REPORT_INTERVAL", "0.2")


def test_status_patch_with_the_trainer_role(cluster, crd, namespace, monkeypatch, tmp_path, caplog):  # noqa: PLR0917
    name, other = "rep-job", "rep-job-0"  # the other job's pods would be rep-job-0-<i>-<suffix>
    cluster.apply([job(name), job(other)], namespace)
    sa_dir = service_account_dir(cluster, namespace, tmp_path / "sa", trainer_pod(cluster, namespace, name))
    pod_env(cluster, monkeypatch, namespace, name, sa_dir)

    rep = Reporter.from_env(rank=0)
    assert rep.enabled
    rep.progress(step=0, total_steps=0, epoch=0.0, examples=0, stage="loading", metrics={})
    rep.progress(
        step=12,
        total_steps=40,
        epoch=0.3,
        examples=96,
        stage="training",
        metrics={"loss": 0.65, "rewardAccuracy": 0.75, "rewardMargin": 0.1, "gradNorm": 2.5, "tokens": 4096},
    )
    rep.checkpoints([{"step": 12, "path": "/checkpoints/step-12", "metrics": {"loss": 0.65}}])
    rep.close()
    assert rep.failures == 0 and rep.sent >= 1

    status = json.loads(cluster.kubectl("get", "ftj", name, "-n", namespace, "-o", "json").stdout)["status"]
    p = status["progress"]
    assert {k: p[k] for k in ("step", "totalSteps", "examples", "percent", "summary", "stage")} == {
        "step": 12,
        "totalSteps": 40,
        "examples": 96,
        "percent": 30.0,
        "summary": "30% (12/40)",
        "stage": "training",
    }
    assert p["epoch"] == 0.3 and p["updatedAt"].endswith("Z")
    assert status["metrics"] == {
        "loss": 0.65,
        "rewardAccuracy": 0.75,
        "rewardMargin": 0.1,
        "gradNorm": 2.5,
        "tokens": 4096,
    }
    cp = status["checkpoints"][-1]
    assert cp["step"] == 12 and cp["path"] == "/checkpoints/step-12" and cp["metrics"] == {"loss": 0.65}

    # The same token against another job: denied by the admission policy; logged, never raised, no change.
    monkeypatch.setenv("FTJ_NAME", other)
    assert_report_denied(cluster, namespace, other, caplog)
    assert (sa_dir / "token").read_text() not in caplog.text


def test_an_unbound_trainer_token_reports_on_no_job(cluster, crd, namespace, monkeypatch, tmp_path, caplog):  # noqa: PLR0917
    """`kubectl create token finetune-trainer` (no pod behind it) passes RBAC but not the admission policy."""
    name = "rep-unbound"
    cluster.apply(job(name), namespace)
    trainer_pod(cluster, namespace, name)
    pod_env(cluster, monkeypatch, namespace, name, service_account_dir(cluster, namespace, tmp_path / "sa", None))
    assert_report_denied(cluster, namespace, name, caplog)
