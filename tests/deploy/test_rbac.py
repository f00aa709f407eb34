"""Least privilege, proved against the real RBAC authorizer: `kubectl auth can-i --as=system:serviceaccount:…`
for the operator, the API and a namespace's trainer ServiceAccount. Each row is something the component needs (yes)
or something it must never be able to do (no).

The RBAC objects come from the rendered `local` overlay (identical RBAC in every overlay), applied for real; the
trainer's Role is what the operator itself builds (ftoperator.builders.render_trainer_identity), created *as
the operator* so the RBAC escalation check proves the operator may grant it.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from ftdev import deploy as deployctl

from tests.support.cluster import Cluster

pytestmark = pytest.mark.cluster

SYSTEM_NS = "finetune-system"
TENANT_NS = "finetune-jobs"  # the default tenant namespace of the base
OPERATOR = f"system:serviceaccount:{SYSTEM_NS}:finetune-operator"
API = f"system:serviceaccount:{SYSTEM_NS}:finetune-api"
RBAC_KINDS = {"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}

# (verb, resource[/name], namespace or None for --all-namespaces/cluster scope, subresource, expected)
OPERATOR_TABLE = [
    ("create", "jobs.batch", "tenant-x", None, True),
    ("patch", "jobs.batch", "tenant-x", None, True),
    ("watch", "finetunejobs.finetune.dev", None, None, True),
    ("patch", "finetunejobs.finetune.dev", "tenant-x", "status", True),
    ("create", "services", "tenant-x", None, True),
    ("create", "serviceaccounts", "tenant-x", None, True),
    ("create", "roles.rbac.authorization.k8s.io", "tenant-x", None, True),
    ("create", "rolebindings.rbac.authorization.k8s.io", "tenant-x", None, True),
    ("watch", "pods", None, None, True),
    ("create", "events", "tenant-x", None, True),
    ("patch", "clusterkopfpeerings.kopf.dev", None, None, True),
    ("delete", "jobs.batch", "tenant-x", None, True),  # a gang or watchdog restart replaces the whole Job
    ("create", "persistentvolumeclaims", "tenant-x", None, True),  # the checkpoint claim <job>-checkpoints
    # the admission rules read the labels of what a job names (as metadata only; never list or watch)
    ("get", "secrets", "tenant-x", None, True),
    ("get", "serviceaccounts", "tenant-x", None, True),
    ("get", "persistentvolumeclaims", "tenant-x", None, True),
    # never
    ("list", "secrets", None, None, False),
    ("watch", "secrets", None, None, False),
    ("list", "secrets", "tenant-x", None, False),
    ("create", "pods", "tenant-x", None, False),
    ("delete", "pods", "tenant-x", None, False),
    ("create", "pods/exec", "tenant-x", None, False),
    ("create", "clusterrolebindings.rbac.authorization.k8s.io", None, None, False),
    ("bind", "clusterroles.rbac.authorization.k8s.io", None, None, False),
    ("escalate", "roles.rbac.authorization.k8s.io", "tenant-x", None, False),
    ("update", "customresourcedefinitions.apiextensions.k8s.io", None, None, False),
    ("delete", "nodes", None, None, False),
    ("create", "configmaps", "tenant-x", None, False),
    ("list", "serviceaccounts", "tenant-x", None, False),
    ("delete", "rolebindings.rbac.authorization.k8s.io", "tenant-x", None, False),
    ("create", "serviceaccounts", "tenant-x", "token", False),
]

API_TABLE = [
    ("get", "secrets/finetune-api-keys", SYSTEM_NS, None, True),
    ("create", "finetunejobs.finetune.dev", TENANT_NS, None, True),
    ("get", "finetunejobs.finetune.dev", TENANT_NS, None, True),
    ("list", "finetunejobs.finetune.dev", TENANT_NS, None, True),
    ("create", "configmaps", TENANT_NS, None, True),
    # the operator's namespace is no tenant: no jobs there (the admission rules refuse them too)
    ("create", "finetunejobs.finetune.dev", SYSTEM_NS, None, False),
    ("create", "configmaps", SYSTEM_NS, None, False),
    # never
    ("get", "secrets/firebase-service-account", TENANT_NS, None, False),
    ("list", "secrets", SYSTEM_NS, None, False),
    ("watch", "secrets", SYSTEM_NS, None, False),
    ("update", "secrets/finetune-api-keys", SYSTEM_NS, None, False),
    ("get", "secrets", "tenant-x", None, False),
    ("create", "pods", SYSTEM_NS, None, False),
    ("create", "jobs.batch", SYSTEM_NS, None, False),
    ("patch", "finetunejobs.finetune.dev", TENANT_NS, "status", False),
    ("create", "finetunejobs.finetune.dev", "tenant-x", None, False),  # no RoleBinding there: no access
    ("list", "finetunejobs.finetune.dev", None, None, False),
    ("create", "rolebindings.rbac.authorization.k8s.io", SYSTEM_NS, None, False),
]


def can_i(cluster: Cluster, who: str, verb: str, resource: str, ns: str | None, sub: str | None) -> bool:  # noqa: PLR0917
    args = ["auth", "can-i", verb, resource, f"--as={who}"]
    args += ["-n", ns] if ns else ["--all-namespaces"]
    if sub:
        args.append(f"--subresource={sub}")
    out = cluster.kubectl(*args, check=False)
    answer = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""
    assert answer in ("yes", "no"), f"kubectl {' '.join(args)}: {out.stdout} {out.stderr}"
    return answer == "yes"


@pytest.fixture(scope="module")
def rbac(cluster: Cluster) -> Cluster:
    """The overlay's namespace, CRDs and RBAC objects, applied for real (idempotent; shared with other tests)."""
    k = deployctl.Kubectl(kubeconfig=str(cluster.kubeconfig))
    docs = [d for d in deployctl.render("local", k) if d["kind"] in RBAC_KINDS or d["kind"].endswith("Definition")]
    deployctl.apply(docs, k, log=lambda m: None)
    return cluster


