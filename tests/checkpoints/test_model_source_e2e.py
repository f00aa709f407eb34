"""SFT first, then DPO from the SFT policy (the reference's recipe), on the real cluster with the real trainer:

* by kubectl, ``spec.model.from.job`` names the SFT job; created at the same time, the DPO job waits
  (``Pending/WaitingForModel``, no pods) until the SFT job has succeeded, then the operator pins the SFT job's
  verified artifact and the trainer downloads and verifies it before training;
* by the OpenAI client, ``model`` is the SFT job's ``fine_tuned_model``;
* either way the DPO job's step-0 policy log-probs (its one optimizer step's metrics, in full precision in its
  upload manifest) equal those of the SFT export computed here, and the policy equals its reference at step 0
  (zero implicit rewards).
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import torch
from ftcrd.conditions import Reason
from ftcrd.dataset import load_rows
from ftcrd.trainer_config import TrainerConfig
from ftdev.gcs import GcsEmulator
from fttrainer.data import Schedule, split_indices, tokenize_rows
from fttrainer.loop import sequence_logps
from fttrainer.packing import layout
from openai import OpenAI

from tests.api.conftest import start_api
from tests.support.checkpoints import TRAINER_ENV, dataset_rows, trainer_config
from tests.support.cluster import Cluster, wait_for
from tests.support.ftj import children, get_ftj, submit, tiny_ftj, wait_phase

pytestmark = pytest.mark.cluster

ONE_STEP = {"hyperparameters.examples": 8, "hyperparameters.batchSize": 8, "hyperparameters.evalEvery": 1000}


@pytest.fixture(scope="module")
def api(cluster, operator, gcs, tmp_path_factory):
    tiny = tiny_ftj("x")["spec"]
    env = {
        "FTAPI_HYPERPARAMETERS": json.dumps({**tiny["hyperparameters"], "epochs": 1, "examples": 8, "evalEvery": 1000}),
        "FTAPI_RESOURCES": json.dumps(tiny["resources"]),
        "FTAPI_RUN_POLICY": json.dumps(tiny["runPolicy"]),
        "FTAPI_VALIDATION_FRACTION": str(tiny["dataset"]["validationFraction"]),
        "FTAPI_OUTPUT_BUCKET": gcs.bucket,
        "FTAPI_TRAINER_ENV": json.dumps({**TRAINER_ENV, **gcs.env()}),
    }
    yield from start_api(cluster, tmp_path_factory.mktemp("ftapi-source"), extra_env=env, tenants=1)


def step0_logps(gcs: GcsEmulator, sft: dict[str, Any], cfg: TrainerConfig, data: bytes, tmp) -> tuple[float, float]:
    """Mean chosen and rejected log-probs of the DPO job's first batch under the SFT export, computed here."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    export = tmp / "sft-export"
    gcs.download_tree(sft["status"]["artifact"]["uri"], export)
    tok = AutoTokenizer.from_pretrained(export)
    model = AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32).eval()
    rows = load_rows(data, cfg.dataset.format, "auto")  # the API stores uploads gzipped; here they are plain
    hp = cfg.hyperparameters
    train, _ = split_indices(len(rows), cfg.dataset.validation_fraction, hp.seed)
    schedule = Schedule.create(
        train,
        batch_size=hp.batch_size,
        gradient_accumulation_steps=hp.gradient_accumulation_steps,
        world_size=1,
        seed=hp.seed,
        n_epochs=hp.epochs,
        n_examples=hp.examples,
    )
    (indices,) = schedule.micro_batches(0, 0)
    examples = tokenize_rows(rows, tok, hp.max_length, hp.max_prompt_length, truncation_side=hp.truncation_side)
    with torch.no_grad():
        batch = layout([examples[i] for i in indices], pairs=True, packed=False, pad_token_id=tok.pad_token_id)
        logps = sequence_logps(model, batch)
    n = len(indices)
    return float(logps[:n].mean()), float(logps[n:].mean())


def manifest_metrics(gcs: GcsEmulator, status: dict[str, Any]) -> dict[str, float]:
    uri = status["artifact"]["manifestUri"].removeprefix(f"gs://{gcs.bucket}/")
    return dict(json.loads(gcs.download(uri))["metrics"])


