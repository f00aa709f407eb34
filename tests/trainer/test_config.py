"""The trainer's configuration: the reference's Hydra command line and the operator's file both become the
typed ftcrd.trainer_config.TrainerConfig, with the contract's defaults and ranges."""

from __future__ import annotations

import json
import subprocess
import typing
from pathlib import Path

import pytest
import yaml
from ftcrd import types
from ftcrd.trainer_config import TrainerConfig, TrainerRun
from ftcrd.types import HyperparametersSpec, MethodSpec
from fttrainer.config import (
    CONFIG_DIR,
    HYDRA_KEYS,
    InvalidInput,
    check_world_size,
    from_file,
    from_hydra,
    register_resolver,
    with_preset,
)
from hydra import compose, initialize_config_dir

from tests.support.trainer import BIN, Trainer

REFERENCE = ["model=zephyr", "datasets=[novalto]", "loss=dpo", "loss.beta=0.1", "exp_name=community_123"]

# every key the reference's command line can set, with a value
OVERRIDES = [
    "model=llama",
    "model.name_or_path=/models/llama",
    "loss=cdpo",
    "loss.beta=0.2",
    "loss.label_smoothing=0.15",
    "loss.reference_free=false",
    "datasets=[openai]",
    "dataset.path=/data/dataset.jsonl",
    "dataset.compression=auto",
    "dataset.validation_fraction=0.1",
    "exp_name=job-1",
    "n_epochs=2",
    "n_examples=640",
    "lr=1e-6",
    "batch_size=64",
    "gradient_accumulation_steps=4",
    "max_length=1024",
    "max_prompt_length=512",
    "warmup_steps=10",
    "optimizer=AdamW",
    "seed=7",
    "eval_every=320",
    "max_grad_norm=5.0",
    "activation_checkpointing=true",
    "checkpoint_every=20",
    "precompute_reference=true",
    "checkpoint_dir=/checkpoints",
    "run_dir=/workspace/run",
    "upload.bucket=my-bucket",
    "upload.prefix=models",
    "upload.community_id='007'",
]


def composed(overrides: list[str]):
    register_resolver()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return compose("config", overrides=overrides)


def typed(overrides: list[str]) -> TrainerConfig:
    return from_hydra(composed(overrides))


def test_reference_spelling_gets_the_contract_defaults():
    c = typed(REFERENCE)
    assert c.job == "community_123"
    assert c.model.name_or_path == "HuggingFaceH4/zephyr-7b-beta" and c.model.block_name == "MistralDecoderLayer"
    assert c.method == MethodSpec.model_validate({"type": "dpo"})
    assert c.hyperparameters == HyperparametersSpec.model_validate({})
    assert (
        c.run.run_dir == ".cache/runs/community_123" and c.run.checkpoint_dir == ".cache/runs/community_123/checkpoints"
    )
    defaults = TrainerRun.model_validate({"run_dir": "r", "checkpoint_dir": "c"})
    assert c.run.model_dump(exclude={"run_dir", "checkpoint_dir"}) == defaults.model_dump(
        exclude={"run_dir", "checkpoint_dir"}
    )
    assert c.output is None  # upload.bucket null: no upload
    assert c.dataset.format == "novalto" and c.dataset.path == "/data/dataset.json"


def test_every_override_lands_in_the_typed_config():
    c = typed(OVERRIDES)
    assert c.method.model_dump() == {
        "type": "cdpo",
        "beta": 0.2,
        "label_smoothing": 0.15,
        "reference_free": False,
        "adapter": None,
    }
    hp = c.hyperparameters
    assert (hp.epochs, hp.examples, hp.learning_rate, hp.batch_size) == (2, 640, 1e-6, 64)
    assert (hp.gradient_accumulation_steps, hp.max_length, hp.max_prompt_length, hp.warmup_steps) == (4, 1024, 512, 10)
    assert (hp.optimizer, hp.seed, hp.eval_every, hp.max_grad_norm) == ("AdamW", 7, 320, 5.0)
    assert hp.activation_checkpointing and hp.precompute_reference and hp.checkpoint_every == 20
    assert c.model.block_name == "LlamaDecoderLayer" and c.model.name_or_path == "/models/llama"
    assert c.dataset.model_dump() == {
        "path": "/data/dataset.jsonl",
        "format": "openai",
        "compression": "auto",
        "validation_fraction": 0.1,
        "max_rows": None,
        "validation": None,
    }
    assert c.run.checkpoint_dir == "/checkpoints" and c.run.run_dir == "/workspace/run"
    assert c.output is not None and c.output.model_dump() == {
        "bucket": "my-bucket",
        "prefix": "models",
        "community_id": "007",
    }


