"""Completion webhooks end to end: the API subprocess on the local control plane notifies a receiver in this
test, which verifies every delivery's signature with ``standardwebhooks`` (and parses it with the openai
client's ``webhooks.unwrap``) and refuses the first delivery of every event. Jobs are driven to their end
through the status subresource, as the operator does, so no trainer runs."""

from __future__ import annotations

import base64
import json
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import openai
import pytest
from ftcrd.names import ANN_NOTIFICATIONS, LABEL_NOTIFY
from openai import OpenAI
from standardwebhooks.webhooks import Webhook

from tests.api.conftest import ApiServer, start_api
from tests.api.openapi_check import validating_http_client
from tests.support.cluster import wait_for

pytestmark = pytest.mark.cluster

PAIRS = [{"prompt": f"Question {i}?", "chosen": f"Answer {i}.", "rejected": f"No {i}."} for i in range(6)]
RETRY_AFTER = 6  # seconds before the second attempt: the API restart happens in between


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


@dataclass
class Delivery:
    path: str
    webhook_id: str
    event: dict[str, Any]
    answered: int


@dataclass
class Receiver:
    """Verifies each POST with the secret of its path; answers 500 to the first delivery of an event id."""

    secrets: dict[str, str]
    deliveries: list[Delivery] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def accepted(self, event_type: str | None = None) -> list[Delivery]:
        return [d for d in self.deliveries if d.answered == 200 and event_type in (None, d.event["type"])]

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                headers = {k.lower(): v for k, v in self.headers.items()}
                secret = receiver.secrets.get(self.path.split("?")[0])
                try:
                    assert secret is not None, self.path
                    event = Webhook(secret).verify(body, headers)
                    typed = OpenAI(api_key="unused", webhook_secret=secret).webhooks.unwrap(body, headers)
                    assert typed.type == event["type"] and typed.data.id == event["data"]["id"]
                except Exception as exc:
                    receiver.refused.append(f"{self.path}: {type(exc).__name__}: {exc}")
                    self.send_response(400)
                    self.end_headers()
                    return
                seen = any(d.webhook_id == headers["webhook-id"] for d in receiver.deliveries)
                status = 200 if seen else 500  # the injected failure: every event's first delivery
                receiver.deliveries.append(Delivery(self.path, headers["webhook-id"], event, status))
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver({"/tenant": new_secret(), "/callback": new_secret()})
    r.start()
    yield r
    assert r.server is not None
    r.server.shutdown()


@pytest.fixture(scope="module")
def api(cluster, gcs, receiver, tmp_path_factory) -> Iterator[ApiServer]:
    env = {
        "FTAPI_NOTIFY_INTERVAL_SECONDS": "0.5",
        "FTAPI_WEBHOOK_RETRY_SECONDS": json.dumps([RETRY_AFTER, 1, 1]),
        "FTAPI_WEBHOOK_TIMEOUT_SECONDS": "5",
        "FTAPI_WEBHOOK_ALLOW_HTTP": "true",
        "FTAPI_WEBHOOK_ALLOW_PRIVATE": "true",
    }
    webhooks = {
        0: (f"{receiver.url}/tenant", receiver.secrets["/tenant"]),  # tenant a: an endpoint
        1: (None, receiver.secrets["/callback"]),  # tenant b: a signing secret for callbackUrl only
    }  # tenant c: nothing configured
    yield from start_api(
        cluster, tmp_path_factory.mktemp("ftapi-notify"), gcs=gcs, extra_env=env, tenants=3, webhooks=webhooks
    )


def client_for(api: ApiServer, namespace: str) -> OpenAI:
    return OpenAI(
        base_url=f"{api.url}/v1", api_key=api.key(namespace), max_retries=0, http_client=validating_http_client()
    )


def set_status(api: ApiServer, namespace: str, name: str, phase: str, reason: str) -> None:
    status = {"status": {"phase": phase, "reason": reason, "completionTime": "2026-01-01T00:10:00Z"}}
    if phase == "Succeeded":
        status["status"]["artifact"] = {"uri": f"gs://finetune-models/models/{namespace}/{name}/"}  # type: ignore[index]
    api.cluster.kubectl(
        "patch", "finetunejob", name, "-n", namespace, "--subresource=status", "--type=merge", "-p", json.dumps(status)
    )


def record(api: ApiServer, namespace: str, name: str) -> dict[str, Any]:
    obj = api.cluster.get_json("finetunejob", name, namespace=namespace)
    return {
        "label": obj["metadata"].get("labels", {}).get(LABEL_NOTIFY),
        **json.loads(obj["metadata"].get("annotations", {}).get(ANN_NOTIFICATIONS) or "{}"),
    }