def _id(row: tuple[Any, ...]) -> str:
    verb, res, ns, sub, ok = row
    return f"{'can' if ok else 'cannot'}-{verb}-{res}{'/' + sub if sub else ''}@{ns or 'all'}"


@pytest.mark.parametrize("row", OPERATOR_TABLE, ids=_id)
def test_operator_permissions(rbac, row):
    verb, res, ns, sub, expected = row
    assert can_i(rbac, OPERATOR, verb, res, ns, sub) is expected


@pytest.mark.parametrize("row", API_TABLE, ids=_id)
def test_api_permissions(rbac, row):
    verb, res, ns, sub, expected = row
    assert can_i(rbac, API, verb, res, ns, sub) is expected


def test_trainer_identity_is_granted_by_the_operator_and_can_only_report(rbac: Cluster, namespace: str):
    from ftoperator import builders

    objs = builders.render_trainer_identity(namespace)
    # Created *as the operator's ServiceAccount*: the apiserver's escalation check only lets a subject grant
    # permissions it holds itself, so this proves the operator can set up each namespace's trainer identity.
    rbac.kubectl(
        "create", f"--as={OPERATOR}", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objs})
    )
    trainer = f"system:serviceaccount:{namespace}:{builders.TRAINER_IDENTITY}"
    # RBAC lets it patch any job's status in its namespace; which job is narrowed per pod by the admission
    # policy (deploy/base/trainer/own-job-policy.yaml), proven with pod-bound tokens in
    # tests/trainer/test_report_cluster.py.
    table = [
        ("patch", "finetunejobs.finetune.dev/some-job", "status", True),
        ("get", "finetunejobs.finetune.dev/some-job", "status", False),
        ("patch", "finetunejobs.finetune.dev/some-job", None, False),  # the spec: never
        ("delete", "finetunejobs.finetune.dev/some-job", None, False),
        ("list", "finetunejobs.finetune.dev", None, False),
        ("create", "pods", None, False),
        ("get", "secrets", None, False),
        ("create", "jobs.batch", None, False),
        ("get", "configmaps", None, False),
    ]
    wrong = [
        f"{verb} {res}{'/' + sub if sub else ''}: expected {'yes' if ok else 'no'}"
        for verb, res, sub, ok in table
        if can_i(rbac, trainer, verb, res, namespace, sub) is not ok
    ]
    assert not wrong, "\n".join(wrong)
    # In another namespace the trainer has nothing at all.
    assert not can_i(rbac, trainer, "patch", "finetunejobs.finetune.dev/some-job", SYSTEM_NS, "status")


def test_trainer_clusterrole_documents_the_same_rules(rbac: Cluster):
    """deploy/base/trainer's ClusterRole is the upper bound of every trainer Role the operator creates."""
    from ftoperator import builders

    cr = rbac.get_json("clusterrole", "finetune-trainer")
    role = next(o for o in builders.render_trainer_identity("y") if o["kind"] == "Role")
    assert role["rules"] == cr["rules"]
