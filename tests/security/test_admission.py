"""The admission rules (ftcrd.admission) against the real apiserver with the real policies
(deploy/base/admission), as a namespace user whose only right is FineTuneJobs (impersonation): every job that
names a non-allow-listed image, an unlabelled ServiceAccount, Secret or PersistentVolumeClaim, a reserved
environment variable, a node selector, toleration or priority class outside the allow-lists, or that lives in the
operator's namespace, is refused at admission with the field named. Opted-in objects and allowed values pass.

The operator enforces the same rules when the policies are absent: test_operator_refuses_without_the_policies
removes their bindings and watches each job end Failed/AdmissionRefused without a Job."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from ftcrd.conditions import Reason
from ftcrd.names import LABEL_TRAINER_USE, TRAINER_USE_VALUE

from tests.support import ROOT
from tests.support.cluster import Cluster, wait_for
from tests.support.ftj import children, get_ftj, submit, tiny_ftj, wait_phase
from tests.support.identities import namespace_user
from tests.support.operator_process import apply_admission_policies

pytestmark = pytest.mark.cluster

POLICIES = ROOT / "deploy" / "base" / "admission" / "policies.yaml"
OPERATOR_NAMESPACE = "finetune-system"

# (case, spec overrides, the field the refusal names)
REFUSED: list[tuple[str, dict[str, Any], str]] = [
    ("image", {"image": "docker.io/evil/miner:latest"}, "spec.image"),
    ("image-lookalike", {"image": "finetune-operator/trainer-evil:1"}, "spec.image"),
    ("serviceaccount", {"serviceAccountName": "plain"}, "spec.serviceAccountName"),
    ("operator-sa-name", {"serviceAccountName": "default"}, "spec.serviceAccountName"),
    ("credentials", {"output.credentialsSecret": {"name": "plain", "key": "k"}}, "spec.output.credentialsSecret.name"),
    ("hf-token", {"model.hfTokenSecret": {"name": "plain", "key": "k"}}, "spec.model.hfTokenSecret.name"),
    ("model-claim", {"model.claimName": "plain-claim"}, "spec.model.claimName"),
    (
        "dataset-claim",
        {"dataset": {"volume": {"claimName": "plain-claim", "path": "d.json"}}},
        "spec.dataset.volume.claimName",
    ),
    ("env-credentials", {"env": [{"name": "GOOGLE_APPLICATION_CREDENTIALS", "value": "/x"}]}, "spec.env"),
    ("env-redirect", {"env": [{"name": "KUBERNETES_SERVICE_HOST", "value": "evil"}]}, "spec.env"),
    ("env-rank", {"env": [{"name": "MASTER_ADDR", "value": "x"}]}, "spec.env"),
    ("node-selector", {"resources.nodeSelector": {"kubernetes.io/hostname": "n1"}}, "spec.resources.nodeSelector"),
    (
        "toleration-any",
        {"resources.tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}, {"operator": "Exists"}]},
        "spec.resources.tolerations[1].key",
    ),
    ("priority", {"resources.priorityClassName": "system-cluster-critical"}, "spec.resources.priorityClassName"),
]

ALLOWED: list[tuple[str, dict[str, Any]]] = [
    ("plain", {}),
    ("image-tagged", {"image": "finetune-operator/trainer:v2"}),
    ("image-digest", {"image": "ghcr.io/finetune-operator/trainer@sha256:" + "a" * 64}),
    ("serviceaccount", {"serviceAccountName": "opted"}),
    (
        "secrets",
        {
            "output.credentialsSecret": {"name": "opted", "key": "k"},
            "model.hfTokenSecret": {"name": "opted", "key": "k"},
        },
    ),
    ("claims", {"model.claimName": "opted-claim", "dataset": {"volume": {"claimName": "opted-claim", "path": "d"}}}),
    ("gpu-shape", {"resources.nodeSelector": {"nvidia.com/gpu.present": "true"}}),
    ("gpu-taint", {"resources.tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]}),
    ("missing-secret", {"output.credentialsSecret": {"name": "not-created-yet", "key": "k"}}),
]


def referenced_objects(cluster: Cluster, namespace: str) -> None:
    """A ServiceAccount, Secret and claim of each kind, ``plain`` ones without and ``opted`` ones with the label."""
    opted = {LABEL_TRAINER_USE: TRAINER_USE_VALUE}
    objs = []
    for name, labels in (("plain", {}), ("opted", opted)):
        md = {"name": name, "labels": labels}
        objs.append({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": md})
        objs.append({"apiVersion": "v1", "kind": "Secret", "metadata": md, "stringData": {"k": "not-a-real-secret"}})
        objs.append(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": f"{name}-claim", "labels": labels},
                "spec": {"accessModes": ["ReadOnlyMany"], "resources": {"requests": {"storage": "1Mi"}}},
            }
        )
    cluster.apply(objs, namespace)


def body(name: str, overrides: dict[str, Any]) -> dict[str, Any]:
    out = tiny_ftj(name, **{k: v for k, v in overrides.items() if k != "env"})
    if "env" in overrides:
        out["spec"]["env"] = overrides["env"]
    return out


@pytest.fixture(scope="module")
def tenant(operator_rbac: Cluster) -> Iterator[str]:
    """A namespace with the referenced objects (module scope: the cases share it)."""
    from tests.support.cluster import unique_name

    ns = unique_name("admission")
    operator_rbac.kubectl("create", "namespace", ns)
    operator_rbac.kubectl("label", "namespace", ns, "finetune-operator.test=true")
    referenced_objects(operator_rbac, ns)
    try:
        yield ns
    finally:
        operator_rbac.kubectl("delete", "namespace", ns, "--wait=false", check=False)


@pytest.mark.parametrize(("case", "overrides", "field"), REFUSED, ids=[c[0] for c in REFUSED])
def test_a_namespace_user_is_refused_with_the_field_named(operator_rbac, tenant, case, overrides, field):
    alice = namespace_user(operator_rbac, tenant)
    out = alice.create(body(f"refused-{case}", overrides), tenant)
    assert out.returncode != 0, f"{case} was admitted"
    assert field in out.stderr, out.stderr
    assert "forbidden" in out.stderr.lower() or "invalid" in out.stderr.lower(), out.stderr
    assert get_ftj(operator_rbac, tenant, f"refused-{case}") is None


@pytest.mark.parametrize(("case", "overrides"), ALLOWED, ids=[c[0] for c in ALLOWED])
def test_opted_in_objects_and_allowed_values_pass(operator_rbac, tenant, case, overrides):
    alice = namespace_user(operator_rbac, tenant)
    out = alice.create(body(f"allowed-{case}", {**overrides, "runPolicy.suspend": True}), tenant)
    assert out.returncode == 0, out.stderr


def test_no_job_in_the_operator_namespace(operator_rbac):
    """Even a user allowed to create FineTuneJobs in finetune-system cannot: its ServiceAccounts reach everywhere."""
    alice = namespace_user(operator_rbac, OPERATOR_NAMESPACE, user="alice-system")
    try:
        out = alice.create(body("in-operator-namespace", {}), OPERATOR_NAMESPACE)
        assert out.returncode != 0 and "metadata.namespace" in out.stderr, out.stderr
        assert "the operator's own namespace" in out.stderr
    finally:
        operator_rbac.kubectl("-n", OPERATOR_NAMESPACE, "delete", "rolebinding", "finetunejobs-only-alice-system")
        operator_rbac.kubectl("-n", OPERATOR_NAMESPACE, "delete", "role", "finetunejobs-only")


def test_updates_are_judged_only_where_the_field_changes(operator_rbac, tenant):
    """A job admitted before (here: with an opted-in Secret that loses its label) can still be cancelled; changing
    a checked field to a refused value is refused."""
    alice = namespace_user(operator_rbac, tenant)
    name = "update-later"
    assert (
        alice.create(
            body(name, {"image": "finetune-operator/trainer:v1", "runPolicy.suspend": True}), tenant
        ).returncode
        == 0
    )
    patch = {"metadata": {"annotations": {"finetune.dev/cancelled": "true"}}}
    out = alice.kubectl("-n", tenant, "patch", "ftj", name, "--type=merge", "-p", json.dumps(patch))
    assert out.returncode == 0, out.stderr
    out = alice.kubectl("-n", tenant, "patch", "ftj", name, "--type=merge", "-p", '{"spec": {"image": "evil/x:1"}}')
    assert out.returncode != 0 and "spec.image" in out.stderr, out.stderr


@pytest.fixture
def without_policies(operator_rbac: Cluster, tenant: str) -> Iterator[Cluster]:
    """The admission policies' bindings removed (a cluster that never installed them), restored afterwards. Only
    the FineTuneJob rules: the trainer's own-job policy stays."""
    bindings = [
        d["metadata"]["name"]
        for d in yaml.safe_load_all(POLICIES.read_text())
        if d and d["kind"] == "ValidatingAdmissionPolicyBinding"
    ]
    # One probe per rule (every binding): the apiserver's policy cache drops and adds each binding on its own.
    probes = [body(f"probe-{case}", overrides) for case, overrides, _ in REFUSED if not case.startswith("env")]
    probe_list = json.dumps({"apiVersion": "v1", "kind": "List", "items": probes})

    def admitted() -> int:
        dry = operator_rbac.kubectl(
            "create", "--dry-run=server", "-n", tenant, "-f", "-", input=probe_list, check=False
        )
        return dry.stdout.count("created (server dry run)")

    operator_rbac.kubectl("delete", "validatingadmissionpolicybinding", *bindings, "--ignore-not-found")
    try:
        wait_for(lambda: admitted() == len(probes), 30, 0.3, "every admission binding to be gone")
        yield operator_rbac
    finally:
        apply_admission_policies(operator_rbac)  # as the session installed them (its allow-lists)
        wait_for(lambda: admitted() == 0, 30, 0.3, "every admission binding to be back")


