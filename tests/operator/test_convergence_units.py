"""The pure parts of convergence: the status overlay, the retry budget, TTL registration, the peering rule.
No cluster (tests/operator/test_operator_convergence.py runs the same paths against the real control plane)."""

from __future__ import annotations

import datetime as dt

import aiohttp
import pytest
from ftcrd.names import ANN_CANCELLED
from ftoperator.children import Conflict, RetryBudget, describe
from ftoperator.kube import ApiError
from ftoperator.peering import paused
from ftoperator.reconciler import Reconciler, Written, predates
from ftoperator.resync import stall_seconds, stalled
from ftoperator.settings import Settings

NOW = dt.datetime(2026, 11, 26, 12, 0, 0, tzinfo=dt.UTC)


def ftj(rv: str, status: dict, **run_policy: object) -> dict:
    return {
        "metadata": {"name": "j", "namespace": "ns", "uid": "u", "resourceVersion": rv},
        "spec": {"runPolicy": run_policy},
        "status": status,
    }


@pytest.mark.parametrize(
    ("indexed", "written", "older"),
    [("99", "100", True), ("100", "100", False), ("250", "100", False), ("abc", "100", True), ("x", "x", False)],
)
def test_an_indexed_body_predates_a_write_by_resource_version(indexed, written, older):
    assert predates(indexed, written) is older


def test_the_overlay_hides_index_lag_but_never_a_later_change():
    r = Reconciler(Settings())
    r.written["u"] = Written("100", {"phase": "Succeeded", "reason": "Completed"})
    # the index has not seen our write yet: the write counts (no repeat, no second Event)
    assert r.effective_status(ftj("99", {"phase": "Running"}))["phase"] == "Succeeded"
    # the index caught up and someone (or a lost write) put it back: the index is the truth, the sync repairs it
    assert r.effective_status(ftj("101", {"phase": "Running"}))["phase"] == "Running"
    assert "u" not in r.written
    assert r.effective_status(ftj("99", {"phase": "Running"}))["phase"] == "Running"


@pytest.mark.parametrize(
    ("failures", "elapsed", "exhausted"),
    [(1, 0, False), (2, 4, False), (3, 9, True), (2, 50, True), (2, 53, True)],
)
def test_retry_budget_ends_on_attempts_or_on_time(failures, elapsed, exhausted):
    budget = RetryBudget(attempts=3, backoff=2, timeout=50)  # waits 2 s, 4 s
    assert budget.exhausted(failures, elapsed) is exhausted


def test_the_old_defaults_never_reached_their_final_branch():
    """120 s of kopf timeout against 5 s x (1 + ... + 7) = 140 s of waits: the 8th attempt never ran, so the job
    stayed Pending for ever. The budget says so, and the operator's own check ends it at the timeout instead."""
    old = RetryBudget(attempts=8, backoff=5, timeout=120)
    assert not old.retries_fit()
    waited = sum(old.delay(n) for n in range(1, 7))  # 105 s before the 7th attempt
    assert old.exhausted(7, waited + 1)  # the 7th failure ends it: no 8th attempt would start in time


def test_errors_are_described_for_users():
    quota = ApiError(
        403, '{"reason": "Forbidden", "message": "jobs.batch \\"x\\" is forbidden: exceeded quota"}', "POST", "/x"
    )
    assert describe(quota) == '403 Forbidden: jobs.batch "x" is forbidden: exceeded quota'
    assert describe(aiohttp.ClientConnectionError("refused")).startswith("cannot reach the API server: ")
    assert describe(Conflict("Job j keeps conflicting")) == "Job j keeps conflicting"


def test_ttl_is_registered_for_finished_and_cancelled_jobs_only():
    r = Reconciler(Settings())
    done = {"phase": "Succeeded", "completionTime": "2026-11-26T12:00:00Z"}
    r.schedule_ttl(ftj("1", done, ttlSecondsAfterFinished=60), done)
    assert r.ttl_due["u"] == ("ns", "j", NOW.timestamp() + 60)
    cancelled = ftj("2", {}, ttlSecondsAfterFinished=30)
    status = {"phase": "Suspended", "reason": "Cancelled", "completionTime": "2026-11-26T12:00:00Z"}
    r.schedule_ttl(cancelled, status)
    assert "u" not in r.ttl_due  # suspended without the cancel annotation: paused, live, no TTL
    cancelled["metadata"]["annotations"] = {ANN_CANCELLED: "true"}
    r.schedule_ttl(cancelled, status)
    assert r.ttl_due["u"] == ("ns", "j", NOW.timestamp() + 30)
    r.schedule_ttl(cancelled, {"phase": "Running"})  # resumed
    assert "u" not in r.ttl_due


def peer(priority: int, seen_ago: float, lifetime: int = 60) -> dict:
    return {"priority": priority, "lifetime": lifetime, "lastseen": (NOW - dt.timedelta(seconds=seen_ago)).isoformat()}


@pytest.mark.parametrize(
    ("peers", "is_paused"),
    [
        ({"me": peer(10, 0)}, False),
        ({"me": peer(10, 0), "b": peer(5, 0)}, False),  # we outrank b
        ({"me": peer(10, 0), "b": peer(20, 0)}, True),  # b outranks us
        ({"me": peer(10, 0), "b": peer(20, 61)}, False),  # b's heartbeat expired
        ({"me": peer(10, 0), "b": peer(10, 0)}, True),  # same priority: kopf pauses everyone
        ({"me": peer(10, 0), "b": None}, False),  # a withdrawn peer
    ],
)
def test_peering_rule_is_kopfs(peers, is_paused):
    assert paused(peers, "me", 10, NOW) is is_paused


def job_with(status: dict, suspend: bool = False) -> dict:
    return {"metadata": {"name": "j", "uid": "job-uid"}, "spec": {"suspend": suspend}, "status": status}


def pod_in(phase: str) -> dict:
    return {"metadata": {"name": "p"}, "status": {"phase": phase}}


@pytest.mark.parametrize(
    ("job", "pods", "want"),
    [
        (job_with({"failed": 2}), [pod_in("Failed")], True),  # a failed pod and no replacement
        (job_with({}), [], True),  # no pod at all
        (job_with({"active": 1}), [pod_in("Running")], False),
        (job_with({"failed": 1}), [pod_in("Pending")], False),  # the replacement is starting
        (job_with({"terminating": 1}), [pod_in("Failed")], False),
        (job_with({}, suspend=True), [], False),  # Kueue or spec.runPolicy.suspend holds it
        (job_with({"conditions": [{"type": "Complete", "status": "True"}]}), [pod_in("Succeeded")], False),
        (job_with({"conditions": [{"type": "FailureTarget", "status": "True"}]}), [pod_in("Failed")], False),
    ],
)
def test_a_job_without_a_pod_running_or_starting_is_stalled(job: dict, pods: list, want: bool) -> None:
    assert stalled(job, pods) is want


def test_a_stalled_job_is_touched_after_two_resync_rounds_and_never_sooner_than_30s() -> None:
    assert stall_seconds(Settings(resync_seconds=60)) == 120
    assert stall_seconds(Settings(resync_seconds=5)) == 30
