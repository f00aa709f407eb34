"""Tracking and results end to end on the local cluster: the operator runs the real trainer on the process node.

Two tiny jobs run side by side in one tenant namespace:

* through the API with the official ``openai`` client: a ``validation_file`` and a W&B ``integrations`` entry. The
  job evaluates on exactly the validation rows and trains on every training row; ``result_files[0]`` downloads as
  OpenAI's CSV with one row per optimizer step (the trainer's ``metrics.jsonl``, uploaded with the model, read back
  by the API); the W&B run is recorded offline (the operator set ``WANDB_MODE=offline``: no key Secret) and
  uploaded with the model.
* with kubectl: ``spec.tracking`` with MLflow (a file store on the host) and ``sampleDuringEval``. The MLflow run
  holds params, metrics per step, the artifact URI and the samples; the samples reach the job's Events.
"""

from __future__ import annotations

import csv
import io
import json
import time

import pytest
import yaml
from openai import OpenAI

from tests.api.conftest import ROOT, start_api
from tests.support.ftj import events_for, get_ftj, submit, tiny_ftj
from tests.support.tracking import read_mlflow_run, read_wandb_run
from tests.support.trainer import synthetic_rows

pytestmark = pytest.mark.cluster

TINY = yaml.safe_load((ROOT / "crds" / "samples" / "tiny-cpu.yaml").read_text())["spec"]
TRAINER_ENV = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "FTJ_REPORT_INTERVAL": "1"}
TRAIN_ROWS, VALIDATION_ROWS, BATCH = 64, 6, 8  # the tiny dataset's 64 rows, all trained on
SAMPLED_JOB, SAMPLED_STEPS, SAMPLES = "tracked-samples", 4, 2
TERMINAL = ("Succeeded", "Failed")


@pytest.fixture(scope="module")
def api(cluster, operator, gcs, tmp_path_factory):
    env = {
        "FTAPI_HYPERPARAMETERS": json.dumps({**TINY["hyperparameters"], "epochs": 1, "batchSize": BATCH}),
        "FTAPI_RESOURCES": json.dumps(TINY["resources"]),
        "FTAPI_RUN_POLICY": json.dumps(TINY["runPolicy"]),
        "FTAPI_OUTPUT_BUCKET": gcs.bucket,
        "FTAPI_TRAINER_ENV": json.dumps({**gcs.env(), **TRAINER_ENV}),
        **gcs.env(),  # the API reads the uploaded metrics file from the same emulator
    }
    yield from start_api(cluster, tmp_path_factory.mktemp("ftapi-tracking"), extra_env=env, tenants=1)


def jsonl(rows: list[dict]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


def tiny_rows() -> list[dict]:
    cm = yaml.safe_load((ROOT / "crds" / "samples" / "tiny-dataset.yaml").read_text())
    return json.loads(cm["data"]["dataset.json"])


def wait_terminal(cluster, namespace: str, names: list[str], timeout: float = 1200) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    while True:
        found = {n: get_ftj(cluster, namespace, n) or {} for n in names}
        phases = {n: (f.get("status") or {}).get("phase") for n, f in found.items()}
        if all(p in TERMINAL for p in phases.values()):
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"jobs not finished after {timeout:.0f}s: {phases}")
        time.sleep(2)


