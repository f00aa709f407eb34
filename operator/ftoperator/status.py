"""Pure status mapping: (FineTuneJob, its Job, its pods, now) -> the FineTuneJob status patch.

No API calls and no clock: the handlers pass ``now``. The result contains only operator-owned
fields (phase, reason, message, conditions, times, attempts, jobName, observedGeneration) plus, when the
job succeeds, the final artifact/metrics/progress copied from the trainer's termination message. Progress,
metrics and checkpoints written by the trainer while it runs are never touched otherwise.

Succeeded and Failed are final: once set, :func:`derive_status` returns ``{}``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from ftcrd import conditions as C
from ftcrd.conditions import TRAINER_REASONS, ExitCode
from ftcrd.conditions import Reason as R
from ftcrd.names import ANN_CANCELLED, ANN_COMPLETION_INDEX, CONTAINER
from ftcrd.objects import get as _get
from ftcrd.termination import FAILED, TerminationMessage
from ftcrd.types import PHASE_QUEUED, PHASE_UPLOADING, STAGE_UPLOADING, TERMINAL_PHASES

from ftoperator import kueue
from ftoperator.objects import condition as _cond
from ftoperator.objects import created as _created
from ftoperator.objects import is_active as _is_active
from ftoperator.objects import is_true as _true
from ftoperator.objects import parse_time, rfc3339
from ftoperator.objects import short as _short
from ftoperator.settings import Settings
from ftoperator.stuck import PodEvents, stuck_verdict

JOB_DEADLINE_EXCEEDED = "DeadlineExceeded"
"""The Job controller's Failed reason when activeDeadlineSeconds elapsed (Kubernetes' word, not ours)."""
CONDITION_TYPES = (C.CREATED, C.SCHEDULED, C.RUNNING, C.SUSPENDED, C.SUCCEEDED, C.FAILED)

# Status keys the operator owns (and compares when deciding whether to patch).
OPERATOR_KEYS = (
    "phase",
    "reason",
    "message",
    "conditions",
    "startTime",
    "completionTime",
    "attempts",
    "jobName",
    "observedGeneration",
    "admissionTime",
)


# ---------------------------------------------------------------------------------------------
# pods
# ---------------------------------------------------------------------------------------------


def pod_index(pod: Mapping[str, Any]) -> int:
    raw = (_get(pod, "metadata", "annotations") or {}).get(ANN_COMPLETION_INDEX)
    if raw is None:
        raw = (_get(pod, "metadata", "labels") or {}).get(ANN_COMPLETION_INDEX, "0")
    try:
        return int(raw)
    except (TypeError, ValueError):
        return 0


def trainer_status(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    statuses = _get(pod, "status", "containerStatuses") or []
    for cs in statuses:
        if cs.get("name") == CONTAINER:
            return cs
    return statuses[0] if statuses else {}


def terminated(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    return _get(trainer_status(pod), "state", "terminated")


def termination_message(pod: Mapping[str, Any]) -> TerminationMessage | None:
    """The trainer's termination message, or None (absent, a log tail instead of JSON, or not the contract's)."""
    msg = _get(terminated(pod), "message")
    return TerminationMessage.parse(msg) if isinstance(msg, str) else None


def _failed_pods(pods: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    failed = [p for p in pods if _get(p, "status", "phase") == "Failed" or (terminated(p) or {}).get("exitCode")]
    return sorted(failed, key=_created)


def _failure_detail(pod: Mapping[str, Any]) -> tuple[str | None, str]:
    """(reason from the trainer or the kubelet, human message) of a failed pod."""
    term = terminated(pod) or {}
    code = term.get("exitCode")
    if term.get("reason") == "OOMKilled" or _get(pod, "status", "reason") == "OOMKilled":
        return R.OOM_KILLED, f"container {CONTAINER} was OOMKilled (exit code {code})"
    parsed = termination_message(pod)
    if parsed is not None and parsed.status == FAILED:
        reason, message = parsed.reason, parsed.message or ""
        # the trainer's reason (ftcrd.conditions.TRAINER_REASONS) is reported as it is, never replaced
        return reason, _short(f"{reason}: {message}" if reason else message)
    tail = _short(str(term.get("message") or ""), 600)
    if code is None:
        pod_msg = _get(pod, "status", "message") or _get(pod, "status", "reason") or "pod failed"
        return None, _short(str(pod_msg))
    return None, f"trainer exit code {code}" + (f": {tail}" if tail else "")


# ---------------------------------------------------------------------------------------------
# conditions
# ---------------------------------------------------------------------------------------------


def set_condition(  # noqa: PLR0917
    existing: Sequence[Mapping[str, Any]] | None,
    ctype: str,
    status: bool,
    reason: str,
    message: str,
    now: dt.datetime,
    generation: int | None = None,
) -> dict[str, Any]:
    """A metav1.Condition; lastTransitionTime kept when the status did not change (meta.SetStatusCondition)."""
    value = "True" if status else "False"
    old = next((c for c in existing or [] if c.get("type") == ctype), None)
    ltt = old.get("lastTransitionTime") if old and old.get("status") == value else None
    cond: dict[str, Any] = {
        "type": ctype,
        "status": value,
        "reason": reason,
        "message": _short(message),
        "lastTransitionTime": ltt or rfc3339(now),
    }
    if generation is not None:
        cond["observedGeneration"] = generation
    return cond


# ---------------------------------------------------------------------------------------------
# the mapping
# ---------------------------------------------------------------------------------------------


def _phase_from_pods(  # noqa: PLR0917
    job: Mapping[str, Any],
    pods: Sequence[Mapping[str, Any]],
    ftj_status: Mapping[str, Any],
    now: dt.datetime,
    settings: Settings,
    events: PodEvents | None = None,
) -> tuple[str, str, str]:
    """(phase, reason, message) of a Job that is neither finished nor suspended."""
    active = [p for p in pods if _is_active(p)]
    failed = _failed_pods(pods)
    # Pods waiting for something that may never come: after the grace period the job fails (and the caller
    # suspends the Job, so no pod keeps GPUs reserved).
    verdict = stuck_verdict(active, events or {}, now, settings)
    if verdict is not None:
        return verdict
    running = [p for p in active if _get(trainer_status(p), "state", "running") is not None]
    if running:
        stage = _get(ftj_status, "progress", "stage")
        if stage == STAGE_UPLOADING:
            return PHASE_UPLOADING, R.UPLOADING, "Training finished; the trainer is uploading the model."
        summary = _get(ftj_status, "progress", "summary")
        nodes = int(_get(job, "spec", "parallelism") or 1)
        msg = f"{len(running)}/{nodes} trainer pods running"
        return "Running", R.TRAINING, msg + (f"; progress {summary}" if summary else "")
    for pod in sorted(active, key=_created):
        sched = _cond(pod, "PodScheduled")
        if sched and sched.get("status") == "False":
            return "Pending", R.UNSCHEDULABLE, _short(f"{sched.get('reason')}: {sched.get('message') or ''}")
    for pod in sorted(active, key=_created):
        waiting = _get(trainer_status(pod), "state", "waiting") or {}
        if waiting.get("reason"):
            msg = f"{waiting.get('reason')}" + (f": {waiting['message']}" if waiting.get("message") else "")
            return "Pending", R.WAITING_FOR_PODS, _short(msg)
    if active:
        return "Pending", R.WAITING_FOR_PODS, f"{len(active)} trainer pod(s) starting"
    if any(_get(p, "status", "phase") == "Succeeded" for p in pods):
        # The trainer exited 0; the Job controller has not marked the Job complete yet.
        if _get(ftj_status, "phase") == PHASE_UPLOADING:
            return PHASE_UPLOADING, R.UPLOADING, "the trainer exited; waiting for the Job to complete"
        return "Running", R.TRAINING, "the trainer exited; waiting for the Job to complete"
    if failed:
        _, detail = _failure_detail(failed[-1])
        return "Pending", R.WAITING_FOR_PODS, _short(f"attempt {len(failed)} failed ({detail}); retrying")
    return "Pending", R.JOB_CREATED, f"Job {_get(job, 'metadata', 'name')} created; waiting for its pods"


def _attempts(pods: Sequence[Mapping[str, Any]]) -> int:
    per_index: dict[int, int] = {}
    for p in pods:
        i = pod_index(p)
        per_index[i] = per_index.get(i, 0) + 1
    return max(per_index.values(), default=0)


def _success(
    pods: Sequence[Mapping[str, Any]],
) -> tuple[str, str, str, dict[str, Any]] | None:
    """Phase of a completed Job from pod 0's termination message; None while that pod's final status is
    not visible yet (the Job's and the pods' watch streams are not ordered)."""
    zero = [p for p in pods if pod_index(p) == 0 and _get(p, "status", "phase") == "Succeeded"]
    if not zero:
        if any(pod_index(p) == 0 and _is_active(p) for p in pods):
            return None
        return "Failed", R.UPLOAD_NOT_VERIFIED, "the Job completed but its rank-0 pod is gone: no upload report", {}
    pod = sorted(zero, key=_created)[-1]
    if terminated(pod) is None:
        return None
    parsed = termination_message(pod)
    if parsed is None or not parsed.verified or parsed.artifact is None:
        raw = _short(str(_get(terminated(pod), "message") or ""), 300)
        return (
            "Failed",
            R.UPLOAD_NOT_VERIFIED,
            "the trainer exited 0 without reporting a verified upload"
            + (f" (termination message: {raw})" if raw else " (empty termination message)"),
            {},
        )
    artifact = parsed.artifact.wire()
    extra: dict[str, Any] = {"artifact": artifact}
    if parsed.metrics is not None:
        extra["metrics"] = parsed.metrics  # rounded by the message model, as status.metrics always is
    progress: dict[str, Any] = {"percent": 100.0, "stage": None, "etaSeconds": 0}
    steps = parsed.steps
    if steps is not None:
        progress.update(step=steps, totalSteps=steps, summary=f"100% ({steps}/{steps})")
    else:
        progress["summary"] = "100%"
    if parsed.examples is not None:
        progress["examples"] = parsed.examples
    extra["progress"] = progress
    size = artifact.get("sizeBytes")
    msg = f"uploaded to {artifact['uri']}" + (f" ({size} bytes" if size is not None else " (")
    msg += f", sha256 {str(artifact['sha256'])[:12]}…)"
    return "Succeeded", R.COMPLETED, msg, extra


def _failure(job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]) -> tuple[str, str]:
    """(reason, message) of a failed Job."""
    cond = _cond(job, "Failed") if _true(job, "Failed") else _cond(job, "FailureTarget")
    job_reason = str((cond or {}).get("reason") or "")
    job_message = str((cond or {}).get("message") or "")
    failed = _failed_pods(pods)
    last = failed[-1] if failed else None
    pod_reason, pod_message = _failure_detail(last) if last is not None else (None, "")
    if job_reason == "PodFailurePolicy":
        invalid = [p for p in failed if (terminated(p) or {}).get("exitCode") == ExitCode.INVALID_INPUT]
        if invalid:
            reason, message = _failure_detail(invalid[-1])
            return reason or R.INVALID_DATASET, message or job_message
        return pod_reason or R.TRAINER_FAILED, pod_message or job_message
    # Job condition reasons (Kubernetes' vocabulary), not ours: ours happen to share their spelling.
    if job_reason == JOB_DEADLINE_EXCEEDED:
        limit = _get(job, "spec", "activeDeadlineSeconds")
        return R.DEADLINE_EXCEEDED, f"spec.runPolicy.activeDeadlineSeconds ({limit}s) elapsed" + (
            f"; last attempt: {pod_message}" if pod_message else ""
        )
    if job_reason == "BackoffLimitExceeded":
        limit = _get(job, "spec", "backoffLimit")
        tries = f"the trainer failed {len(failed)} time(s) (backoffLimit {limit})"
        if pod_reason in TRAINER_REASONS:  # the trainer named the reason: it stands, unchanged
            return pod_reason, _short(f"{pod_message}; {tries}")
        if pod_reason == R.OOM_KILLED:
            return R.OOM_KILLED, pod_message + "; raise resources.memory or lower batch sizes"
        return R.BACKOFF_LIMIT_EXCEEDED, _short(f"{tries}; last: {pod_message or job_message}")
    return pod_reason or R.TRAINER_FAILED, _short(pod_message or f"{job_reason}: {job_message}")


def derive_status(  # noqa: PLR0917
    ftj: Mapping[str, Any],
    job: Mapping[str, Any] | None,
    pods: Sequence[Mapping[str, Any]],
    now: dt.datetime,
    settings: Settings | None = None,
    events: PodEvents | None = None,
    *,
    workload: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The status patch for ``ftj`` (operator-owned keys, full conditions list); ``{}`` when final.
    ``events``: the Events of pods that wait to be created, by pod uid (:func:`pods_needing_events`);
    ``workload``: Kueue's Workload of the Job when Kueue manages it (:mod:`ftoperator.kueue`)."""
    settings = settings or Settings()
    status: Mapping[str, Any] = ftj.get("status") or {}
    if status.get("phase") in TERMINAL_PHASES:
        return {}
    generation = _get(ftj, "metadata", "generation")
    name = str(_get(ftj, "metadata", "name") or "")
    existing = status.get("conditions") or []
    extra: dict[str, Any] = {}
    if job is None:
        created = next((c for c in existing if c.get("type") == C.CREATED), None)
        if created and created.get("reason") in (R.CHILD_CREATE_FAILED, R.WAITING_FOR_MODEL):
            phase, reason, message = "Pending", str(created["reason"]), str(created.get("message") or "")
        elif status.get("jobName"):
            phase, reason = "Pending", R.JOB_MISSING
            message = f"Job {status['jobName']} was deleted before the job finished; the operator creates it again"
        else:
            phase, reason, message = "Pending", R.WAITING_FOR_PODS, "creating the workload"
    elif _true(job, "Complete") or _true(job, "SuccessCriteriaMet"):
        success = _success(pods)
        if success is None:
            phase, reason, message = PHASE_UPLOADING, R.UPLOADING, "the Job completed; reading the trainer's report"
        else:
            phase, reason, message, extra = success
    elif _true(job, "Failed") or _true(job, "FailureTarget"):
        phase = "Failed"
        reason, message = _failure(job, pods)
        if status.get("restarts"):
            message = _short(f"{message}; after {status['restarts']} restart(s) of every pod")
    elif _get(job, "spec", "suspend") or _true(job, "Suspended"):  # the Job's condition type
        phase, reason = "Suspended", R.SUSPENDED
        queue = _get(ftj, "spec", "runPolicy", "queueName")
        if is_cancelled(ftj) and _get(ftj, "spec", "runPolicy", "suspend"):
            reason, message = R.CANCELLED, f"cancelled ({ANN_CANCELLED}); no trainer pods run"
        elif _get(ftj, "spec", "runPolicy", "suspend"):
            message = "spec.runPolicy.suspend is true; no trainer pods run"
        elif queue:
            phase, reason, message = kueue.queued_phase(ftj, workload)
        else:
            message = "the Job is suspended"
    else:
        phase, reason, message = _phase_from_pods(job, pods, status, now, settings, events)

    patch: dict[str, Any] = {"phase": phase, "reason": reason, "message": _short(message)}
    if job is not None:
        patch["jobName"] = _get(job, "metadata", "name") or name
    if generation is not None:
        patch["observedGeneration"] = generation
    # the pods of the Jobs replaced by restarts are gone: their attempts are in status.restarts
    attempts = _attempts(pods) + int(status.get("restarts") or 0)
    if attempts or status.get("attempts"):
        patch["attempts"] = max(attempts, int(status.get("attempts") or 0))
    if not status.get("startTime"):
        started = [
            t
            for p in pods
            if (
                t := parse_time(_get(trainer_status(p), "state", "running", "startedAt"))
                or (parse_time(_get(terminated(p), "startedAt")) if terminated(p) else None)
            )
        ]
        if started:
            patch["startTime"] = rfc3339(min(started))
    if admitted := kueue.admission_time(workload):
        patch["admissionTime"] = admitted
    if phase in TERMINAL_PHASES:
        done = parse_time(_get(job, "status", "completionTime")) if phase == "Succeeded" else None
        patch["completionTime"] = rfc3339(done or now)
    elif reason == R.CANCELLED:
        # A cancelled job is finished for ttlSecondsAfterFinished (and the API's finished_at) from now on.
        patch["completionTime"] = status.get("completionTime") or rfc3339(now)
    elif status.get("completionTime"):
        patch["completionTime"] = None  # resumed after a cancellation: running again

    # Conditions (all six, kubebuilder style; False ones carry the phase's reason).
    pod_list = [p for p in pods if _is_active(p)]
    created = (
        set_condition(existing, C.CREATED, True, R.JOB_CREATED, f"Job and Service {name} exist", now, generation)
        if job is not None
        else set_condition(existing, C.CREATED, False, reason, message, now, generation)
    )
    if reason == R.UNSCHEDULABLE:
        scheduled = set_condition(existing, C.SCHEDULED, False, reason, message, now, generation)
    elif pod_list and all(_true(p, "PodScheduled") for p in pod_list):
        scheduled = set_condition(
            existing, C.SCHEDULED, True, R.SCHEDULED, f"{len(pod_list)} trainer pod(s) bound", now, generation
        )
    elif phase in TERMINAL_PHASES or phase == PHASE_UPLOADING:
        old = next((c for c in existing if c.get("type") == C.SCHEDULED), None)
        scheduled = dict(old) if old else set_condition(existing, C.SCHEDULED, False, reason, message, now, generation)
    else:
        scheduled = set_condition(existing, C.SCHEDULED, False, reason, message, now, generation)
    conds = [
        created,
        scheduled,
        set_condition(existing, C.RUNNING, phase in ("Running", PHASE_UPLOADING), reason, message, now, generation),
        set_condition(existing, C.SUSPENDED, phase in ("Suspended", PHASE_QUEUED), reason, message, now, generation),
        set_condition(existing, C.SUCCEEDED, phase == "Succeeded", reason, message, now, generation),
        set_condition(existing, C.FAILED, phase == "Failed", reason, message, now, generation),
    ]
    patch["conditions"] = conds
    patch.update(extra)
    return patch


