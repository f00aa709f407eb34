"""deploy/: every overlay renders with `kubectl kustomize`, has the shape issue #7 asks for, and passes a
server-side dry-run apply on the local control plane (real admission, real schemas, real RBAC escalation checks)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from ftdev import deploy as deployctl

from tests.support.cluster import Cluster

OVERLAYS = ["kind", "gpu", "local"]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    k = deployctl.Kubectl()
    return {o: deployctl.render(o, k) for o in OVERLAYS}


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    hits = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(hits) == 1, f"expected one {kind}/{name}, found {len(hits)}"
    return hits[0]


def container(deploy: dict[str, Any]) -> dict[str, Any]:
    return deploy["spec"]["template"]["spec"]["containers"][0]


def env(deploy: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container(deploy).get("env", [])}


def defaults(docs: list[dict[str, Any]]) -> dict[str, str]:
    return find(docs, "ConfigMap", "finetune-defaults")["data"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_has_everything(rendered, overlay):
    docs = rendered[overlay]
    find(docs, "Namespace", "finetune-system")
    crd = find(docs, "CustomResourceDefinition", "finetunejobs.finetune.dev")
    assert crd["spec"]["names"]["shortNames"] == ["ftj"]
    for sa in ("finetune-operator", "finetune-api"):
        find(docs, "ServiceAccount", sa)
    find(docs, "ClusterRole", "finetune-operator")
    find(docs, "ClusterRoleBinding", "finetune-operator")
    find(docs, "ClusterRole", "finetune-trainer")
    policy = find(docs, "ValidatingAdmissionPolicy", "finetune-trainer-own-job")
    assert policy["spec"]["failurePolicy"] == "Fail"
    assert find(docs, "ValidatingAdmissionPolicyBinding", "finetune-trainer-own-job")["spec"]["validationActions"] == [
        "Deny"
    ]
    find(docs, "ClusterRole", "finetune-api-tenant")
    find(docs, "ClusterKopfPeering", "finetune-operator")
    find(docs, "Service", "finetune-api")
    find(docs, "ConfigMap", "finetune-defaults")

    op = find(docs, "Deployment", "finetune-operator")
    assert op["spec"]["replicas"] == 1
    assert op["spec"]["strategy"]["type"] == "Recreate"
    assert container(op)["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert op["spec"]["template"]["spec"]["serviceAccountName"] == "finetune-operator"

    api = find(docs, "Deployment", "finetune-api")
    assert api["spec"]["template"]["spec"]["serviceAccountName"] == "finetune-api"
    assert {"configMapRef": {"name": "finetune-defaults", "optional": True}} in container(api)["envFrom"]

    find(docs, "Namespace", "finetune-jobs")  # the default tenant: jobs never run in finetune-system
    for d in docs:
        if d["kind"] not in deployctl.CLUSTER_SCOPED:
            assert d["metadata"].get("namespace") in ("finetune-system", "finetune-jobs"), deployctl.name_of(d)
        else:
            assert "namespace" not in d["metadata"], deployctl.name_of(d)
        assert d["metadata"].get("labels", {}).get("app.kubernetes.io/part-of") == "finetune-operator"

    # Defaults are valid JSON where the API expects objects.
    data = defaults(docs)
    for key in ("FTAPI_RESOURCES", "FTAPI_HYPERPARAMETERS", "FTAPI_RUN_POLICY", "FTAPI_TRAINER_ENV"):
        assert isinstance(json.loads(data[key]), dict), key


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_defaults_are_valid_api_settings_and_specs(rendered, overlay, monkeypatch):
    """The ConfigMap is what the API reads (FTAPI_*): it must parse as ftapi Settings and yield a valid spec."""
    from ftapi.settings import Settings
    from ftcrd.types import HyperparametersSpec, ResourcesSpec, RunPolicySpec

    for key, value in defaults(rendered[overlay]).items():
        assert key.startswith("FTAPI_"), key
        assert key.removeprefix("FTAPI_").lower() in Settings.model_fields, f"{key} is not an API setting"
        monkeypatch.setenv(key, value)
    s = Settings()
    assert s.webhook_model in s.models
    ResourcesSpec.model_validate(s.resources)
    HyperparametersSpec.model_validate(s.hyperparameters)
    RunPolicySpec.model_validate(s.run_policy)


def test_kind_overlay_uses_local_images_and_tiny_cpu_defaults(rendered):
    docs = rendered["kind"]
    for name, image in (("finetune-operator", "operator"), ("finetune-api", "api")):
        c = container(find(docs, "Deployment", name))
        assert c["image"] == f"finetune-operator/{image}:dev"
        assert c["imagePullPolicy"] == "IfNotPresent"
    assert env(find(docs, "Deployment", "finetune-operator"))["FTO_TRAINER_IMAGE"] == "finetune-operator/trainer:dev"
    data = defaults(docs)
    assert data["FTAPI_WEBHOOK_MODEL"] == "tiny"
    assert json.loads(data["FTAPI_RESOURCES"])["gpusPerNode"] == 0
    emu = find(docs, "Deployment", "gcs-emulator")
    assert "--in-memory" in container(emu)["args"]
    find(docs, "Service", "gcs-emulator")
    assert "gcs-emulator.finetune-system.svc" in json.loads(data["FTAPI_TRAINER_ENV"])["STORAGE_EMULATOR_HOST"]


def test_gpu_overlay_targets_gpu_nodes_and_ships_no_secret(rendered):
    docs = rendered["gpu"]
    data = defaults(docs)
    res = json.loads(data["FTAPI_RESOURCES"])
    assert res["gpusPerNode"] >= 1
    assert res["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in res["tolerations"]
    assert data["FTAPI_WEBHOOK_MODEL"] == "zephyr"
    assert "REPLACE_ME" in data["FTAPI_OUTPUT_BUCKET"]
    # Re-applying the overlay must never overwrite real credentials or keys.
    assert not [d for d in docs if d["kind"] == "Secret"]
    op = find(docs, "Deployment", "finetune-operator")
    assert container(op)["image"].startswith("ghcr.io/")
    assert env(op)["FTO_TRAINER_IMAGE"].startswith("ghcr.io/")
    # The control plane stays off GPU nodes.
    for name in ("finetune-operator", "finetune-api"):
        assert not find(docs, "Deployment", name)["spec"]["template"]["spec"].get("tolerations")


def test_local_overlay_ports_do_not_collide(rendered):
    """Process-node pods share the host network: every listening port must be distinct."""
    docs = rendered["local"]
    api, op = find(docs, "Deployment", "finetune-api"), find(docs, "Deployment", "finetune-operator")
    api_port = int(env(api)["FTAPI_PORT"])
    assert env(api)["FTAPI_HOST"] == "127.0.0.1"
    assert [p["containerPort"] for p in container(api)["ports"]] == [api_port]
    liveness = int(env(op)["FTO_LIVENESS_ENDPOINT"].rsplit(":", 1)[1].split("/")[0])
    metrics = int(env(op)["FTO_METRICS_PORT"])
    assert {p["name"]: p["containerPort"] for p in container(op)["ports"]} == {"healthz": liveness, "metrics": metrics}
    ports = [api_port, liveness, metrics, 19023]
    assert len(set(ports)) == len(ports), ports
    assert all(p > 1024 for p in ports)
    emulator = json.loads(defaults(docs)["FTAPI_TRAINER_ENV"])["STORAGE_EMULATOR_HOST"]
    assert emulator.startswith("http://127.0.0.1:")


@pytest.mark.cluster
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_server_side_dry_run(rendered, overlay, cluster: Cluster):
    """`kubectl apply --server-side --dry-run=server` of the whole overlay (CRDs and the namespace are created for
    real first when missing, so the custom resources and namespaced objects can be checked)."""
    k = deployctl.Kubectl(kubeconfig=str(cluster.kubeconfig))
    out: list[str] = []
    deployctl.apply(rendered[overlay], k, dry_run=True, log=out.append)
    text = "\n".join(out)
    assert "deployment.apps/finetune-operator serverside-applied (server dry run)" in text, text
    assert "clusterkopfpeering.kopf.dev/finetune-operator serverside-applied (server dry run)" in text, text
