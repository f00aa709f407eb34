"""The routers against an in-memory Kubernetes (no cluster): shapes, errors, limits, idempotency."""

from __future__ import annotations

import base64
import json

import pytest
from fastapi.testclient import TestClient
from ftapi.main import create_app
from ftapi.settings import Settings
from ftcrd.dataset import load_rows

from tests.api.fake_k8s import FakeK8s

KEY_A, KEY_B = "sk-tenant-a-0123456789", "sk-tenant-b-9876543210"
A = {"Authorization": f"Bearer {KEY_A}"}
B = {"Authorization": f"Bearer {KEY_B}"}
ROWS = [{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(4)]
OPENAI_ROW = {
    "input": {"messages": [{"role": "user", "content": "hi"}]},
    "preferred_output": [{"role": "assistant", "content": "hello!"}],
    "non_preferred_output": [{"role": "assistant", "content": "go away"}],
}


def jsonl(rows: list[dict]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


@pytest.fixture
def fake() -> FakeK8s:
    return FakeK8s(keys={KEY_A: "team-a", KEY_B: "team-b"})


@pytest.fixture
def client(fake: FakeK8s):
    settings = Settings(kubeconfig="unused", max_body_bytes=300_000, configmap_budget_bytes=60_000, max_rows=1000)
    app = create_app(settings, k8s=fake)  # type: ignore[arg-type]
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def upload(client: TestClient, data: bytes, headers=A, purpose="fine-tune"):
    return client.post("/v1/files", headers=headers, files={"file": ("prefs.jsonl", data)}, data={"purpose": purpose})


def test_health_needs_no_key(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    assert "ftapi_requests_total" in client.get("/metrics").text


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic abc"}])
def test_auth_required(client, headers):
    r = client.get("/v1/fine_tuning/jobs", headers=headers)
    assert r.status_code == 401
    err = r.json()["error"]
    assert err["code"] == "invalid_api_key" and err["type"] == "invalid_request_error"
    assert r.headers["www-authenticate"] == "Bearer"


def test_webhook_creates_job_and_owned_configmap(client, fake):
    r = client.post("/trigger-finetune", headers=A, json={"communityId": "c-1", "dataset": ROWS})
    assert r.status_code == 202, r.text
    body = r.json()
    name = body["jobName"]
    assert name.startswith("ftjob-") and body["namespace"] == "team-a"
    assert body["statusUrl"].endswith(f"/v1/finetunejobs/{name}")
    ftj = fake.ftjs[("team-a", name)]
    assert ftj["spec"]["model"]["preset"] == "zephyr"
    assert ftj["spec"]["method"] == {"type": "dpo", "beta": 0.1, "labelSmoothing": 0.0, "referenceFree": False}
    assert ftj["spec"]["communityId"] == "c-1"
    ds = ftj["spec"]["dataset"]
    assert ds["format"] == "novalto" and ds["compression"] == "gzip"
    cm = fake.configmaps[("team-a", ds["configMap"]["name"])]
    assert cm["metadata"]["ownerReferences"][0]["uid"] == ftj["metadata"]["uid"]
    raw = base64.b64decode(cm["binaryData"][ds["configMap"]["key"]])
    rows = load_rows(raw, "novalto", "gzip")
    assert [r.chosen for r in rows] == [r["chosen"] for r in ROWS]
    # visible through the native and OpenAI endpoints, not to the other tenant
    assert client.get(f"/v1/finetunejobs/{name}", headers=A).json()["spec"]["communityId"] == "c-1"
    assert client.get(f"/v1/fine_tuning/jobs/{name}", headers=A).json()["status"] == "queued"
    assert client.get(f"/v1/fine_tuning/jobs/{name}", headers=B).status_code == 404


@pytest.mark.parametrize(
    ("payload", "param", "fragment"),
    [
        ({"dataset": ROWS}, "communityId", "Field required"),
        ({"communityId": "c", "dataset": []}, "dataset", "at least 1"),
        ({"communityId": "c", "dataset": "x"}, "dataset", "valid list"),
        ({"communityId": 5, "dataset": ROWS}, "communityId", "valid string"),
        ({"communityId": "c", "dataset": [{"prompt": "p", "chosen": "c"}]}, "dataset[0].rejected", "Field required"),
        (
            {"communityId": "c", "dataset": [*ROWS, {"prompt": "p", "chosen": " ", "rejected": "r"}]},
            "dataset[4].chosen",
            "non-empty",
        ),
        (
            {"communityId": "c", "dataset": [{"prompt": 1, "chosen": "c", "rejected": "r"}]},
            "dataset[0].prompt",
            "valid string",
        ),
        ({"communityId": "bad id!", "dataset": ROWS}, "communityId", "pattern"),
    ],
)
def test_webhook_schema_errors(client, fake, payload, param, fragment):
    r = client.post("/trigger-finetune", headers=A, json=payload)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["param"] == param
    assert err["message"].startswith(param) and fragment in err["message"]
    assert not fake.ftjs and not fake.configmaps


def test_invalid_json_body(client, fake):
    r = client.post("/trigger-finetune", headers={**A, "Content-Type": "application/json"}, content=b"{nope")
    assert r.status_code == 422 and "not valid JSON" in r.json()["error"]["message"]


def test_body_limit(client, fake):
    big = [{"prompt": "p" * 1000, "chosen": "c" * 1000, "rejected": "r"}] * 200
    r = client.post("/trigger-finetune", headers=A, json={"communityId": "c", "dataset": big})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    assert not fake.ftjs and not fake.configmaps


def test_configmap_budget(client, fake):
    import secrets

    rows = [{"prompt": secrets.token_hex(2000), "chosen": secrets.token_hex(1000), "rejected": "r"} for _ in range(20)]
    r = client.post("/trigger-finetune", headers=A, json={"communityId": "c", "dataset": rows})
    assert r.status_code == 413
    err = r.json()["error"]
    assert err["code"] == "dataset_too_large" and "spec.dataset.volume" in err["message"]
    assert not fake.ftjs and not fake.configmaps


def test_configmap_failure_leaves_no_job(client, fake):
    fake.fail_configmap_create = True
    r = client.post("/trigger-finetune", headers=A, json={"communityId": "c", "dataset": ROWS})
    assert r.status_code == 422 and "no job was created" in r.json()["error"]["message"]
    assert not fake.ftjs and not fake.configmaps


def test_webhook_idempotency(client, fake):
    h = {**A, "Idempotency-Key": "abc"}
    r1 = client.post("/trigger-finetune", headers=h, json={"communityId": "c", "dataset": ROWS})
    r2 = client.post("/trigger-finetune", headers=h, json={"communityId": "c", "dataset": ROWS})
    assert r1.status_code == r2.status_code == 202
    assert r1.json() == r2.json() and len(fake.ftjs) == 1
    r3 = client.post("/trigger-finetune", headers=h, json={"communityId": "other", "dataset": ROWS})
    assert r3.status_code == 409 and r3.json()["error"]["code"] == "idempotency_key_reused"
    # the same key in another tenant is another job
    r4 = client.post(
        "/trigger-finetune", headers={**B, "Idempotency-Key": "abc"}, json={"communityId": "c", "dataset": ROWS}
    )
    assert r4.status_code == 202 and r4.json()["jobName"] != r1.json()["jobName"]


def test_files_roundtrip(client, fake):
    data = jsonl([*ROWS, OPENAI_ROW])
    r = upload(client, data)
    assert r.status_code == 200, r.text
    f = r.json()
    assert f["object"] == "file" and f["bytes"] == len(data) and f["purpose"] == "fine-tune"
    assert f["filename"] == "prefs.jsonl" and f["id"].startswith("file-")
    assert client.get(f"/v1/files/{f['id']}", headers=A).json() == f
    assert client.get(f"/v1/files/{f['id']}/content", headers=A).content == data
    listed = client.get("/v1/files", headers=A).json()
    assert listed["object"] == "list" and [x["id"] for x in listed["data"]] == [f["id"]]
    assert client.get("/v1/files", headers=B).json()["data"] == []
    assert client.get(f"/v1/files/{f['id']}", headers=B).status_code == 404
    r = client.delete(f"/v1/files/{f['id']}", headers=A)
    assert r.json() == {"id": f["id"], "object": "file", "deleted": True}
    assert client.get(f"/v1/files/{f['id']}", headers=A).status_code == 404
    assert not fake.configmaps


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"", "has 0 rows"),
        (jsonl(ROWS[:2]) + b"{not json\n", "line 3: line is not valid JSON"),
        (jsonl([*ROWS[:1], {"prompt": "p", "chosen": "", "rejected": "r"}]), "line 2: field 'chosen'"),
        (jsonl([{"prompt": "p", "chosen": "c"}]), "line 1: field 'rejected': is missing"),
        (jsonl([{**OPENAI_ROW, "preferred_output": [{"role": "user", "content": "x"}]}]), "'assistant'"),
        (b"\xff\xfe", "UTF-8"),
    ],
)
def test_file_validation(client, fake, data, fragment):
    r = upload(client, data)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_file_format" and fragment in err["message"], err
    assert not fake.configmaps


