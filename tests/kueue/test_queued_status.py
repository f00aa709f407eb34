"""The status mapping of a queued FineTuneJob (pure: ftoperator.status with a Kueue Workload as Kueue writes it;
test_kueue.py checks the same against the real Kueue)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from ftoperator import status as st
from ftoperator.kueue import job_owner, slim
from ftoperator.settings import Settings

NOW = dt.datetime(2026, 11, 26, 12, 0, 0, tzinfo=dt.UTC)
SETTINGS = Settings()
QUOTA = (
    "couldn't assign flavors to pod set main: insufficient unused quota for nvidia.com/gpu in flavor f, 2 more needed"
)


def ftj(**run_policy: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "j", "namespace": "ns", "uid": "u", "generation": 1},
        "spec": {"runPolicy": {"queueName": "team", **run_policy}},
        "status": {"phase": "Pending"},
    }


def job(suspend: bool) -> dict[str, Any]:
    return {"metadata": {"name": "j", "uid": "job-uid"}, "spec": {"suspend": suspend, "parallelism": 1}, "status": {}}


def workload(*conditions: tuple[str, str, str, str, str]) -> dict[str, Any]:
    """(type, status, reason, message, lastTransitionTime) each."""
    return {
        "metadata": {
            "name": "job-j-1a2b3",
            "namespace": "ns",
            "ownerReferences": [
                {"apiVersion": "batch/v1", "kind": "Job", "name": "j", "uid": "job-uid", "controller": True}
            ],
        },
        "status": {
            "conditions": [
                {"type": t, "status": s, "reason": r, "message": m, "lastTransitionTime": ltt}
                for t, s, r, m, ltt in conditions
            ]
        },
    }


def derive(wl: dict[str, Any] | None, *, suspended: bool = True, **run_policy: Any) -> dict[str, Any]:
    return st.derive_status(ftj(**run_policy), job(suspended), [], NOW, SETTINGS, workload=wl)


def test_waiting_for_quota_quotes_kueue() -> None:
    patch = derive(workload(("QuotaReserved", "False", "Pending", QUOTA, "2026-11-26T11:59:00Z")))
    assert (patch["phase"], patch["reason"]) == ("Queued", "Queued")
    assert patch["message"] == f"Kueue Pending: {QUOTA} (queue team)"
    assert "admissionTime" not in patch
    conds = {c["type"]: c for c in patch["conditions"]}
    assert (conds["Suspended"]["status"], conds["Suspended"]["reason"]) == ("True", "Queued")
    assert conds["Running"]["status"] == "False"


def test_before_kueue_made_a_workload_and_when_it_cannot_admit() -> None:
    assert derive(None)["message"] == "waiting for Kueue to create the job's Workload (queue team)"
    patch = derive(workload(("QuotaReserved", "False", "Inadmissible", "LocalQueue team doesn't exist", "t")))
    assert (patch["phase"], patch["reason"]) == ("Queued", "Inadmissible")
    assert "LocalQueue team doesn't exist" in patch["message"]


def test_admitted_job_carries_its_admission_time() -> None:
    admitted = workload(
        ("QuotaReserved", "True", "QuotaReserved", "Quota reserved", "2026-11-26T11:58:00Z"),
        ("Admitted", "True", "Admitted", "The workload is admitted", "2026-11-26T11:58:01Z"),
    )
    still_suspended = derive(admitted)
    assert (still_suspended["phase"], still_suspended["reason"]) == ("Pending", "Admitted")
    running = derive(admitted, suspended=False)  # Kueue un-suspended the Job
    assert running["phase"] == "Pending" and running["admissionTime"] == "2026-11-26T11:58:01Z"


def test_preempted_job_is_queued_again_until_readmitted() -> None:
    preempted = workload(
        ("QuotaReserved", "False", "Pending", "Preempted", "2026-11-26T11:59:00Z"),
        ("Admitted", "False", "NoReservation", "The workload has no reservation", "2026-11-26T11:59:00Z"),
        (
            "Evicted",
            "True",
            "Preempted",
            "Preempted to accommodate a workload (UID: x) due to prioritization",
            "2026-11-26T11:59:00Z",
        ),
    )
    patch = derive(preempted)
    assert (patch["phase"], patch["reason"]) == ("Queued", "Preempted")
    assert patch["message"].startswith("Kueue Preempted: Preempted to accommodate")
    assert patch["message"].endswith("; now Pending: Preempted (queue team)")  # and what it waits for now
    readmitted = workload(
        ("QuotaReserved", "True", "QuotaReserved", "Quota reserved", "2026-11-26T11:59:30Z"),
        ("Admitted", "True", "Admitted", "The workload is admitted", "2026-11-26T11:59:30Z"),
        ("Evicted", "True", "Preempted", "Preempted to accommodate a workload", "2026-11-26T11:59:00Z"),
    )
    assert (derive(readmitted)["phase"], derive(readmitted)["reason"]) == ("Pending", "Admitted")
    assert derive(readmitted, suspended=False)["admissionTime"] == "2026-11-26T11:59:30Z"


@pytest.mark.parametrize("suspend", [True, False])
def test_users_suspend_wins_over_the_queue(suspend: bool) -> None:
    patch = derive(workload(("QuotaReserved", "False", "Pending", QUOTA, "t")), suspend=suspend)
    assert patch["phase"] == ("Suspended" if suspend else "Queued")


def test_workload_index_keys_by_the_owning_job() -> None:
    wl = workload(("Admitted", "True", "Admitted", "", "t"))
    assert job_owner(wl) == "j"
    assert slim(wl)["status"]["conditions"][0]["type"] == "Admitted"
    wl["metadata"]["ownerReferences"][0]["kind"] = "JobSet"
    assert job_owner(wl) is None


def test_the_workload_is_held_while_the_user_suspends_or_after_a_failure() -> None:
    from ftoperator import kueue

    wl = kueue.slim(workload())
    assert wl["spec"]["active"] is True  # Kueue's default
    assert not kueue.needs_activation_change(ftj(), wl, "Running")
    assert kueue.needs_activation_change(ftj(suspend=True), wl, "Queued")
    assert kueue.needs_activation_change(ftj(), wl, "Failed")
    held = {**wl, "spec": {"active": False}}
    assert kueue.needs_activation_change(ftj(), held, "Suspended")  # resumed: compete for quota again
    assert not kueue.needs_activation_change({"spec": {"runPolicy": {}}}, held, "Running")  # not a queued job
    path, patch = kueue.activation_patch({**wl, "apiVersion": "kueue.x-k8s.io/v1beta2"}, False)
    assert path == "/apis/kueue.x-k8s.io/v1beta2/namespaces/ns/workloads/job-j-1a2b3"
    assert patch == {"spec": {"active": False}}
