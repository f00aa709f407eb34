"""The NetworkPolicies of deploy/base as objects. The process node shares the host network and enforces no policy
(docs/security.md says so), so what is proven here is that they are valid (server-side dry run against the real
apiserver) and say what docs/security.md claims: a pure check of their selectors and ports against the pods they
are meant for (the trainer pods the operator renders, the API and operator Deployments)."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import yaml
from ftcrd.names import LABEL_JOB
from ftdev import deploy as deployctl

from tests.support import ROOT
from tests.support.ftj import tiny_ftj

BASE = ROOT / "deploy" / "base"
TRAINER_POLICY = BASE / "tenant" / "networkpolicy.yaml"
SYSTEM_POLICIES = BASE / "network.yaml"
PRIVATE = {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"}


def docs(path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A LabelSelector (matchLabels, matchExpressions In/NotIn/Exists/DoesNotExist) against a pod's labels."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e["key"], e["operator"], e.get("values") or []
        ok = {
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
            "In": labels.get(key) in values,
            "NotIn": labels.get(key) not in values,
        }[op]
        if not ok:
            return False
    return True


def trainer_pod_labels() -> dict[str, str]:
    from ftoperator import builders

    return builders.render_job(
        builders.parse({**tiny_ftj("j"), "metadata": {"name": "j", "namespace": "n", "uid": "u"}})
    )["spec"]["template"]["metadata"]["labels"]


def test_trainer_pods_talk_only_to_peers_dns_the_api_server_and_https_outside():
    (policy,) = docs(TRAINER_POLICY)
    spec = policy["spec"]
    labels = trainer_pod_labels()
    assert selects(spec["podSelector"], labels), "the policy must select the pods the operator creates"
    assert not selects(spec["podSelector"], {"app.kubernetes.io/name": "finetune-api"})
    assert set(spec["policyTypes"]) == {"Ingress", "Egress"}

    # ingress: only from pods of the namespace's jobs (torchrun's store and collectives), any port
    (ingress,) = spec["ingress"]
    (peer,) = ingress["from"]
    assert set(peer) == {"podSelector"} and selects(peer["podSelector"], labels)
    assert not selects(peer["podSelector"], {"app": "anything-else"})

    rules = spec["egress"]
    peers = [r for r in rules if "ports" not in r]
    assert len(peers) == 1 and [set(t) for t in peers[0]["to"]] == [{"podSelector"}]
    assert selects(peers[0]["to"][0]["podSelector"], labels)
    dns = next(r for r in rules if any(p["port"] == 53 for p in r.get("ports", [])))
    assert {(p["protocol"], p["port"]) for p in dns["ports"]} == {("UDP", 53), ("TCP", 53)}
    (to,) = dns["to"]
    assert to["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "kube-system"}
    assert to["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}
    apiserver = next(r for r in rules if any(p["port"] == 6443 for p in r.get("ports", [])))
    assert {p["port"] for p in apiserver["ports"]} == {443, 6443}
    assert {t["ipBlock"]["cidr"] for t in apiserver["to"]} == PRIVATE
    internet = next(r for r in rules if r.get("to") and r["to"][0].get("ipBlock", {}).get("cidr") == "0.0.0.0/0")
    assert [(p["protocol"], p["port"]) for p in internet["ports"]] == [("TCP", 443)]
    # nothing inside the cluster or the metadata server through the HTTPS rule
    assert PRIVATE | {"169.254.0.0/16"} <= set(internet["to"][0]["ipBlock"]["except"])
    # every other rule has ports: no rule opens everything
    assert all(r.get("ports") for r in rules if r is not peers[0])


@pytest.mark.parametrize("overlay", ["local", "kind", "gpu"])
def test_the_api_and_the_operator_accept_only_what_they_serve(overlay):
    rendered = deployctl.render(overlay, deployctl.Kubectl())
    policies = {d["metadata"]["name"]: d for d in rendered if d["kind"] == "NetworkPolicy"}
    for deployment, served in (("finetune-api", {"http"}), ("finetune-operator", {"healthz", "metrics"})):
        dep = next(d for d in rendered if d["kind"] == "Deployment" and d["metadata"]["name"] == deployment)
        pod_labels = dep["spec"]["template"]["metadata"]["labels"]
        matching = [p for p in policies.values() if p["metadata"]["namespace"] == dep["metadata"]["namespace"]]
        mine = [p for p in matching if selects(p["spec"]["podSelector"], pod_labels)]
        assert len(mine) == 1, f"{deployment}: {len(mine)} policies"
        spec = mine[0]["spec"]
        assert spec["policyTypes"] == ["Ingress"]
        ports = {p["port"] for rule in spec["ingress"] for p in rule["ports"]}
        assert ports == served
        # named ports: they follow the container's ports wherever an overlay moves them
        container_ports = {p["name"] for c in dep["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
        assert ports <= container_ports
    trainer = policies["finetune-trainer"]
    assert trainer["metadata"]["namespace"] == "finetune-jobs"


def test_the_policies_are_valid_objects(cluster):
    """Server-side dry run: the apiserver's own validation of every NetworkPolicy of the base (and the kind
    overlay's egress to its emulator), in a scratch namespace."""
    from tests.support.cluster import unique_name

    ns = unique_name("netpol")
    cluster.kubectl("create", "namespace", ns)
    try:
        objs = [*docs(TRAINER_POLICY), *docs(SYSTEM_POLICIES), *docs(ROOT / "deploy/overlays/kind/networkpolicy.yaml")]
        for obj in objs:  # freshly parsed: edited in place
            obj["metadata"]["namespace"] = ns
            out = cluster.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(obj), check=False)
            assert out.returncode == 0, out.stderr
        broken = copy.deepcopy(docs(TRAINER_POLICY)[0])
        broken["metadata"]["namespace"] = ns
        broken["spec"]["egress"][1]["ports"][0]["port"] = 70000  # the apiserver does validate
        out = cluster.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(broken), check=False)
        assert out.returncode != 0 and "port" in out.stderr
    finally:
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_the_trainer_label_is_the_contracts():
    assert LABEL_JOB in trainer_pod_labels()
    (policy,) = docs(TRAINER_POLICY)
    keys = {e["key"] for e in policy["spec"]["podSelector"]["matchExpressions"]}
    assert keys == {LABEL_JOB}