def test_file_purpose_and_missing_file(client, fake):
    r = upload(client, jsonl(ROWS), purpose="batch")
    assert r.status_code == 400 and r.json()["error"]["param"] == "purpose"
    r = client.post("/v1/files", headers=A, data={"purpose": "fine-tune"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "file"
    assert not fake.configmaps


def create_job(client, file_id, headers=A, **extra):
    body = {
        "model": "tiny",
        "training_file": file_id,
        "method": {
            "type": "dpo",
            "dpo": {"hyperparameters": {"beta": 0.2, "n_epochs": 2, "batch_size": 2, "learning_rate_multiplier": 2}},
        },
        "suffix": "demo",
        "seed": 7,
        "metadata": {"team": "a"},
        **extra,
    }
    return client.post("/v1/fine_tuning/jobs", headers=headers, json=body)


def test_job_lifecycle(client, fake):
    fid = upload(client, jsonl(ROWS)).json()["id"]
    r = create_job(client, fid)
    assert r.status_code == 200, r.text
    job = r.json()
    assert job["object"] == "fine_tuning.job" and job["status"] == "queued" and job["model"] == "tiny"
    assert job["training_file"] == fid and job["seed"] == 7 and job["metadata"] == {"team": "a"}
    assert job["method"]["dpo"]["hyperparameters"] == {
        "beta": 0.2,
        "batch_size": 2,
        "n_epochs": 2,
        "learning_rate_multiplier": 2.0,
    }
    ftj = fake.ftjs[("team-a", job["id"])]
    assert ftj["spec"]["dataset"]["configMap"] == {"name": fid, "key": "data.jsonl.gz"}
    assert ftj["spec"]["dataset"]["format"] == "jsonl"
    assert ftj["spec"]["hyperparameters"]["learningRate"] == pytest.approx(1e-6)
    assert ftj["spec"]["model"] == {"name": "tiny", "preset": "tiny"}

    # file in use cannot be deleted
    assert client.delete(f"/v1/files/{fid}", headers=A).status_code == 409

    assert client.post(f"/v1/fine_tuning/jobs/{job['id']}/pause", headers=A).status_code == 200
    assert fake.ftjs[("team-a", job["id"])]["spec"]["runPolicy"]["suspend"] is True
    assert client.post(f"/v1/fine_tuning/jobs/{job['id']}/resume", headers=A).status_code == 200
    assert fake.ftjs[("team-a", job["id"])]["spec"]["runPolicy"]["suspend"] is False
    events = client.get(f"/v1/fine_tuning/jobs/{job['id']}/events", headers=A).json()["data"]
    assert [e["message"] for e in events][-1].startswith("Created fine-tuning job")
    assert any("paused" in e["message"] for e in events) and any("resumed" in e["message"] for e in events)

    r = client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel", headers=A)
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert client.post(f"/v1/fine_tuning/jobs/{job['id']}/resume", headers=A).status_code == 409
    assert client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel", headers=A).json()["status"] == "cancelled"
    assert client.delete(f"/v1/files/{fid}", headers=A).status_code == 200

    # other tenant
    for path in ("", "/events", "/checkpoints"):
        assert client.get(f"/v1/fine_tuning/jobs/{job['id']}{path}", headers=B).status_code == 404
    assert client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel", headers=B).status_code == 404


def test_job_create_errors(client, fake):
    fid = upload(client, jsonl(ROWS)).json()["id"]
    n_cm = len(fake.configmaps)
    cases = [
        ({"model": "gpt-9"}, 400, "model", "does not exist"),
        ({"training_file": "file-000000000000000000000000"}, 400, "training_file", "No such file"),
        ({"training_file": "../etc"}, 400, "training_file", "should match pattern"),
        ({"validation_file": "file-111111111111111111111111"}, 400, "validation_file", "No such file"),
        ({"method": {"type": "reinforcement"}}, 400, "method.type", "not supported"),
        (
            {"method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": -1}}}},
            400,
            "method.dpo.hyperparameters.beta",
            "greater than 0",
        ),
        (
            {"method": {"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": "many"}}}},
            400,
            "method.dpo.hyperparameters.n_epochs",
            "",
        ),
        (
            {"method": {"type": "dpo", "dpo": {"hyperparameters": {"batch_size": 4}}}},
            400,
            "method.dpo.hyperparameters.batch_size",
            "larger than the 3 training rows",
        ),
        ({"suffix": "x" * 65}, 400, "suffix", "at most 64"),
        ({"seed": -1}, 400, "seed", "greater than or equal to 0"),
        ({"metadata": {str(i): "v" for i in range(17)}}, 400, "metadata", "at most 16"),
        ({"bogus": 1}, 400, "bogus", "Extra inputs"),
    ]
    for extra, status, param, fragment in cases:
        r = create_job(client, fid, **extra)
        assert r.status_code == status, (extra, r.text)
        err = r.json()["error"]
        assert err["param"] == param and fragment in err["message"], (extra, err)
    r = client.post("/v1/fine_tuning/jobs", headers=A, json={"training_file": fid})
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"
    # the other tenant cannot use team-a's file
    r = create_job(client, fid, headers=B)
    assert r.status_code == 400 and r.json()["error"]["param"] == "training_file"
    assert not fake.ftjs and len(fake.configmaps) == n_cm


