"""The periodic resync: every FineTuneJob this replica follows, recomputed and repaired, whatever was missed.

Watch events drive the reconciler; this loop makes it converge even when an event, a write or a handler's
retries were lost. Every ``resync_seconds`` (on the replica that acts, see :mod:`ftoperator.peering`) it
walks the FineTuneJob index and, for each job:

* finished: re-registers its TTL and re-applies the Job suspension its failure needs;
* live, with its Job: recomputes the status from the Job, pods and Events and writes what differs (a lost
  final status is written again), and re-applies spec.runPolicy.suspend to the Job;
* live, without a Job in two rounds running (deleted, or its creation gave up without a status), with no
  creation attempt running or scheduled and no pod of a deleted Job still there: runs the same attempt as
  ``create-workload`` (the Job is created again, or the job fails with ``ChildCreateFailed`` when the retry
  budget runs out).

A live job's Job that has stalled for ``stall_seconds`` (not finished, not suspended, no pod running or starting:
the Job controller missed a requeue, e.g. its pod creation was refused while a restarted apiserver's RBAC cache
was cold, and waits for an event that never comes) is touched (annotation ``ANN_JOB_NUDGED``), which makes the Job
controller sync it again; a Job that is only in its pod-failure backoff just computes its remaining delay again.

It also re-checks the trainer identity of every namespace with live jobs, so a deleted ServiceAccount, Role or
RoleBinding is created again without an operator restart.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from ftcrd.conditions import Reason as R
from ftcrd.names import ANN_JOB_NUDGED
from ftcrd.types import TERMINAL_PHASES

from ftoperator import metrics, peering
from ftoperator.children import Workloads, describe
from ftoperator.reconciler import Reconciler
from ftoperator.settings import Settings
from ftoperator.snapshots import Key, first, ftj_logger, uid_of

log = logging.getLogger("ftoperator.resync")
CONCURRENCY = 8
JOB_DONE = ("Complete", "Failed", "SuccessCriteriaMet", "FailureTarget")


def stalled(job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]) -> bool:
    """The Job should have a pod running or starting and has none: not finished, not suspended, nothing active or
    terminating, every pod of it finished."""
    st = job.get("status") or {}
    if (job.get("spec") or {}).get("suspend") or st.get("active") or st.get("terminating"):
        return False
    if any(c.get("type") in JOB_DONE and c.get("status") == "True" for c in st.get("conditions") or []):
        return False
    return all((p.get("status") or {}).get("phase") in ("Succeeded", "Failed") for p in pods)


def stall_seconds(settings: Settings) -> float:
    """How long a Job may stay stalled before it is touched: two resync rounds, at least 30 s."""
    return max(30.0, 2 * settings.resync_seconds)


class Resync:
    def __init__(self, reconciler: Reconciler, workloads: Workloads, settings: Settings) -> None:
        self.reconciler = reconciler
        self.workloads = workloads
        self.settings = settings
        self.missing: set[str] = set()  # FineTuneJob uids without a Job in the previous round
        self.stalled: dict[str, float] = {}  # Job uid -> since when (monotonic) it has been seen stalled
        self.seen_jobs: set[str] = set()  # the Jobs of live jobs in the current round
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the loop (once; not at all when resync_seconds is 0)."""
        if self.task is None and self.settings.resync_seconds > 0:
            self.task = asyncio.create_task(self.run())

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.settings.resync_seconds)
            try:
                assert self.reconciler.kube is not None
                if await peering.acting(self.reconciler.kube, self.settings):
                    await self.round()
                    metrics.RESYNC_ROUNDS.inc()
            except asyncio.CancelledError:
                raise
            except Exception:
                metrics.ERRORS.labels("resync").inc()
                log.exception("resync round failed")

    async def round(self) -> None:
        """One pass over every FineTuneJob in the index."""
        index = self.reconciler.indexes.get("ftj_index")
        if index is None:
            return
        jobs = [(key, first(index.get(key))) for key in list(index)]
        missing: set[str] = set()
        namespaces: set[str] = set()
        slots = asyncio.Semaphore(CONCURRENCY)

        async def one(key: Key, ftj: Mapping[str, Any]) -> None:
            async with slots:
                try:
                    await self._one(key, ftj, missing, namespaces)
                except Exception as exc:
                    ftj_logger(ftj).warning("resync failed: %s", describe(exc))

        self.seen_jobs = set()
        await asyncio.gather(*(one(key, ftj) for key, ftj in jobs if ftj is not None))
        self.missing = missing
        self.stalled = {uid: since for uid, since in self.stalled.items() if uid in self.seen_jobs}
        for namespace in sorted(namespaces):
            try:
                made = await self.workloads.recheck_identity(namespace)
            except Exception as exc:
                metrics.ERRORS.labels("resync").inc()
                log.warning("cannot check the trainer identity of namespace %s: %s", namespace, describe(exc))
                continue
            if made:
                metrics.REPAIRS.labels("identity").inc()
                log.warning("re-created %d missing object(s) of the trainer identity of namespace %s", made, namespace)

    async def _one(self, key: Key, ftj: Mapping[str, Any], missing: set[str], namespaces: set[str]) -> None:
        if (ftj.get("metadata") or {}).get("deletionTimestamp"):
            return
        uid = uid_of(ftj)
        logger = ftj_logger(ftj)
        status = self.reconciler.effective_status(ftj)
        job = self.reconciler.job_of(key, uid)
        if status.get("phase") in TERMINAL_PHASES:
            if await self.reconciler.sync(*key, logger=logger, handler="resync", ftj=ftj, job=job):
                metrics.REPAIRS.labels("suspend").inc()
            return
        if not (ftj.get("spec") or {}).get("serviceAccountName"):
            namespaces.add(key[0])
        if job is None:
            if self.workloads.busy(uid):
                return
            if status.get("reason") == R.WAITING_FOR_MODEL:  # not lost: waiting for its model source
                await self.workloads.ensure(ftj, logger, "resync")
                return
            if left := self.reconciler.pods_left(key):
                # A Job deleted in the background leaves its pods terminating for a while. A Job of the same name
                # now would start a second pod of a rank beside the old one, and the Job controller (which keys
                # Jobs by name) could take the old Job for the new one and never release the old pods' tracking
                # finalizer. Two rounds after the last of them is gone, the Job is created again.
                logger.info("the Job is gone but %d of its pods are not yet: waiting for them", len(left))
                return
            if uid not in self.missing:
                missing.add(uid)  # acted on if still missing in the next round (the index may lag a creation)
                return
            logger.warning("no Job found for two resync rounds: creating the workload again")
            metrics.REPAIRS.labels("job").inc()
            await self.workloads.ensure(ftj, logger, "resync")
            return
        if await self.reconciler.sync(*key, logger=logger, handler="resync", ftj=ftj, job=job):
            metrics.REPAIRS.labels("status").inc()
        if await self.workloads.reconcile_suspend(ftj, job, logger):
            metrics.REPAIRS.labels("suspend").inc()
        if await self._nudge_if_stalled(key, job, logger):
            metrics.REPAIRS.labels("job-nudge").inc()

    async def _nudge_if_stalled(self, key: Key, job: Mapping[str, Any], logger: Any) -> bool:
        job_uid = uid_of(job)
        self.seen_jobs.add(job_uid)
        if not stalled(job, self.reconciler.pods_of(key, job_uid)):
            self.stalled.pop(job_uid, None)
            return False
        now = time.monotonic()
        since = self.stalled.setdefault(job_uid, now)
        if now - since < stall_seconds(self.settings):
            return False
        self.stalled[job_uid] = now  # at most once per stall_seconds
        assert self.reconciler.kube is not None
        at = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        patch = {"metadata": {"annotations": {ANN_JOB_NUDGED: at}}}
        await self.reconciler.kube.merge_patch("batch/v1", "Job", key[0], job["metadata"]["name"], patch)
        logger.warning("the Job has had no pod running or starting for %.0fs: touched it", now - since)
        return True
