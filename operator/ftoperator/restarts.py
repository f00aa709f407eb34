"""Restarting every trainer pod together: the gang restart of a multi-node job and the progress watchdog.

An Indexed Job replaces only the pod that failed; the other ranks of a torchrun job then wait for a peer that
never comes back. So a multi-node Job never retries a single rank (its ``backoffLimit`` is 0, disruptions fail
it too, ftoperator.builders): when a rank fails, the Job fails, the Job controller stops the other ranks, and
the operator replaces the whole Job. The **progress watchdog** does the same for a job of any size whose
``status.progress.updatedAt`` has not advanced for ``spec.runPolicy.progressDeadlineSeconds`` while it loads,
trains or evaluates (a hung collective, a deadlocked loader). Either way the new pods resume from the last
complete checkpoint on the job's durable storage (docs/operations.md, "Checkpoints and resume").

A restart counts against ``spec.runPolicy.backoffLimit`` (a disrupted pod's does not): the failures counted by
replaced Jobs are kept in ``status.countedFailures``, and the next Job's own ``backoffLimit`` is what is left.
When nothing is left the job fails as the Job controller would have failed it (a rank's failure) or with
``ProgressDeadlineExceeded`` (the watchdog), and its pods are stopped.

Exactly once, without duplicates: the decision is written to the status first (``status.restarts``,
``status.lastRestart`` with the uid of the Job being replaced), under the reconciler's per-job lock; the old Job
is deleted with a uid precondition and ``propagationPolicy: Foreground`` (it disappears only after its pods are
gone); only when the index has no Job left is the new one created, under the same deterministic name (the
apiserver admits one). Any step lost to an operator restart is taken again from the status.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import math
from collections.abc import Mapping, Sequence
from typing import Any

from ftcrd import conditions as C
from ftcrd.conditions import ExitCode
from ftcrd.conditions import Reason as R
from ftcrd.objects import get

from ftoperator import metrics
from ftoperator import status as st
from ftoperator.children import Workloads
from ftoperator.kube import ApiError
from ftoperator.objects import condition, is_active, is_true, parse_time, rfc3339, short
from ftoperator.reconciler import Logger, Observed, Reconciler
from ftoperator.snapshots import Key, uid_of

RESTART_REASONS = frozenset({R.GANG_RESTART, R.PROGRESS_DEADLINE_EXCEEDED})
WATCHED_STAGES = frozenset({"loading", "training", "evaluating"})
"""Stages the watchdog follows; exporting and uploading have their own timeouts and retries."""


@dataclasses.dataclass(frozen=True)
class Restart:
    """What to do with a job whose Job must go: restart every pod, or (``final``) fail."""

    reason: str
    message: str
    counted: bool
    failures: int
    """Failures counted against backoffLimit once this one is (carried to the next Job)."""
    final: bool = False


# ---------------------------------------------------------------------------------------------- pure


def disrupted(pod: Mapping[str, Any]) -> bool:
    """Preempted, evicted or drained (the DisruptionTarget condition): not the trainer's fault."""
    return is_true(pod, "DisruptionTarget")


