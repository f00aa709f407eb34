"""``spec.method.adapter`` as the contract states it and the trainer reads it (pure: no training): the rules the CRD's
CEL also enforces (tests/crd/test_cluster.py checks those on the apiserver), the Hydra ``adapter=`` group, the
operator's configuration file, and the trainer's QLoRA preflight."""

from __future__ import annotations

import re

import pytest
import torch
from ftcrd.adapter import ALL_LINEAR, NO_MERGED_QLORA, QLORA_ONE_GPU, QUANTIZATION_ONLY_FOR_QLORA
from ftcrd.trainer_config import TrainerConfig, default
from ftcrd.types import AdapterSpec, FineTuneJobSpec, MethodSpec
from fttrainer import adapters
from fttrainer.config import InvalidInput, from_hydra, register_resolver
from pydantic import ValidationError

SPEC = {
    "model": {"name": "tiny", "preset": "tiny"},
    "dataset": {"configMap": {"name": "d"}},
    "output": {"bucket": "bucket"},
    "resources": {"gpusPerNode": 0, "processesPerNode": 1},
}


def test_defaults_and_targets():
    a = AdapterSpec.model_validate({})
    assert (a.type, a.r, a.alpha, a.dropout, a.export_merged) == ("lora", 8, 16, 0.0, False)
    assert a.targets() == ALL_LINEAR and a.quantized() is None
    assert AdapterSpec(target_modules=["q_proj", "v_proj"]).targets() == ["q_proj", "v_proj"]
    assert AdapterSpec(target_modules=[ALL_LINEAR]).targets() == ALL_LINEAR
    q = AdapterSpec(type="qlora").quantized()
    assert q is not None and (q.quant_type, q.double_quant, q.compute_dtype) == ("nf4", True, "bfloat16")
    assert MethodSpec().adapter is None  # full fine-tuning unless asked


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"type": "lora", "quantization": {}}, QUANTIZATION_ONLY_FOR_QLORA),
        ({"type": "qlora", "exportMerged": True}, NO_MERGED_QLORA),
        ({"r": 0}, "greater than or equal to 1"),
        ({"dropout": 1.0}, "less than 1"),
        ({"targetModules": []}, "at least 1 item"),
        ({"targetModules": ["q proj"]}, "should match pattern"),
        ({"targetModules": ["q_proj", "v_proj", "q_proj"]}, "names a module more than once: q_proj"),
        ({"rank": 8}, "Extra inputs are not permitted"),
    ],
)
def test_adapter_rules(fields, message):
    with pytest.raises(ValidationError, match=re.escape(message)):
        AdapterSpec.model_validate(fields)


def test_qlora_needs_exactly_one_gpu():
    qlora = {"type": "dpo", "adapter": {"type": "qlora"}}
    with pytest.raises(ValidationError, match="needs exactly one GPU"):
        FineTuneJobSpec.model_validate({**SPEC, "method": qlora})
    with pytest.raises(ValidationError, match="needs exactly one GPU"):
        FineTuneJobSpec.model_validate({**SPEC, "method": qlora, "resources": {"gpusPerNode": 2}})
    spec = FineTuneJobSpec.model_validate({**SPEC, "method": qlora, "resources": {"gpusPerNode": 1}})
    assert spec.method.adapter is not None and spec.method.adapter.type == "qlora"
    assert "one GPU" in QLORA_ONE_GPU
    lora = FineTuneJobSpec.model_validate({**SPEC, "method": {"adapter": {"type": "lora"}}})
    assert lora.wire()["method"]["adapter"] == {"type": "lora", "r": 8, "alpha": 16, "dropout": 0.0,
                                                "exportMerged": False}  # fmt: skip


def test_nested_contract_defaults_for_the_hydra_yaml():
    assert default("method.adapter.r") == 8
    assert default("method.adapter.target_modules") is None
    assert default("method.adapter.quantization.quant_type") == "nf4"
    assert default("method.adapter") is None  # the section itself: no adapter
    for bad in ("method.adapter.nope", "method.beta.x", "adapter.r"):
        with pytest.raises(KeyError):
            default(bad)


def test_the_adapter_yaml_restates_no_contract_default():
    import yaml
    from fttrainer.config import CONFIG_DIR

    def leaves(tree: dict, prefix: str = "") -> list[tuple[str, object]]:
        out: list[tuple[str, object]] = []
        for key, value in tree.items():
            out += leaves(value, f"{prefix}{key}.") if isinstance(value, dict) else [(prefix + key, value)]
        return out

    for path in sorted((CONFIG_DIR / "adapter").glob("*.yaml")):
        for key, value in leaves(yaml.safe_load(path.read_text())):
            if key in ("type", "defaults"):  # the group's own choice
                continue
            assert value == f"${{contract:method.adapter.{key}}}", f"{path.name}: {key}: {value!r}"


def compose(*overrides: str):
    from fttrainer.config import CONFIG_DIR
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register_resolver()
    with initialize_config_dir(str(CONFIG_DIR), version_base=None):
        cfg = hydra_compose("config", overrides=["model=tiny", "datasets=[novalto]", "exp_name=x", *overrides])
    return from_hydra(cfg)


def test_hydra_adapter_group_maps_to_method_adapter():
    assert compose("loss=dpo").method.adapter is None
    lora = compose("loss=dpo", "adapter=lora", "adapter.r=4", "adapter.target_modules=[q_proj,v_proj]")
    assert lora.method.adapter == AdapterSpec(r=4, target_modules=["q_proj", "v_proj"])
    qlora = compose("loss=ipo", "adapter=qlora", "adapter.quantization.quant_type=fp4").method.adapter
    assert qlora is not None and qlora.type == "qlora" and qlora.quantized().quant_type == "fp4"  # type: ignore[union-attr]
    with pytest.raises(InvalidInput, match=r"^adapter\.r: Input should be greater than or equal to 1"):
        compose("loss=dpo", "adapter=lora", "adapter.r=0")


def test_the_operator_file_carries_the_adapter():
    cfg = compose("loss=dpo", "adapter=lora", "adapter.export_merged=true")
    again = TrainerConfig.model_validate_json(cfg.render())
    assert again.method.adapter == cfg.method.adapter and again.method.adapter.export_merged  # type: ignore[union-attr]


def test_preflight_refuses_qlora_without_a_gpu():
    adapters.preflight(None, 4)
    adapters.preflight(AdapterSpec(), 4)  # lora runs anywhere
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the CPU refusal is tested where there is none")
    with pytest.raises(InvalidInput, match="qlora needs a GPU") as info:
        adapters.preflight(AdapterSpec(type="qlora"), 1)
    assert info.value.reason == "InvalidSpec"


def test_full_fine_tuning_checkpoints_are_unchanged():
    from torch import nn

    options = adapters.state_dict_options(nn.Linear(2, 2))
    assert not options.ignore_frozen_params and options.strict  # nothing frozen: the whole model, strictly
    frozen = nn.Linear(2, 2).requires_grad_(False)
    options = adapters.state_dict_options(nn.Sequential(frozen, nn.Linear(2, 2)))
    assert options.ignore_frozen_params and not options.strict


def test_manifest_contents():
    assert adapters.contents(None, "org/m", None) == {"kind": "model", "model": ""}
    got = adapters.contents(AdapterSpec(export_merged=True), "org/m", "v1")
    assert got["kind"] == "adapter" and got["merged"] == "merged/" and got["baseRevision"] == "v1"
    assert adapters.contents(AdapterSpec(), "org/m", None)["merged"] is None
