"""End to end through the API: the real openai client uploads the tiny dataset, creates a DPO job on the
tiny CPU preset, and the operator (tests/support/operator_process.py) runs the real trainer on the process node,
uploading to the GCS emulator (the `gcs` fixture, tests/support/gcs.py) until the job is succeeded with fine_tuned_model set."""

from __future__ import annotations

import json
import time

import pytest
import yaml
from openai import OpenAI

from tests.api.conftest import ROOT, start_api

pytestmark = pytest.mark.cluster

# The tiny CPU sample's settings (crds/samples/tiny-cpu.yaml), as the API's defaults for created jobs.
TINY = yaml.safe_load((ROOT / "crds" / "samples" / "tiny-cpu.yaml").read_text())["spec"]


@pytest.fixture(scope="module")
def e2e_api(cluster, operator, gcs, tmp_path_factory):
    env = {
        "FTAPI_HYPERPARAMETERS": json.dumps({**TINY["hyperparameters"], "epochs": 1}),
        "FTAPI_RESOURCES": json.dumps(TINY["resources"]),
        "FTAPI_RUN_POLICY": json.dumps(TINY["runPolicy"]),
        "FTAPI_VALIDATION_FRACTION": str(TINY["dataset"]["validationFraction"]),
        "FTAPI_OUTPUT_BUCKET": gcs.bucket,
        "FTAPI_TRAINER_ENV": json.dumps(gcs.env()),
    }
    yield from start_api(cluster, tmp_path_factory.mktemp("ftapi-e2e"), gcs=gcs, extra_env=env, tenants=1)


def tiny_rows() -> list[dict[str, str]]:
    cm = yaml.safe_load((ROOT / "crds" / "samples" / "tiny-dataset.yaml").read_text())
    return json.loads(cm["data"]["dataset.json"])


def test_tiny_dpo_job_queued_to_succeeded(e2e_api, gcs, running_operator):
    ns = e2e_api.ns_a
    client = OpenAI(
        base_url=f"{e2e_api.url}/v1", api_key=e2e_api.key(ns), max_retries=2, _strict_response_validation=True
    )
    data = b"".join(json.dumps(r).encode() + b"\n" for r in tiny_rows())
    f = client.files.create(file=("tiny.jsonl", data), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model="tiny", training_file=f.id, method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.1}}}, seed=0
    )
    assert job.status in ("validating_files", "queued")
    seen = [job.status]
    deadline = time.monotonic() + 900
    while True:
        job = client.fine_tuning.jobs.retrieve(job.id)
        if job.status != seen[-1]:
            seen.append(job.status)
        if job.status in ("succeeded", "failed", "cancelled"):
            break
        if time.monotonic() > deadline:
            obj = e2e_api.cluster.get_json("finetunejob", job.id, namespace=ns)
            pytest.fail(f"job still {job.status} after 900 s: {json.dumps(obj.get('status'), indent=1)[:3000]}")
        time.sleep(2)
    obj = e2e_api.cluster.get_json("finetunejob", job.id, namespace=ns)
    assert job.status == "succeeded", f"{job.error}\n{running_operator.logs()[-3000:]}\n{json.dumps(obj.get('status'))}"
    assert seen[0] in ("validating_files", "queued") and seen[-1] == "succeeded", seen
    assert job.fine_tuned_model and job.fine_tuned_model.startswith(f"gs://{gcs.bucket}/")
    assert job.fine_tuned_model == obj["status"]["artifact"]["uri"]
    assert job.finished_at is not None and job.error is None
    prefix = job.fine_tuned_model.removeprefix(f"gs://{gcs.bucket}/")
    assert gcs.list(prefix), f"nothing uploaded under {job.fine_tuned_model}"
    events = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100)]
    assert any("successfully completed" in m for m in events), events
    for ck in client.fine_tuning.jobs.checkpoints.list(job.id):
        assert ck.fine_tuning_job_id == job.id and ck.step_number >= 0
