"""The trainer's boundary (deploy/base/trainer/own-job-policy.yaml, rendered by ftcrd.policies), with the tokens a
trainer pod really holds (bound to its pod) against the real apiserver:

* the trainer of job ``a-b`` reports on ``a-b`` only: not on ``a.b`` (which a regex built from the name would
  have let through: ``.`` matches ``-``), not on ``a-b-0`` (whose pods' names extend its own);
* it may change ``progress``, ``metrics``, ``checkpoints`` and ``samples`` and nothing else: not ``phase``, ``conditions``,
  ``artifact``, nor remove what the operator wrote;
* the same holds for a custom ServiceAccount bound to ClusterRole finetune-trainer (``spec.serviceAccountName``),
  and a token of it that is bound to no pod reports on no job at all.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from ftcrd.names import LABEL_TRAINER_USE, TRAINER_IDENTITY, TRAINER_USE_VALUE

from tests.support import ROOT
from tests.support.cluster import Cluster
from tests.support.identities import Identity, as_token, parked_pod, pod_bound_token

pytestmark = pytest.mark.cluster

TRAINER_CLUSTERROLE = ROOT / "deploy" / "base" / "trainer" / "clusterrole.yaml"
PROGRESS = {"status": {"progress": {"step": 3, "totalSteps": 10, "stage": "training"}, "metrics": {"loss": 0.5}}}
SAMPLES = {"status": {"samples": {"step": 3, "items": [{"prompt": "p", "policy": "a"}]}}}


def job(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {
            "model": {"name": "tiny", "preset": "tiny"},
            "dataset": {"configMap": {"name": f"{name}-dataset"}},
            "output": {"bucket": "finetune-test"},
            "runPolicy": {"suspend": True},  # only the status is exercised
        },
    }


def patch_status(who: Identity, namespace: str, name: str, patch: dict[str, Any]) -> tuple[bool, str]:
    code, body = who.patch_status(namespace, name, patch)
    return code == 200, body


def status_of(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    return dict(cluster.get_json("ftj", name, namespace=namespace).get("status") or {})


@pytest.fixture
def jobs(operator_rbac: Cluster, namespace: str) -> str:
    from ftoperator import builders

    operator_rbac.kubectl("apply", "-f", str(TRAINER_CLUSTERROLE))
    operator_rbac.apply([job(n) for n in ("a-b", "a.b", "a-b-0", "mine")], namespace)
    operator_rbac.apply(builders.render_trainer_identity(namespace), namespace)
    operator_rbac.apply(
        [
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": "custom", "labels": {LABEL_TRAINER_USE: TRAINER_USE_VALUE}},
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": "custom-trainer"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": TRAINER_IDENTITY},
                "subjects": [{"kind": "ServiceAccount", "name": "custom", "namespace": namespace}],
            },
        ],
        namespace,
    )
    # what the operator writes: the trainer may not touch it
    for name in ("a-b", "mine"):
        operator_rbac.kubectl(
            "-n", namespace, "patch", "ftj", name, "--subresource=status", "--type=merge",
            "-p", json.dumps({"status": {"phase": "Running", "reason": "Training"}}),
        )  # fmt: skip
    return namespace


def test_the_shared_trainer_identity_reports_on_its_own_job_only(operator_rbac, jobs, tmp_path: Path):
    ns = jobs
    pod = parked_pod(operator_rbac, ns, "a-b-0-abcde", TRAINER_IDENTITY)
    trainer = as_token(operator_rbac, pod_bound_token(operator_rbac, ns, TRAINER_IDENTITY, pod), tmp_path)

    ok, err = patch_status(trainer, ns, "a-b", PROGRESS)
    assert ok, err
    assert status_of(operator_rbac, ns, "a-b")["progress"]["step"] == 3
    ok, err = patch_status(trainer, ns, "a-b", SAMPLES)  # evaluation samples are the trainer's too
    assert ok, err
    assert status_of(operator_rbac, ns, "a-b")["samples"]["step"] == 3

    for other in ("a.b", "a-b-0"):  # a regex metacharacter apart; a name extending its own
        ok, err = patch_status(trainer, ns, other, PROGRESS)
        assert not ok and "may only report the status of the FineTuneJob whose pod it runs in" in err, (other, err)
        assert "progress" not in status_of(operator_rbac, ns, other)

    # never what the operator decides
    for field, value in (
        ("phase", "Succeeded"),
        ("reason", "Completed"),
        ("conditions", [{"type": "Succeeded", "status": "True"}]),
        ("artifact", {"uri": "gs://elsewhere/stolen/", "sha256": "0" * 64}),
    ):
        ok, err = patch_status(trainer, ns, "a-b", {"status": {field: value}})
        assert not ok and "may only change status.progress, status.metrics, status.checkpoints" in err, (field, err)
    ok, err = patch_status(trainer, ns, "a-b", {"status": {"phase": None}})  # nor remove it
    assert not ok, err
    status = status_of(operator_rbac, ns, "a-b")
    assert status["phase"] == "Running" and "artifact" not in status and "conditions" not in status


def test_a_custom_service_account_is_held_to_the_same_rules(operator_rbac, jobs, tmp_path: Path):
    ns = jobs
    pod = parked_pod(operator_rbac, ns, "mine-0-fghij", "custom")
    custom = as_token(operator_rbac, pod_bound_token(operator_rbac, ns, "custom", pod), tmp_path, "custom")
    ok, err = patch_status(custom, ns, "mine", PROGRESS)
    assert ok, err
    ok, err = patch_status(custom, ns, "a-b", PROGRESS)
    assert not ok and "may only report the status of the FineTuneJob whose pod it runs in" in err, err
    ok, err = patch_status(custom, ns, "mine", {"status": {"phase": "Succeeded"}})
    assert not ok and "may only change status.progress" in err, err

    unbound = as_token(
        operator_rbac,
        operator_rbac.kubectl("create", "token", "custom", "-n", ns, "--duration=10m").stdout.strip(),
        tmp_path,
        "unbound",
    )
    ok, err = patch_status(unbound, ns, "mine", PROGRESS)
    assert not ok and "FineTuneJob whose pod it runs in" in err, err
    assert status_of(operator_rbac, ns, "mine")["phase"] == "Running"
