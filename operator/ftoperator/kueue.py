"""Kueue's Workloads: why a FineTuneJob with ``spec.runPolicy.queueName`` waits, and how it is paused.

Kueue creates one Workload per Job it manages (owned by the Job; all of its pods as one pod set) and records its
decisions there: ``QuotaReserved``/``Admitted`` with the reason it is not admitted yet (insufficient quota, a
missing LocalQueue, ...) and ``Evicted`` (preemption). The operator indexes every Job-owned Workload by its Job's
key, which is the FineTuneJob's (the Job is named after it; ``workload_index`` in handlers.py), and
:func:`queued_phase` turns the conditions into phase ``Queued`` (for :func:`ftoperator.status.derive_status`).

Kueue owns a managed Job's ``spec.suspend``: it un-suspends an admitted Job that anyone else suspends. So the
operator holds a queued job (``spec.runPolicy.suspend``, the API's pause and cancel, a failure that must free the
GPUs) by deactivating its Workload (``spec.active: false``), which makes Kueue evict it and suspend the Job, and
resumes it by activating the Workload again (Kueue re-queues it).

The index's selector names no version: kopf watches the cluster's preferred one (v1beta2 in Kueue 0.17; the
fields read here are the same in v1beta1). Without Kueue's CRDs nothing is watched.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ftcrd import names
from ftcrd.conditions import Reason as R
from ftcrd.objects import get
from ftcrd.types import PHASE_FAILED, PHASE_PENDING, PHASE_QUEUED

from ftoperator.objects import condition, short

GROUP = names.KUEUE_GROUP
PLURAL = names.KUEUE_WORKLOADS
INDEX = "workload_index"


def job_owner(workload: Mapping[str, Any]) -> str | None:
    """Name of the batch/v1 Job that controls ``workload``, or None."""
    for ref in (workload.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("kind") == "Job" and str(ref.get("apiVersion", "")).startswith("batch/") and ref.get("controller"):
            return str(ref.get("name"))
    return None


def slim(workload: Mapping[str, Any]) -> dict[str, Any]:
    """What the operator reads: where it is (to patch it), its owner (to match the Job's uid), whether it is
    active, and the conditions."""
    md = workload.get("metadata") or {}
    return {
        "apiVersion": workload.get("apiVersion"),
        "metadata": {k: md.get(k) for k in ("name", "namespace", "uid", "ownerReferences")},
        "spec": {"active": (workload.get("spec") or {}).get("active", True)},
        "status": {"conditions": (workload.get("status") or {}).get("conditions") or []},
    }


def wanted_active(ftj: Mapping[str, Any], phase: str | None) -> bool:
    """Whether the Workload should compete for quota: not while the user holds the job, nor after the operator
    failed it (its GPUs go back to the queue)."""
    suspend = bool(((ftj.get("spec") or {}).get("runPolicy") or {}).get("suspend"))
    return not suspend and phase != PHASE_FAILED


def needs_activation_change(ftj: Mapping[str, Any], workload: Mapping[str, Any] | None, phase: str | None) -> bool:
    if workload is None or not ((ftj.get("spec") or {}).get("runPolicy") or {}).get("queueName"):
        return False
    return bool((workload.get("spec") or {}).get("active", True)) != wanted_active(ftj, phase)


def activation_patch(workload: Mapping[str, Any], active: bool) -> tuple[str, dict[str, Any]]:
    """(API path, merge patch) that sets ``spec.active`` of ``workload``."""
    md = workload["metadata"]
    path = (
        f"/apis/{workload.get('apiVersion') or GROUP + '/v1beta2'}/namespaces/{md['namespace']}/{PLURAL}/{md['name']}"
    )
    return path, {"spec": {"active": active}}


# ---------------------------------------------------------------------------------------------
# status (pure): what the Workload's conditions say about the FineTuneJob
# ---------------------------------------------------------------------------------------------


def _after(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> bool:
    """Condition ``a`` changed no earlier than ``b`` (RFC 3339 seconds compare as strings)."""
    return str((a or {}).get("lastTransitionTime") or "") >= str((b or {}).get("lastTransitionTime") or "")


def admission_time(workload: Mapping[str, Any] | None) -> str | None:
    """When Kueue last admitted the workload (its Admitted condition turned True), or None while it is not."""
    admitted = condition(workload, names.KUEUE_ADMITTED)
    if not admitted or admitted.get("status") != "True":
        return None
    return str(admitted.get("lastTransitionTime") or "") or None


def queued_phase(ftj: Mapping[str, Any], workload: Mapping[str, Any] | None) -> tuple[str, str, str]:
    """(phase, reason, message) of a Job Kueue holds: Kueue's own reason and message, the queue named. A preempted
    job says so until it is admitted again, and what it waits for now."""
    queue = get(ftj, "spec", "runPolicy", "queueName")
    if workload is None:
        return PHASE_QUEUED, R.QUEUED, f"waiting for Kueue to create the job's Workload (queue {queue})"
    evicted = condition(workload, names.KUEUE_EVICTED)
    evicted = evicted if evicted and evicted.get("status") == "True" else None
    admitted = condition(workload, names.KUEUE_ADMITTED)
    reserved = condition(workload, names.KUEUE_QUOTA_RESERVED)
    waiting = reserved if reserved and reserved.get("status") == "False" else None
    if admission_time(workload) and (evicted is None or _after(admitted, evicted)):
        return PHASE_PENDING, R.ADMITTED, f"Kueue admitted the job (queue {queue}); waiting for the Job to start"
    now = f"{waiting.get('reason') or 'Pending'}: {waiting.get('message') or ''}" if waiting else ""
    if evicted is not None:
        why = str(evicted.get("reason") or R.EVICTED)
        text = f"Kueue {why}: {evicted.get('message') or ''}" + (f"; now {now}" if now else "")
        return (
            PHASE_QUEUED,
            R.PREEMPTED if why == names.KUEUE_PREEMPTED else R.EVICTED,
            short(f"{text} (queue {queue})"),
        )
    if waiting is not None:
        reason = R.INADMISSIBLE if waiting.get("reason") == names.KUEUE_INADMISSIBLE else R.QUEUED
        return PHASE_QUEUED, reason, short(f"Kueue {now} (queue {queue})")
    return PHASE_QUEUED, R.QUEUED, f"waiting for Kueue to admit the job (queue {queue})"
