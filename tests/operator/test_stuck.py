"""Stuck trainer pods and their grace periods (ftoperator.stuck, through derive_status). No cluster.

Pods are shaped the way a kubelet and the scheduler report each state: an image pull and a missing
Secret/ConfigMap key in the container's waiting state, a volume that cannot be mounted only in FailedMount
Events (the container waits in ContainerCreating without a message), a missing claim and a lack of capacity
in the PodScheduled condition, an init container crash loop in initContainerStatuses.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from ftcrd.conditions import REASONS
from ftoperator import status as st
from ftoperator import stuck
from ftoperator.settings import Settings
from test_status import NOW, ftj, job, pod

SETTINGS = Settings(
    image_pull_grace_seconds=300,
    missing_config_grace_seconds=120,
    crash_loop_grace_seconds=60,
    unschedulable_grace_seconds=0,
)


def ago(seconds: float) -> str:
    return st.rfc3339(NOW - dt.timedelta(seconds=seconds))


def creating(started_ago: float, uid: str = "pod-uid") -> dict[str, Any]:
    p = pod(state={"waiting": {"reason": "ContainerCreating"}}, start=ago(started_ago))
    p["metadata"]["uid"] = uid
    return p


MOUNT_EVENT = {
    "reason": "FailedMount",
    "type": "Warning",
    "message": 'MountVolume.SetUp failed for volume "firebase-credentials" : secret "firebase-service-account" not found',
    "lastTimestamp": ago(30),
}


def config_error(started_ago: float) -> dict[str, Any]:
    msg = 'secret "hf" not found'
    return pod(state={"waiting": {"reason": "CreateContainerConfigError", "message": msg}}, start=ago(started_ago))


def crash_looping_init(started_ago: float) -> dict[str, Any]:
    p = pod(state={"waiting": {"reason": "PodInitializing"}}, start=ago(started_ago))
    p["status"]["initContainerStatuses"] = [
        {
            "name": "fetch",
            "restartCount": 4,
            "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}},
            "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}},
        }
    ]
    return p


def unschedulable(message: str, since_ago: float) -> dict[str, Any]:
    p = pod(scheduled=("False", "Unschedulable", message))
    p["status"]["conditions"][0]["lastTransitionTime"] = ago(since_ago)
    return p


CLAIM = '0/1 nodes are available: persistentvolumeclaim "weights" not found. preemption: 0/1 nodes are available'
GPUS = "0/1 nodes are available: 1 Insufficient nvidia.com/gpu. preemption: 0/1 nodes are available"


def derive(pods: list[dict[str, Any]], events: Any = None, settings: Settings = SETTINGS) -> dict[str, Any]:
    return st.derive_status(ftj({"phase": "Pending"}), job(), pods, NOW, settings, events)


CASES = [
    # (pod within its grace period, the same pod after it, events, failure reason, words of the detail)
    (creating(60), creating(200), {"pod-uid": [MOUNT_EVENT]}, "VolumeMountFailed", 'secret "firebase-service-account"'),
    (config_error(60), config_error(200), None, "ContainerConfigError", 'secret "hf" not found'),
    (crash_looping_init(30), crash_looping_init(90), None, "InitContainerCrashLoop", "init container fetch"),
    (
        unschedulable(CLAIM, 60),
        unschedulable(CLAIM, 200),
        None,
        "VolumeClaimMissing",
        'persistentvolumeclaim "weights"',
    ),
]


@pytest.mark.parametrize(("within", "after", "events", "reason", "words"), CASES, ids=[c[3] for c in CASES])
def test_each_stuck_state_fails_with_its_own_reason_after_its_grace_period(within, after, events, reason, words):
    assert reason in REASONS
    pending = derive([within], events)
    assert pending["phase"] == "Pending" and words in pending["message"], pending["message"]
    assert "failing the job in" in pending["message"]
    assert not st.needs_suspend(pending, job())
    failed = derive([after], events)
    assert (failed["phase"], failed["reason"]) == ("Failed", reason), failed["message"]
    assert words in failed["message"] and "grace" in failed["message"]
    assert {c["type"]: c for c in failed["conditions"]}["Failed"]["reason"] == reason
    assert failed["completionTime"] == st.rfc3339(NOW)
    assert st.needs_suspend(failed, job())  # the reconciler suspends the Job: its pods (and GPUs) are released


def test_container_creating_without_mount_events_is_not_stuck():
    """A kubelet shows ContainerCreating while it pulls a large image, too: only FailedMount Events fail a job."""
    patch = derive([creating(3600)], {"pod-uid": [{"reason": "Pulling", "message": "Pulling image"}]})
    assert (patch["phase"], patch["reason"]) == ("Pending", "WaitingForPods")
    assert patch["message"] == "ContainerCreating"


def test_unschedulable_is_reported_and_never_failed_by_default():
    patch = derive([unschedulable(GPUS, 10 * 86400)])
    assert (patch["phase"], patch["reason"]) == ("Pending", "Unschedulable")
    assert "Insufficient nvidia.com/gpu" in patch["message"] and "failing" not in patch["message"]


def test_unschedulable_fails_after_its_grace_period_when_a_setting_asks():
    settings = Settings(unschedulable_grace_seconds=600)
    assert derive([unschedulable(GPUS, 300)], settings=settings)["reason"] == "Unschedulable"
    patch = derive([unschedulable(GPUS, 900)], settings=settings)
    assert (patch["phase"], patch["reason"]) == ("Failed", "UnschedulableTimeout")
    assert "Insufficient nvidia.com/gpu" in patch["message"]


def test_a_zero_grace_period_reports_without_failing():
    settings = Settings(missing_config_grace_seconds=0)
    patch = derive([config_error(10 * 86400)], settings=settings)
    assert (patch["phase"], patch["reason"]) == ("Pending", "WaitingForPods")
    assert "CreateContainerConfigError" in patch["message"]


def test_one_stuck_rank_fails_a_multi_node_job_even_while_another_runs():
    running = pod("Running", index=0, state={"running": {"startedAt": ago(600)}})
    patch = derive([running, config_error(600)])
    assert (patch["phase"], patch["reason"]) == ("Failed", "ContainerConfigError")


def test_the_next_decision_is_when_the_first_grace_period_ends():
    pods = [creating(60), config_error(100)]
    assert stuck.next_decision(pods, {"pod-uid": [MOUNT_EVENT]}, NOW, SETTINGS) == 20.0
    assert stuck.next_decision([creating(60)], {}, NOW, SETTINGS) == float("inf")  # nothing known to be stuck


def test_events_are_read_only_for_pods_still_being_created_after_a_while():
    young, old = creating(2, uid="young"), creating(40, uid="old")
    running = pod("Running", state={"running": {"startedAt": ago(40)}})
    due, soonest = stuck.pods_needing_events([young, old, running], NOW, SETTINGS)
    assert [p["metadata"]["uid"] for p in due] == ["old"]
    assert soonest == stuck.EVENTS_AFTER_SECONDS - 2
    # a grace period shorter than that: read when it ends
    due, soonest = stuck.pods_needing_events([young], NOW, Settings(missing_config_grace_seconds=6))
    assert (due, soonest) == ([], 4.0)
    # mount failures only reported: the Events are never read
    assert stuck.pods_needing_events([old], NOW, Settings(missing_config_grace_seconds=0)) == ([], float("inf"))
