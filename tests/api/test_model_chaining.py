"""OpenAI chaining over the in-memory Kubernetes: ``model`` may be a previous job's ``fine_tuned_model`` (or its id);
the new FineTuneJob then starts from that job (spec.model.from.job), which the operator resolves to its verified
artifact. Another tenant's job, or a name that is nothing, is ``model_not_found``."""

from __future__ import annotations

import pytest

from tests.api.fake_k8s import FakeK8s
from tests.api.test_app_fake import KEY_A, KEY_B, ROWS, A, B, app_client, jsonl, upload


@pytest.fixture
def fake() -> FakeK8s:
    return FakeK8s(keys={KEY_A: "team-a", KEY_B: "team-b"})


@pytest.fixture
def client(fake: FakeK8s, gcs, monkeypatch):
    with app_client(fake, gcs, monkeypatch) as c:
        yield c


def succeeded_job(client, fake, headers=A) -> dict:
    fid = upload(client, jsonl(ROWS), headers).json()["id"]
    job = client.post("/v1/fine_tuning/jobs", headers=headers, json={"model": "tiny", "training_file": fid}).json()
    ns = "team-a" if headers is A else "team-b"
    stored = fake.ftjs[(ns, job["id"])]
    stored["status"] = {
        "phase": "Succeeded",
        "artifact": {"uri": f"gs://b/models/{ns}/{job['id']}/", "sha256": "a" * 64},
    }
    return {**job, "fid": fid, "fine_tuned_model": stored["status"]["artifact"]["uri"]}


def test_a_fine_tuned_model_starts_the_next_job(client, fake):
    sft = succeeded_job(client, fake)
    listed = client.get(f"/v1/fine_tuning/jobs/{sft['id']}", headers=A).json()
    assert listed["fine_tuned_model"] == sft["fine_tuned_model"]
    for model in (sft["fine_tuned_model"], sft["id"]):
        r = client.post(
            "/v1/fine_tuning/jobs",
            headers=A,
            json={"model": model, "training_file": sft["fid"], "method": {"type": "dpo"}},
        )
        assert r.status_code == 200, r.text
        assert r.json()["model"] == model
        spec = fake.ftjs[("team-a", r.json()["id"])]["spec"]
        assert spec["model"] == {"name": "tiny", "preset": "tiny", "from": {"job": sft["id"]}}


def test_another_tenants_model_is_not_found(client, fake):
    other = succeeded_job(client, fake, headers=B)
    fid = upload(client, jsonl(ROWS), A).json()["id"]
    for model in (other["fine_tuned_model"], other["id"], "gs://b/models/nothing/", "not-a-model"):
        r = client.post("/v1/fine_tuning/jobs", headers=A, json={"model": model, "training_file": fid})
        assert r.status_code == 400 and r.json()["error"]["code"] == "model_not_found", (model, r.text)