def _failed(pods: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [p for p in pods if get(p, "status", "phase") == "Failed" or (st.terminated(p) or {}).get("exitCode")]


def _detail(pod: Mapping[str, Any]) -> str:
    term = st.terminated(pod) or {}
    message = st.termination_message(pod)
    said = f": {message.reason}: {message.message}" if message is not None and message.reason else ""
    code = term.get("exitCode")
    how = f"exit code {code}" if code is not None else str(get(pod, "status", "reason") or "failed")
    if disrupted(pod):
        how = "disrupted (" + str((condition(pod, "DisruptionTarget") or {}).get("reason") or "preempted") + ")"
    return short(f"rank {st.pod_index(pod)} (pod {get(pod, 'metadata', 'name')}) {how}{said}", 600)


def backoff_limit(ftj: Mapping[str, Any]) -> int:
    return int(get(ftj, "spec", "runPolicy", "backoffLimit") or 0)


def gang_restart(
    ftj: Mapping[str, Any], status: Mapping[str, Any], job: Mapping[str, Any] | None, pods: Any
) -> Restart | None:
    """A multi-node Job that failed for a reason a restart may cure, with backoffLimit left: restart every rank.
    None: not a gang job, not failed, not curable (invalid input, the deadline), or nothing left (the status
    mapping then reports the failure)."""
    if job is None or int(get(job, "spec", "parallelism") or 1) <= 1:
        return None
    if not (is_true(job, "Failed") or is_true(job, "FailureTarget")):
        return None
    failed = _failed(pods)
    if any((st.terminated(p) or {}).get("exitCode") == ExitCode.INVALID_INPUT for p in failed):
        return None
    cond = condition(job, "Failed") if is_true(job, "Failed") else condition(job, "FailureTarget")
    if (cond or {}).get("reason") == st.JOB_DEADLINE_EXCEEDED:  # the deadline is the whole job's: final
        return None
    # the rank that failed first (the others were stopped after it)
    first = sorted(failed, key=lambda p: str((st.terminated(p) or {}).get("finishedAt") or "~"))[:1]
    counted = not any(disrupted(p) for p in failed)
    failures = int(status.get("countedFailures") or 0) + int(counted)
    if counted and failures > backoff_limit(ftj):
        return None
    # a deleted pod may already be gone from the API: then the Job's own words
    what = _detail(first[0]) if first else short(f"a rank failed ({(cond or {}).get('message') or 'no detail'})", 600)
    limit = backoff_limit(ftj)
    return Restart(
        R.GANG_RESTART,
        f"{what}; restarting every rank from the last checkpoint ({failures}/{limit} failures counted)",
        counted,
        failures,
    )


def attempt_started(pods: Sequence[Mapping[str, Any]]) -> dt.datetime | None:
    """When every rank of the current attempt was running: the latest trainer start among the active pods."""
    starts = [parse_time(get(st.trainer_status(p), "state", "running", "startedAt")) for p in pods if is_active(p)]
    if not starts or any(s is None for s in starts):
        return None
    return max(s for s in starts if s is not None)


def watchdog(
    ftj: Mapping[str, Any],
    status: Mapping[str, Any],
    job: Mapping[str, Any] | None,
    pods: Sequence[Mapping[str, Any]],
    now: dt.datetime,
) -> tuple[Restart | None, float]:
    """(the restart or final failure due, seconds until the watchdog should look again; inf: not armed).

    Armed once the running attempt has reported progress (its first report is the loading stage), so a trainer
    that cannot report (no RBAC for its ServiceAccount) is never restarted for it; the deadline counts from the
    last report."""
    deadline = int(get(ftj, "spec", "runPolicy", "progressDeadlineSeconds") or 0)
    if deadline <= 0 or job is None or status.get("phase") != "Running":
        return None, math.inf
    if get(job, "spec", "suspend") or any(is_true(job, c) for c in ("Failed", "FailureTarget", "Complete")):
        return None, math.inf
    progress = status.get("progress") or {}
    reported = parse_time(progress.get("updatedAt"))
    started = attempt_started(pods)
    if reported is None or started is None or progress.get("stage") not in WATCHED_STAGES:
        return None, math.inf
    if reported < started.replace(microsecond=0):
        return None, math.inf  # an earlier attempt's report
    due = (reported - now).total_seconds() + deadline
    if due > 0:
        return None, due
    failures = int(status.get("countedFailures") or 0) + len([p for p in _failed(pods) if not disrupted(p)]) + 1
    limit = backoff_limit(ftj)
    stage, step = progress.get("stage"), progress.get("step")
    what = f"no progress for {deadline}s (spec.runPolicy.progressDeadlineSeconds) at step {step} ({stage})"
    if failures > limit:
        return Restart(R.PROGRESS_DEADLINE_EXCEEDED, f"{what}; backoffLimit {limit} used up", True, failures, True), 0
    message = f"{what}; restarting every pod from the last checkpoint ({failures}/{limit} failures counted)"
    return Restart(R.PROGRESS_DEADLINE_EXCEEDED, message, True, failures), 0


def restart_patch(
    status: Mapping[str, Any], decision: Restart, job: Mapping[str, Any], now: dt.datetime
) -> dict[str, Any]:
    """The status that records ``decision`` before anything is done about it."""
    existing = status.get("conditions") or []
    if decision.final:
        phase = "Failed"
        patch: dict[str, Any] = {"completionTime": rfc3339(now)}
    else:
        phase = "Pending"
        restarts = int(status.get("restarts") or 0) + 1
        patch = {
            "restarts": restarts,
            "lastRestart": {
                "reason": decision.reason,
                "message": decision.message,
                "time": rfc3339(now),
                "jobUid": uid_of(job),
                "counted": decision.counted,
            },
        }
    patch.update(
        phase=phase,
        reason=decision.reason,
        message=short(decision.message),
        countedFailures=decision.failures,
        conditions=[
            st.set_condition(existing, ctype, value, decision.reason, decision.message, now)
            for ctype, value in (
                (C.CREATED, True),
                (C.SCHEDULED, False),
                (C.RUNNING, False),
                (C.SUSPENDED, False),
                (C.SUCCEEDED, False),
                (C.FAILED, decision.final),
            )
        ],
    )
    return patch


def replacing(status: Mapping[str, Any], job: Mapping[str, Any] | None) -> bool:
    """The Job is the one a recorded restart replaces (its deletion may have been lost)."""
    return job is not None and get(status, "lastRestart", "jobUid") == uid_of(job)


def awaiting_job(status: Mapping[str, Any], job: Mapping[str, Any] | None) -> bool:
    """A restart removed the Job and the next one is still to be created."""
    return job is None and status.get("phase") == "Pending" and status.get("reason") in RESTART_REASONS


# ---------------------------------------------------------------------------------------------- acting


class Restarter:
    """Carries the decisions out; called by the reconciler under its per-job lock (``Reconciler.restarter``)."""

    def __init__(self, reconciler: Reconciler, workloads: Workloads) -> None:
        self.reconciler = reconciler
        self.workloads = workloads
        self.tasks: dict[str, asyncio.Task[None]] = {}

    async def step(self, seen: Observed, logger: Logger) -> tuple[bool, float]:
        """(whether this took the sync over, seconds until the watchdog looks again)."""
        key, ftj, status, job, pods, now = seen.key, seen.ftj, seen.status, seen.job, seen.pods, seen.now
        if replacing(status, job):
            assert job is not None
            if not get(job, "metadata", "deletionTimestamp"):
                await self._delete(job, logger)
            return True, math.inf
        if awaiting_job(status, job):
            self._create(key, ftj, logger)
            return True, math.inf
        decision = gang_restart(ftj, status, job, pods)
        wake = math.inf
        if decision is None:
            decision, wake = watchdog(ftj, status, job, pods, now)
        if decision is None or job is None:
            return False, wake
        await self.reconciler.write_status(ftj, restart_patch(status, decision, job, now), logger)
        if decision.final:
            await self.reconciler.suspend_job(ftj, job, logger)  # no pod keeps its GPUs
            return True, math.inf
        metrics.REPAIRS.labels("restart").inc()
        logger.warning("restarting every trainer pod (%s): %s", decision.reason, decision.message)
        await self._delete(job, logger)
        return True, math.inf

    async def _delete(self, job: Mapping[str, Any], logger: Logger) -> None:
        """Delete the replaced Job (uid precondition: never a newer one); Foreground: gone only with its pods."""
        kube = self.reconciler.kube
        assert kube is not None
        md = job["metadata"]
        try:
            await kube.delete("batch/v1", "Job", md["namespace"], md["name"], uid=md["uid"], propagation="Foreground")
        except ApiError as exc:
            if exc.status not in (404, 409):  # gone already, or already another Job (the precondition)
                raise
            logger.info("Job %s (uid %s) already gone: %s", md["name"], md["uid"], exc.status)

    def _create(self, key: Key, ftj: Mapping[str, Any], logger: Logger) -> None:
        """The next Job, outside the reconciler's lock (creation may write a status, which takes it)."""
        uid = uid_of(ftj)
        if uid in self.tasks or self.workloads.busy(uid):
            return

        async def create() -> None:
            try:
                delay = await self.workloads.ensure(ftj, logger, "restart")
            finally:
                self.tasks.pop(uid, None)
            if delay is not None:
                self.reconciler.wake_after(key, delay, logger)

        self.tasks[uid] = asyncio.get_running_loop().create_task(create())
