"""The admission rules as pure functions (ftcrd.admission) and their single source: the operator's settings and the
rendered policies read the same lists, labels and names. The rules against the real apiserver:
test_admission.py."""

from __future__ import annotations

import yaml
from ftcrd import admission as A
from ftcrd import policies
from ftcrd.names import ADMISSION_CONFIG, LABEL_TRAINER_USE, RESERVED_ENV, TRAINER_USE_VALUE
from ftoperator.settings import Settings

from tests.support import ROOT

LISTS = A.AllowLists()


def refused(spec: dict, namespace: str = "team-a") -> list[str]:
    return [r.field for r in A.check_fields(spec, namespace, "finetune-system", LISTS)]


def test_images_match_repositories_not_prefixes_of_names():
    allowed = ("registry.example/ml/trainer", "registry.example/team/")
    assert A.image_allowed("registry.example/ml/trainer", allowed)
    assert A.image_allowed("registry.example/ml/trainer:1.2", allowed)
    assert A.image_allowed("registry.example/ml/trainer@sha256:" + "a" * 64, allowed)
    assert A.image_allowed("registry.example/team/anything:1", allowed)  # an allowed path prefix
    assert not A.image_allowed("registry.example/ml/trainer-evil:1", allowed)
    assert not A.image_allowed("registry.example/ml/trainerx", allowed)
    assert not A.image_allowed("evil.example/registry.example/ml/trainer:1", allowed)
    assert A.image_allowed("anything/at:all", ("*",))


def test_each_field_rule_names_its_field():
    assert refused({"image": "evil/x:1"}) == ["spec.image"]
    assert refused({"image": "finetune-operator/trainer:dev"}) == []
    assert refused({}, namespace="finetune-system") == ["metadata.namespace"]
    assert refused({"env": [{"name": "OK", "value": "1"}, {"name": "LD_PRELOAD", "value": "/x"}]}) == [
        "spec.env[1].name"
    ]
    assert refused(
        {"resources": {"nodeSelector": {"kubernetes.io/hostname": "n", "nvidia.com/gpu.present": "true"}}}
    ) == ["spec.resources.nodeSelector"]
    tolerations = [{"key": "nvidia.com/gpu", "operator": "Exists"}, {"operator": "Exists"}, {"key": "other"}]
    assert refused({"resources": {"tolerations": tolerations}}) == [
        "spec.resources.tolerations[1].key",
        "spec.resources.tolerations[2].key",
    ]
    assert refused({"resources": {"priorityClassName": "high"}}) == ["spec.resources.priorityClassName"]
    everything = A.AllowLists(images=("*",), node_selector_keys=("*",), toleration_keys=("*",), priority_classes=("*",))
    spec = {"image": "x", "resources": {"nodeSelector": {"a": "b"}, "tolerations": [{}], "priorityClassName": "p"}}
    assert A.check_fields(spec, "team-a", "finetune-system", everything) == []


def test_references_need_the_opt_in_label_when_the_object_exists():
    spec = {
        "serviceAccountName": "sa",
        "output": {"credentialsSecret": {"name": "key", "key": "k"}},
        "model": {"hfTokenSecret": {"name": "hf", "key": "t"}, "claimName": "weights"},
        "dataset": {"volume": {"claimName": "data", "path": "d"}},
    }
    opted = {LABEL_TRAINER_USE: TRAINER_USE_VALUE}
    labels = {
        ("ServiceAccount", "sa"): {},
        ("Secret", "key"): opted,
        ("Secret", "hf"): {LABEL_TRAINER_USE: "yes"},  # only "true" opts in
        ("PersistentVolumeClaim", "weights"): opted,
        ("PersistentVolumeClaim", "data"): None,  # does not exist (yet): the pod waits for it
    }
    found = A.check_references(spec, lambda kind, name: labels[kind, name])
    assert [r.field for r in found] == ["spec.serviceAccountName", "spec.model.hfTokenSecret.name"]
    assert "ServiceAccount sa is not labelled finetune.dev/trainer-use=true" in str(found[0])
    assert [(r.kind, n) for r, n in A.references(spec)] == [
        ("ServiceAccount", "sa"),
        ("Secret", "key"),
        ("Secret", "hf"),
        ("PersistentVolumeClaim", "weights"),
        ("PersistentVolumeClaim", "data"),
    ]


def test_the_operator_reads_the_lists_from_the_configmaps_keys():
    """ConfigMap finetune-admission is the operator's environment: its keys are the operator's settings."""
    for field, key in A.LIST_KEYS.items():
        assert Settings.env_name(f"allowed_{field}") == key
    assert Settings().allow_lists() == A.AllowLists()
    env = {"FTO_ALLOWED_IMAGES": "a/b, c/d\ne/", "FTO_ALLOWED_PRIORITY_CLASSES": " "}
    lists = Settings.from_env(env).allow_lists()
    assert lists.images == ("a/b", "c/d", "e/") and lists.priority_classes == A.DEFAULT_PRIORITY_CLASSES
    assert A.allow_lists(env) == lists  # the policies read the ConfigMap the same way (blank: the default)


def test_the_rendered_policies_carry_the_contracts_data():
    docs = [d for d in yaml.safe_load_all((ROOT / "deploy/base/admission/policies.yaml").read_text()) if d]
    (config,) = [d for d in docs if d["kind"] == "ConfigMap"]
    assert config["metadata"]["name"] == ADMISSION_CONFIG
    assert A.allow_lists(config["data"]) == A.AllowLists()
    policies_by_name = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ValidatingAdmissionPolicy"}
    bindings = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ValidatingAdmissionPolicyBinding"}
    assert set(policies_by_name) == set(bindings)
    for kind, plural in A.REFERENCED_KINDS:
        policy = policies_by_name[f"finetune-job-admission-{plural}"]
        assert policy["spec"]["paramKind"] == {"apiVersion": "v1", "kind": kind}
        selector = bindings[f"finetune-job-admission-{plural}"]["spec"]["paramRef"]["selector"]
        assert selector["matchExpressions"] == [
            {"key": LABEL_TRAINER_USE, "operator": "NotIn", "values": [TRAINER_USE_VALUE]}
        ]
        fields = [r.field for r in A.REFERENCES if r.kind == kind]
        assert len(policy["spec"]["validations"]) == len(fields)
        for rule, field in zip(policy["spec"]["validations"], fields, strict=True):
            assert rule["messageExpression"].startswith(f"'{field}: '")
    crd = (ROOT / "crds/finetunejob.yaml").read_text()
    assert all(name in crd for name in RESERVED_ENV)  # the CRD's CEL rule lists every reserved variable


def test_the_own_job_policy_compares_names_without_regex():
    own = policies.own_job_policy()
    expressions = " ".join(v["expression"] for v in own["spec"]["validations"])
    assert "startsWith(object.metadata.name + '-')" in expressions
    assert "matches('^' + object.metadata.name" not in expressions
    for field in policies.TRAINER_STATUS_FIELDS:
        assert f"'{field}'" in expressions
    condition = own["spec"]["matchConditions"][0]["expression"]
    assert "request.subResource == 'status'" in condition and policies.OPERATOR_SERVICE_ACCOUNT in condition
