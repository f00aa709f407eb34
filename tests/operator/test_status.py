"""Status mapping (ftoperator.status.derive_status): a table of Job/pod situations, no cluster."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from ftcrd.conditions import REASONS
from ftcrd.names import ANN_CANCELLED
from ftoperator import status as st
from ftoperator.settings import Settings

NOW = dt.datetime(2026, 11, 26, 12, 0, 0, tzinfo=dt.UTC)
T0 = "2026-11-26T11:50:00Z"
SETTINGS = Settings(image_pull_grace_seconds=300)


def ftj(status: dict[str, Any] | None = None, **run_policy: Any) -> dict[str, Any]:
    return {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "j", "namespace": "ns", "uid": "u", "generation": 1},
        "spec": {"runPolicy": {"backoffLimit": 2, **run_policy}},
        "status": status or {},
    }


def job(*conditions: tuple[str, str, str], suspend: bool = False, **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "j", "uid": "job-uid"},
        "spec": {"suspend": suspend, "parallelism": 1, "backoffLimit": 2, "activeDeadlineSeconds": 600},
        "status": {
            "conditions": [{"type": t, "status": "True", "reason": r, "message": m} for t, r, m in conditions],
            **status,
        },
    }


def pod(
    phase: str = "Pending",
    *,
    index: int = 0,
    created: str = T0,
    scheduled: tuple[str, str, str] | None = ("True", "", ""),
    state: dict[str, Any] | None = None,
    start: str | None = None,
) -> dict[str, Any]:
    conds = []
    if scheduled is not None:
        conds.append({"type": "PodScheduled", "status": scheduled[0], "reason": scheduled[1], "message": scheduled[2]})
    status: dict[str, Any] = {"phase": phase, "conditions": conds}
    if state is not None:
        status["containerStatuses"] = [{"name": "trainer", "state": state}]
    if start:
        status["startTime"] = start
    return {
        "metadata": {
            "name": f"j-{index}-x",
            "creationTimestamp": created,
            "annotations": {"batch.kubernetes.io/job-completion-index": str(index)},
        },
        "status": status,
    }


def terminated(code: int, message: str = "", reason: str = "Completed") -> dict[str, Any]:
    return {
        "terminated": {
            "exitCode": code,
            "reason": reason if code == 0 else (reason if reason != "Completed" else "Error"),
            "message": message,
            "startedAt": "2026-11-26T11:51:00Z",
            "finishedAt": "2026-11-26T11:59:00Z",
        }
    }


def conditions(patch: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in patch["conditions"]}


SUCCESS_MESSAGE = json.dumps(
    {
        "status": "succeeded",
        "artifact": {
            "uri": "gs://b/models/c1/j/",
            "sizeBytes": 123,
            "sha256": "ab" * 32,
            "manifestUri": "gs://b/models/c1/j/manifest.json",
            "files": 7,
        },
        "metrics": {"loss": 0.61, "rewardAccuracy": 0.8},
        "steps": 40,
        "examples": 320,
    }
)


def test_every_reason_is_documented():
    cases = [
        st.derive_status(ftj(), job(), [], NOW, SETTINGS),
        st.derive_status(ftj(), job(), [pod(scheduled=("False", "Unschedulable", "0/1 nodes"))], NOW, SETTINGS),
        st.derive_status(ftj(), job(("Failed", "BackoffLimitExceeded", "")), [pod("Failed", state=terminated(1))], NOW),
    ]
    for patch in cases:
        assert patch["reason"] in REASONS
        for c in patch["conditions"]:
            assert c["reason"] in REASONS or c["reason"] == "Scheduled"


def test_job_created_no_pods():
    patch = st.derive_status(ftj(), job(), [], NOW, SETTINGS)
    assert (patch["phase"], patch["reason"]) == ("Pending", "JobCreated")
    c = conditions(patch)
    assert c["Created"]["status"] == "True" and c["Created"]["reason"] == "JobCreated"
    assert c["Running"]["status"] == "False"
    assert patch["jobName"] == "j"
    assert patch["observedGeneration"] == 1


def test_unschedulable_shows_the_schedulers_reason():
    msg = "0/1 nodes are available: 1 Insufficient nvidia.com/gpu. preemption: 0/1 nodes are available"
    patch = st.derive_status(ftj(), job(), [pod(scheduled=("False", "Unschedulable", msg))], NOW, SETTINGS)
    assert (patch["phase"], patch["reason"]) == ("Pending", "Unschedulable")
    assert "Insufficient nvidia.com/gpu" in patch["message"]
    c = conditions(patch)
    assert c["Scheduled"]["status"] == "False" and c["Scheduled"]["reason"] == "Unschedulable"
    assert "Insufficient nvidia.com/gpu" in c["Scheduled"]["message"]


def test_image_pull_backoff_within_grace_is_pending():
    waiting = {"waiting": {"reason": "ImagePullBackOff", "message": 'Back-off pulling image "nope:1"'}}
    p = pod(state=waiting, start="2026-11-26T11:58:00Z")  # 120 s ago, grace 300 s
    patch = st.derive_status(ftj(), job(), [p], NOW, SETTINGS)
    assert (patch["phase"], patch["reason"]) == ("Pending", "WaitingForPods")
    assert "ImagePullBackOff" in patch["message"] and "180s" in patch["message"]
    assert not st.needs_suspend(patch, job())


@pytest.mark.parametrize("reason", ["ImagePullBackOff", "ErrImagePull"])
def test_image_pull_backoff_after_grace_fails_and_frees_the_gpus(reason):
    waiting = {"waiting": {"reason": reason, "message": "pull access denied"}}
    p = pod(state=waiting, start="2026-11-26T11:54:00Z")  # 360 s ago
    patch = st.derive_status(ftj(), job(), [p], NOW, SETTINGS)
    assert (patch["phase"], patch["reason"]) == ("Failed", "ImagePullFailed")
    assert reason in patch["message"]
    assert conditions(patch)["Failed"]["status"] == "True"
    assert patch["completionTime"] == "2026-11-26T12:00:00Z"
    assert st.needs_suspend(patch, job())  # the caller suspends the Job: no pod keeps its GPUs


def test_image_pull_grace_is_configurable():
    waiting = {"waiting": {"reason": "ImagePullBackOff", "message": ""}}
    p = pod(state=waiting, start="2026-11-26T11:59:00Z")
    assert st.derive_status(ftj(), job(), [p], NOW, Settings(image_pull_grace_seconds=30))["phase"] == "Failed"
    assert st.derive_status(ftj(), job(), [p], NOW, Settings(image_pull_grace_seconds=600))["phase"] == "Pending"


def test_waiting_for_pods_container_creating():
    p = pod(state={"waiting": {"reason": "ContainerCreating"}})
    patch = st.derive_status(ftj(), job(), [p], NOW, SETTINGS)
    assert (patch["phase"], patch["reason"]) == ("Pending", "WaitingForPods")
    assert "ContainerCreating" in patch["message"]
    assert conditions(patch)["Scheduled"]["status"] == "True"


def test_running_with_trainer_progress():
    status = {
        "phase": "Pending",
        "progress": {"step": 12, "totalSteps": 40, "percent": 30.0, "summary": "30% (12/40)", "stage": "training"},
        "metrics": {"loss": 0.69},
    }
    p = pod("Running", state={"running": {"startedAt": "2026-11-26T11:51:00Z"}})
    patch = st.derive_status(ftj(status), job(), [p], NOW, SETTINGS)
    assert (patch["phase"], patch["reason"]) == ("Running", "Training")
    assert "30% (12/40)" in patch["message"]
    assert patch["startTime"] == "2026-11-26T11:51:00Z"
    assert conditions(patch)["Running"]["status"] == "True"
    # trainer-owned fields are never part of the operator's patch while running
    assert "progress" not in patch and "metrics" not in patch and "checkpoints" not in patch


def test_uploading_stage():
    status = {"phase": "Running", "progress": {"stage": "uploading", "percent": 100.0}}
    p = pod("Running", state={"running": {"startedAt": "2026-11-26T11:51:00Z"}})
    patch = st.derive_status(ftj(status), job(), [p], NOW, SETTINGS)
    assert (patch["phase"], patch["reason"]) == ("Uploading", "Uploading")
    assert conditions(patch)["Running"]["status"] == "True"


def test_succeeded_copies_the_verified_upload():
    p = pod("Succeeded", state=terminated(0, SUCCESS_MESSAGE))
    j = job(("Complete", "CompletionsReached", ""), completionTime="2026-11-26T11:59:30Z")
    status = {"phase": "Uploading", "progress": {"stage": "uploading", "step": 39}}
    patch = st.derive_status(ftj(status), j, [p], NOW, SETTINGS)
    assert (patch["phase"], patch["reason"]) == ("Succeeded", "Completed")
    assert patch["artifact"]["uri"] == "gs://b/models/c1/j/"
    assert patch["artifact"]["sha256"] == "ab" * 32
    assert patch["artifact"]["sizeBytes"] == 123
    assert patch["metrics"] == {"loss": 0.61, "rewardAccuracy": 0.8}
    assert patch["progress"]["percent"] == 100.0 and patch["progress"]["stage"] is None
    assert patch["progress"]["summary"] == "100% (40/40)"
    assert patch["completionTime"] == "2026-11-26T11:59:30Z"
    c = conditions(patch)
    assert c["Succeeded"]["status"] == "True" and c["Failed"]["status"] == "False"
    assert c["Running"]["status"] == "False"


@pytest.mark.parametrize(
    "message",
    [
        "",
        "training done\n",  # logs, not JSON
        json.dumps({"status": "succeeded", "artifact": {"uri": "gs://b/x/"}}),  # no sha256
        json.dumps({"status": "failed", "reason": "UploadFailed"}),
    ],
)
def test_succeeded_without_verified_upload_fails(message):
    p = pod("Succeeded", state=terminated(0, message))
    patch = st.derive_status(ftj(), job(("Complete", "CompletionsReached", "")), [p], NOW, SETTINGS)
    assert (patch["phase"], patch["reason"]) == ("Failed", "UploadNotVerified")
    assert "artifact" not in patch


def test_completed_job_waits_for_the_pod_status():
    p = pod("Running", state={"running": {"startedAt": T0}})
    patch = st.derive_status(ftj(), job(("Complete", "CompletionsReached", "")), [p], NOW, SETTINGS)
    assert patch["phase"] == "Uploading"


def test_exit_2_is_invalid_dataset():
    msg = json.dumps(
        {"status": "failed", "reason": "InvalidDataset", "message": "row 3: field 'chosen': must be a non-empty string"}
    )
    p = pod("Failed", state=terminated(2, msg))
    j = job(("FailureTarget", "PodFailurePolicy", "Container trainer for pod ns/j-0-x failed with exit code 2"))
    patch = st.derive_status(ftj(), j, [p], NOW, SETTINGS)
    assert (patch["phase"], patch["reason"]) == ("Failed", "InvalidDataset")
    assert "row 3" in patch["message"]
    assert patch["attempts"] == 1
    assert conditions(patch)["Failed"]["reason"] == "InvalidDataset"


def test_exit_2_without_json_is_still_invalid_dataset():
    p = pod("Failed", state=terminated(2, "Traceback ...\nValueError: bad rows"))
    patch = st.derive_status(ftj(), job(("Failed", "PodFailurePolicy", "exit code 2")), [p], NOW, SETTINGS)
    assert (patch["phase"], patch["reason"]) == ("Failed", "InvalidDataset")
    assert "bad rows" in patch["message"]


def test_oom_killed():
    pods = [
        pod("Failed", created="2026-11-26T11:50:00Z", state=terminated(137, "", "OOMKilled")),
        pod("Failed", created="2026-11-26T11:55:00Z", state=terminated(137, "", "OOMKilled")),
        pod("Failed", created="2026-11-26T11:57:00Z", state=terminated(137, "", "OOMKilled")),
    ]
    patch = st.derive_status(ftj(), job(("Failed", "BackoffLimitExceeded", "")), pods, NOW, SETTINGS)
    assert (patch["phase"], patch["reason"]) == ("Failed", "OOMKilled")
    assert "resources.memory" in patch["message"]
    assert patch["attempts"] == 3


def test_deadline_exceeded():
    p = pod("Failed", state=terminated(143, "", "Error"))
    patch = st.derive_status(ftj(), job(("Failed", "DeadlineExceeded", "Job was active longer")), [p], NOW, SETTINGS)
    assert (patch["phase"], patch["reason"]) == ("Failed", "DeadlineExceeded")
    assert "600s" in patch["message"]


def test_backoff_limit_exceeded_reports_the_last_error():
    pods = [
        pod("Failed", created="2026-11-26T11:50:00Z", state=terminated(1, "RuntimeError: first")),
        pod("Failed", created="2026-11-26T11:55:00Z", state=terminated(3, "upload failed after retries")),
    ]
    patch = st.derive_status(ftj(), job(("Failed", "BackoffLimitExceeded", "")), pods, NOW, SETTINGS)
    assert (patch["phase"], patch["reason"]) == ("Failed", "BackoffLimitExceeded")
    assert "exit code 3" in patch["message"] and "upload failed" in patch["message"]


def test_retrying_after_a_failed_attempt():
    pods = [pod("Failed", state=terminated(1, "boom"))]
    patch = st.derive_status(ftj(), job(), pods, NOW, SETTINGS)
    assert (patch["phase"], patch["reason"]) == ("Pending", "WaitingForPods")
    assert "retrying" in patch["message"]


@pytest.mark.parametrize("by_spec", [True, False])
def test_suspended(by_spec):
    f = ftj(suspend=True) if by_spec else ftj(queueName="gpu")
    patch = st.derive_status(f, job(suspend=True), [], NOW, SETTINGS)
    # A queued job Kueue holds is Queued (tests/kueue/test_queued_status.py: with Kueue's reasons).
    assert (patch["phase"], patch["reason"]) == (("Suspended", "Suspended") if by_spec else ("Queued", "Queued"))
    assert ("spec.runPolicy.suspend" in patch["message"]) if by_spec else ("Kueue" in patch["message"])
    assert conditions(patch)["Suspended"]["status"] == "True"


def test_terminal_is_final():
    assert st.derive_status(ftj({"phase": "Succeeded"}), job(), [], NOW, SETTINGS) == {}
    assert st.derive_status(ftj({"phase": "Failed"}), job(("Complete", "", "")), [], NOW, SETTINGS) == {}


def test_last_transition_time_is_preserved_when_status_is_unchanged():
    first = st.derive_status(ftj(), job(), [], NOW, SETTINGS)
    later = NOW + dt.timedelta(minutes=5)
    p = pod(state={"waiting": {"reason": "ContainerCreating"}})
    second = st.derive_status(ftj(first), job(), [p], later, SETTINGS)
    c1, c2 = conditions(first), conditions(second)
    assert c2["Created"]["lastTransitionTime"] == c1["Created"]["lastTransitionTime"]  # True -> True
    assert c2["Running"]["lastTransitionTime"] == c1["Running"]["lastTransitionTime"]  # False -> False
    assert c2["Scheduled"]["status"] == "True"
    assert c2["Scheduled"]["lastTransitionTime"] == st.rfc3339(later)  # False -> True


def test_changed_only_reports_differences():
    patch = st.derive_status(ftj(), job(), [], NOW, SETTINGS)
    assert st.changed(patch, patch) == {}
    again = st.derive_status(ftj(patch), job(), [], NOW + dt.timedelta(seconds=30), SETTINGS)
    assert st.changed(patch, again) == {}  # idempotent: no status write, no event
    assert st.changed({"progress": {"step": 3}}, {"progress": {"step": 3}}) == {}
    assert st.changed({"progress": {"step": 3}}, {"progress": {"step": 4}}) == {"progress": {"step": 4}}


def test_no_job_yet_keeps_the_child_create_failure():
    status = {
        "phase": "Pending",
        "conditions": [
            {
                "type": "Created",
                "status": "False",
                "reason": "ChildCreateFailed",
                "message": "forbidden",
                "lastTransitionTime": T0,
            }
        ],
    }
    patch = st.derive_status(ftj(status), None, [], NOW, SETTINGS)
    assert (patch["phase"], patch["reason"]) == ("Pending", "ChildCreateFailed")
    assert conditions(patch)["Created"]["lastTransitionTime"] == T0


def test_trainer_exited_before_the_job_completes_is_no_regression():
    p = pod("Succeeded", state=terminated(0, SUCCESS_MESSAGE))
    patch = st.derive_status(ftj({"phase": "Running"}), job(), [p], NOW, SETTINGS)
    assert patch["phase"] == "Running"
    patch = st.derive_status(ftj({"phase": "Uploading"}), job(), [p], NOW, SETTINGS)
    assert patch["phase"] == "Uploading"


def test_trainer_reported_invalid_input_wins_over_backoff_limit():
    msg = json.dumps({"status": "failed", "reason": "InvalidDataset", "message": "row 1: field 'chosen'"})
    pods = [pod("Failed", state=terminated(1, msg))]
    patch = st.derive_status(ftj(), job(("Failed", "BackoffLimitExceeded", "")), pods, NOW, SETTINGS)
    assert (patch["phase"], patch["reason"]) == ("Failed", "InvalidDataset")


def test_a_deleted_job_is_reported_missing_until_it_is_created_again():
    patch = st.derive_status(ftj({"phase": "Running", "jobName": "j"}), None, [], NOW, SETTINGS)
    assert (patch["phase"], patch["reason"]) == ("Pending", "JobMissing")
    assert "Job j was deleted" in patch["message"]
    assert conditions(patch)["Created"]["status"] == "False"
    assert patch["reason"] in REASONS


def test_a_cancelled_job_is_finished_for_the_ttl_from_when_it_was_seen_cancelled():
    cancelled = ftj(suspend=True)
    cancelled["metadata"]["annotations"] = {ANN_CANCELLED: "true"}
    patch = st.derive_status(cancelled, job(suspend=True), [], NOW, SETTINGS)
    assert (patch["phase"], patch["reason"]) == ("Suspended", "Cancelled")
    assert patch["completionTime"] == st.rfc3339(NOW)
    assert st.finished_at(cancelled, patch) == NOW
    # later syncs keep the first time
    again = st.derive_status({**cancelled, "status": patch}, job(suspend=True), [], NOW + dt.timedelta(hours=1))
    assert st.changed(patch, again) == {}
    # a paused (not cancelled) job is live: no completion time, no TTL
    paused = st.derive_status(ftj(suspend=True), job(suspend=True), [], NOW, SETTINGS)
    assert paused["reason"] == "Suspended" and "completionTime" not in paused
    assert st.finished_at(ftj(suspend=True), paused) is None


def test_resuming_a_cancelled_job_clears_its_completion_time():
    status = {"phase": "Suspended", "reason": "Cancelled", "completionTime": T0}
    patch = st.derive_status(ftj(status), job(), [], NOW, SETTINGS)
    assert patch["phase"] == "Pending" and patch["completionTime"] is None  # merge patch: removed
