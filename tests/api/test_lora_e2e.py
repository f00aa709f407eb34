"""A LoRA job end to end on the local cluster: the seed webhook (API process) with an adapter block creates the
FineTuneJob, the operator runs the real trainer under torchrun on the process node, the trainer uploads the adapter
(and the merged model) to the GCS emulator, and the job ends Succeeded. Then, as a consumer would: the adapter is
downloaded, checked against its manifest, loaded with ``peft`` onto the base model, and reproduces the trainer's
final held-out DPO margins (its evalLoss and evalRewardAccuracy); the merged export equals base + adapter.

Also on the real apiserver: the OpenAI route's Together-style ``training_type`` is stored as spec.method.adapter
(CEL rules passing) and read back."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
import torch
import yaml

from tests.api.conftest import ROOT, start_api
from tests.support.lora import merged_by_hand

pytestmark = pytest.mark.cluster

TINY = yaml.safe_load((ROOT / "crds" / "samples" / "tiny-cpu.yaml").read_text())["spec"]
# an adapter learns with a larger rate than full fine-tuning's 1e-3; one epoch of the 64 rows (7 steps)
HYPERPARAMETERS = {**TINY["hyperparameters"], "epochs": 1, "learningRate": 2e-2}
ADAPTER = {"type": "lora", "r": 8, "alpha": 16, "exportMerged": True}


def tiny_rows() -> list[dict[str, str]]:
    cm = yaml.safe_load((ROOT / "crds" / "samples" / "tiny-dataset.yaml").read_text())
    return json.loads(cm["data"]["dataset.json"])


@pytest.fixture(scope="module")
def lora_api(cluster, operator, gcs, tmp_path_factory):
    env = {
        "FTAPI_WEBHOOK_MODEL": "tiny",
        "FTAPI_WEBHOOK_ADAPTER": json.dumps({"type": "lora", "r": 4}),  # the deployment's default (overridden)
        "FTAPI_HYPERPARAMETERS": json.dumps(HYPERPARAMETERS),
        "FTAPI_RESOURCES": json.dumps(TINY["resources"]),
        "FTAPI_RUN_POLICY": json.dumps(TINY["runPolicy"]),
        "FTAPI_VALIDATION_FRACTION": str(TINY["dataset"]["validationFraction"]),
        "FTAPI_OUTPUT_BUCKET": gcs.bucket,
        "FTAPI_TRAINER_ENV": json.dumps({**gcs.env(), "OMP_NUM_THREADS": "1", "FTJ_REPORT_INTERVAL": "1"}),
    }
    yield from start_api(cluster, tmp_path_factory.mktemp("ftapi-lora"), extra_env=env, tenants=1)


def auth(api) -> dict[str, str]:
    return {"Authorization": f"Bearer {api.key(api.ns_a)}"}


def wait_succeeded(api, name: str, running_operator, timeout: float = 900) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        obj = api.cluster.get_json("finetunejob", name, namespace=api.ns_a)
        phase = (obj.get("status") or {}).get("phase")
        if phase in ("Succeeded", "Failed") or time.monotonic() > deadline:
            break
        time.sleep(2)
    status = obj.get("status") or {}
    assert phase == "Succeeded", f"{json.dumps(status, indent=1)[:3000]}\n{running_operator.logs()[-3000:]}"
    return obj


def held_out_dpo(base: torch.nn.Module, adapter_dir: Path, rows: list, config) -> tuple[float, float, list[float]]:
    """(mean DPO loss, reward accuracy, reward margins) on the trainer's held-out split: the policy is ``peft`` with
    the downloaded adapter on the base, the reference the base; the trainer's tokenisation and log-prob sums."""
    import copy

    import torch.nn.functional as F
    from fttrainer.data import split_indices
    from fttrainer.scoring import pair_margins
    from peft import PeftModel
    from transformers import AutoTokenizer

    hp = config.hyperparameters
    _, eval_idx = split_indices(len(rows), config.dataset.validation_fraction, hp.seed)
    held_out = [rows[i] for i in eval_idx[: config.run.n_eval_examples]]
    tok = AutoTokenizer.from_pretrained(adapter_dir)
    policy = PeftModel.from_pretrained(copy.deepcopy(base), str(adapter_dir)).eval()
    kw = {"max_length": hp.max_length, "max_prompt_length": hp.max_prompt_length}
    policy_margins = torch.tensor(pair_margins(policy, tok, held_out, **kw), dtype=torch.float64)
    reference_margins = torch.tensor(pair_margins(base.eval(), tok, held_out, **kw), dtype=torch.float64)
    rewards = config.method.beta * (policy_margins - reference_margins)
    loss = -F.logsigmoid(rewards).mean().item()
    return loss, (rewards > 0).double().mean().item(), rewards.tolist()