def test_job_idempotency(client, fake):
    fid = upload(client, jsonl(ROWS)).json()["id"]
    h = {**A, "Idempotency-Key": "k-1"}
    r1 = client.post("/v1/fine_tuning/jobs", headers=h, json={"model": "tiny", "training_file": fid})
    r2 = client.post("/v1/fine_tuning/jobs", headers=h, json={"model": "tiny", "training_file": fid})
    assert r1.status_code == r2.status_code == 200
    assert r1.json()["id"] == r2.json()["id"] and r1.json()["seed"] == r2.json()["seed"]
    assert len(fake.ftjs) == 1
    r3 = client.post("/v1/fine_tuning/jobs", headers=h, json={"model": "zephyr", "training_file": fid})
    assert r3.status_code == 409


def test_list_pagination(client, fake):
    fid = upload(client, jsonl(ROWS)).json()["id"]
    ids = [create_job(client, fid).json()["id"] for _ in range(5)]
    page = client.get("/v1/fine_tuning/jobs?limit=2", headers=A).json()
    assert [j["id"] for j in page["data"]] == ids[::-1][:2] and page["has_more"] is True
    page2 = client.get(f"/v1/fine_tuning/jobs?limit=2&after={page['data'][-1]['id']}", headers=A).json()
    assert [j["id"] for j in page2["data"]] == ids[::-1][2:4]
    last = client.get(f"/v1/fine_tuning/jobs?limit=2&after={ids[1]}", headers=A).json()
    assert [j["id"] for j in last["data"]] == [ids[0]] and last["has_more"] is False
    clamped = client.get("/v1/fine_tuning/jobs?limit=0", headers=A).json()  # clamped to 1, as OpenAI does
    assert [j["id"] for j in clamped["data"]] == ids[::-1][:1] and clamped["has_more"] is True
    assert len(client.get("/v1/fine_tuning/jobs?limit=1000", headers=A).json()["data"]) == 5
    assert client.get("/v1/fine_tuning/jobs", headers=B).json()["data"] == []