def test_one_succeeded_event_per_job_despite_a_failed_first_delivery_and_a_restart(api, receiver):
    ns = api.ns_a
    client = client_for(api, ns)
    f = client.files.create(
        file=("p.jsonl", b"".join(json.dumps(r).encode() + b"\n" for r in PAIRS)), purpose="fine-tune"
    )
    jobs = [client.fine_tuning.jobs.create(model="tiny", training_file=f.id).id for _ in range(3)]
    for name in jobs:
        set_status(api, ns, name, "Succeeded", "Completed")

    def first_attempts_failed() -> bool:
        return all(
            [a["status"] for a in (record(api, ns, n).get("targets") or [{}])[0].get("history", [])] == [500]
            for n in jobs
        )

    wait_for(first_attempts_failed, 60, 0.2, "a failed first delivery recorded on every job")
    api.restart()  # the next attempts are made by a new API process, from the records on the jobs

    wait_for(lambda: all(record(api, ns, n)["label"] == "done" for n in jobs), 90, 0.5, "every job notified")
    assert receiver.refused == []
    for name in jobs:
        mine = [d for d in receiver.deliveries if d.event["data"]["id"] == name]
        assert [d.answered for d in mine] == [500, 200], mine
        assert len({d.webhook_id for d in mine}) == 1  # the retry carries the same idempotency id
        accepted = [d for d in receiver.accepted("fine_tuning.job.succeeded") if d.event["data"]["id"] == name]
        assert len(accepted) == 1 and accepted[0].path == "/tenant"
        assert accepted[0].event["object"] == "event" and accepted[0].event["id"] == accepted[0].webhook_id
        target = record(api, ns, name)["targets"][0]
        assert target["state"] == "delivered" and target["tries"] == 2
        events = client.fine_tuning.jobs.list_events(name, limit=100).data
        delivery = [e for e in events if isinstance(e.data, dict) and e.data.get("webhook_event")]
        # the failed attempt and the delivery are in the job's events, newest first
        assert [(e.level, e.data["delivery"]) for e in delivery] == [("info", "delivered"), ("warn", "pending")]  # type: ignore[index]
    assert "fine_tuning.job.succeeded" in api.log()
    for secret in receiver.secrets.values():
        assert secret not in api.log()


def test_failed_and_cancelled_jobs_are_notified_once(api, receiver):
    ns = api.ns_a
    client = client_for(api, ns)
    f = client.files.create(
        file=("p.jsonl", b"".join(json.dumps(r).encode() + b"\n" for r in PAIRS)), purpose="fine-tune"
    )
    failed = client.fine_tuning.jobs.create(model="tiny", training_file=f.id).id
    cancelled = client.fine_tuning.jobs.create(model="tiny", training_file=f.id).id
    set_status(api, ns, failed, "Failed", "InvalidDataset")
    client.fine_tuning.jobs.cancel(cancelled)
    wait_for(
        lambda: record(api, ns, failed)["label"] == record(api, ns, cancelled)["label"] == "done", 90, 0.5, "notified"
    )
    by_job = {d.event["data"]["id"]: d.event["type"] for d in receiver.accepted()}
    assert by_job[failed] == "fine_tuning.job.failed" and by_job[cancelled] == "fine_tuning.job.cancelled"
    assert sum(d.event["data"]["id"] in (failed, cancelled) for d in receiver.accepted()) == 2


def test_seed_webhook_callback_url(api, receiver):
    ns = api.ns_b  # its key has a signing secret but no endpoint of its own
    headers = {"Authorization": f"Bearer {api.key(ns)}"}
    payload = {"communityId": "c", "dataset": PAIRS, "callbackUrl": f"{receiver.url}/callback?token=abc"}
    r = httpx.post(f"{api.url}/trigger-finetune", headers=headers, json=payload)
    assert r.status_code == 202, r.text
    name = r.json()["jobName"]
    set_status(api, ns, name, "Succeeded", "Completed")
    wait_for(lambda: record(api, ns, name)["label"] == "done", 90, 0.5, "callback notified")
    mine = [d for d in receiver.deliveries if d.event["data"]["id"] == name]
    assert [(d.path, d.answered) for d in mine] == [("/callback?token=abc", 500), ("/callback?token=abc", 200)]
    events = httpx.get(f"{api.url}/v1/fine_tuning/jobs/{name}/events", headers=headers).json()["data"]
    messages = " ".join(e["message"] for e in events)
    assert "callback endpoint 127.0.0.1" in messages and "token=abc" not in messages  # hosts only, no queries

    # a key without a signing secret cannot ask for a callback; nor can a callback be plain http on a
    # deployment that does not allow it (checked by the unit tests of ftapi.webhooks)
    no_secret = {"Authorization": f"Bearer {api.key(list(api.tenants)[2])}"}
    r = httpx.post(f"{api.url}/trigger-finetune", headers=no_secret, json=payload)
    assert r.status_code == 422 and r.json()["error"]["param"] == "callbackUrl"


def test_jobs_of_keys_without_webhooks_are_not_notified(api, receiver):
    ns = list(api.tenants)[2]
    client = client_for(api, ns)
    f = client.files.create(
        file=("p.jsonl", b"".join(json.dumps(r).encode() + b"\n" for r in PAIRS)), purpose="fine-tune"
    )
    name = client.fine_tuning.jobs.create(model="tiny", training_file=f.id).id
    assert record(api, ns, name) == {"label": None}
    with pytest.raises(openai.BadRequestError):  # and the API still refuses bad input for such keys
        client.fine_tuning.jobs.create(model="tiny", training_file="file-" + "0" * 24)
