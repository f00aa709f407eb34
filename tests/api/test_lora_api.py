"""LoRA options through the API (routers on an in-memory Kubernetes; the real apiserver and trainer are exercised by
tests/api/test_lora_e2e.py): Together's ``training_type`` on the OpenAI route and the seed webhook's ``adapter``
block become ``spec.method.adapter``; the deployment's default can make LoRA the webhook's; errors name the field."""

from __future__ import annotations

import pytest
from ftapi.settings import Settings
from pydantic import ValidationError

from tests.api.fake_k8s import FakeK8s
from tests.api.test_app_fake import KEY_A, KEY_B, ROWS, A, app_client, create_job, jsonl, upload

LORA = {"type": "Lora", "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "lora_trainable_modules": "q_proj,v_proj"}


@pytest.fixture
def fake() -> FakeK8s:
    return FakeK8s(keys={KEY_A: "team-a", KEY_B: "team-b"})


@pytest.fixture
def client(fake, gcs, monkeypatch):
    with app_client(fake, gcs, monkeypatch) as c:
        yield c


def spec_of(fake: FakeK8s, name: str) -> dict:
    return fake.ftjs[("team-a", name)]["spec"]


def test_training_type_lora_becomes_the_adapter_and_comes_back(client, fake):
    fid = upload(client, jsonl(ROWS)).json()["id"]
    r = create_job(client, fid, training_type=LORA)
    assert r.status_code == 200, r.text
    job = r.json()
    assert spec_of(fake, job["id"])["method"]["adapter"] == {
        "type": "lora",
        "r": 16,
        "alpha": 32,
        "dropout": 0.05,
        "targetModules": ["q_proj", "v_proj"],
        "exportMerged": False,
    }
    assert job["training_type"] == LORA
    assert client.get(f"/v1/fine_tuning/jobs/{job['id']}", headers=A).json()["training_type"] == LORA


def test_full_or_no_training_type_trains_every_weight(client, fake):
    fid = upload(client, jsonl(ROWS)).json()["id"]
    for extra in ({}, {"training_type": {"type": "Full"}}):
        job = create_job(client, fid, **extra).json()
        assert "adapter" not in spec_of(fake, job["id"])["method"]
        assert job["training_type"] == {"type": "Full"} | dict.fromkeys(LORA.keys() - {"type"})  # lora_*: null
    lora = create_job(client, fid, training_type={"type": "Lora"}).json()  # the CRD's defaults: all-linear
    assert spec_of(fake, lora["id"])["method"]["adapter"]["r"] == 8
    assert lora["training_type"]["lora_trainable_modules"] == "all-linear"


@pytest.mark.parametrize(
    ("training_type", "param"),
    [
        ({"type": "Lora", "lora_r": 0}, "training_type.lora_r"),
        ({"type": "Lora", "lora_dropout": 1.0}, "training_type.lora_dropout"),
        ({"type": "Lora", "lora_r": "8"}, "training_type.lora_r"),
        ({"type": "Lora", "lora_trainable_modules": "q_proj,,v_proj"}, "training_type.lora_trainable_modules"),
        ({"type": "Lora", "rank": 8}, "training_type.rank"),
        ({"type": "Adapter"}, "training_type"),
        ({"type": "QLora"}, "training_type.type"),  # this deployment's jobs run on CPU
    ],
)
def test_bad_training_type_is_a_400_naming_the_field(fake, gcs, monkeypatch, training_type, param):
    with app_client(fake, gcs, monkeypatch, resources={"gpusPerNode": 0, "processesPerNode": 1}) as client:
        fid = upload(client, jsonl(ROWS)).json()["id"]
        r = create_job(client, fid, training_type=training_type)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param, err
    if training_type["type"] == "QLora":
        assert "one GPU" in err["message"]
    assert not fake.ftjs


def test_qlora_on_a_one_gpu_deployment(fake, gcs, monkeypatch):
    with app_client(fake, gcs, monkeypatch, resources={"gpusPerNode": 1}) as client:
        fid = upload(client, jsonl(ROWS)).json()["id"]
        job = create_job(client, fid, training_type={"type": "QLora", "lora_r": 4}).json()
    assert spec_of(fake, job["id"])["method"]["adapter"]["type"] == "qlora"
    assert job["training_type"]["type"] == "QLora"


def test_webhook_adapter_block(client, fake):
    block = {"type": "lora", "r": 4, "alpha": 8, "targetModules": ["q_proj"], "exportMerged": True}
    r = client.post("/trigger-finetune", headers=A, json={"communityId": "c-1", "dataset": ROWS, "adapter": block})
    assert r.status_code == 202, r.text
    assert spec_of(fake, r.json()["jobName"])["method"]["adapter"] == {**block, "dropout": 0.0}


def test_a_module_named_twice(client, fake):
    # the webhook's list is a set (as the CRD's): refused naming the field, before anything is created
    block = {"type": "lora", "targetModules": ["q_proj", "q_proj"]}
    r = client.post("/trigger-finetune", headers=A, json={"communityId": "c-1", "dataset": ROWS, "adapter": block})
    assert r.status_code == 422 and r.json()["error"]["param"] == "adapter.targetModules", r.text
    assert not fake.ftjs
    # Together's comma-separated string: a name written twice is meant once
    fid = upload(client, jsonl(ROWS)).json()["id"]
    job = create_job(client, fid, training_type={"type": "Lora", "lora_trainable_modules": "q_proj,v_proj,q_proj"})
    assert job.status_code == 200, job.text
    assert spec_of(fake, job.json()["id"])["method"]["adapter"]["targetModules"] == ["q_proj", "v_proj"]


def test_the_deployment_can_make_lora_the_webhook_default(fake, gcs, monkeypatch):
    with app_client(fake, gcs, monkeypatch, webhook_adapter={"type": "lora", "r": 16}) as client:
        default = client.post("/trigger-finetune", headers=A, json={"communityId": "c-1", "dataset": ROWS})
        full = client.post(
            "/trigger-finetune", headers=A, json={"communityId": "c-1", "dataset": ROWS, "adapter": None}
        )
    assert default.status_code == full.status_code == 202
    assert spec_of(fake, default.json()["jobName"])["method"]["adapter"]["r"] == 16
    assert "adapter" not in spec_of(fake, full.json()["jobName"])["method"]  # null: full fine-tuning


def test_webhook_adapter_errors_are_422_naming_the_field(client, fake):
    for block, param in (({"r": 0}, "adapter.r"), ({"type": "dora"}, "adapter.type")):
        r = client.post("/trigger-finetune", headers=A, json={"communityId": "c", "dataset": ROWS, "adapter": block})
        assert r.status_code == 422, r.text
        assert r.json()["error"]["param"] == param, r.json()
    # qlora fits the default resources (one GPU), but a merged export of a 4-bit base is refused by the contract
    block = {"type": "qlora", "exportMerged": True}
    r = client.post("/trigger-finetune", headers=A, json={"communityId": "c", "dataset": ROWS, "adapter": block})
    assert r.status_code == 422 and r.json()["error"]["param"] == "adapter", r.text
    assert "exportMerged is not available for type qlora" in r.json()["error"]["message"]
    assert not fake.ftjs


def test_a_bad_webhook_adapter_default_fails_at_start_up():
    with pytest.raises(ValidationError, match="webhook_adapter"):
        Settings(kubeconfig="unused", webhook_adapter={"type": "lora", "r": -1})
