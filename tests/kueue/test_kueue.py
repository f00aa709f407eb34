"""FineTuneJobs under real Kueue (the release's controller, CRDs and webhooks; ``ftdev.kueue``): admission within a
ClusterQueue's ``nvidia.com/gpu`` quota, phase ``Queued`` with Kueue's reason while a job waits, the admission time,
preemption by a higher-priority job, and a multi-node job admitted as one workload.

The trainer is ``tests/operator/fake_trainer.py`` held open by a gate file: the test decides when each job finishes,
so what it observes (who runs, who waits) does not depend on how fast the machine is.
"""

from __future__ import annotations

from typing import Any

from tests.support.cluster import wait_for
from tests.support.ftj import wait_phase
from tests.support.kueue import SECOND_NODE, Queues

QUOTA_MESSAGE = "insufficient unused quota for nvidia.com/gpu"


def _queued_for_quota(q: Queues, name: str) -> bool:
    st = q.status(name)
    return st.get("phase") == "Queued" and st.get("reason") == "Queued" and QUOTA_MESSAGE in (st.get("message") or "")


def _snapshot(
    q: Queues, names: list[str], running: int, queued: int, succeeded: int = 0
) -> dict[str, list[str]] | None:
    """The jobs by phase when exactly ``running`` run and ``queued`` wait for quota (and the rest succeeded)."""
    phases = q.by_phase(names)
    ok = (
        len(phases.get("Running", [])) == running
        and len(phases.get("Succeeded", [])) == succeeded
        and len(phases.get("Queued", [])) == queued
        and all(_queued_for_quota(q, n) for n in phases.get("Queued", []))
    )
    return phases if ok else None


def _suspended(job: dict[str, Any]) -> bool:
    return bool(job["spec"].get("suspend"))


def test_quota_admits_two_of_five_and_the_rest_as_gpus_free_up(queues: Queues, running_operator) -> None:
    q = queues.create(gpus=4)
    names = [q.submit(f"q{i}") for i in range(5)]  # 2 GPUs each: two fit in 4

    phases = wait_for(lambda: _snapshot(q, names, running=2, queued=3), 180, 1, "2 Running, 3 Queued (quota)")
    for name in phases["Running"]:
        assert q.status(name)["admissionTime"], name
        assert not _suspended(q.cluster.get_json("job", name, namespace=q.namespace))
    for name in phases["Queued"]:
        st = q.status(name)
        assert "admissionTime" not in st, st
        assert f"(queue {q.local_queue})" in st["message"]
        suspended = next(c for c in st["conditions"] if c["type"] == "Suspended")
        assert (suspended["status"], suspended["reason"]) == ("True", "Queued")
        assert q.pods(name) == [], f"{name} has pods while Kueue holds it"
        assert _suspended(q.cluster.get_json("job", name, namespace=q.namespace))
        assert q.workload(name)["status"]["conditions"], "Kueue made a Workload with its reason"

    # One finishes: exactly one waiting job is admitted into the freed GPUs.
    first, waiting = phases["Running"][0], phases["Queued"]
    q.release(first)
    done = wait_phase(q.cluster, q.namespace, first, "Succeeded", timeout=120)["status"]
    phases = wait_for(lambda: _snapshot(q, names, running=2, queued=2, succeeded=1), 180, 1, "2 Running, 2 Queued")
    (admitted,) = set(phases["Running"]) & set(waiting)
    assert q.status(admitted)["admissionTime"] >= done["completionTime"]

    for name in names:
        q.release(name)
    for name in names:
        st = wait_phase(q.cluster, q.namespace, name, "Succeeded", timeout=240)["status"]
        assert st["admissionTime"] and st["artifact"]["uri"]