def test_the_yaml_restates_no_contract_default():
    """Every config.yaml / loss key that maps onto the typed config reads its default from the contract."""
    literal_ok = {"exp_name", "run_dir", "checkpoint_dir", "dataset.path", "upload.bucket"}  # no contract default
    tree = yaml.safe_load((Path(CONFIG_DIR) / "config.yaml").read_text())
    for hydra_key, _ in HYDRA_KEYS:
        if hydra_key.startswith(("model.", "loss.")) or hydra_key in literal_ok | {"adapter"}:  # groups: own files
            continue
        value = tree
        for part in hydra_key.split("."):
            value = value[part]
        assert isinstance(value, str) and value.startswith("${contract:"), f"{hydra_key}: {value!r}"
    for loss in (Path(CONFIG_DIR) / "loss").glob("*.yaml"):
        for key, value in yaml.safe_load(loss.read_text()).items():
            own = (loss.stem, key) in {("cdpo", "label_smoothing")} or key == "name"  # the preset's own choice
            assert own or str(value).startswith("${contract:method."), f"{loss.name}: {key}: {value!r}"


def test_cdpo_preset_is_dpo_with_label_smoothing():
    c = typed([*REFERENCE[:2], "loss=cdpo", "exp_name=x"])
    assert c.method.type == "cdpo" and c.method.label_smoothing == 0.1


def test_dataset_path_from_env(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("DATASET_PATH", "/elsewhere/d.json")
    assert typed(REFERENCE).dataset.path == "/elsewhere/d.json"


def test_missing_model_is_invalid_spec():
    with pytest.raises(InvalidInput) as err:
        typed(["exp_name=x"])
    assert err.value.reason == "InvalidSpec" and "name_or_path" in str(err.value)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("loss.beta=-1", "loss.beta: Input should be greater than 0"),
        ("loss.beta=101", "loss.beta: Input should be less than or equal to 100"),
        ("optimizer=Adagrad", "optimizer: Input should be 'RMSprop', 'AdamW', 'Adam' or 'SGD'"),
        ("max_prompt_length=600", "maxPromptLength must be smaller than maxLength"),
        ("datasets=[hh]", "datasets must be a one-element list"),
        ("upload.community_id=12345", "upload.community_id: Input should be a valid string (quote it"),
        ("dataset.validation_fraction=1", "dataset.validation_fraction: Input should be less than 1"),
    ],
)
def test_bad_values_name_the_hydra_key(override: str, expected: str):
    with pytest.raises(InvalidInput) as err:
        typed([*REFERENCE, "upload.bucket=b", override])
    assert err.value.reason == "InvalidSpec" and expected in str(err.value), str(err.value)


def test_batch_size_must_split_over_the_world():
    c = typed([*REFERENCE, "batch_size=64", "gradient_accumulation_steps=4"])
    check_world_size(c, 8)
    with pytest.raises(InvalidInput, match=r"batch_size 64 must be divisible .* = 4 x 3 = 12"):
        check_world_size(c, 3)


def test_config_file_round_trip_and_preset(tmp_path: Path):
    c = typed(OVERRIDES)
    path = tmp_path / "c.json"
    path.write_text(c.render())
    assert from_file(path) == c
    # the operator's file names only the preset: the preset's yaml fills the architecture fields
    data = json.loads(c.render())
    data["model"] = {"preset": "pythia28", "nameOrPath": "EleutherAI/pythia-2.8b"}
    path.write_text(json.dumps(data))
    filled = with_preset(from_file(path))
    assert filled.model.block_name == "GPTNeoXLayer" and filled.model.reference_dtype == "bfloat16"


def test_config_file_errors_are_invalid_spec(tmp_path: Path):
    with pytest.raises(InvalidInput, match="does not exist"):
        from_file(tmp_path / "nope.json")
    path = tmp_path / "bad.json"
    data = json.loads(typed(OVERRIDES).render())
    data["hyperparameters"]["batchSize"] = 0
    path.write_text(json.dumps(data))
    with pytest.raises(InvalidInput, match=r"hyperparameters\.batchSize: Input should be greater than or equal to 1"):
        from_file(path)


def test_presets_match_the_crd():
    presets = {p.stem for p in (Path(CONFIG_DIR) / "model").glob("*.yaml")} - {"blank"}
    assert presets == set(typing.get_args(types.ModelPreset))
    losses = {p.stem for p in (Path(CONFIG_DIR) / "loss").glob("*.yaml")}
    assert losses == set(typing.get_args(types.MethodType))


def test_command_line_parses(trainer: Trainer):
    """``--cfg job --resolve`` runs Hydra's real command-line parser, with the contract resolver registered."""
    cmd = [str(BIN / "python"), "-m", "fttrainer.train", *REFERENCE, "--cfg", "job", "--resolve"]
    p = subprocess.run(
        cmd, env=trainer.env(trainer.tmp / "t"), cwd=trainer.tmp, capture_output=True, text=True, check=False
    )
    assert p.returncode == 0, p.stderr
    shown = yaml.safe_load(p.stdout)
    assert shown["model"]["block_name"] == "MistralDecoderLayer" and shown["exp_name"] == "community_123"
    assert shown["loss"]["beta"] == MethodSpec.model_validate({}).beta
    assert shown["batch_size"] == HyperparametersSpec.model_validate({}).batch_size
