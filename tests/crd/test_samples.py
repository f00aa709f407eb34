"""The samples in crds/samples parse with the model (the cluster tests apply them for real)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from ftcrd import dataset, types

SAMPLES = Path(__file__).resolve().parents[2] / "crds" / "samples"


def _docs() -> list[tuple[str, dict[str, Any]]]:
    return [(p.name, d) for p in sorted(SAMPLES.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]


def _jobs() -> dict[str, types.FineTuneJob]:
    return {name: types.FineTuneJob.model_validate(d) for name, d in _docs() if d["kind"] == types.KIND}


def test_expected_samples_exist():
    assert set(_jobs()) == {"dpo-configmap.yaml", "multinode-volume.yaml", "tiny-cpu.yaml", "tiny-lora-cpu.yaml"}


@pytest.mark.parametrize("name", ["dpo-configmap.yaml", "multinode-volume.yaml", "tiny-cpu.yaml", "tiny-lora-cpu.yaml"])
def test_sample_is_a_valid_job(name):
    job = _jobs()[name]
    assert job.api_version == types.API_VERSION
    assert len(job.metadata["name"]) <= types.MAX_NAME_LENGTH
    assert job.spec.dataset.config_map is not None or job.spec.dataset.volume is not None


def test_minimal_dpo_on_configmap():
    job = _jobs()["dpo-configmap.yaml"]
    assert job.spec.method.type == "dpo"
    assert job.spec.dataset.config_map is not None


def test_two_node_on_volume():
    job = _jobs()["multinode-volume.yaml"]
    assert job.spec.resources.nodes == 2
    assert job.spec.dataset.volume is not None


def test_tiny_cpu_demo_job_and_its_dataset():
    job = _jobs()["tiny-cpu.yaml"]
    spec = job.spec
    assert spec.model.preset == "tiny"
    assert spec.resources.gpus_per_node == 0
    assert spec.output.bucket == "finetune-demo"
    hp = spec.hyperparameters
    assert (hp.batch_size, hp.max_length, hp.max_prompt_length, hp.warmup_steps) == (8, 128, 64, 0)
    assert hp.optimizer == "AdamW" and 1e-4 <= hp.learning_rate <= 1e-2
    assert spec.dataset.config_map is not None
    configmaps = {d["metadata"]["name"]: d for _, d in _docs() if d["kind"] == "ConfigMap"}
    cm = configmaps[spec.dataset.config_map.name]
    rows = dataset.load_rows(cm["data"][spec.dataset.config_map.key].encode(), spec.dataset.format)
    assert len(rows) >= 32
    assert all(r.chosen != r.rejected for r in rows)


def test_tiny_lora_is_the_tiny_demo_with_an_adapter():
    lora, full = _jobs()["tiny-lora-cpu.yaml"].spec, _jobs()["tiny-cpu.yaml"].spec
    assert lora.method.adapter is not None and lora.method.adapter.type == "lora" and lora.method.adapter.export_merged
    assert full.method.adapter is None
    assert (lora.model, lora.dataset, lora.resources) == (full.model, full.dataset, full.resources)