def test_lora_webhook_job_uploads_an_adapter_that_reproduces_the_held_out_margins(
    lora_api, gcs, running_operator, tmp_path
):
    from ftcrd.dataset import load_rows, rows_to_novalto
    from ftcrd.names import MANIFEST_NAME
    from ftcrd.trainer_config import TrainerConfig
    from ftdev.demo.model import download_verified
    from fttrainer import tiny
    from fttrainer.config import with_preset
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    pairs = tiny_rows()
    body = {"communityId": "community-7", "dataset": pairs, "adapter": ADAPTER}
    r = httpx.post(f"{lora_api.url}/trigger-finetune", headers=auth(lora_api), json=body, timeout=30)
    assert r.status_code == 202, r.text
    name = r.json()["jobName"]
    obj = wait_succeeded(lora_api, name, running_operator)
    assert obj["spec"]["method"]["adapter"] == {**ADAPTER, "dropout": 0.0}  # the request's block, not the default
    artifact = obj["status"]["artifact"]
    assert artifact["uri"] == f"gs://{gcs.bucket}/models/community-7/{name}/"  # one folder per community and job

    files, manifest = download_verified(gcs, artifact["uri"], tmp_path / "artifact")
    names = {f["path"] for f in manifest["files"]}
    assert {"adapter_model.safetensors", "adapter_config.json", "merged/model.safetensors"} <= names, names
    assert "model.safetensors" not in names
    assert manifest["contents"] == {
        "kind": "adapter",
        "adapter": "",
        "format": "peft-lora",
        "adapterType": "lora",
        "baseModel": "tiny",
        "baseRevision": None,
        "merged": "merged/",
    }
    assert (tmp_path / "artifact" / MANIFEST_NAME).exists() and len(files) == len(names) + 1

    # the base model: the tiny preset rebuilt from the same rows and spec (what the pod built instead of a download)
    config = with_preset(TrainerConfig.model_validate(manifest["config"]))
    rows = load_rows(rows_to_novalto(pairs), "novalto", "gzip")
    spec = tiny.TinySpec(seed=config.hyperparameters.seed, **(config.model.tiny or {}))  # type: ignore[arg-type]
    texts = [t for row in rows for t in (row.prompt_text(), row.chosen, row.rejected)]
    base = AutoModelForCausalLM.from_pretrained(tiny.ensure(tmp_path / "tiny", texts, spec))

    loss, accuracy, rewards = held_out_dpo(base, tmp_path / "artifact", rows, config)
    metrics = manifest["metrics"]  # full precision
    print(f"held-out: trainer evalLoss {metrics['evalLoss']:.7f}, peft {loss:.7f}; rewards {rewards}")
    assert max(abs(x) for x in rewards) > 1e-2  # the adapter changed the model's preferences
    assert loss == pytest.approx(metrics["evalLoss"], abs=1e-5)
    assert accuracy == pytest.approx(metrics["evalRewardAccuracy"], abs=1e-9)

    adapter = load_file(tmp_path / "artifact" / "adapter_model.safetensors")
    merged = load_file(tmp_path / "artifact" / "merged" / "model.safetensors")
    expected = merged_by_hand(base.state_dict(), adapter, ADAPTER["alpha"], ADAPTER["r"])
    assert merged.keys() == expected.keys()
    worst = max((merged[k] - expected[k]).abs().max().item() for k in expected)
    assert worst <= 1e-5, f"merged export differs from base + adapter by {worst:g}"


def test_openai_training_type_is_stored_as_the_adapter(lora_api):
    """Against the real apiserver (the CRD's schema and CEL rules), without training: the job is cancelled."""
    rows = b"".join(json.dumps(r).encode() + b"\n" for r in tiny_rows())
    f = httpx.post(
        f"{lora_api.url}/v1/files",
        headers=auth(lora_api),
        files={"file": ("tiny.jsonl", rows)},
        data={"purpose": "fine-tune"},
        timeout=30,
    )
    assert f.status_code == 200, f.text
    training_type = {"type": "Lora", "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.05}
    body = {"model": "tiny", "training_file": f.json()["id"], "method": {"type": "dpo"}, "training_type": training_type}
    j = httpx.post(f"{lora_api.url}/v1/fine_tuning/jobs", headers=auth(lora_api), json=body, timeout=30)
    assert j.status_code == 200, j.text
    job = j.json()
    cancel = httpx.post(f"{lora_api.url}/v1/fine_tuning/jobs/{job['id']}/cancel", headers=auth(lora_api), timeout=30)
    assert cancel.status_code == 200, cancel.text
    stored = lora_api.cluster.get_json("finetunejob", job["id"], namespace=lora_api.ns_a)["spec"]["method"]["adapter"]
    assert stored == {"type": "lora", "r": 16, "alpha": 32, "dropout": 0.05, "exportMerged": False}
    assert job["training_type"] == {**training_type, "lora_trainable_modules": "all-linear"}