def assert_started_from(gcs, cluster: Cluster, namespace: str, name: str, *, sft: dict, data: bytes, tmp) -> None:
    done = wait_phase(cluster, namespace, name, "Succeeded", 600)
    cfg = trainer_config(cluster, namespace, name)
    artifact = sft["status"]["artifact"]
    assert (cfg.model.source_uri, cfg.model.source_sha256) == (artifact["uri"], artifact["sha256"])
    log = cluster.pod_log(namespace, children(cluster, namespace, name)["pods"][0]["metadata"]["name"])
    assert f"verified against its manifest (sha256 {artifact['sha256']}" in log, log[-3000:]
    metrics = manifest_metrics(gcs, done["status"])
    chosen, rejected = step0_logps(gcs, sft, cfg, data, tmp)
    assert metrics["logpsChosen"] == pytest.approx(chosen, rel=1e-5, abs=1e-5)
    assert metrics["logpsRejected"] == pytest.approx(rejected, rel=1e-5, abs=1e-5)
    assert metrics["rewardsChosen"] == 0.0 and metrics["rewardsRejected"] == 0.0  # policy == reference at step 0


def test_dpo_starts_from_the_sft_jobs_artifact(api, cluster: Cluster, gcs: GcsEmulator, tmp_path):
    ns = api.ns_a
    env = {**TRAINER_ENV, **gcs.env()}
    sft = tiny_ftj(
        "sft", env=env, **{"output.bucket": gcs.bucket, "method.type": "sft", "hyperparameters.examples": 16}
    )
    dpo = tiny_ftj("dpo", env=env, **{"output.bucket": gcs.bucket, "model.from": {"job": "sft"}, **ONE_STEP})
    submit(cluster, ns, sft)
    cluster.apply(dpo, ns)
    waiting = wait_for(
        lambda: (
            ((get_ftj(cluster, ns, "dpo") or {}).get("status") or {}).get("reason") == Reason.WAITING_FOR_MODEL
            and get_ftj(cluster, ns, "dpo")
        ),
        120,
        0.5,
        "the DPO job waiting for the SFT job",
    )
    assert waiting["status"]["phase"] == "Pending" and "waiting for FineTuneJob sft" in waiting["status"]["message"]
    assert not children(cluster, ns, "dpo")["jobs"]  # nothing runs, no GPU is held, while it waits
    sft_done = wait_phase(cluster, ns, "sft", "Succeeded", 600)

    client = OpenAI(base_url=f"{api.url}/v1", api_key=api.key(ns), max_retries=2)
    data = dataset_rows()
    rows = json.loads(data)
    upload = b"".join(json.dumps(r).encode() + b"\n" for r in rows)
    f = client.files.create(file=("pairs.jsonl", upload), purpose="fine-tune")
    created = client.fine_tuning.jobs.create(
        model=sft_done["status"]["artifact"]["uri"], training_file=f.id, method={"type": "dpo"}, seed=0
    )
    assert created.model == sft_done["status"]["artifact"]["uri"]
    ftj = get_ftj(cluster, ns, created.id) or {}
    assert ftj["spec"]["model"]["from"] == {"job": "sft"}

    assert_started_from(gcs, cluster, ns, "dpo", sft=sft_done, data=data, tmp=tmp_path / "kubectl")
    deadline = time.monotonic() + 600
    while client.fine_tuning.jobs.retrieve(created.id).status not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, "the OpenAI job did not finish"
        time.sleep(2)
    assert_started_from(gcs, cluster, ns, created.id, sft=sft_done, data=upload, tmp=tmp_path / "openai")


def test_a_failed_source_fails_the_job_that_starts_from_it(running_operator, cluster: Cluster, namespace: str):
    """The parent fails (its trainer exits 2): the job waiting for it fails at once with ModelSourceFailed, naming
    the parent's reason, and never creates a pod. A job starting from itself fails the same way."""
    parent = tiny_ftj("parent", fake=True, env={"FAKE_TRAINER_EXIT": "2", "FAKE_TRAINER_SLEEP": "3"})
    child = tiny_ftj("child", fake=True, **{"model.from": {"job": "parent"}})
    submit(cluster, namespace, parent)
    cluster.apply(child, namespace)
    assert wait_phase(cluster, namespace, "child", "Pending", 60)["status"]["reason"] == Reason.WAITING_FOR_MODEL
    wait_phase(cluster, namespace, "parent", "Failed", 120)
    failed = wait_phase(cluster, namespace, "child", "Failed", 120)["status"]
    assert failed["reason"] == Reason.MODEL_SOURCE_FAILED and "FineTuneJob parent failed" in failed["message"]
    assert not children(cluster, namespace, "child")["jobs"]

    cluster.apply(tiny_ftj("itself", fake=True, **{"model.from": {"job": "itself"}}), namespace)
    failed = wait_phase(cluster, namespace, "itself", "Failed", 60)["status"]
    assert failed["reason"] == Reason.MODEL_SOURCE_FAILED and "names this job itself" in failed["message"]
