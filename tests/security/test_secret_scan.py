"""No secret value in anything the system writes (e2e: the API, the operator and a real trainer run on the local
cluster, uploading to the GCS emulator).

Known values are planted where real ones live: the API keys (and a wrong key a client presents), a Firebase
service-account key (the tenant's output Secret, mounted into the trainer), a Hugging Face token (a catalog
model's ``hfTokenSecret``, the trainer's ``HF_TOKEN``) and a webhook signing secret (beside the key table). Then a
seed-webhook job trains to the end (its tenant's endpoint gets the signed completion event), an OpenAI-path job is
created and cancelled, and requests fail in every way a
client can make them fail. Scanned afterwards, for each value and its base64: every object in the namespaces
involved but the Secrets themselves (FineTuneJob specs and statuses, Jobs, pods with their termination messages,
Events, ConfigMaps), the error bodies the API answered, the webhook deliveries, the logs of the API, the operator, the trainer pods and
the control plane, the files the trainer pods left, and the uploaded manifest.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from ftcrd.names import LABEL_TRAINER_USE, TRAINER_USE_VALUE

from tests.api.conftest import ApiServer, start_api
from tests.support.cluster import Cluster, wait_for
from tests.support.ftj import wait_phase

pytestmark = pytest.mark.e2e

ROWS = [{"prompt": f"What is {i} + {i}?", "chosen": str(2 * i), "rejected": str(2 * i + 1)} for i in range(16)]
TINY = {"nodes": 1, "gpusPerNode": 0, "processesPerNode": 1, "cpu": "1", "memory": "2Gi", "shmSize": "256Mi"}
QUICK = {"epochs": 1, "examples": 16, "batchSize": 8, "maxLength": 64, "maxPromptLength": 32, "warmupSteps": 0}


class Planted(dict[str, str]):
    """name -> a secret value planted in the setup (random per run: a hit is a leak, never a coincidence)."""

    def needles(self) -> dict[str, str]:
        out = {}
        for name, value in self.items():
            out[name] = value
            out[f"{name} (base64)"] = base64.b64encode(value.encode()).decode()
        return out


@pytest.fixture(scope="module")
def planted() -> Planted:
    return Planted(
        firebase_private_key="PLANTED-FIREBASE-" + secrets.token_hex(16),
        hf_token="hf_PLANTED" + secrets.token_hex(16),
        webhook_secret="whsec_" + base64.b64encode(secrets.token_bytes(24)).decode(),
        wrong_key="ftk-wrong-" + secrets.token_urlsafe(18),
    )


def tenant_secrets(cluster: Cluster, namespace: str, planted: Planted) -> None:
    pem = "PRIVATE " + "KEY"  # spelled apart: tests/deploy/test_no_secrets.py flags a PEM header in the tree
    key = json.dumps(
        {
            "type": "service_account",
            "project_id": "finetune-local",
            "private_key_id": secrets.token_hex(20),
            "private_key": f"-----BEGIN {pem}-----\n{planted['firebase_private_key']}\n-----END {pem}-----\n",
            "client_email": "tenant-a@finetune-local.iam.gserviceaccount.com",
        }
    )
    opted = {LABEL_TRAINER_USE: TRAINER_USE_VALUE}
    cluster.apply(
        [
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "firebase-service-account", "labels": opted},
                "stringData": {"service-account.json": key},
            },
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "hf-token", "labels": opted},
                "stringData": {"token": planted["hf_token"]},
            },
        ],
        namespace,
    )


class Receiver:
    """A tenant's webhook endpoint: records every delivery (headers and body) and answers 200."""

    def __init__(self) -> None:
        self.deliveries: list[str] = []
        received = self.deliveries

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"])).decode(errors="replace")
                received.append(json.dumps(dict(self.headers.items())) + "\n" + body)
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()