def test_status_mapping_through_api(client, fake):
    fid = upload(client, jsonl(ROWS)).json()["id"]
    jid = create_job(client, fid).json()["id"]
    obj = fake.ftjs[("team-a", jid)]
    obj["status"] = {
        "phase": "Succeeded",
        "completionTime": "2026-01-01T00:10:00Z",
        "artifact": {"uri": "gs://b/models/team-a/x/"},
        "metrics": {"tokens": 1234, "loss": 0.5},
        "checkpoints": [
            {"step": 2, "createdAt": "2026-01-01T00:05:00Z", "metrics": {"loss": 0.6}},
            {"step": 4, "metrics": {"loss": 0.5, "evalLoss": 0.55}},
        ],
    }
    job = client.get(f"/v1/fine_tuning/jobs/{jid}", headers=A).json()
    assert job["status"] == "succeeded" and job["fine_tuned_model"] == "gs://b/models/team-a/x/"
    assert job["trained_tokens"] == 1234 and job["finished_at"] == 1767226200
    cks = client.get(f"/v1/fine_tuning/jobs/{jid}/checkpoints", headers=A).json()["data"]
    assert [c["step_number"] for c in cks] == [4, 2]
    assert cks[0]["metrics"]["valid_loss"] == 0.55 and cks[0]["object"] == "fine_tuning.job.checkpoint"
    assert client.post(f"/v1/fine_tuning/jobs/{jid}/cancel", headers=A).status_code == 409
    assert client.post(f"/v1/fine_tuning/jobs/{jid}/pause", headers=A).status_code == 409