def changed(current: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """The part of ``patch`` that differs from ``current`` (a status); conditions compared as a whole.
    Nested dicts (progress, metrics) are merge-patched, so only their differing keys count."""
    out: dict[str, Any] = {}
    for key, value in patch.items():
        old = current.get(key)
        if isinstance(value, dict) and key != "conditions" and isinstance(old, Mapping):
            sub = {k: v for k, v in value.items() if old.get(k) != v}
            if sub:
                out[key] = value
        elif old != value:
            out[key] = value
    return out


def is_cancelled(ftj: Mapping[str, Any]) -> bool:
    return (_get(ftj, "metadata", "annotations") or {}).get(ANN_CANCELLED) == "true"


def finished_at(ftj: Mapping[str, Any], status: Mapping[str, Any]) -> dt.datetime | None:
    """When ttlSecondsAfterFinished starts counting: the completionTime of a Succeeded or Failed job, or of a
    cancelled one (set when the operator saw it cancelled); None while the job is live."""
    if status.get("phase") in TERMINAL_PHASES or (status.get("phase") == "Suspended" and is_cancelled(ftj)):
        return parse_time(status.get("completionTime"))
    return None


def needs_suspend(patch: Mapping[str, Any], job: Mapping[str, Any] | None) -> bool:
    """After a failure the operator decided (image pull, unverified upload) no pod may keep its GPUs."""
    if job is None or patch.get("phase") != "Failed":
        return False
    return not (_true(job, "Failed") or _true(job, "Complete") or _get(job, "spec", "suspend"))