def test_operator_refuses_without_the_policies(without_policies, running_operator, tenant):
    cluster = without_policies
    cases = [c for c in REFUSED if not c[0].startswith("env")]  # the CRD itself refuses those
    for case, overrides, _ in cases:
        submit(cluster, tenant, body(f"op-{case}", {**overrides, "runPolicy.backoffLimit": 0}))
    in_system = tiny_ftj("op-in-operator-namespace", fake=True)
    submit(cluster, OPERATOR_NAMESPACE, in_system)
    try:
        for case, _, field in cases:
            ftj = wait_phase(cluster, tenant, f"op-{case}", "Failed", timeout=90)
            status = ftj["status"]
            assert status["reason"] == Reason.ADMISSION_REFUSED, status
            assert field in status["message"], status["message"]
            assert children(cluster, tenant, f"op-{case}")["jobs"] == []  # no pod was ever possible
        status = wait_phase(cluster, OPERATOR_NAMESPACE, "op-in-operator-namespace", "Failed", timeout=90)["status"]
        assert status["reason"] == Reason.ADMISSION_REFUSED and "metadata.namespace" in status["message"]
        # the Secret the job named was read as metadata only: its value is nowhere in the status
        assert "not-a-real-secret" not in json.dumps(get_ftj(cluster, tenant, "op-credentials"))
    finally:
        cluster.kubectl("-n", OPERATOR_NAMESPACE, "delete", "ftj", "op-in-operator-namespace", "--wait=false")
        cluster.kubectl("-n", OPERATOR_NAMESPACE, "delete", "configmap", "tiny-dataset", "--ignore-not-found")
