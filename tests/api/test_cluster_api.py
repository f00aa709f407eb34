"""The API against the local control plane, run as a subprocess with its own least-privilege ServiceAccount:
the real openai client, the seed webhook, the bad-request table, idempotency, tenancy and RBAC."""

from __future__ import annotations

import base64
import concurrent.futures
import copy
import hashlib
import json
import secrets
import time
from pathlib import Path

import httpx
import openai
import pytest
from ftcrd.dataset import load_rows
from openai import OpenAI

pytestmark = pytest.mark.cluster

ROWS = [{"prompt": f"Question {i}?", "chosen": f"A helpful answer {i}.", "rejected": f"No {i}."} for i in range(6)]
OPENAI_ROW = {
    "input": {"messages": [{"role": "user", "content": "Say hi"}]},
    "preferred_output": [{"role": "assistant", "content": "Hi there!"}],
    "non_preferred_output": [{"role": "assistant", "content": "No."}],
}


def jsonl(rows) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


def client_for(api, namespace) -> OpenAI:
    return OpenAI(base_url=f"{api.url}/v1", api_key=api.key(namespace), max_retries=0, _strict_response_validation=True)


def auth(api, namespace) -> dict[str, str]:
    return {"Authorization": "Bearer " + api.key(namespace)}


def ftj(api, namespace, name):
    return api.cluster.get_json("finetunejob", name, namespace=namespace)


@pytest.fixture(scope="module")
def job_a(api_server):
    """A file and a DPO job in tenant A, made with plain HTTP."""
    h = auth(api_server, api_server.ns_a)
    f = httpx.post(
        f"{api_server.url}/v1/files", headers=h, files={"file": ("a.jsonl", jsonl(ROWS))}, data={"purpose": "fine-tune"}
    )
    assert f.status_code == 200, f.text
    j = httpx.post(
        f"{api_server.url}/v1/fine_tuning/jobs", headers=h, json={"model": "tiny", "training_file": f.json()["id"]}
    )
    assert j.status_code == 200, j.text
    return {"file": f.json()["id"], "job": j.json()["id"]}


