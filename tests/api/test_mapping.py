"""ftapi.mapping and request validation, pure (no cluster)."""

from __future__ import annotations

import json

import pytest
from ftapi import mapping
from ftapi.auth import hash_key, match, parse_keys
from ftapi.errors import describe_validation_errors, field_path
from ftapi.schemas import JobCreate, SeedTrigger
from ftapi.settings import Settings
from ftapi.specbuild import build_job, dataset_from_configmap, new_job_name, resolve_model
from ftcrd import names
from ftcrd.types import FineTuneJob, MethodSpec
from pydantic import ValidationError


def ftj(phase=None, **status):
    obj = {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {
            "name": "ftjob-abc",
            "namespace": "team-a",
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "annotations": {names.ANN_OPENAI_MODEL: "tiny", names.ANN_TRAINING_FILE: "file-1"},
        },
        "spec": {
            "model": {"name": "tiny", "preset": "tiny"},
            "method": {"type": "dpo", "beta": 0.25},
            "hyperparameters": {"epochs": 3, "batchSize": 8, "learningRate": 1e-6, "seed": 5},
            "dataset": {"configMap": {"name": "file-1", "key": "data.jsonl.gz"}},
            "output": {"bucket": "b"},
        },
    }
    if phase or status:
        obj["status"] = {"phase": phase, **status}
    return obj


@pytest.mark.parametrize(
    ("phase", "expected"),
    [
        (None, "queued"),
        ("Pending", "queued"),
        ("Suspended", "queued"),
        ("Running", "running"),
        ("Uploading", "running"),
        ("Succeeded", "succeeded"),
        ("Failed", "failed"),
    ],
)
def test_status(phase, expected):
    assert mapping.openai_status(ftj(phase)) == expected


def test_cancelled_wins_unless_succeeded():
    obj = ftj("Running")
    obj["metadata"]["annotations"][names.ANN_CANCELLED] = "true"
    assert mapping.openai_status(obj) == "cancelled"
    obj["status"]["phase"] = "Failed"
    assert mapping.openai_status(obj) == "cancelled"
    obj["status"]["phase"] = "Succeeded"
    assert mapping.openai_status(obj) == "succeeded"


def test_job_object_fields():
    obj = ftj(
        "Succeeded",
        completionTime="2026-01-01T01:00:00Z",
        artifact={"uri": "gs://b/models/c/ftjob-abc/"},
        metrics={"tokens": 99},
    )
    job = mapping.to_openai_job(obj)
    assert job["id"] == "ftjob-abc" and job["object"] == "fine_tuning.job"
    assert job["created_at"] == 1767225600 and job["finished_at"] == 1767229200
    assert job["fine_tuned_model"] == "gs://b/models/c/ftjob-abc/" and job["trained_tokens"] == 99
    assert job["hyperparameters"] == {"batch_size": 8, "n_epochs": 3, "learning_rate_multiplier": 2.0}
    assert job["method"] == {
        "type": "dpo",
        "dpo": {"hyperparameters": {"beta": 0.25, "batch_size": 8, "n_epochs": 3, "learning_rate_multiplier": 2.0}},
    }
    assert job["seed"] == 5 and job["training_file"] == "file-1" and job["error"] is None


def test_job_validates_against_openai_client_model():
    from openai.types.fine_tuning import FineTuningJob

    for phase in (None, "Running", "Succeeded", "Failed"):
        obj = ftj(phase, reason="InvalidDataset", message="row 3: field 'chosen': is missing")
        FineTuningJob.model_validate(mapping.to_openai_job(obj))
    err = mapping.to_openai_job(ftj("Failed", reason="InvalidDataset", message="row 3: bad"))["error"]
    assert err == {"code": "InvalidDataset", "message": "row 3: bad", "param": "training_file"}


def test_estimated_finish():
    obj = ftj("Running", progress={"etaSeconds": 60, "updatedAt": "2026-01-01T00:00:10Z"})
    assert mapping.to_openai_job(obj)["estimated_finish"] == 1767225610 + 60
    assert mapping.to_openai_job(ftj("Pending"))["estimated_finish"] is None