def test_higher_priority_job_preempts_and_the_preempted_one_resumes_to_succeeded(
    queues: Queues, running_operator
) -> None:
    q = queues.create(gpus=2, preempt_lower_priority=True)
    low, high = q.priority_classes()
    seen: list[str] = []
    victim = q.submit("low", priority_class=low)
    wait_phase(q.cluster, q.namespace, victim, "Running", timeout=120, seen=seen)
    first_admission = q.status(victim)["admissionTime"]

    boss = q.submit("high", priority_class=high)
    # Kueue evicts the low-priority workload and suspends its Job; the FineTuneJob waits again, saying why.
    st = wait_phase(q.cluster, q.namespace, victim, "Queued", timeout=120, seen=seen)["status"]
    wait_for(lambda: q.status(victim).get("reason") == "Preempted", 60, 0.5, "reason Preempted")
    st = q.status(victim)
    assert "Kueue Preempted" in st["message"], st["message"]
    assert "admissionTime" not in st or st["admissionTime"] == first_admission
    assert _suspended(q.cluster.get_json("job", victim, namespace=q.namespace))
    wait_phase(q.cluster, q.namespace, boss, "Running", timeout=120)
    wait_for(
        lambda: not [p for p in q.pods(victim) if p["status"].get("phase") in ("Pending", "Running")],
        60,
        0.5,
        "the preempted job's pods gone",
    )

    q.release(boss)
    wait_phase(q.cluster, q.namespace, boss, "Succeeded", timeout=120)
    # Re-admitted when the GPUs are free again, and it runs to the end: a preemption is not a failure.
    wait_phase(q.cluster, q.namespace, victim, "Running", timeout=120, seen=seen)
    assert q.status(victim)["admissionTime"] > first_admission
    q.release(victim)
    st = wait_phase(q.cluster, q.namespace, victim, "Succeeded", timeout=120, seen=seen)["status"]
    # (Pending in between: admitted, pods starting.)
    assert [p for p in seen[seen.index("Running") :] if p != "Pending"] == [
        "Running",
        "Queued",
        "Running",
        "Succeeded",
    ], seen
    # The eviction did not count as a failed attempt against backoffLimit.
    job = q.cluster.get_json("job", victim, namespace=q.namespace)
    assert not job["status"].get("failed"), job["status"]


def test_two_node_job_is_admitted_only_when_both_nodes_gpus_fit(queues: Queues, running_operator) -> None:
    q = queues.create(gpus=4)
    small = q.submit("small", gpus=2)
    wait_phase(q.cluster, q.namespace, small, "Running", timeout=120)
    big = q.submit("big", nodes=2, gpus=2)  # 2 pods x 2 GPUs: only with all 4

    wait_for(lambda: _queued_for_quota(q, big), 120, 0.5, "the 2-node job Queued for quota")
    workload = q.workload(big)
    assert [ps["count"] for ps in workload["spec"]["podSets"]] == [2], "one workload with both pods"
    assert q.pods(big) == [], "no pod of a job Kueue has not admitted (all or nothing)"

    q.release(small)
    wait_phase(q.cluster, q.namespace, small, "Succeeded", timeout=120)
    wait_phase(q.cluster, q.namespace, big, "Running", timeout=120)
    running = wait_for(
        lambda: (pods := [p for p in q.pods(big) if p["status"].get("phase") == "Running"]) and len(pods) == 2 and pods,
        60,
        0.5,
        "both pods Running",
    )
    assert {p["spec"]["nodeName"] for p in running} == {"process-node", SECOND_NODE}, "2 GPUs per node: one pod each"
    q.release(big)
    st = wait_phase(q.cluster, q.namespace, big, "Succeeded", timeout=120)["status"]
    assert st["admissionTime"]


def test_suspend_holds_a_queued_job_and_resume_requeues_it(queues: Queues, running_operator) -> None:
    """Kueue un-suspends an admitted Job that anyone else suspends: the operator holds the Workload instead."""
    q = queues.create(gpus=4)
    name = q.submit("pause")
    wait_phase(q.cluster, q.namespace, name, "Running", timeout=120)

    q.cluster.kubectl(
        "patch",
        "finetunejob",
        name,
        "-n",
        q.namespace,
        "--type=merge",
        "-p",
        '{"spec": {"runPolicy": {"suspend": true}}}',
    )
    wait_phase(q.cluster, q.namespace, name, "Suspended", timeout=120)
    assert q.workload(name)["spec"]["active"] is False
    wait_for(
        lambda: (
            _suspended(q.cluster.get_json("job", name, namespace=q.namespace))
            and not [p for p in q.pods(name) if p["status"].get("phase") in ("Pending", "Running")]
        ),
        60,
        0.5,
        "Job suspended by Kueue and its pods gone",
    )
    # It stays held: Kueue does not re-admit an inactive Workload.
    assert q.status(name)["phase"] == "Suspended"
    assert _suspended(q.cluster.get_json("job", name, namespace=q.namespace))

    q.cluster.kubectl(
        "patch",
        "finetunejob",
        name,
        "-n",
        q.namespace,
        "--type=merge",
        "-p",
        '{"spec": {"runPolicy": {"suspend": false}}}',
    )
    wait_phase(q.cluster, q.namespace, name, "Running", timeout=120)
    assert q.workload(name)["spec"]["active"] is True
    q.release(name)
    wait_phase(q.cluster, q.namespace, name, "Succeeded", timeout=120)
