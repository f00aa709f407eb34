"""Kueue's Workloads, followed so a FineTuneJob with ``spec.runPolicy.queueName`` shows why it waits.

Kueue creates one Workload per Job it manages (owned by the Job, all of its pods as one unit) and records its
decisions there: ``QuotaReserved``/``Admitted`` (with the reason it is not admitted yet: insufficient quota,
a missing LocalQueue, ...) and ``Evicted`` (preemption). The index keeps the conditions of every Job-owned
Workload by the Job's key, which is the FineTuneJob's (the Job is named after it), and each event schedules that
FineTuneJob's status sync; :func:`ftoperator.status.queued_phase` turns them into phase ``Queued``.

The selector names no version: kopf watches the cluster's preferred one (v1beta2 in Kueue 0.17; the
conditions are the same in v1beta1). Without Kueue's CRDs nothing is watched and nothing waits for this index.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import kopf

from ftoperator.handlers import RECONCILER, Key, _indexes

GROUP = "kueue.x-k8s.io"
INDEX = "workload_index"


def job_owner(workload: Mapping[str, Any]) -> str | None:
    """Name of the batch/v1 Job that controls ``workload``, or None."""
    for ref in (workload.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("kind") == "Job" and str(ref.get("apiVersion", "")).startswith("batch/") and ref.get("controller"):
            return str(ref.get("name"))
    return None


def slim(workload: Mapping[str, Any]) -> dict[str, Any]:
    """What the status mapping reads: the owner (to match the Job's uid) and the conditions."""
    md = workload.get("metadata") or {}
    status = workload.get("status") or {}
    return {
        "metadata": {k: md.get(k) for k in ("name", "namespace", "uid", "ownerReferences")},
        "status": {"conditions": status.get("conditions") or []},
    }


@kopf.index(GROUP, "workloads", id=INDEX)
async def workload_index(
    *,
    namespace: str | None,
    body: kopf.Body,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    **kwargs: Any,
) -> dict[Key, Any] | None:
    """Also schedules the FineTuneJob's status sync (as the pod index does): an admission, a preemption or a new
    reason to wait changes its phase or message."""
    job = job_owner(body)
    if job is None:
        return None
    key = (namespace or "", job)
    RECONCILER.trigger(*key, indexes=_indexes(kwargs), logger=logger, handler="workload-events")
    return {key: slim(body)}
