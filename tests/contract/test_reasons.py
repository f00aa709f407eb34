"""Trainer -> operator: every reason the trainer can report reaches status.reason and status.conditions
unchanged, and success metrics reach the status rounded (ftoperator.status.derive_status, no cluster)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from ftcrd import conditions
from ftcrd.conditions import TRAINER_REASONS, ExitCode
from ftcrd.termination import TerminationMessage
from ftcrd.types import round_metric
from ftoperator import builders
from ftoperator import status as st

NOW = dt.datetime(2026, 11, 26, 12, 0, 0, tzinfo=dt.UTC)


def ftj() -> dict[str, Any]:
    return {"metadata": {"name": "j", "namespace": "ns", "uid": "u", "generation": 1}, "spec": {}, "status": {}}


def failed_job(reason: str) -> dict[str, Any]:
    return {
        "metadata": {"name": "j"},
        "spec": {"parallelism": 1, "backoffLimit": 2},
        "status": {"conditions": [{"type": "Failed", "status": "True", "reason": reason, "message": ""}]},
    }


def pod(code: int, message: TerminationMessage, created: str = "2026-11-26T11:50:00Z") -> dict[str, Any]:
    terminated = {"exitCode": code, "reason": "Error", "message": message.encode().decode()}
    return {
        "metadata": {"name": f"j-0-{created[-3:-1]}", "creationTimestamp": created, "annotations": {}},
        "status": {"phase": "Failed", "containerStatuses": [{"name": "trainer", "state": {"terminated": terminated}}]},
    }


def failing(reason: str) -> tuple[int, dict[str, Any], list[dict[str, Any]]]:
    """What the Job controller and the pods look like after the trainer failed with ``reason``."""
    code = TRAINER_REASONS[reason]
    exit_code = int(code) if code is not None else 1
    msg = TerminationMessage(status="failed", reason=reason, message=f"what went wrong ({reason})")
    # exit 2 fails the Job at once through the podFailurePolicy; anything else is retried until the backoff limit
    if code == ExitCode.INVALID_INPUT:
        return exit_code, failed_job("PodFailurePolicy"), [pod(exit_code, msg)]
    pods = [pod(exit_code, msg, "2026-11-26T11:50:00Z"), pod(exit_code, msg, "2026-11-26T11:55:00Z")]
    return exit_code, failed_job("BackoffLimitExceeded"), pods


@pytest.mark.parametrize("reason", list(TRAINER_REASONS))
def test_every_trainer_reason_reaches_the_status_unchanged(reason: str):
    exit_code, job, pods = failing(reason)
    patch = st.derive_status(ftj(), job, pods, NOW)
    assert (patch["phase"], patch["reason"]) == ("Failed", reason)
    assert f"what went wrong ({reason})" in patch["message"]
    failed = {c["type"]: c for c in patch["conditions"]}[conditions.FAILED]
    assert (failed["status"], failed["reason"]) == ("True", reason)
    assert reason in conditions.REASONS  # documented in docs/conditions.md
    # a policy for the exit code, where the contract names one
    policy = builders.pod_failure_policy()["rules"]
    fail_now = {v for r in policy if r["action"] == "FailJob" for v in r["onExitCodes"]["values"]}
    assert (exit_code in fail_now) == (TRAINER_REASONS[reason] == ExitCode.INVALID_INPUT)


@pytest.mark.parametrize("reason", [r for r, c in TRAINER_REASONS.items() if c != ExitCode.INVALID_INPUT])
def test_a_retried_attempt_names_the_trainer_reason(reason: str):
    _, _, pods = failing(reason)
    job = {"metadata": {"name": "j"}, "spec": {"parallelism": 1}, "status": {}}
    patch = st.derive_status(ftj(), job, pods[:1], NOW)
    assert patch["phase"] == "Pending" and "retrying" in patch["message"] and reason in patch["message"]


def test_a_reason_outside_the_contract_is_not_taken_from_the_message():
    bad = {"exitCode": 1, "reason": "Error", "message": '{"status": "failed", "reason": "MadeUp", "message": "x"}'}
    p = {
        "metadata": {"name": "j-0-a"},
        "status": {"phase": "Failed", "containerStatuses": [{"name": "trainer", "state": {"terminated": bad}}]},
    }
    patch = st.derive_status(ftj(), failed_job("BackoffLimitExceeded"), [p, p], NOW)
    assert patch["reason"] == conditions.Reason.BACKOFF_LIMIT_EXCEEDED


def test_success_metrics_reach_the_status_rounded():
    msg = TerminationMessage.model_validate(
        {
            "status": "succeeded",
            "artifact": {"uri": "gs://b/models/c/j/", "sha256": "ab" * 32, "sizeBytes": 10, "files": 7},
            "metrics": {"loss": 0.12643009051680565, "tokens": 123456},
            "steps": 14,
        }
    )
    terminated = {"exitCode": 0, "reason": "Completed", "message": msg.encode().decode()}
    done = {
        "metadata": {"name": "j-0-a", "annotations": {"batch.kubernetes.io/job-completion-index": "0"}},
        "status": {
            "phase": "Succeeded",
            "containerStatuses": [{"name": "trainer", "state": {"terminated": terminated}}],
        },
    }
    job = {"metadata": {"name": "j"}, "spec": {}, "status": {"conditions": [{"type": "Complete", "status": "True"}]}}
    patch = st.derive_status(ftj(), job, [done], NOW)
    assert (patch["phase"], patch["reason"]) == ("Succeeded", conditions.Reason.COMPLETED)
    assert patch["metrics"] == {"loss": 0.1264, "tokens": 123456} and round_metric(0.12643009051680565) == 0.1264
