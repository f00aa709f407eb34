"""The Hydra configuration: the reference's command line, the operator's overrides, the presets."""

from __future__ import annotations

import subprocess
import typing
from pathlib import Path

import pytest
from ftcrd import types
from fttrainer.train import CONFIG_DIR, InvalidInput, validate_config
from hydra import compose, initialize_config_dir

from tests.support.trainer import BIN, ROOT, Trainer

REFERENCE = ["model=zephyr", "datasets=[novalto]", "loss=dpo", "loss.beta=0.1", "exp_name=community_123"]

# docs/contract.md, "Trainer command line", with values
CONTRACT = [
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
    "upload.community_id=c1",
]


def composed(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return compose("config", overrides=overrides)


def test_reference_spelling_validates():
    c = validate_config(composed(REFERENCE))
    assert c["model"]["name_or_path"] == "HuggingFaceH4/zephyr-7b-beta"
    assert c["model"]["block_name"] == "MistralDecoderLayer"
    assert c["loss"] == {"name": "dpo", "beta": 0.1, "label_smoothing": 0, "reference_free": False}
    assert c["batch_size"] == 128 and c["lr"] == 5e-7 and c["optimizer"] == "RMSprop"
    assert c["warmup_steps"] == 150 and c["max_grad_norm"] == 10 and c["max_length"] == 512
    assert c["run_dir"] == ".cache/runs/community_123"
    assert c["upload"]["bucket"] is None


def test_contract_overrides_validate():
    c = validate_config(composed(CONTRACT))
    assert c["loss"] == {"name": "dpo", "beta": 0.2, "label_smoothing": 0.15, "reference_free": False}
    assert c["model"]["block_name"] == "LlamaDecoderLayer"
    assert c["model"]["name_or_path"] == "/models/llama"
    assert c["dataset"] == {
        "path": "/data/dataset.jsonl",
        "compression": "auto",
        "validation_fraction": 0.1,
        "max_rows": None,
    }
    assert c["checkpoint_dir"] == "/checkpoints" and c["run_dir"] == "/workspace/run"
    assert c["upload"] == {"bucket": "my-bucket", "prefix": "models", "community_id": "c1"}


def test_cdpo_defaults_to_label_smoothing():
    c = validate_config(composed([*REFERENCE[:2], "loss=cdpo", "exp_name=x"]))
    assert c["loss"]["name"] == "dpo" and c["loss"]["label_smoothing"] == 0.1


def test_dataset_path_from_env(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("DATASET_PATH", "/elsewhere/d.json")
    assert validate_config(composed(REFERENCE))["dataset"]["path"] == "/elsewhere/d.json"


def test_missing_model_is_invalid_spec():
    with pytest.raises(InvalidInput) as err:
        validate_config(composed(["exp_name=x"]))
    assert err.value.reason == "InvalidSpec" and "name_or_path" in str(err.value)


def test_presets_match_the_crd():
    presets = {p.stem for p in (Path(CONFIG_DIR) / "model").glob("*.yaml")} - {"blank"}
    assert presets == set(typing.get_args(types.ModelPreset))
    losses = {p.stem for p in (Path(CONFIG_DIR) / "loss").glob("*.yaml")}
    assert losses == set(typing.get_args(types.MethodType))


def test_command_line_parses(trainer: Trainer):
    """``--cfg job`` runs Hydra's real command-line parser and prints the composed config."""
    cmd = [str(BIN / "python"), "-m", "fttrainer.train", *REFERENCE, "--cfg", "job"]
    p = subprocess.run(
        cmd, env=trainer.env(trainer.tmp / "t"), cwd=trainer.tmp, capture_output=True, text=True, check=False
    )
    assert p.returncode == 0, p.stderr
    assert "block_name: MistralDecoderLayer" in p.stdout and "exp_name: community_123" in p.stdout
    assert ROOT.exists()
