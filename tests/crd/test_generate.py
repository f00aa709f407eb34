"""The checked-in CRD and docs are what the model generates, and the schema is structural."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from ftcrd import generate, types


@pytest.mark.parametrize("path", list(generate.OUTPUTS), ids=lambda p: p.name)
def test_checked_in_file_is_up_to_date(path):
    assert path.exists(), f"{path} missing: run `make manifests`"
    assert path.read_text() == generate.OUTPUTS[path](), f"{path.name} is stale: run `make manifests`"


def test_check_mode_passes():
    assert generate.main(["--check"]) == 0


def test_generation_is_deterministic():
    assert generate.render_crd() == generate.render_crd()


def _nodes(node: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    if not isinstance(node, dict):
        return
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from _nodes(child, f"{path}.{name}")
    if "items" in node:
        yield from _nodes(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _nodes(node["additionalProperties"], f"{path}[*]")


def _crd() -> dict[str, Any]:
    return yaml.safe_load(generate.CRD_PATH.read_text())


def _schema() -> dict[str, Any]:
    return _crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_schema_is_structural():
    for path, node in _nodes(_schema()):
        for banned in ("$ref", "$defs", "anyOf", "oneOf", "allOf", "not", "title", "const"):
            assert banned not in node, f"{path or '<root>'}: {banned}"
        if node.get("x-kubernetes-int-or-string"):
            assert "type" not in node, path
        else:
            assert "type" in node, f"{path or '<root>'} has no type"
        if node.get("type") == "object":
            assert not ("properties" in node and "additionalProperties" in node), path
            assert node.get("additionalProperties") is not False, path
        for bound in ("minimum", "maximum"):
            value = node.get(bound)
            assert not (isinstance(value, float) and not value.is_integer()), f"{path}: fractional {bound}"
        if "exclusiveMinimum" in node or "exclusiveMaximum" in node:
            assert isinstance(node.get("exclusiveMinimum", True), bool), path
            assert isinstance(node.get("exclusiveMaximum", True), bool), path
        assert "nullable" not in node, f"{path}: unset fields are omitted, not null"
        if "default" in node:
            assert node["default"] is not None, path


def test_names_and_columns():
    crd = _crd()
    names = crd["spec"]["names"]
    assert crd["metadata"]["name"] == "finetunejobs.finetune.dev"
    assert names == {
        "kind": "FineTuneJob",
        "listKind": "FineTuneJobList",
        "plural": "finetunejobs",
        "singular": "finetunejob",
        "shortNames": ["ftj"],
        "categories": ["finetune"],
    }
    version = crd["spec"]["versions"][0]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"].upper(): c for c in version["additionalPrinterColumns"]}
    assert list(columns) == ["PHASE", "MODEL", "METHOD", "PROGRESS", "LOSS", "AGE", "ARTIFACT"]
    assert [n for n, c in columns.items() if c.get("priority")] == ["ARTIFACT"]
    assert columns["LOSS"]["jsonPath"] == ".status.metrics.loss"


def test_spec_shape():
    schema = _schema()
    assert schema["required"] == ["spec"]
    spec = schema["properties"]["spec"]["properties"]
    method = spec["method"]
    assert method["default"] == {}
    assert method["properties"]["type"]["enum"] == ["dpo", "ipo", "cdpo", "sft"]
    assert method["properties"]["beta"]["minimum"] == 0 and method["properties"]["beta"]["exclusiveMinimum"]
    smoothing = method["properties"]["labelSmoothing"]
    # A fractional bound is a CEL rule: the OpenAPI validator would refuse an integer 0 against maximum 0.5.
    assert smoothing["minimum"] == 0 and "maximum" not in smoothing and "exclusiveMaximum" not in smoothing
    assert smoothing["x-kubernetes-validations"] == [
        {"rule": "self < 0.5", "message": "spec.method.labelSmoothing must be less than 0.5"}
    ]
    assert spec["resources"]["properties"]["nodes"]["minimum"] == 1
    assert spec["resources"]["properties"]["gpusPerNode"]["minimum"] == 0
    assert spec["resources"]["properties"]["nodeSelector"]["additionalProperties"]["type"] == "string"
    rules = [r["rule"] for r in spec["dataset"]["x-kubernetes-validations"]]
    assert types.ONE_SOURCE in rules  # exactly one of configMap, volume, object
    obj = spec["dataset"]["properties"]["object"]
    assert obj["required"] == ["uri"] and obj["properties"]["sha256"]["pattern"] == types.SHA256_PATTERN
    for field in ("method", "dataset", "model"):
        assert "self == oldSelf" in [r["rule"] for r in spec[field]["x-kubernetes-validations"]], field
    root_rules = [r["rule"] for r in schema["x-kubernetes-validations"]]
    assert f"self.metadata.name.size() <= {types.MAX_NAME_LENGTH}" in root_rules
    assert any("oldSelf.spec.resources" in r for r in root_rules)


def test_every_description_survives():
    """kubectl explain shows these; every spec field documents itself."""
    schema = _schema()
    for path, node in _nodes(schema["properties"]["spec"], "spec"):
        if path.startswith("spec.resources.tolerations[]") or path.startswith("spec.env[]"):
            continue
        if path.endswith("[*]"):
            continue
        assert node.get("description"), f"{path} has no description"
    assert "Temperature" in schema["properties"]["spec"]["properties"]["method"]["properties"]["beta"]["description"]


def test_status_keeps_what_others_write():
    status = _schema()["properties"]["status"]
    assert status["x-kubernetes-preserve-unknown-fields"] is True  # kopf: status.<handler_id>
    props = status["properties"]
    for name in ("progress", "metrics", "artifact"):
        assert props[name]["x-kubernetes-preserve-unknown-fields"] is True, name
    assert props["kopf"] == {
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": True,
        "description": props["kopf"]["description"],
    }
    conditions = props["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert "type" in conditions["items"]["required"]
    wire = types.FineTuneJobStatus.model_fields
    for field in wire.values():
        assert field.alias in props, field.alias


def test_every_model_field_is_in_the_schema():
    """Nothing the model can serialise is pruned by the apiserver."""

    def check(model: type[types.BaseModel], node: dict[str, Any], path: str) -> None:
        for name, field in model.model_fields.items():
            alias = field.alias or name
            assert alias in node["properties"], f"{path}.{alias}"

    spec = _schema()["properties"]["spec"]
    check(types.FineTuneJobSpec, spec, "spec")
    for name, model in (
        ("model", types.ModelSpec),
        ("method", types.MethodSpec),
        ("hyperparameters", types.HyperparametersSpec),
        ("dataset", types.DatasetSpec),
        ("resources", types.ResourcesSpec),
        ("output", types.OutputSpec),
        ("runPolicy", types.RunPolicySpec),
    ):
        check(model, spec["properties"][name], f"spec.{name}")


def test_quantities_accept_numbers():
    resources = types.ResourcesSpec.model_validate({"cpu": 8, "memory": "64Gi", "shmSize": "2Gi"})
    assert resources.cpu == "8"
    with pytest.raises(ValueError):
        types.ResourcesSpec.model_validate({"cpu": "eight"})


def test_conditions_doc_lists_every_reason():
    from ftcrd import conditions

    text = generate.CONDITIONS_DOC.read_text()
    for reason in conditions.REASONS:
        assert f"`{reason}`" in text


def test_unsupported_union_is_refused():
    converter = generate._Converter({})
    with pytest.raises(generate.UnsupportedSchema):
        converter.convert({"anyOf": [{"type": "string"}, {"type": "integer"}]}, "x")