def test_sft_method():
    obj = ftj()
    obj["spec"]["method"] = {"type": "sft"}
    assert mapping.to_openai_job(obj)["method"]["type"] == "supervised"


def test_events_merge_and_order():
    from openai.types.fine_tuning import FineTuningJobEvent

    obj = ftj(
        "Failed",
        conditions=[
            {"type": "Created", "status": "True", "reason": "JobCreated", "lastTransitionTime": "2026-01-01T00:00:05Z"},
            {
                "type": "Failed",
                "status": "True",
                "reason": "OOMKilled",
                "message": "rank 0 OOM",
                "lastTransitionTime": "2026-01-01T00:02:00Z",
            },
        ],
        progress={"step": 3, "totalSteps": 10, "updatedAt": "2026-01-01T00:01:00Z"},
        metrics={"loss": 0.7},
    )
    k8s_events = [
        {
            "metadata": {"uid": "u1", "creationTimestamp": "2026-01-01T00:00:30Z"},
            "type": "Warning",
            "reason": "BackOff",
            "message": "restarting",
            "lastTimestamp": "2026-01-01T00:00:30Z",
        }
    ]
    events = mapping.to_events(obj, k8s_events)
    times = [e["created_at"] for e in events]
    assert times == sorted(times, reverse=True)
    assert events[0]["level"] == "error" and "OOMKilled" in events[0]["message"]
    assert events[-1]["message"] == "Created fine-tuning job: ftjob-abc"
    assert any(e["type"] == "metrics" and e["data"]["train_loss"] == 0.7 for e in events)
    assert any(e["id"] == "ftevent-u1" and e["level"] == "warn" for e in events)
    for e in events:
        FineTuningJobEvent.model_validate(e)
    assert len({e["id"] for e in events}) == len(events)


def test_checkpoints():
    from openai.types.fine_tuning.jobs import FineTuningJobCheckpoint

    obj = ftj("Running", checkpoints=[{"step": 10, "path": "/checkpoints/step-10", "metrics": {"loss": 0.5}}])
    cks = mapping.to_checkpoints(obj)
    assert cks[0]["id"] == "ftckpt-ftjob-abc-10" and cks[0]["metrics"]["train_loss"] == 0.5
    FineTuningJobCheckpoint.model_validate(cks[0])


def test_file_object():
    from openai.types import FileObject

    cm = {
        "metadata": {
            "name": "file-1",
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "annotations": {names.ANN_BYTES: "12", names.ANN_FILENAME: "a.jsonl", names.ANN_PURPOSE: "fine-tune"},
        }
    }
    f = mapping.file_object(cm)
    FileObject.model_validate(f)
    assert f["bytes"] == 12 and f["created_at"] == 1767225600


def test_paginate():
    items = [{"id": str(i)} for i in range(5)]
    page = mapping.paginate(items, None, 2, key=lambda x: x["id"])
    assert [x["id"] for x in page["data"]] == ["0", "1"] and page["has_more"]
    page = mapping.paginate(items, "3", 2, key=lambda x: x["id"])
    assert [x["id"] for x in page["data"]] == ["4"] and not page["has_more"]
    assert mapping.paginate(items, "zz", 2, key=lambda x: x["id"])["data"] == []


def test_native_strips_noise():
    obj = ftj()
    obj["metadata"]["managedFields"] = [{}]
    obj["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"] = "{}"
    out = mapping.native(obj)
    assert "managedFields" not in out["metadata"]
    assert "kubectl.kubernetes.io/last-applied-configuration" not in out["metadata"]["annotations"]


def test_field_path():
    assert field_path(("body", "dataset", 2, "chosen")) == "dataset[2].chosen"
    assert field_path(("body", "method", "dpo", "hyperparameters", "beta", "constrained-float")) == (
        "method.dpo.hyperparameters.beta"
    )
    assert field_path(("query", "limit")) == "limit"


