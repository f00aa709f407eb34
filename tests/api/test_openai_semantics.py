"""OpenAI's semantics through the official client, against the API subprocess on the local control plane:
SFT from ``messages`` files, supervised by default, 400 + ``param`` for every bad request, ``"auto"``
hyperparameters fitted to the dataset, results files read from the GCS emulator, validation files,
``x-should-retry``, ``metadata=null`` and clamped limits. Every response is checked against
``api/openapi.json`` (tests/api/openapi_check.py)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from ftcrd.names import METRICS_FILE
from ftcrd.results import RESULTS_COLUMNS, StepMetrics
from fttrainer.upload import upload_export
from openai import OpenAI

from tests.api.conftest import ApiServer, start_api
from tests.api.openapi_check import checked, validating_http_client

pytestmark = pytest.mark.cluster

PAIRS = [{"prompt": f"Question {i}?", "chosen": f"A helpful answer {i}.", "rejected": f"No {i}."} for i in range(10)]
SFT = [
    {
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": f"What is {i} + {i}?"},
            {"role": "assistant", "content": f"{2 * i}."},
        ]
    }
    for i in range(6)
]


def jsonl(rows: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


@pytest.fixture(scope="module")
def api(cluster, gcs, tmp_path_factory):
    env = {**gcs.env(), "FTAPI_OUTPUT_BUCKET": gcs.bucket, "FTAPI_NOTIFY_ENABLED": "false"}
    yield from start_api(cluster, tmp_path_factory.mktemp("ftapi-openai"), gcs=gcs, extra_env=env)


def client_for(api: ApiServer, namespace: str, retries: int = 0, http: httpx.Client | None = None) -> OpenAI:
    return OpenAI(
        base_url=f"{api.url}/v1",
        api_key=api.key(namespace),
        max_retries=retries,
        _strict_response_validation=True,
        http_client=http or validating_http_client(),
    )


@pytest.fixture(scope="module")
def a(api) -> OpenAI:
    return client_for(api, api.ns_a)


@pytest.fixture(scope="module")
def files(a) -> dict[str, str]:
    return {
        "pairs": a.files.create(file=("pairs.jsonl", jsonl(PAIRS)), purpose="fine-tune").id,
        "sft": a.files.create(file=("sft.jsonl", jsonl(SFT)), purpose="fine-tune").id,
        "one": a.files.create(file=("one.jsonl", jsonl(PAIRS[:1])), purpose="fine-tune").id,
    }


def ftj(api: ApiServer, name: str, namespace: str | None = None) -> dict[str, Any]:
    return api.cluster.get_json("finetunejob", name, namespace=namespace or api.ns_a)


def test_sft_from_messages_file_and_supervised_by_default(api, a, files):
    default = a.fine_tuning.jobs.create(model="tiny", training_file=files["sft"])
    assert default.method is not None and default.method.type == "supervised"
    assert ftj(api, default.id)["spec"]["method"]["type"] == "sft"
    explicit = a.fine_tuning.jobs.create(
        model="tiny", training_file=files["sft"], method={"type": "supervised", "supervised": {}}
    )
    assert ftj(api, explicit.id)["spec"]["method"]["type"] == "sft"
    # preference pairs train supervised too (on the chosen replies)
    assert a.fine_tuning.jobs.create(model="tiny", training_file=files["pairs"]).method.type == "supervised"  # type: ignore[union-attr]
    dpo = a.fine_tuning.jobs.create(model="tiny", training_file=files["pairs"], method={"type": "dpo"})
    assert ftj(api, dpo.id)["spec"]["method"]["type"] == "dpo"


def test_auto_hyperparameters_resolved_and_echoed(api, a, files):
    job = a.fine_tuning.jobs.create(
        model="tiny",
        training_file=files["pairs"],
        method={"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": "auto", "batch_size": "auto", "beta": "auto"}}},
    )
    spec = ftj(api, job.id)["spec"]
    train_rows = len(PAIRS) - 1  # the trainer holds out max(1, 5%) of 10 rows
    assert spec["hyperparameters"]["epochs"] == math.ceil(100 / train_rows)  # OpenAI: about 100 examples seen
    assert spec["hyperparameters"]["batchSize"] == 1  # 0.2% of 9 rows, at least 1
    hp = job.method.dpo.hyperparameters  # type: ignore[union-attr]
    assert (hp.n_epochs, hp.batch_size, hp.beta, hp.learning_rate_multiplier) == (12, 1, 0.1, 1.0)
    assert job.hyperparameters.n_epochs == 12 and job.hyperparameters.batch_size == 1


def test_one_row_dataset_batch_8_refused_or_fitted_at_creation(api, a, files):
    before = api.objects(api.ns_a)
    for method in (
        {"type": "dpo", "dpo": {"hyperparameters": {"batch_size": 8}}},
        {"type": "supervised", "supervised": {"hyperparameters": {"batch_size": 8}}},
    ):
        with pytest.raises(openai.BadRequestError) as info:
            a.fine_tuning.jobs.create(model="tiny", training_file=files["one"], method=method)  # type: ignore[arg-type]
        assert info.value.param == f"method.{method['type']}.hyperparameters.batch_size"
        assert "larger than the 1 training rows" in info.value.message
    assert api.objects(api.ns_a) == before  # refused: nothing was created
    auto = a.fine_tuning.jobs.create(model="tiny", training_file=files["one"], method={"type": "dpo"})
    assert ftj(api, auto.id)["spec"]["hyperparameters"]["batchSize"] == 1 == auto.hyperparameters.batch_size
    # the seed webhook (batch 128 by default) fits its batch to the rows it was given
    r = httpx.post(
        f"{api.url}/trigger-finetune",
        headers={"Authorization": f"Bearer {api.key(api.ns_a)}"},
        json={"communityId": "c", "dataset": PAIRS[:1]},
    )
    assert r.status_code == 202, r.text
    assert ftj(api, r.json()["jobName"])["spec"]["hyperparameters"]["batchSize"] == 1


def raw_create(client: OpenAI, body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
    return client.post("/fine_tuning/jobs", body=body, cast_to=object, options={"headers": headers or {}})


def bad_requests(files: dict[str, str]) -> list[tuple[str, dict[str, Any], str]]:
    """(case, request body or call, param): each must raise BadRequestError naming ``param``."""
    base = {"model": "tiny", "training_file": files["pairs"]}
    dpo = lambda hp: {**base, "method": {"type": "dpo", "dpo": {"hyperparameters": hp}}}  # noqa: E731
    sft = lambda hp: {**base, "method": {"type": "supervised", "supervised": {"hyperparameters": hp}}}  # noqa: E731
    return [
        ("unknown-model", {**base, "model": "gpt-99"}, "model"),
        ("missing-model", {"training_file": files["pairs"]}, "model"),
        ("missing-training-file", {"model": "tiny"}, "training_file"),
        ("malformed-file-id", {**base, "training_file": "../etc/passwd"}, "training_file"),
        ("unknown-training-file", {**base, "training_file": "file-" + "0" * 24}, "training_file"),
        ("unknown-validation-file", {**base, "validation_file": "file-" + "1" * 24}, "validation_file"),
        ("dpo-on-sft-file", {**base, "training_file": files["sft"], "method": {"type": "dpo"}}, "training_file"),
        ("reinforcement", {**base, "method": {"type": "reinforcement"}}, "method.type"),
        ("other-methods-settings", {**base, "method": {"type": "dpo", "supervised": {}}}, "method.supervised"),
        ("beta-zero", dpo({"beta": 0}), "method.dpo.hyperparameters.beta"),
        ("epochs-zero", sft({"n_epochs": 0}), "method.supervised.hyperparameters.n_epochs"),
        ("epochs-string", sft({"n_epochs": "many"}), "method.supervised.hyperparameters.n_epochs"),
        ("epochs-bool", sft({"n_epochs": True}), "method.supervised.hyperparameters.n_epochs"),
        ("batch-zero", dpo({"batch_size": 0}), "method.dpo.hyperparameters.batch_size"),
        ("batch-over-dataset", dpo({"batch_size": 64}), "method.dpo.hyperparameters.batch_size"),
        ("lr-negative", dpo({"learning_rate_multiplier": -1}), "method.dpo.hyperparameters.learning_rate_multiplier"),
        (
            "lr-huge",
            sft({"learning_rate_multiplier": 1e7}),
            "method.supervised.hyperparameters.learning_rate_multiplier",
        ),
        ("deprecated-hp", {**base, "hyperparameters": {"n_epochs": 0}}, "hyperparameters.n_epochs"),
        ("hp-unknown-field", dpo({"warmup": 3}), "method.dpo.hyperparameters.warmup"),
        ("suffix-empty", {**base, "suffix": ""}, "suffix"),
        ("suffix-long", {**base, "suffix": "x" * 65}, "suffix"),
        ("seed-negative", {**base, "seed": -1}, "seed"),
        ("seed-string", {**base, "seed": "42"}, "seed"),
        ("metadata-17-keys", {**base, "metadata": {str(i): "v" for i in range(17)}}, "metadata"),
        ("metadata-long-value", {**base, "metadata": {"k": "v" * 513}}, "metadata.k"),
        ("integration-unknown", {**base, "integrations": [{"type": "comet", "comet": {}}]}, "integrations[0].type"),
        (
            "wandb-no-project",
            {**base, "integrations": [{"type": "wandb", "wandb": {}}]},
            "integrations[0].wandb.project",
        ),
        ("unknown-field", {**base, "bogus": 1}, "bogus"),
    ]


def test_bad_requests_raise_bad_request_error_naming_the_field(api, a, files):
    cases = bad_requests(files)
    assert len(cases) >= 20
    before = {ns: api.objects(ns) for ns in api.tenants}
    for case, body, param in cases:
        with pytest.raises(openai.BadRequestError) as info:
            raw_create(a, body)
        assert info.value.param == param, (case, info.value.body)
        assert info.value.type == "invalid_request_error", case
    with pytest.raises(openai.BadRequestError) as info:
        raw_create(a, {"model": "tiny", "training_file": files["pairs"]}, {"Idempotency-Key": "k" * 256})
    assert info.value.param == "Idempotency-Key"
    with pytest.raises(openai.BadRequestError) as info:
        a.files.create(file=("p.jsonl", jsonl(PAIRS)), purpose="batch")
    assert info.value.param == "purpose"
    with pytest.raises(openai.BadRequestError) as info:
        a.files.create(file=("p.jsonl", b'{"prompt": "p", "chosen": "c"}\n'), purpose="fine-tune")
    assert info.value.param == "file" and "line 1: field 'rejected'" in info.value.message
    with pytest.raises(openai.BadRequestError) as info:
        a.get("/fine_tuning/jobs", cast_to=object, options={"params": {"limit": "many"}})
    assert info.value.param == "limit"
    not_json = httpx.post(
        f"{api.url}/v1/fine_tuning/jobs",
        headers={"Authorization": f"Bearer {api.key(api.ns_a)}", "Content-Type": "application/json"},
        content=b"{oops",
    )
    assert not_json.status_code == 400 and not_json.json()["error"]["param"] == "body"
    assert {ns: api.objects(ns) for ns in api.tenants} == before, "a refused request created something"


def succeed(api: ApiServer, name: str, uri: str) -> None:
    """Drive the job to Succeeded through the status subresource, as the operator does."""
    status = {
        "status": {
            "phase": "Succeeded",
            "reason": "Completed",
            "completionTime": "2026-01-01T00:10:00Z",
            "artifact": {"uri": uri},
            "metrics": {"tokens": 1234},
        }
    }
    api.cluster.kubectl(
        "patch", "finetunejob", name, "-n", api.ns_a, "--subresource=status", "--type=merge", "-p", json.dumps(status)
    )


def test_result_files_download_as_csv(api, a, files, gcs, *, tmp_path, monkeypatch):
    job = a.fine_tuning.jobs.create(model="tiny", training_file=files["pairs"], method={"type": "dpo"})
    assert job.result_files == []
    with pytest.raises(openai.NotFoundError):
        a.files.content("file-results-" + job.id)  # not succeeded yet
    # what the trainer uploads: the export folder with metrics.jsonl in it, then the manifest
    steps = [StepMetrics(step=i, train_loss=1 / i, train_accuracy=i / 10) for i in range(1, 6)]
    steps[-1] = steps[-1].model_copy(update={"valid_loss": 0.25, "full_valid_loss": 0.3})
    export = Path(tmp_path / "export")
    export.mkdir()
    (export / "model.safetensors").write_bytes(b"weights")
    (export / METRICS_FILE).write_text("".join(s.line() for s in steps))
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs.host)
    uid = api.cluster.get_json("finetunejob", job.id, namespace=api.ns_a)["metadata"]["uid"]
    uploaded = upload_export(
        export,
        bucket=gcs.bucket,
        prefix="models",
        community_id=api.ns_a,
        job=job.id,
        namespace=api.ns_a,
        uid=uid,
        metrics={},
        config={},
    )
    manifest = json.loads(gcs.download(uploaded.manifest_uri.removeprefix(f"gs://{gcs.bucket}/")))
    assert METRICS_FILE in [f["path"] for f in manifest["files"]]
    succeed(api, job.id, uploaded.uri)

    done = a.fine_tuning.jobs.retrieve(job.id)
    assert done.status == "succeeded" and done.result_files == [f"file-results-{job.id}"]
    meta = a.files.retrieve(done.result_files[0])
    assert meta.purpose == "fine-tune-results" and meta.filename == "step_metrics.csv"
    text = a.files.content(done.result_files[0]).text
    assert meta.bytes == len(text.encode())
    rows = list(csv.DictReader(io.StringIO(text)))
    assert tuple(rows[0]) == RESULTS_COLUMNS
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5]  # one row per step
    assert [float(r["train_loss"]) for r in rows] == pytest.approx([1 / i for i in range(1, 6)])
    assert rows[0]["valid_loss"] == "" and float(rows[-1]["valid_loss"]) == 0.25
    # another tenant cannot read it; results files cannot be deleted on their own
    with pytest.raises(openai.NotFoundError):
        client_for(api, api.ns_b).files.content(done.result_files[0])
    with pytest.raises(openai.BadRequestError):
        a.files.delete(done.result_files[0])


def test_validation_file_integrations_and_suffix_recorded(api, a, files):
    wandb = {"project": "dpo-runs", "entity": "team", "tags": ["a"]}
    job = a.fine_tuning.jobs.create(
        model="tiny",
        training_file=files["pairs"],
        validation_file=files["one"],
        method={"type": "dpo"},
        suffix="support bot v2",
        integrations=[{"type": "wandb", "wandb": wandb}],
    )
    assert job.validation_file == files["one"] and job.user_provided_suffix == "support bot v2"  # type: ignore[attr-defined]
    assert job.integrations and job.integrations[0].wandb.project == "dpo-runs"
    spec = ftj(api, job.id)["spec"]
    validation = spec["dataset"]["validation"]
    assert validation["object"]["uri"].endswith(f"/{api.ns_a}/{files['one']}") and validation["object"]["rows"] == 1
    assert validation["object"]["sha256"] == hashlib.sha256(jsonl(PAIRS[:1])).hexdigest()
    assert (validation["format"], validation["compression"]) == ("jsonl", "auto")
    assert spec["dataset"]["validationFraction"] == 0  # every training row trains; the file is evaluated on
    assert spec["tracking"]["wandb"] == {**wandb, "name": job.id}
    # the validation file is in use: deleting it is a conflict retrying does not solve
    r = httpx.delete(f"{api.url}/v1/files/{files['one']}", headers={"Authorization": f"Bearer {api.key(api.ns_a)}"})
    assert r.status_code == 409 and r.headers["x-should-retry"] == "false"
    a.fine_tuning.jobs.cancel(job.id)


def test_non_retryable_conflicts_are_not_retried(api, files):
    sent: list[str] = []
    http = validating_http_client(event_hooks={"request": [lambda req: sent.append(req.url.path)]})
    patient = client_for(api, api.ns_a, retries=3, http=http)
    job = patient.fine_tuning.jobs.create(model="tiny", training_file=files["pairs"], method={"type": "dpo"})
    succeed(api, job.id, f"gs://elsewhere/models/{api.ns_a}/{job.id}/")
    sent.clear()
    with pytest.raises(openai.ConflictError) as info:
        patient.fine_tuning.jobs.cancel(job.id)
    assert info.value.response.headers["x-should-retry"] == "false"
    assert sent == [f"/v1/fine_tuning/jobs/{job.id}/cancel"]  # the client did not retry
    # a status pointing outside this API's bucket is never read
    assert patient.fine_tuning.jobs.retrieve(job.id).result_files == [f"file-results-{job.id}"]
    with pytest.raises(openai.NotFoundError):
        patient.files.content(f"file-results-{job.id}")


def test_metadata_null_filter_and_clamped_limit(api, a, files):
    tagged = a.fine_tuning.jobs.create(model="tiny", training_file=files["pairs"], metadata={"team": "x"})
    untagged = a.fine_tuning.jobs.create(model="tiny", training_file=files["pairs"])
    by_team = [j.id for j in a.fine_tuning.jobs.list(metadata={"team": "x"}, limit=100).data]
    assert by_team == [tagged.id]
    without = [j.id for j in a.fine_tuning.jobs.list(limit=100, extra_query={"metadata": "null"}).data]
    assert untagged.id in without and tagged.id not in without
    assert len(a.fine_tuning.jobs.list(limit=1000).data) <= 100  # clamped, not refused
    assert len(a.fine_tuning.jobs.list(limit=0).data) == 1
    events = a.fine_tuning.jobs.list_events(untagged.id, limit=500)
    assert events.data and events.data[-1].message.startswith("Created fine-tuning job")


def test_every_response_was_checked_against_the_document():
    """Runs last in this module: the hooks above validated each answer (a mismatch fails its test)."""
    assert len(checked) >= 40 and any(" 400" in c for c in checked) and any(" 200" in c for c in checked)