def test_unknown_route_and_method(client):
    r = client.get("/v1/nothing", headers=A)
    assert r.status_code == 404 and "error" in r.json()
    r = client.put("/v1/fine_tuning/jobs", headers=A)
    assert r.status_code == 405 and "error" in r.json()
    assert r.headers["allow"] == "GET, POST"
    # two routes serve /v1/files/{file_id}: Allow names both (Starlette's own 405 names the first only)
    r = client.patch("/v1/files/file-x", headers=A)
    assert r.status_code == 405 and r.headers["allow"] == "DELETE, GET"
    r = client.get("/v1/fine_tuning/jobs/x/cancel", headers=A)
    assert r.status_code == 405 and r.headers["allow"] == "POST"


def test_secrets_not_logged(client, caplog):
    caplog.set_level("DEBUG")
    client.get("/v1/fine_tuning/jobs", headers=A)
    client.get("/v1/fine_tuning/jobs", headers={"Authorization": "Bearer wrong-secret-key"})
    text = caplog.text
    assert KEY_A not in text and "wrong-secret-key" not in text
    assert '"tenant": "key-team-a"' in text


def test_list_filters_on_metadata(client, fake):
    fid = upload(client, jsonl(ROWS)).json()["id"]
    a = create_job(client, fid, metadata={"team": "x"}).json()["id"]
    create_job(client, fid, metadata={"team": "y"})
    page = client.get("/v1/fine_tuning/jobs", params={"metadata[team]": "x"}, headers=A).json()
    assert [j["id"] for j in page["data"]] == [a]


def test_integrations_recorded(client, fake):
    fid = upload(client, jsonl(ROWS)).json()["id"]
    wandb = {"project": "p", "tags": ["a", "b"]}
    r = create_job(client, fid, integrations=[{"type": "wandb", "wandb": wandb}])
    assert r.status_code == 200, r.text
    job = r.json()
    spec = fake.ftjs[("team-a", job["id"])]["spec"]
    assert spec["tracking"]["wandb"] == {"project": "p", "name": job["id"], "tags": ["a", "b"]}
    assert "mlflow" not in spec["tracking"] and not spec["tracking"]["sampleDuringEval"]  # the CRD's defaults
    assert job["integrations"] == [
        {"type": "wandb", "wandb": {"project": "p", "name": job["id"], "entity": None, "tags": ["a", "b"]}}
    ]
    r = create_job(client, fid, integrations=[{"type": "comet", "comet": {}}])
    assert r.status_code == 400 and r.json()["error"]["param"].startswith("integrations[0]")


def test_chunked_body_over_limit(client, fake):
    def gen():
        yield b'{"communityId": "c", "dataset": ['
        for _ in range(400):
            yield json.dumps({"prompt": "p" * 1000, "chosen": "c", "rejected": "r"}).encode() + b","
        yield b"]}"

    r = client.post("/trigger-finetune", headers={**A, "Content-Type": "application/json"}, content=gen())
    assert r.status_code == 413, r.text
    assert not fake.ftjs