def test_seed_validation_messages():
    with pytest.raises(ValidationError) as info:
        SeedTrigger.model_validate({"communityId": "c", "dataset": [{"prompt": "p", "chosen": "", "rejected": 3}]})
    message, param = describe_validation_errors(info.value.errors())
    assert param == "dataset[0].chosen"
    assert "dataset[0].chosen: Value error, must be a non-empty string" in message
    assert "dataset[0].rejected: Input should be a valid string (got 3)" in message


def test_job_create_schema():
    body = JobCreate.model_validate(
        {
            "model": "tiny",
            "training_file": "file-" + "1" * 24,
            "method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": "auto", "n_epochs": 2}}},
        }
    )
    hp, where = body.chosen_hyperparameters()
    assert body.method_type() == "dpo" and where == "method.dpo.hyperparameters" and hp is not None
    assert hp.n_epochs == 2
    plain = JobCreate.model_validate({"model": "tiny", "training_file": "file-" + "1" * 24})
    assert plain.method_type() == "supervised"  # OpenAI's default
    bad = [
        {"integrations": [{"type": "wandb"}]},  # wandb settings missing
        {"method": {"type": "reinforcement"}},
        {"method": {"type": "dpo", "supervised": {}}},  # settings of another method
        {"seed": True},  # JSON Schema's integers: no booleans, no strings
        {"seed": "5"},
        {"suffix": ""},
        {"training_file": "f"},
    ]
    for extra in bad:
        with pytest.raises(ValidationError):
            JobCreate.model_validate({"model": "tiny", "training_file": "file-" + "1" * 24, **extra})
    with pytest.raises(ValidationError) as info:
        JobCreate.model_validate({"model": "tiny", "training_file": "file-" + "1" * 24, "method": {"type": "rl"}})
    assert describe_validation_errors(info.value.errors())[1] == "method.type"


def test_keys():
    entries = parse_keys(
        json.dumps(
            [
                {"name": "a", "sha256": hash_key("k1"), "namespace": "team-a"},
                {"name": "bad", "sha256": "xyz", "namespace": "team-b"},
                {"name": "b", "sha256": hash_key("k2"), "namespace": "team-b"},
            ]
        )
    )
    assert [e.name for e in entries] == ["a", "b"]
    assert match(entries, "k2").namespace == "team-b"  # type: ignore[union-attr]
    assert match(entries, "k3") is None


def test_build_job_uses_ftcrd_and_settings():
    settings = Settings(
        kubeconfig="x",
        hyperparameters={"batchSize": 2, "warmupSteps": 0},
        resources={"gpusPerNode": 0},
        trainer_env={"STORAGE_EMULATOR_HOST": "http://127.0.0.1:1"},
        output_credentials_secret="firebase/sa.json",
    )
    body = build_job(
        settings,
        name=new_job_name("team-a", "key"),
        namespace="team-a",
        model=resolve_model(settings, "HuggingFaceH4/zephyr-7b-beta"),
        dataset=dataset_from_configmap(settings, "file-1", "data.jsonl.gz", "jsonl"),
        method=MethodSpec.model_validate({"type": "dpo"}),
        hyperparameters={"epochs": 2},
        community_id="team-a",
        labels={},
        annotations={},
    )
    parsed = FineTuneJob.model_validate(body)
    assert parsed.spec.model.preset == "zephyr"
    assert parsed.spec.hyperparameters.batch_size == 2 and parsed.spec.hyperparameters.epochs == 2
    assert parsed.spec.resources.gpus_per_node == 0
    assert parsed.spec.env and parsed.spec.env[0].name == "STORAGE_EMULATOR_HOST"
    assert parsed.spec.output.credentials_secret is not None
    assert parsed.spec.output.credentials_secret.key == "sa.json"
    assert new_job_name("team-a", "key") == body["metadata"]["name"]
    assert new_job_name("team-b", "key") != body["metadata"]["name"]
    assert len(body["metadata"]["name"]) == len("ftjob-") + 12