def test_openai_client_flow(api_server):
    a = client_for(api_server, api_server.ns_a)
    b = client_for(api_server, api_server.ns_b)

    f = a.files.create(file=("prefs.jsonl", jsonl([*ROWS, OPENAI_ROW])), purpose="fine-tune")
    assert f.id.startswith("file-") and f.purpose == "fine-tune" and f.filename == "prefs.jsonl"
    assert a.files.retrieve(f.id).bytes == len(jsonl([*ROWS, OPENAI_ROW]))
    assert f.id in [x.id for x in a.files.list()]
    assert f.id not in [x.id for x in b.files.list()]

    job = a.fine_tuning.jobs.create(
        model="tiny",
        training_file=f.id,
        method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2, "n_epochs": 1, "batch_size": 2}}},
        suffix="flow",
        seed=3,
        metadata={"owner": "tests"},
    )
    assert job.status in ("validating_files", "queued", "running")
    assert job.model == "tiny" and job.training_file == f.id and job.seed == 3
    assert job.method is not None and job.method.dpo is not None
    assert job.method.dpo.hyperparameters is not None and job.method.dpo.hyperparameters.beta == 0.2
    obj = ftj(api_server, api_server.ns_a, job.id)
    assert obj["spec"]["model"]["preset"] == "tiny" and obj["spec"]["method"]["beta"] == 0.2
    data = jsonl([*ROWS, OPENAI_ROW])
    assert obj["spec"]["dataset"]["object"]["uri"].endswith(f"/{api_server.ns_a}/{f.id}")
    assert obj["spec"]["dataset"]["object"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert obj["spec"]["dataset"]["object"]["rows"] == len(ROWS) + 1

    got = a.fine_tuning.jobs.retrieve(job.id)
    assert got.id == job.id and got.metadata == {"owner": "tests"}
    assert job.id in [j.id for j in a.fine_tuning.jobs.list(limit=100)]
    page = a.fine_tuning.jobs.list(limit=1)
    assert len(page.data) == 1

    paused = a.fine_tuning.jobs.pause(job.id)
    assert paused.status in ("queued", "running")
    assert ftj(api_server, api_server.ns_a, job.id)["spec"]["runPolicy"]["suspend"] is True
    a.fine_tuning.jobs.resume(job.id)
    assert ftj(api_server, api_server.ns_a, job.id)["spec"]["runPolicy"]["suspend"] is False

    events = list(a.fine_tuning.jobs.list_events(job.id, limit=50))
    messages = [e.message for e in events]
    assert messages[-1] == f"Created fine-tuning job: {job.id}"
    assert any("paused" in m for m in messages) and any("resumed" in m for m in messages)
    assert list(a.fine_tuning.jobs.checkpoints.list(job.id)) == []

    # the file is in use: no delete while the job is unfinished
    with pytest.raises(openai.ConflictError):
        a.files.delete(f.id)

    other = a.fine_tuning.jobs.create(model="tiny", training_file=f.id)
    cancelled = a.fine_tuning.jobs.cancel(other.id)
    assert cancelled.status == "cancelled"
    obj = ftj(api_server, api_server.ns_a, other.id)
    assert obj["metadata"]["annotations"]["finetune.dev/cancelled"] == "true"
    assert obj["spec"]["runPolicy"]["suspend"] is True
    assert a.fine_tuning.jobs.retrieve(other.id).status == "cancelled"
    with pytest.raises(openai.ConflictError):
        a.fine_tuning.jobs.resume(other.id)

    # tenant B sees none of it
    with pytest.raises(openai.NotFoundError):
        b.fine_tuning.jobs.retrieve(job.id)
    with pytest.raises(openai.NotFoundError):
        b.fine_tuning.jobs.cancel(job.id)
    with pytest.raises(openai.NotFoundError):
        b.files.retrieve(f.id)
    assert job.id not in [j.id for j in b.fine_tuning.jobs.list()]

    bad = OpenAI(base_url=f"{api_server.url}/v1", api_key="ftk-test-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.fine_tuning.jobs.list()

    native = httpx.get(f"{api_server.url}/v1/finetunejobs/{job.id}", headers=auth(api_server, api_server.ns_a))
    assert native.status_code == 200
    body = native.json()
    assert body["kind"] == "FineTuneJob" and body["spec"]["model"]["preset"] == "tiny" and "status" in body
    assert "managedFields" not in body["metadata"]


def test_seed_webhook_configmap_is_trainer_readable(api_server):
    ns = api_server.ns_b
    r = httpx.post(
        f"{api_server.url}/trigger-finetune",
        headers=auth(api_server, ns),
        json={"communityId": "c-42", "dataset": ROWS},
    )
    assert r.status_code == 202, r.text
    body = r.json()
    name = body["jobName"]
    assert body["namespace"] == ns and body["statusUrl"].endswith(f"/v1/finetunejobs/{name}")
    assert r.headers["location"] == body["statusUrl"]
    obj = ftj(api_server, ns, name)
    spec = obj["spec"]
    assert spec["model"]["preset"] == "zephyr" and spec["method"]["type"] == "dpo" and spec["method"]["beta"] == 0.1
    assert spec["communityId"] == "c-42"
    ds = spec["dataset"]
    assert ds["format"] == "novalto"
    cm = api_server.cluster.get_json("configmap", ds["configMap"]["name"], namespace=ns)
    owner = cm["metadata"]["ownerReferences"][0]
    assert owner["kind"] == "FineTuneJob" and owner["uid"] == obj["metadata"]["uid"]
    assert cm["metadata"]["labels"]["finetune.dev/job"] == name
    raw = base64.b64decode(cm["binaryData"][ds["configMap"]["key"]])
    rows = load_rows(raw, ds["format"], ds["compression"])  # exactly what the trainer runs
    assert [(r.prompt, r.chosen, r.rejected) for r in rows] == [(r["prompt"], r["chosen"], r["rejected"]) for r in ROWS]
    # the seed caller polls here
    poll = httpx.get(f"{api_server.url}{body['statusUrl']}", headers=auth(api_server, ns))
    assert poll.status_code == 200 and poll.json()["metadata"]["name"] == name
    # deleting the job takes the ConfigMap with it (ownerReference, garbage collector)
    api_server.cluster.kubectl("delete", "finetunejob", name, "-n", ns, "--wait=true")
    deadline = time.monotonic() + 60
    while api_server.cluster.kubectl("get", "configmap", cm["metadata"]["name"], "-n", ns, check=False).returncode == 0:
        assert time.monotonic() < deadline, "dataset ConfigMap not garbage-collected"
        time.sleep(0.5)


def _random_rows(n: int, size: int) -> list[dict[str, str]]:
    return [
        {"prompt": secrets.token_urlsafe(size), "chosen": secrets.token_urlsafe(size), "rejected": "r"}
        for _ in range(n)
    ]


def test_seed_webhook_dataset_over_the_configmap_budget_goes_to_the_bucket(api_server, gcs):
    ns = api_server.ns_b
    rows = _random_rows(200, 3000)  # ~1.6 MB of incompressible text: more than a ConfigMap holds
    r = httpx.post(
        f"{api_server.url}/trigger-finetune",
        headers=auth(api_server, ns),
        json={"communityId": "big", "dataset": rows},
        timeout=60,
    )
    assert r.status_code == 202, r.text
    obj = ftj(api_server, ns, r.json()["jobName"])
    source = obj["spec"]["dataset"]["object"]
    data = gcs.download(source["uri"].removeprefix(f"gs://{gcs.bucket}/"))
    assert hashlib.sha256(data).hexdigest() == source["sha256"] and source["rows"] == len(rows)
    assert [x.chosen for x in load_rows(data, obj["spec"]["dataset"]["format"])] == [x["chosen"] for x in rows]
    record = api_server.cluster.get_json(
        "configmap", obj["metadata"]["labels"]["finetune.dev/training-file"], namespace=ns
    )
    assert record["metadata"]["labels"]["finetune.dev/created-by"] == "api-webhook"
    assert not record.get("data") and not record.get("binaryData")  # the record holds metadata only


BAD_REQUESTS = [
    # id, method, path, kwargs, status, message fragment
    ("missing-community", "POST", "/trigger-finetune", {"json": {"dataset": ROWS}}, 422, "communityId: Field required"),
    ("missing-dataset", "POST", "/trigger-finetune", {"json": {"communityId": "c"}}, 422, "dataset: Field required"),
    (
        "wrong-type-dataset",
        "POST",
        "/trigger-finetune",
        {"json": {"communityId": "c", "dataset": {"a": 1}}},
        422,
        "dataset: Input should be a valid list",
    ),
    (
        "wrong-type-field",
        "POST",
        "/trigger-finetune",
        {"json": {"communityId": "c", "dataset": [{"prompt": "p", "chosen": 1, "rejected": "r"}]}},
        422,
        "dataset[0].chosen: Input should be a valid string",
    ),
    (
        "empty-dataset",
        "POST",
        "/trigger-finetune",
        {"json": {"communityId": "c", "dataset": []}},
        422,
        "dataset: List should have at least 1 item",
    ),
    (
        "empty-string",
        "POST",
        "/trigger-finetune",
        {"json": {"communityId": "c", "dataset": [*ROWS, {"prompt": "p", "chosen": "c", "rejected": "  "}]}},
        422,
        "dataset[6].rejected: Value error, must be a non-empty string",
    ),
    (
        "not-json",
        "POST",
        "/trigger-finetune",
        {"content": b"{oops", "headers": {"Content-Type": "application/json"}},
        422,
        "not valid JSON",
    ),
    (
        "oversized-payload",
        "POST",
        "/trigger-finetune",
        {"json": {"communityId": "c", "dataset": [{"prompt": "p" * 50_000, "chosen": "c", "rejected": "r"}] * 50}},
        413,
        "exceeds the limit of 2000000 bytes",
    ),
    (
        "field-too-long",
        "POST",
        "/trigger-finetune",
        {"json": {"communityId": "c", "dataset": [{"prompt": "p" * 60_000, "chosen": "c", "rejected": "r"}]}},
        422,
        "dataset[0].prompt: is 60000 characters long; the limit is 50000",
    ),
    (
        "invalid-jsonl-line",
        "POST",
        "/v1/files",
        {"files": {"file": ("x.jsonl", jsonl(ROWS[:1]) + b"{broken\n")}, "data": {"purpose": "fine-tune"}},
        400,
        "line 2: line is not valid JSON",
    ),
    (
        "jsonl-missing-field",
        "POST",
        "/v1/files",
        {
            "files": {"file": ("x.jsonl", jsonl([*ROWS, {"prompt": "p", "chosen": "c"}]))},
            "data": {"purpose": "fine-tune"},
        },
        400,
        "line 7: field 'rejected': is missing",
    ),
    (
        "empty-file",
        "POST",
        "/v1/files",
        {"files": {"file": ("x.jsonl", b"")}, "data": {"purpose": "fine-tune"}},
        400,
        "has 0 rows",
    ),
    (
        "wrong-purpose",
        "POST",
        "/v1/files",
        {"files": {"file": ("x.jsonl", jsonl(ROWS))}, "data": {"purpose": "batch"}},
        400,
        "purpose: Input should be 'fine-tune'",
    ),
    (
        "unknown-model",
        "POST",
        "/v1/fine_tuning/jobs",
        {"json": {"model": "gpt-99", "training_file": "@file"}},
        400,
        "The model 'gpt-99' does not exist",
    ),
    (
        "missing-training-file",
        "POST",
        "/v1/fine_tuning/jobs",
        {"json": {"model": "tiny"}},
        400,
        "training_file: Field required",
    ),
    (
        "unknown-training-file",
        "POST",
        "/v1/fine_tuning/jobs",
        {"json": {"model": "tiny", "training_file": "file-ffffffffffffffffffffffff"}},
        400,
        "No such file",
    ),
    (
        "bad-beta",
        "POST",
        "/v1/fine_tuning/jobs",
        {
            "json": {
                "model": "tiny",
                "training_file": "@file",
                "method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0}}},
            }
        },
        400,
        "method.dpo.hyperparameters.beta: Input should be greater than 0",
    ),
    (
        "wrong-key",
        "GET",
        "/v1/fine_tuning/jobs",
        {"headers": {"Authorization": "Bearer ftk-test-nope"}},
        401,
        "Incorrect API key provided",
    ),
    (
        "no-key",
        "POST",
        "/trigger-finetune",
        {"json": {"communityId": "c", "dataset": ROWS}, "headers": {"Authorization": ""}},
        401,
        "Missing bearer authentication",
    ),
    ("other-tenant-job", "GET", "/v1/fine_tuning/jobs/@job", {"tenant": "b"}, 404, "No such fine-tuning job"),
    (
        "other-tenant-cancel",
        "POST",
        "/v1/fine_tuning/jobs/@job/cancel",
        {"tenant": "b"},
        404,
        "No such fine-tuning job",
    ),
    ("other-tenant-native", "GET", "/v1/finetunejobs/@job", {"tenant": "b"}, 404, "No such fine-tuning job"),
    ("other-tenant-file", "DELETE", "/v1/files/@file", {"tenant": "b"}, 404, "No such file"),
    (
        "other-tenant-uses-file",
        "POST",
        "/v1/fine_tuning/jobs",
        {"tenant": "b", "json": {"model": "tiny", "training_file": "@file"}},
        400,
        "No such file",
    ),
    ("unknown-job", "GET", "/v1/fine_tuning/jobs/ftjob-000000000000", {}, 404, "No such fine-tuning job"),
    ("bad-limit", "GET", "/v1/fine_tuning/jobs?limit=many", {}, 400, "limit: Input should be a valid integer"),
]


@pytest.mark.parametrize("request_case", BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_bad_requests(api_server, job_a, request_case):
    case, method, path, kwargs, status, fragment = request_case
    kwargs = copy.deepcopy(kwargs)
    tenant = api_server.ns_b if kwargs.pop("tenant", "a") == "b" else api_server.ns_a
    path = path.replace("@job", job_a["job"]).replace("@file", job_a["file"])
    if "json" in kwargs:
        kwargs["json"] = json.loads(json.dumps(kwargs["json"]).replace("@file", job_a["file"]))
    headers = {**auth(api_server, tenant), **kwargs.pop("headers", {})}
    if headers.get("Authorization") == "":
        del headers["Authorization"]
    before = {ns: api_server.objects(ns) for ns in api_server.tenants}
    r = httpx.request(method, f"{api_server.url}{path}", headers=headers, timeout=60, **kwargs)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert fragment in err["message"], err
    after = {ns: api_server.objects(ns) for ns in api_server.tenants}
    assert after == before, f"{case} left objects behind"


def test_idempotent_create(api_server):
    a = client_for(api_server, api_server.ns_a)
    f = a.files.create(file=("i.jsonl", jsonl(ROWS)), purpose="fine-tune")
    key = {"Idempotency-Key": "retry-" + secrets.token_hex(4)}
    first = a.fine_tuning.jobs.create(model="tiny", training_file=f.id, extra_headers=key)
    again = a.fine_tuning.jobs.create(model="tiny", training_file=f.id, extra_headers=key)
    assert again.id == first.id and again.seed == first.seed and again.created_at == first.created_at
    with pytest.raises(openai.ConflictError):
        a.fine_tuning.jobs.create(model="zephyr", training_file=f.id, extra_headers=key)

    # concurrent retries of one request: one job
    key2 = {"Idempotency-Key": "burst-" + secrets.token_hex(4)}
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        ids = set(
            pool.map(
                lambda _: a.fine_tuning.jobs.create(model="tiny", training_file=f.id, extra_headers=key2).id, range(6)
            )
        )
    assert len(ids) == 1
    names = api_server.objects(api_server.ns_a)["finetunejobs"]
    assert first.id in names and ids.pop() in names

    # the seed webhook honours it too
    h = {**auth(api_server, api_server.ns_a), "Idempotency-Key": "seed-" + secrets.token_hex(4)}
    payload = {"communityId": "c", "dataset": ROWS}
    r1 = httpx.post(f"{api_server.url}/trigger-finetune", headers=h, json=payload)
    r2 = httpx.post(f"{api_server.url}/trigger-finetune", headers=h, json=payload)
    assert r1.status_code == r2.status_code == 202 and r1.json() == r2.json()


def test_failed_configmap_create_leaves_no_job(api_server):
    """The dataset ConfigMap's name is taken: the FineTuneJob created first is deleted again."""
    ns = api_server.ns_a
    key = "collide-" + secrets.token_hex(4)
    name = "ftjob-" + hashlib.sha256(f"{ns}\0{key}".encode()).hexdigest()[:12]
    api_server.cluster.kubectl("create", "configmap", f"{name}-dataset", "-n", ns, "--from-literal=x=y")
    before = api_server.objects(ns)
    h = {**auth(api_server, ns), "Idempotency-Key": key}
    r = httpx.post(f"{api_server.url}/trigger-finetune", headers=h, json={"communityId": "c", "dataset": ROWS})
    assert r.status_code == 409, r.text
    assert "no job was created" in r.json()["error"]["message"] and "already exists" in r.json()["error"]["message"]
    deadline = time.monotonic() + 30
    while api_server.objects(ns) != before:
        assert time.monotonic() < deadline, api_server.objects(ns)
        time.sleep(0.3)


def test_operations(api_server):
    assert httpx.get(f"{api_server.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{api_server.url}/readyz")
    assert ready.status_code == 200 and ready.json()["kubernetes"].startswith("v")
    metrics = httpx.get(f"{api_server.url}/metrics").text
    assert 'ftapi_requests_total{method="POST",route="/v1/fine_tuning/jobs"' in metrics
    assert "ftapi_request_duration_seconds_bucket" in metrics
    assert httpx.get(f"{api_server.url}/openapi.json").json()["info"]["title"] == "finetune-operator API"
    # structured access logs, and no key, key hash or token anywhere in them
    log = api_server.log()
    access = [json.loads(line) for line in log.splitlines() if '"event": "access"' in line]
    assert access and {"method", "path", "status", "duration_ms", "tenant", "request_id"} <= set(access[-1])
    for key in api_server.tenants.values():
        assert key not in log
        assert hashlib.sha256(key.encode()).hexdigest() not in log
    kubeconfig = Path(api_server.env["FTAPI_KUBECONFIG"]).read_text()
    assert kubeconfig.split("token: ")[1].strip()[:40] not in log


def test_rbac_is_least_privilege(api_server):
    sa = f"system:serviceaccount:{api_server.api_namespace}:finetune-api"

    def can(*args: str) -> bool:
        r = api_server.cluster.kubectl("auth", "can-i", *args, f"--as={sa}", check=False)
        return r.stdout.strip() == "yes"

    ns = api_server.api_namespace
    assert can("get", "secret/finetune-api-keys", "-n", ns)
    assert not can("get", "secret/other", "-n", ns)
    assert not can("list", "secrets", "-n", ns)
    assert not can("get", "secrets", "-n", api_server.ns_a)
    assert can("create", "finetunejobs.finetune.dev", "-n", api_server.ns_a)
    assert can("create", "configmaps", "-n", api_server.ns_b)
    assert not can("create", "pods", "-n", api_server.ns_a)
    assert not can("update", "finetunejobs.finetune.dev/status", "-n", api_server.ns_a)
    assert not can("create", "finetunejobs.finetune.dev", "-n", "default")
