"""deploy/chart: generated from the kustomize base (one source), rendered by a real ``helm`` (built from its Go module
by ``localcluster/build-tool.sh helm``), equal to ``kubectl kustomize deploy/base`` apart from Helm's own labels,
lint-clean, its values changing what they name, and accepted by the apiserver (server-side dry run)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from ftdev import chart
from ftdev import deploy as deployctl
from ftdev.demo import JOB_NAMESPACE

from tests.support import ROOT
from tests.support.cluster import Cluster

CHART = ROOT / "deploy" / "chart"
HELM_LABELS = {
    "helm.sh/chart",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
}
Obj = dict[str, Any]


@pytest.fixture(scope="module")
def helm() -> str:
    """The pinned helm binary (``make setup`` builds it once; cached by version)."""
    proc = subprocess.run(
        ["bash", str(ROOT / "localcluster" / "build-tool.sh"), "helm"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return str(Path(proc.stdout.strip().splitlines()[-1]) / "bin" / "helm")


def template(helm: str, *args: str) -> list[Obj]:
    proc = subprocess.run(
        [helm, "template", "finetune", str(CHART), "--include-crds", *args], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def key(doc: Obj) -> tuple[str, str, str]:
    return doc["kind"], doc["metadata"].get("namespace", ""), doc["metadata"]["name"]


def find(docs: list[Obj], kind: str, name: str) -> Obj:
    (hit,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return hit


def without_helm_labels(doc: Obj) -> Obj:
    """``doc`` without the labels Helm adds, and with JSON-valued ConfigMap settings parsed (the chart renders them
    from YAML values with toJson: same JSON, other spacing)."""
    doc = json.loads(json.dumps(doc))
    labels = doc["metadata"].get("labels") or {}
    for name in HELM_LABELS & set(labels):
        del labels[name]
    if "labels" in doc["metadata"] and not labels:
        del doc["metadata"]["labels"]
    if doc["kind"] == "ConfigMap":
        doc["data"] = {k: chart._json_value(v) for k, v in (doc.get("data") or {}).items()}
    return doc


@pytest.mark.unit
def test_chart_is_generated_from_the_base() -> None:
    files = chart.generate(deployctl.render(str(chart.BASE)))
    assert chart.stale(files) == [], "deploy/chart is stale: run `make chart`"


@pytest.mark.unit
def test_objects_added_to_the_base_reach_the_chart_behind_their_toggle() -> None:
    """A NetworkPolicy or admission policy the base gains later becomes a template without touching the generator."""
    docs = [
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "deny-all", "namespace": chart.NAMESPACE},
            "spec": {"podSelector": {}},
        },
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": "p"},
            "spec": {"validations": [{"expression": "true"}]},
        },
    ]
    files = chart.generate(docs)
    netpol = files["templates/networkpolicy-deny-all.yaml"]
    assert netpol.startswith("{{- if .Values.networkPolicies.enabled }}\n") and netpol.endswith("{{- end }}\n")
    assert "namespace: {{ .Values.namespace }}" in netpol
    assert files["templates/validatingadmissionpolicy-p.yaml"].startswith("{{- if .Values.admissionPolicies.enabled }}")


@pytest.mark.process
def test_helm_lint(helm: str) -> None:
    proc = subprocess.run([helm, "lint", "--strict", str(CHART)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


@pytest.mark.process
def test_helm_template_renders_the_kustomize_base(helm: str) -> None:
    rendered = {key(d): d for d in template(helm)}
    base = {key(d): d for d in deployctl.render(str(chart.BASE))}
    assert sorted(rendered) == sorted(base)
    for k, doc in base.items():
        assert without_helm_labels(rendered[k]) == without_helm_labels(doc), k
    templated = [d for d in rendered.values() if d["kind"] != "CustomResourceDefinition"]
    for doc in templated:  # every templated object carries Helm's labels on top of the base's
        assert set(doc["metadata"]["labels"]) >= HELM_LABELS, key(doc)
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "finetune-operator"


@pytest.mark.process
def test_values_set_images_bucket_defaults_namespace_and_toggles(helm: str) -> None:
    docs = template(
        helm,
        "--set",
        "namespace=ml-platform",
        "--set",
        "images.operator.repository=registry.example/fto/operator,images.operator.tag=1.2.3",
        "--set",
        "images.trainer.repository=registry.example/fto/trainer,images.trainer.tag=1.2.3",
        "--set",
        "images.api.pullPolicy=Always,api.replicas=3",
        "--set",
        "bucket=my-project.firebasestorage.app",
        "--set",
        "defaults.resources.gpusPerNode=8,defaults.webhookModel=tiny",
        "--set",
        "placeholderSecrets=false,admissionPolicies.enabled=false",
    )
    assert "finetune-system" not in yaml.safe_dump_all(docs)
    # the system's objects move with the value; the default tenant namespace's (NetworkPolicies, its trainer) stay
    assert {d["metadata"].get("namespace") for d in docs} <= {"ml-platform", JOB_NAMESPACE, None}
    op = find(docs, "Deployment", "finetune-operator")["spec"]["template"]["spec"]["containers"][0]
    assert op["image"] == "registry.example/fto/operator:1.2.3"
    assert {"name": "FTO_TRAINER_IMAGE", "value": "registry.example/fto/trainer:1.2.3"} in op["env"]
    api = find(docs, "Deployment", "finetune-api")
    assert api["spec"]["replicas"] == 3
    assert api["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] == "Always"
    data = find(docs, "ConfigMap", "finetune-defaults")["data"]
    assert data["FTAPI_OUTPUT_BUCKET"] == "my-project.firebasestorage.app"
    assert data["FTAPI_WEBHOOK_MODEL"] == "tiny"
    assert json.loads(data["FTAPI_RESOURCES"]) == {"nodes": 1, "gpusPerNode": 8, "shmSize": "8Gi"}
    kinds = {d["kind"] for d in docs}
    assert "Secret" not in kinds and "ValidatingAdmissionPolicy" not in kinds
    binding = find(docs, "ClusterRoleBinding", "finetune-operator")
    assert binding["subjects"][0]["namespace"] == "ml-platform"


def test_rendered_chart_passes_a_server_side_dry_run(helm: str, cluster: Cluster) -> None:
    """The apiserver validates every object (schemas, admission, RBAC escalation checks) without persisting any;
    CRDs first, as ``helm install`` installs crds/ first."""
    docs = template(helm, "--set", "namespace=finetune-helm-dry-run")
    out: list[str] = []
    deployctl.apply(docs, deployctl.Kubectl(kubeconfig=str(cluster.kubeconfig)), dry_run=True, log=out.append)
    applied = "\n".join(out)
    for kind, name in (("deployment.apps", "finetune-operator"), ("configmap", "finetune-defaults")):
        assert f"{kind}/{name} serverside-applied (server dry run)" in applied, applied
    cluster.kubectl("delete", "namespace", "finetune-helm-dry-run", "--ignore-not-found", "--wait=false")