def test_results_validation_wandb_mlflow_and_sample_events(api, gcs, running_operator, cluster, tmp_path):
    ns = api.ns_a
    client = OpenAI(base_url=f"{api.url}/v1", api_key=api.key(ns), max_retries=2)
    train = client.files.create(file=("train.jsonl", jsonl(tiny_rows())), purpose="fine-tune")
    validation = client.files.create(
        file=("validation.jsonl", jsonl(synthetic_rows(VALIDATION_ROWS, seed=5))), purpose="fine-tune"
    )
    job = client.fine_tuning.jobs.create(
        model="tiny",
        training_file=train.id,
        validation_file=validation.id,
        method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.1}}},
        integrations=[{"type": "wandb", "wandb": {"project": "e2e-tracking", "tags": ["ci"]}}],
        seed=0,
    )
    mlruns = (tmp_path / "mlruns").as_uri()
    sampled = tiny_ftj(
        SAMPLED_JOB,
        env={**TRAINER_ENV, **gcs.env()},
        **{
            "output.bucket": gcs.bucket,
            "hyperparameters.epochs": 1,
            "hyperparameters.examples": SAMPLED_STEPS * BATCH,
            "hyperparameters.evalEvery": 2 * BATCH,
            "hyperparameters.checkpointEvery": 1000,
            "tracking": {
                "mlflow": {"trackingUri": mlruns, "experiment": "e2e"},
                "sampleDuringEval": True,
                "samples": SAMPLES,
                "sampleMaxNewTokens": 4,
            },
        },
    )
    submit(cluster, ns, sampled)
    done = wait_terminal(cluster, ns, [job.id, SAMPLED_JOB])
    logs = running_operator.logs()[-3000:]
    for name, ftj in done.items():
        assert ftj["status"]["phase"] == "Succeeded", f"{name}: {json.dumps(ftj['status'])[:3000]}\n{logs}"

    # -- the API job: every training row trained, exactly the validation rows evaluated, one CSV row per step
    status = done[job.id]["status"]
    steps = TRAIN_ROWS // BATCH
    assert status["progress"]["step"] == steps and status["progress"]["examples"] == TRAIN_ROWS
    assert status["metrics"]["evalExamples"] == VALIDATION_ROWS
    job = client.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "succeeded" and job.validation_file == validation.id and len(job.result_files) == 1
    text = client.files.content(job.result_files[0]).text
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [int(r["step"]) for r in rows] == list(range(1, steps + 1)), text
    assert all(r["train_loss"] and r["train_accuracy"] for r in rows)
    assert rows[-1]["full_valid_loss"] and not any(r["full_valid_loss"] for r in rows[:-1])
    folder = status["artifact"]["uri"].removeprefix(f"gs://{gcs.bucket}/")
    wandb_files = [n for n in gcs.list(folder + "wandb/") if n.endswith(".wandb")]
    assert len(wandb_files) == 1, f"no offline W&B run uploaded under {folder}: {gcs.list(folder)}"
    local = tmp_path / "run.wandb"
    local.write_bytes(gcs.download(wandb_files[0]))
    wb = read_wandb_run(local)
    assert (wb.name, wb.project, wb.tags) == (job.id, "e2e-tracking", ["ci"]), str(wb)[:3000]
    assert [h["_step"] for h in wb.history if "loss" in h] == list(range(1, steps + 1))
    assert wb.summary["artifact_uri"] == status["artifact"]["uri"]

    # -- the kubectl job: MLflow holds the run, and the samples became Events of the job
    status = done[SAMPLED_JOB]["status"]
    ml = read_mlflow_run(mlruns, "e2e", SAMPLED_JOB)
    assert ml.status == "FINISHED" and ml.params["method.type"] == "dpo" and ml.params["job"] == SAMPLED_JOB
    assert [s for s, _ in ml.history["loss"]] == list(range(1, SAMPLED_STEPS + 1))
    assert ml.tags["finetune.artifact_uri"] == status["artifact"]["uri"]
    assert f"samples/step-{SAMPLED_STEPS:06d}.json" in ml.artifacts
    assert status["samples"]["step"] == SAMPLED_STEPS and len(status["samples"]["items"]) == SAMPLES

    def sample_events() -> list[dict]:
        return [e for e in events_for(cluster, ns, SAMPLED_JOB) if e.get("reason") == "EvalSamples"]

    deadline = time.monotonic() + 60
    while not any(e["metadata"]["name"] == f"{SAMPLED_JOB}.samples-{SAMPLED_STEPS}" for e in sample_events()):
        assert time.monotonic() < deadline, f"no samples Event of step {SAMPLED_STEPS}: {sample_events()}"
        time.sleep(1)
    for event in sample_events():
        assert event["type"] == "Normal" and event["message"].startswith("step ") and len(event["message"]) <= 1024
        assert "[1] '" in event["message"] and "-> '" in event["message"]