def test_unexpected_errors_are_503_not_500(client, fake, monkeypatch):
    async def boom(*_a, **_k):
        raise RuntimeError("bug")

    monkeypatch.setattr(fake, "list_ftj", boom)
    r = client.get("/v1/fine_tuning/jobs", headers=A)
    assert r.status_code == 503 and r.json()["error"]["type"] == "server_error"


def test_apiserver_down(client, fake, monkeypatch):
    import aiohttp

    async def down(*_a, **_k):
        raise aiohttp.ClientConnectionError("refused")

    monkeypatch.setattr(fake, "server_version", down)
    monkeypatch.setattr(fake, "get_ftj", down)
    assert client.get("/readyz").status_code == 503
    r = client.get("/v1/fine_tuning/jobs/ftjob-000000000000", headers=A)
    assert r.status_code == 503 and "unreachable" in r.json()["error"]["message"]


def test_keys_are_reloaded(fake):
    settings = Settings(kubeconfig="unused", keys_refresh_seconds=0)
    with TestClient(create_app(settings, k8s=fake)) as c:  # type: ignore[arg-type]
        assert c.get("/v1/files", headers=A).status_code == 200
        fake.keys = {KEY_B: "team-b"}  # key A revoked, rotation without restart
        assert c.get("/v1/files", headers=A).status_code == 401
        assert c.get("/v1/files", headers=B).status_code == 200


def test_file_limits(client, fake):
    r = upload(client, jsonl([ROWS[0]] * 1001))
    assert r.status_code == 400 and "has more than 1000 rows" in r.json()["error"]["message"]
    import secrets

    rows = [{"prompt": secrets.token_hex(2000), "chosen": secrets.token_hex(1000), "rejected": "r"} for _ in range(20)]
    r = upload(client, jsonl(rows))
    assert r.status_code == 413 and "spec.dataset.volume" in r.json()["error"]["message"]
    assert not fake.configmaps


WEIRD = [
    None,
    0,
    -1,
    10**30,
    1.5,
    True,
    "",
    " ",
    "\x00",
    "é" * 70,
    [],
    {},
    [None],
    {"a": {"b": [1]}},
    "file-" + "0" * 24,
]


@pytest.mark.parametrize("path", ["/trigger-finetune", "/v1/fine_tuning/jobs"])
def test_no_input_yields_500(client, fake, path):
    import itertools
    import random

    rnd = random.Random(7)
    fields = {
        "/trigger-finetune": ["communityId", "dataset"],
        "/v1/fine_tuning/jobs": [
            "model",
            "training_file",
            "validation_file",
            "method",
            "hyperparameters",
            "suffix",
            "seed",
            "metadata",
            "integrations",
        ],
    }[path]
    bodies: list = [*WEIRD, "not an object"]
    for _ in range(150):
        body = {f: rnd.choice(WEIRD) for f in rnd.sample(fields, rnd.randint(1, len(fields)))}
        if path == "/trigger-finetune" and rnd.random() < 0.5:
            body["dataset"] = [{k: rnd.choice(WEIRD) for k in ("prompt", "chosen", "rejected")} for _ in range(2)]
        if path != "/trigger-finetune" and rnd.random() < 0.5:
            body["method"] = {
                "type": rnd.choice(["dpo", "supervised", "reinforcement", 3]),
                "dpo": {
                    "hyperparameters": {
                        k: rnd.choice([*WEIRD, "auto"])
                        for k in ("beta", "n_epochs", "batch_size", "learning_rate_multiplier")
                    }
                },
            }
        bodies.append(body)
    for body, idem in zip(bodies, itertools.cycle([None, "k", "\u2603"]), strict=False):
        headers = dict(A)
        if idem is not None:
            headers["Idempotency-Key"] = idem
        try:
            r = client.post(path, headers=headers, json=body)
        except UnicodeEncodeError:
            continue  # httpx refuses non-latin-1 header values before sending
        assert r.status_code < 500, (body, r.text)
        assert "error" in r.json() or r.status_code in (200, 202)
    for cm in fake.configmaps.values():  # whatever was accepted is complete: no orphan dataset ConfigMaps
        owners = cm["metadata"].get("ownerReferences") or []
        assert all((cm["metadata"]["namespace"], o["name"]) in fake.ftjs for o in owners)
