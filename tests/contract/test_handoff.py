"""Operator -> trainer: the resolved configuration travels as one JSON file, exactly.

The operator renders ftcrd.trainer_config.TrainerConfig into a pod-template annotation, a downwardAPI
volume exposes it at ftcrd.names.TRAINER_CONFIG_PATH, the trainer reads it with ``--config``. Pure: the
annotation's value is what the kubelet writes into the file (tests/operator/test_operator_e2e.py runs it
for real)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from ftcrd import names
from ftcrd.trainer_config import TrainerConfig
from ftoperator import builders
from fttrainer.config import config_path, from_file, with_preset
from fttrainer.upload import object_prefix

ROOT = Path(__file__).resolve().parents[2]
COMMUNITIES = ["12345", "007", "1e3", "true", "null"]  # each once became a number, a bool or None


def sample(**spec: Any) -> dict[str, Any]:
    body = yaml.safe_load((ROOT / "crds/samples/tiny-cpu.yaml").read_text())
    body["metadata"].update(namespace="team-a", uid="0000-uid")
    body["spec"].update(spec)
    return body


def pod_template(body: dict[str, Any]) -> dict[str, Any]:
    return builders.render_job(builders.parse(body))["spec"]["template"]


def file_in_pod(template: dict[str, Any], tmp_path: Path) -> Path:
    """Where the downwardAPI volume puts the annotation, as the kubelet would write it."""
    spec = template["spec"]
    (container,) = spec["containers"]
    (volume,) = [v for v in spec["volumes"] if "downwardAPI" in v]
    (item,) = volume["downwardAPI"]["items"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    assert mount["readOnly"] is True
    key = item["fieldRef"]["fieldPath"].removeprefix("metadata.annotations['").removesuffix("']")
    path = Path(mount["mountPath"]) / item["path"]
    assert str(path) == names.TRAINER_CONFIG_PATH
    local = tmp_path / path.relative_to("/")
    local.parent.mkdir(parents=True, exist_ok=True)
    local.write_text(template["metadata"]["annotations"][key])
    return local


@pytest.mark.parametrize("community", COMMUNITIES)
def test_community_strings_reach_the_upload_path_exactly(community: str, tmp_path: Path):
    template = pod_template(sample(communityId=community))
    cfg = from_file(file_in_pod(template, tmp_path))
    assert cfg.output is not None and cfg.output.community_id == community
    assert isinstance(cfg.output.community_id, str)
    # the namespace and the job's uid make the folder the job's own (a re-used name never lands in it)
    expected = f"models/team-a/{community}/tiny-demo-0000-uid/"
    assert cfg.output.object_prefix(cfg.job) == expected
    out = cfg.output
    assert object_prefix(out.prefix, out.community_id, cfg.job, namespace=out.namespace, uid=out.job_uid) == expected


def test_the_pod_runs_the_trainer_with_its_config_file(tmp_path: Path):
    template = pod_template(sample())
    (container,) = template["spec"]["containers"]
    args = container["args"]
    assert args[-4:] == ["-m", "fttrainer.train", "--config", names.TRAINER_CONFIG_PATH]
    assert config_path(args[args.index("fttrainer.train") + 1 :]) == Path(names.TRAINER_CONFIG_PATH)
    assert not [a for a in args if "=" in a]  # no Hydra overrides left on the command line
    cfg = with_preset(from_file(file_in_pod(template, tmp_path)))
    ftj = builders.parse(sample())
    assert cfg == with_preset(builders.trainer_config(ftj.spec, "tiny-demo", "team-a", "0000-uid"))
    # the spec's own models, unchanged: nothing re-defaulted on the way
    assert cfg.method == ftj.spec.method and cfg.hyperparameters == ftj.spec.hyperparameters
    assert cfg.dataset.path == f"{names.DATA_DIR}/dataset.json" and cfg.run.checkpoint_dir == names.CHECKPOINT_DIR
    assert cfg.model.block_name == "LlamaDecoderLayer"  # the trainer's preset file filled it


def test_volume_model_and_dataset_paths():
    body = sample(
        dataset={"volume": {"claimName": "data", "path": "prefs/train.jsonl.gz"}, "format": "jsonl"},
        model={"name": "zephyr-7b", "preset": "zephyr", "claimName": "weights", "revision": "main"},
    )
    cfg = builders.trainer_config(builders.parse(body).spec, "j")
    assert cfg.dataset.path == f"{names.DATA_DIR}/prefs/train.jsonl.gz" and cfg.dataset.format == "jsonl"
    assert cfg.model.name_or_path == f"{names.MODELS_DIR}/zephyr-7b" and cfg.model.revision == "main"


def test_rendered_config_is_deterministic_and_complete():
    a = pod_template(sample())["metadata"]["annotations"][names.ANN_TRAINER_CONFIG]
    b = pod_template(sample())["metadata"]["annotations"][names.ANN_TRAINER_CONFIG]
    assert a == b  # the same Job twice: an operator restart adopts rather than duplicates
    assert TrainerConfig.model_validate_json(a).render() == a
