"""ttlSecondsAfterFinished: a background sweep that deletes finished and cancelled FineTuneJobs when due.

Entries are registered by status syncs (:meth:`Reconciler.schedule_ttl`, on the replica that acts); the uid
precondition makes a stale entry harmless (a re-created job of the same name is never deleted). A sweep, not
a per-object kopf timer: timers would put a finalizer on every FineTuneJob.
"""

from __future__ import annotations

import asyncio
import logging
import time

from ftcrd.names import API_VERSION, KIND

from ftoperator import metrics
from ftoperator.kube import ApiError
from ftoperator.reconciler import Reconciler

log = logging.getLogger("ftoperator.ttl")


async def sweep(reconciler: Reconciler, now: float | None = None) -> int:
    """Delete the FineTuneJobs whose completionTime + ttlSecondsAfterFinished has passed; returns how many."""
    kube = reconciler.kube
    assert kube is not None
    now = time.time() if now is None else now
    deleted = 0
    for uid, (namespace, name, due) in list(reconciler.ttl_due.items()):
        if due > now:
            continue
        try:
            await kube.delete(API_VERSION, KIND, namespace, name, uid=uid)
            metrics.TTL_DELETIONS.inc()
            deleted += 1
            log.info("deleted finished FineTuneJob %s/%s (ttlSecondsAfterFinished)", namespace, name)
        except ApiError as exc:
            if exc.status not in (404, 409):
                metrics.ERRORS.labels("ttl").inc()
                log.warning("TTL deletion of %s/%s failed: %s", namespace, name, exc)
                continue
        reconciler.ttl_due.pop(uid, None)
    return deleted


async def sweeper(reconciler: Reconciler, every: float) -> None:
    while True:
        await asyncio.sleep(every)
        try:
            await sweep(reconciler)
        except asyncio.CancelledError:
            raise
        except Exception:
            metrics.ERRORS.labels("ttl").inc()
            log.exception("TTL sweep failed")
