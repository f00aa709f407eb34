"""100 MB end to end: ``client.files.create`` streams the file into the GCS emulator, ``fine_tuning.jobs.create``
names it, and the trainer (tiny model, a few steps, on the process node) downloads, verifies and parses every
row: its count and sha256 are the upload's."""

from __future__ import annotations

import json
import time

import pytest
import yaml
from ftcrd import names
from ftdev.synthetic import write_jsonl
from openai import OpenAI

from tests.api.conftest import ROOT, start_api

pytestmark = pytest.mark.e2e

TINY = yaml.safe_load((ROOT / "crds" / "samples" / "tiny-cpu.yaml").read_text())["spec"]


@pytest.fixture(scope="module")
def e2e_api(cluster, operator, gcs, tmp_path_factory):
    env = {
        # a few steps: the trainer still downloads, verifies and parses every row, and tokenizes what it reads
        "FTAPI_HYPERPARAMETERS": json.dumps({**TINY["hyperparameters"], "examples": 16}),
        "FTAPI_RESOURCES": json.dumps(TINY["resources"]),
        "FTAPI_RUN_POLICY": json.dumps(TINY["runPolicy"]),
        "FTAPI_VALIDATION_FRACTION": "0.001",
        "FTAPI_OUTPUT_BUCKET": gcs.bucket,
        "FTAPI_TRAINER_ENV": json.dumps(gcs.env()),
        "FTAPI_NOTIFY_ENABLED": "false",
    }
    yield from start_api(cluster, tmp_path_factory.mktemp("ftapi-e2e-large"), gcs=gcs, extra_env=env, tenants=1)


def test_100_mb_file_is_trained_on_exactly_as_uploaded(e2e_api, gcs, running_operator, tmp_path):
    ns = e2e_api.ns_a
    dataset = write_jsonl(tmp_path / "prefs.jsonl", 100_000_000, seed=7)
    client = OpenAI(base_url=f"{e2e_api.url}/v1", api_key=e2e_api.key(ns), max_retries=2, timeout=600)
    with dataset.path.open("rb") as f:
        uploaded = client.files.create(file=("prefs.jsonl", f), purpose="fine-tune")
    assert uploaded.bytes == dataset.bytes
    job = client.fine_tuning.jobs.create(
        model="tiny", training_file=uploaded.id, method={"type": "dpo", "dpo": {"hyperparameters": {"batch_size": 8}}}
    )
    source = e2e_api.cluster.get_json("finetunejob", job.id, namespace=ns)["spec"]["dataset"]["object"]
    assert (source["sha256"], source["rows"], source["sizeBytes"]) == (dataset.sha256, dataset.rows, dataset.bytes)

    deadline = time.monotonic() + 900
    while (job := client.fine_tuning.jobs.retrieve(job.id)).status not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, f"job still {job.status} after 900 s"
        time.sleep(2)
    status = e2e_api.cluster.get_json("finetunejob", job.id, namespace=ns).get("status")
    assert job.status == "succeeded", f"{job.error}\n{json.dumps(status)[:3000]}\n{running_operator.logs()[-3000:]}"

    pods = e2e_api.cluster.get_json("pods", "-l", f"{names.LABEL_JOB}={job.id}", namespace=ns)["items"]
    logs = "".join(e2e_api.cluster.pod_log(ns, p["metadata"]["name"]) for p in pods)
    # what the trainer read: every row of the uploaded bytes, verified against the sha256 the API recorded
    read = (
        f"{source['uri']}: {dataset.rows} rows ({dataset.rows} pairs), {dataset.bytes} bytes, sha256 {dataset.sha256}"
    )
    assert read in logs, logs[-4000:]
    assert f"downloaded and verified {dataset.bytes} bytes" in logs and "2 steps of 8 examples" in logs
