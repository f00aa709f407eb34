"""Pure functions of the OpenAI layer: "auto" hyperparameters, the results CSV, webhook signing and URL rules,
delivery records and how they read in the job's events."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from datetime import UTC, datetime

import pytest
from ftapi import delivery, hyper, mapping, results, webhooks
from ftapi.auth import Endpoint, parse_keys
from ftapi.errors import APIError
from ftapi.notify import new_record
from ftapi.settings import Settings
from ftcrd.dataset import held_out_rows
from ftcrd.names import ANN_CALLBACK_URL, ANN_NOTIFICATIONS
from ftcrd.results import RESULTS_COLUMNS, MetricsFileError, StepMetrics, parse_metrics, results_csv
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def settings(**kw) -> Settings:
    return Settings(kubeconfig="unused", **kw)


@pytest.mark.parametrize(("rows", "epochs"), [(1, 25), (9, 12), (33, 4), (34, 3), (8333, 3), (8334, 2), (30_000, 1)])
def test_auto_epochs_follow_openai(rows, epochs):
    assert hyper.auto_epochs(rows) == epochs


def test_held_out_rows_as_the_trainer_splits():
    assert [held_out_rows(n, 0.05) for n in (1, 2, 10, 40, 100)] == [0, 1, 1, 2, 5]
    assert held_out_rows(10, 0.0) == 0 and held_out_rows(3, 0.99) == 2


def test_resolve_fits_auto_and_refuses_explicit_batches():
    s = settings()
    one = hyper.training_data(s, 1, separate_validation=False, param="training_file")
    out = hyper.resolve(None, settings=s, data=one, param_prefix="hyperparameters")
    assert out == {"epochs": 25, "batchSize": 1}
    big = hyper.training_data(s, 100_000, separate_validation=False, param="training_file")
    assert hyper.resolve(None, settings=s, data=big, param_prefix="h")["batchSize"] == 190  # 0.2% of 95,000
    from ftapi.schemas import Hyperparameters

    with pytest.raises(APIError) as info:
        hyper.resolve(Hyperparameters(batch_size=8), settings=s, data=one, param_prefix="method.dpo.hyperparameters")
    assert info.value.status_code == 400 and info.value.param == "method.dpo.hyperparameters.batch_size"
    # configured defaults are the deployment's "auto"; a batch must divide across processes x accumulation
    cpu = settings(hyperparameters={"batchSize": 8, "gradientAccumulationSteps": 2}, resources={"nodes": 2})
    ten = hyper.training_data(cpu, 10, separate_validation=True, param="training_file")
    assert hyper.resolve(None, settings=cpu, data=ten, param_prefix="h") == {"epochs": 10, "batchSize": 8}
    with pytest.raises(APIError) as info:
        hyper.resolve(Hyperparameters(batch_size=6), settings=cpu, data=ten, param_prefix="h")
    assert "multiple of 4" in info.value.message
    three = hyper.training_data(cpu, 3, separate_validation=True, param="training_file")
    with pytest.raises(APIError) as info:
        hyper.resolve(None, settings=cpu, data=three, param_prefix="h")
    assert info.value.param == "training_file" and info.value.code == "dataset_too_small"
    # the seed webhook keeps the CRD's defaults and only shrinks the batch
    seed = hyper.resolve(None, settings=s, data=big, param_prefix="", openai_auto=False)
    assert seed == {"batchSize": 128}


def test_results_csv_one_row_per_step():
    lines = "".join(
        [
            StepMetrics(step=2, train_loss=0.5).line(),
            "\n",
            StepMetrics(step=1, train_loss=float("nan"), train_accuracy=0.25).line(),
            StepMetrics(step=2, train_loss=0.4, valid_loss=0.3).line(),  # a resumed run re-logs step 2
        ]
    ).encode()
    rows = list(csv.DictReader(io.StringIO(results_csv(parse_metrics(lines)))))
    assert tuple(rows[0]) == RESULTS_COLUMNS
    assert [(r["step"], r["train_loss"], r["valid_loss"]) for r in rows] == [("1", "", ""), ("2", "0.4", "0.3")]
    with pytest.raises(MetricsFileError, match="line 1"):
        parse_metrics(b'{"step": 0}\n')


def test_results_are_read_only_from_this_jobs_folder():
    s = settings(output_bucket="bkt", output_prefix="models")
    job = {
        "metadata": {"name": "ftjob-1", "namespace": "team-a", "uid": "u1"},
        "spec": {"communityId": "c"},
        "status": {"phase": "Succeeded", "artifact": {"uri": ""}},
    }

    def where(uri: str):
        job["status"]["artifact"]["uri"] = uri  # type: ignore[index]
        return results.metrics_location(job, s)

    own = "gs://bkt/models/team-a/c/ftjob-1-u1/"
    assert where(own) == ("bkt", "models/team-a/c/ftjob-1-u1/metrics.jsonl")
    for elsewhere in (
        "gs://other/models/team-a/c/ftjob-1-u1/",
        "gs://bkt/secrets/team-a/c/ftjob-1-u1/",
        "gs://bkt/models/team-b/c/ftjob-1-u1/",  # another tenant's prefix
        "gs://bkt/models/team-a/c/ftjob-1-u0/",  # an earlier job of the same name
        "gs://bkt/models/team-a/c/ftjob-1/",
    ):
        assert where(elsewhere) is None, elsewhere
    job["status"]["phase"] = "Running"  # type: ignore[index]
    assert where(own) is None


def test_signed_delivery_verifies_with_standardwebhooks():
    body = webhooks.payload("evt_1", "fine_tuning.job.succeeded", 1700000000, "ftjob-1")
    headers = webhooks.signed_headers(SECRET, "evt_1", body)
    assert Webhook(SECRET).verify(body, headers) == json.loads(body)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(body.replace("ftjob-1", "ftjob-2"), headers)
    stale = webhooks.signed_headers(SECRET, "evt_1", body, now=datetime(2020, 1, 1, tzinfo=UTC))
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(body, stale)
    assert webhooks.event_id("uid", "fine_tuning.job.failed") == webhooks.event_id("uid", "fine_tuning.job.failed")
    assert webhooks.event_id("uid", "a") != webhooks.event_id("uid2", "a")


def test_endpoint_rules():
    assert webhooks.url_problem("https://hooks.example.com/x", allow_http=False) is None
    assert webhooks.url_problem("http://hooks.example.com/x", allow_http=False) == "must be an https:// URL"
    assert webhooks.url_problem("http://hooks.example.com/x", allow_http=True) is None
    assert webhooks.url_problem("https://user:pw@h/x", allow_http=False) is not None
    assert webhooks.url_problem("https://h:99999/", allow_http=False) == "is not a valid URL"

    async def address(url: str) -> str | None:
        return await webhooks.address_problem(url, allow_private=False)

    assert asyncio.run(address("https://127.0.0.1:8443/")) == "host resolves to a non-public address"
    assert asyncio.run(address("https://10.0.0.1/")) == "host resolves to a non-public address"
    assert asyncio.run(webhooks.address_problem("https://127.0.0.1/", allow_private=True)) is None


def test_keys_with_webhooks_never_show_their_secret():
    entries = parse_keys(
        json.dumps(
            [{"name": "a", "sha256": "0" * 64, "namespace": "ns", "webhook": {"url": "https://h/", "secretKey": "k"}}]
        )
    )
    assert entries[0].webhook == Endpoint(url="https://h/", secret_key="k")
    shown = repr(Endpoint(url="https://h/", secret_key="k", secret=SECRET))
    assert SECRET not in shown


def test_delivery_record_and_events():
    job = {
        "metadata": {
            "name": "ftjob-1",
            "uid": "u-1",
            "annotations": {ANN_CALLBACK_URL: "https://cb.example/hook?token=t"},
            "creationTimestamp": "2026-01-01T00:00:00Z",
        },
        "status": {"phase": "Succeeded", "completionTime": "2026-01-01T00:10:00Z"},
    }
    record = new_record(job, "succeeded", Endpoint(url="https://tenant.example/h", secret_key="k"))
    assert record.type == "fine_tuning.job.succeeded" and record.created_at == 1767226200
    assert [(t.kind, t.host) for t in record.targets] == [("tenant", "tenant.example"), ("callback", "cb.example")]
    assert new_record(job, "failed", None).targets[0].kind == "callback"  # no tenant url: callback only
    tenant, callback = record.targets
    tenant.state, tenant.tries = "delivered", 2
    tenant.history = [
        delivery.Attempt(n=1, at=10, status=500, error="HTTP 500"),
        delivery.Attempt(n=2, at=20, status=200),
    ]
    callback.state, callback.tries, callback.next_at = "pending", 1, 99
    callback.history = [delivery.Attempt(n=1, at=15, error="no answer within 10s")]
    assert not record.done and not tenant.due(0) and callback.due(99) and not callback.due(98)
    job["metadata"]["annotations"][ANN_NOTIFICATIONS] = record.annotation()  # type: ignore[index]
    events = [e for e in mapping.to_events(job) if e["data"].get("webhook_event")]
    assert [(e["level"], e["data"]["delivery"], e["data"]["attempt"]) for e in events] == [
        ("info", "delivered", 2),
        ("warn", "pending", 1),
        ("warn", "pending", 1),
    ]
    assert all("token" not in e["message"] for e in events)
    assert "retrying at 99" in events[1]["message"]


def test_throttled_requests_are_repeated_and_others_are_not(monkeypatch):
    from ftapi import k8s
    from kubernetes_asyncio.client.exceptions import ApiException

    waits: list[float] = []

    async def no_sleep(seconds: float) -> None:
        waits.append(seconds)

    monkeypatch.setattr(k8s.asyncio, "sleep", no_sleep)

    def server(statuses: list[int]):
        calls: list[int] = []

        async def request(*args, **kwargs):
            calls.append(len(calls))
            status = statuses[min(len(calls) - 1, len(statuses) - 1)]
            if status != 200:
                exc = ApiException(status=status, reason="x")
                exc.headers = {"Retry-After": "1"} if status == 429 else {}
                raise exc
            return "ok"

        return request, calls

    request, calls = server([429, 429, 200])  # APF said "later" twice: the third try answers
    assert asyncio.run(k8s.retrying_throttled(request)("GET", "/x")) == "ok"
    assert len(calls) == 3 and waits == [1.0, 1.0]

    request, calls = server([404])  # anything else is the answer
    with pytest.raises(ApiException) as err:
        asyncio.run(k8s.retrying_throttled(request)("POST", "/x"))
    assert err.value.status == 404 and len(calls) == 1

    request, calls = server([429])  # throttled for good: the 429 reaches the caller (then a 429 to the user)
    with pytest.raises(ApiException) as err:
        asyncio.run(k8s.retrying_throttled(request)("POST", "/x"))
    assert err.value.status == 429 and len(calls) == k8s.THROTTLE_RETRIES