@pytest.fixture(scope="module")
def api(
    cluster: Cluster, gcs, planted: Planted, receiver: Receiver, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    catalog = {
        "tiny": {"name": "tiny", "preset": "tiny"},
        "tiny-gated": {"name": "tiny", "preset": "tiny", "hfTokenSecret": "hf-token/token"},
    }
    trainer_env = {
        "STORAGE_EMULATOR_HOST": gcs.host,
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "FTJ_REPORT_INTERVAL": "1",
    }
    env = {
        "FTAPI_MODELS": json.dumps(catalog),
        "FTAPI_WEBHOOK_MODEL": "tiny-gated",
        "FTAPI_OUTPUT_BUCKET": gcs.bucket,
        "FTAPI_OUTPUT_CREDENTIALS_SECRET": "firebase-service-account/service-account.json",
        "FTAPI_TRAINER_ENV": json.dumps(trainer_env),
        "FTAPI_RESOURCES": json.dumps(TINY),
        "FTAPI_HYPERPARAMETERS": json.dumps(QUICK),
        "FTAPI_RUN_POLICY": json.dumps({"backoffLimit": 0, "activeDeadlineSeconds": 900}),
        "FTAPI_NOTIFY_INTERVAL_SECONDS": "1",
        "FTAPI_WEBHOOK_ALLOW_HTTP": "true",
        "FTAPI_WEBHOOK_ALLOW_PRIVATE": "true",
    }
    # tenant A's key carries a completion webhook whose signing secret lives beside the key table
    webhooks = {0: (receiver.url, planted["webhook_secret"])}
    for server in start_api(cluster, tmp_path_factory.mktemp("ftapi-scan"), gcs=gcs, extra_env=env, webhooks=webhooks):
        tenant_secrets(cluster, server.ns_a, planted)
        yield server


def exercise(api: ApiServer, planted: Planted) -> tuple[str, list[str]]:
    """The flows: returns (the trained job's name, every error body the API answered)."""
    a, b = api.ns_a, api.ns_b
    key = {"Authorization": f"Bearer {api.key(a)}"}
    errors: list[str] = []

    def call(method: str, path: str, expect: int, **kw: Any) -> httpx.Response:
        r = httpx.request(method, f"{api.url}{path}", timeout=60, **kw)
        assert r.status_code == expect, (method, path, r.status_code, r.text)
        if r.status_code >= 400:
            errors.append(r.text)
        return r

    seed = call("POST", "/trigger-finetune", 202, headers=key, json={"communityId": "c-scan", "dataset": ROWS})
    data = "".join(json.dumps(r) + "\n" for r in ROWS).encode()
    f = call("POST", "/v1/files", 200, headers=key, files={"file": ("p.jsonl", data)}, data={"purpose": "fine-tune"})
    job = call(
        "POST", "/v1/fine_tuning/jobs", 200, headers=key, json={"model": "tiny-gated", "training_file": f.json()["id"]}
    )
    call("POST", f"/v1/fine_tuning/jobs/{job.json()['id']}/cancel", 200, headers=key)
    # what clients get wrong
    call("GET", "/v1/fine_tuning/jobs", 401, headers={"Authorization": f"Bearer {planted['wrong_key']}"})
    call("GET", "/v1/fine_tuning/jobs", 401, headers={"Authorization": planted["wrong_key"]})
    call(
        "GET", f"/v1/fine_tuning/jobs/{seed.json()['jobName']}", 404, headers={"Authorization": f"Bearer {api.key(b)}"}
    )
    call("POST", "/trigger-finetune", 422, headers=key, json={"communityId": "c-scan", "dataset": [{"prompt": "p"}]})
    call("POST", "/v1/fine_tuning/jobs", 400, headers=key, json={"model": "nope", "training_file": f.json()["id"]})
    call(
        "POST", "/v1/files", 400, headers=key, files={"file": ("x.jsonl", b"{not json")}, data={"purpose": "fine-tune"}
    )
    return str(seed.json()["jobName"]), errors


def namespaced_objects(cluster: Cluster, namespace: str) -> str:
    """Every object of every listable namespaced kind but Secrets, as JSON."""
    kinds = cluster.kubectl("api-resources", "--verbs=list", "--namespaced", "-o", "name").stdout.split()
    kinds = [k for k in kinds if k.split(".")[0] != "secrets"]
    return cluster.kubectl("get", ",".join(kinds), "-n", namespace, "-o", "json", "--ignore-not-found").stdout


def pod_files(cluster: Cluster, namespace: str) -> dict[str, str]:
    """What trainer pods of ``namespace`` left on the node: logs, termination messages, their scratch volumes. Not
    the Secret volumes (they hold the secrets by design), nor the process node's launch specs: its container
    runtime state, which holds the resolved environment as containerd's OCI spec does on a real node, and is
    owner-only (checked)."""
    out = {}
    for pod_dir in cluster.pods_dir.glob(f"{namespace}_*"):
        for path in pod_dir.rglob("*"):
            rel = path.relative_to(pod_dir)
            if not path.is_file() or (rel.parts[:1] == ("volumes",) and "firebase-credentials" in rel.parts):
                continue
            if path.name.endswith(".launch.json"):
                assert path.stat().st_mode & 0o077 == 0, f"{path} is readable by others"
                continue
            out[str(path)] = path.read_text(errors="replace")
    return out


def test_no_secret_value_anywhere(running_operator, cluster, gcs, api: ApiServer, planted: Planted, receiver):  # noqa: PLR0917
    planted = Planted(planted, **{f"api key {ns}": k for ns, k in api.tenants.items()})
    name, errors = exercise(api, planted)
    ftj = wait_phase(cluster, api.ns_a, name, "Succeeded", timeout=900)
    spec = ftj["spec"]
    assert spec["model"]["hfTokenSecret"] == {"name": "hf-token", "key": "token"}  # a reference, not a value
    assert spec["output"]["credentialsSecret"]["name"] == "firebase-service-account"

    wait_for(lambda: any("fine_tuning.job.succeeded" in d for d in receiver.deliveries), 60, 0.5, "the signed event")
    artifact = ftj["status"]["artifact"]
    manifest = gcs.download(artifact["manifestUri"].removeprefix(f"gs://{gcs.bucket}/")).decode()
    places: dict[str, str] = {
        **{f"objects in {ns}": namespaced_objects(cluster, ns) for ns in (api.ns_a, api.ns_b, api.api_namespace)},
        "error bodies": "\n".join(errors),
        "webhook deliveries (headers and bodies)": "\n".join(receiver.deliveries),
        "API log": api.log(),
        "operator log": running_operator.logs(),
        "uploaded manifest": manifest,
        **{
            f"control plane {p.name}": p.read_text(errors="replace") for p in (cluster.state_dir / "logs").glob("*.log")
        },
        **pod_files(cluster, api.ns_a),
    }
    assert any("trainer" in p for p in places), "no trainer pod left a log to scan"
    assert len(errors) >= 6
    leaks = [
        f"{what} in {where}"
        for where, text in places.items()
        for what, needle in planted.needles().items()
        if needle in text
    ]
    assert not leaks, "\n".join(leaks)
    # the scan can see a planted value where one is: the Secret itself
    raw = cluster.get_json("secret", "hf-token", namespace=api.ns_a)["data"]["token"]
    assert raw == planted.needles()["hf_token (base64)"]


def test_the_trainer_env_refuses_credentials(tmp_path: Path):
    """The API's settings refuse a credential in FTAPI_TRAINER_ENV (it would be in every job's spec.env)."""
    from ftapi.settings import Settings
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="FTAPI_TRAINER_ENV may not set HF_TOKEN"):
        Settings(trainer_env={"HF_TOKEN": "hf_x"})
