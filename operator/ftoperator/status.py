"""Pure status mapping: (FineTuneJob, its Job, its pods, now) -> the FineTuneJob status patch.

No API calls and no clock: the handlers pass ``now``. The result contains only operator-owned
fields (phase, reason, message, conditions, times, attempts, jobName, observedGeneration) plus, when the
job succeeds, the final artifact/metrics/progress copied from the trainer's termination message. Progress,
metrics and checkpoints written by the trainer while it runs are never touched otherwise.

Succeeded and Failed are final: once set, :func:`derive_status` returns ``{}``.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from typing import Any

from ftcrd import conditions as C
from ftcrd.types import TERMINAL_PHASES

from ftoperator.builders import ANNOTATION_COMPLETION_INDEX, CONTAINER, EXIT_INVALID_INPUT
from ftoperator.settings import Settings

IMAGE_PULL_REASONS = frozenset({"ImagePullBackOff", "ErrImagePull", "InvalidImageName", "ErrImageNeverPull"})
CONDITION_TYPES = (C.CREATED, C.SCHEDULED, C.RUNNING, C.SUSPENDED, C.SUCCEEDED, C.FAILED)
MAX_MESSAGE = 1024

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


def rfc3339(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: object) -> dt.datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _get(obj: Mapping[str, Any] | None, *path: str) -> Any:
    cur: Any = obj
    for key in path:
        if not isinstance(cur, Mapping):
            return None
        cur = cur.get(key)
    return cur


def _cond(obj: Mapping[str, Any] | None, ctype: str) -> Mapping[str, Any] | None:
    for c in _get(obj, "status", "conditions") or []:
        if c.get("type") == ctype:
            return c
    return None


def _true(obj: Mapping[str, Any] | None, ctype: str) -> bool:
    c = _cond(obj, ctype)
    return bool(c and c.get("status") == "True")


def _short(text: str | None, limit: int = MAX_MESSAGE) -> str:
    text = (text or "").strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---------------------------------------------------------------------------------------------
# pods
# ---------------------------------------------------------------------------------------------


def pod_index(pod: Mapping[str, Any]) -> int:
    raw = (_get(pod, "metadata", "annotations") or {}).get(ANNOTATION_COMPLETION_INDEX)
    if raw is None:
        raw = (_get(pod, "metadata", "labels") or {}).get(ANNOTATION_COMPLETION_INDEX, "0")
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


def termination_json(pod: Mapping[str, Any]) -> dict[str, Any] | None:
    """The trainer's JSON termination message, or None (absent, or log tail instead of JSON)."""
    msg = _get(terminated(pod), "message")
    if not isinstance(msg, str) or not msg.strip().startswith("{"):
        return None
    try:
        parsed = json.loads(msg)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def _created(pod: Mapping[str, Any]) -> str:
    return str(_get(pod, "metadata", "creationTimestamp") or "")


def _is_active(pod: Mapping[str, Any]) -> bool:
    return _get(pod, "status", "phase") not in ("Succeeded", "Failed") and not _get(
        pod, "metadata", "deletionTimestamp"
    )


def _failed_pods(pods: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    failed = [p for p in pods if _get(p, "status", "phase") == "Failed" or (terminated(p) or {}).get("exitCode")]
    return sorted(failed, key=_created)


def _failure_detail(pod: Mapping[str, Any]) -> tuple[str | None, str]:
    """(reason from the trainer or the kubelet, human message) of a failed pod."""
    term = terminated(pod) or {}
    code = term.get("exitCode")
    if term.get("reason") == "OOMKilled" or _get(pod, "status", "reason") == "OOMKilled":
        return "OOMKilled", f"container {CONTAINER} was OOMKilled (exit code {code})"
    parsed = termination_json(pod)
    if parsed and parsed.get("status") == "failed":
        reason = parsed.get("reason")
        message = str(parsed.get("message") or "")
        return (str(reason) if reason in C.REASONS else None), _short(f"{reason}: {message}" if reason else message)
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


def _phase_from_pods(
    job: Mapping[str, Any],
    pods: Sequence[Mapping[str, Any]],
    ftj_status: Mapping[str, Any],
    now: dt.datetime,
    settings: Settings,
) -> tuple[str, str, str]:
    """(phase, reason, message) of a Job that is neither finished nor suspended."""
    active = [p for p in pods if _is_active(p)]
    failed = _failed_pods(pods)
    # Image pull failures: after the grace period the job fails (and the caller suspends the Job).
    for pod in sorted(active, key=_created):
        waiting = _get(trainer_status(pod), "state", "waiting") or {}
        if waiting.get("reason") in IMAGE_PULL_REASONS:
            since = parse_time(_get(pod, "status", "startTime")) or parse_time(_created(pod)) or now
            waited = (now - since).total_seconds()
            detail = f"{waiting.get('reason')}: {waiting.get('message') or 'cannot pull the trainer image'}"
            if waited >= settings.image_pull_grace_seconds:
                return (
                    "Failed",
                    "ImagePullFailed",
                    _short(f"{detail} (for {int(waited)}s, grace {int(settings.image_pull_grace_seconds)}s)"),
                )
            left = int(settings.image_pull_grace_seconds - waited)
            return "Pending", "WaitingForPods", _short(f"{detail}; failing the job in {left}s unless it resolves")
    running = [p for p in active if _get(trainer_status(p), "state", "running") is not None]
    if running:
        stage = _get(ftj_status, "progress", "stage")
        if stage == "uploading":
            return "Uploading", "Uploading", "Training finished; the trainer is uploading the model."
        summary = _get(ftj_status, "progress", "summary")
        nodes = int(_get(job, "spec", "parallelism") or 1)
        msg = f"{len(running)}/{nodes} trainer pods running"
        return "Running", "Training", msg + (f"; progress {summary}" if summary else "")
    for pod in sorted(active, key=_created):
        sched = _cond(pod, "PodScheduled")
        if sched and sched.get("status") == "False":
            return "Pending", "Unschedulable", _short(f"{sched.get('reason')}: {sched.get('message') or ''}")
    for pod in sorted(active, key=_created):
        waiting = _get(trainer_status(pod), "state", "waiting") or {}
        if waiting.get("reason"):
            msg = f"{waiting.get('reason')}" + (f": {waiting['message']}" if waiting.get("message") else "")
            return "Pending", "WaitingForPods", _short(msg)
    if active:
        return "Pending", "WaitingForPods", f"{len(active)} trainer pod(s) starting"
    if any(_get(p, "status", "phase") == "Succeeded" for p in pods):
        # The trainer exited 0; the Job controller has not marked the Job complete yet.
        if _get(ftj_status, "phase") == "Uploading":
            return "Uploading", "Uploading", "the trainer exited; waiting for the Job to complete"
        return "Running", "Training", "the trainer exited; waiting for the Job to complete"
    if failed:
        _, detail = _failure_detail(failed[-1])
        return "Pending", "WaitingForPods", _short(f"attempt {len(failed)} failed ({detail}); retrying")
    return "Pending", "JobCreated", f"Job {_get(job, 'metadata', 'name')} created; waiting for its pods"


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
        return "Failed", "UploadNotVerified", "the Job completed but its rank-0 pod is gone: no upload report", {}
    pod = sorted(zero, key=_created)[-1]
    if terminated(pod) is None:
        return None
    parsed = termination_json(pod)
    artifact = (parsed or {}).get("artifact") or {}
    if not parsed or parsed.get("status") != "succeeded" or not artifact.get("uri") or not artifact.get("sha256"):
        raw = _short(str(_get(terminated(pod), "message") or ""), 300)
        return (
            "Failed",
            "UploadNotVerified",
            "the trainer exited 0 without reporting a verified upload"
            + (f" (termination message: {raw})" if raw else " (empty termination message)"),
            {},
        )
    extra: dict[str, Any] = {"artifact": artifact}
    if isinstance(parsed.get("metrics"), dict):
        extra["metrics"] = parsed["metrics"]
    progress: dict[str, Any] = {"percent": 100.0, "stage": None, "etaSeconds": 0}
    steps = parsed.get("steps")
    if isinstance(steps, int):
        progress.update(step=steps, totalSteps=steps, summary=f"100% ({steps}/{steps})")
    else:
        progress["summary"] = "100%"
    if isinstance(parsed.get("examples"), int):
        progress["examples"] = parsed["examples"]
    extra["progress"] = progress
    size = artifact.get("sizeBytes")
    msg = f"uploaded to {artifact['uri']}" + (f" ({size} bytes" if size is not None else " (")
    msg += f", sha256 {str(artifact['sha256'])[:12]}…)"
    return "Succeeded", "Completed", msg, extra


def _failure(job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]) -> tuple[str, str]:
    """(reason, message) of a failed Job."""
    cond = _cond(job, "Failed") if _true(job, "Failed") else _cond(job, "FailureTarget")
    job_reason = str((cond or {}).get("reason") or "")
    job_message = str((cond or {}).get("message") or "")
    failed = _failed_pods(pods)
    last = failed[-1] if failed else None
    pod_reason, pod_message = _failure_detail(last) if last is not None else (None, "")
    if job_reason == "PodFailurePolicy":
        invalid = [p for p in failed if (terminated(p) or {}).get("exitCode") == EXIT_INVALID_INPUT]
        if invalid:
            reason, message = _failure_detail(invalid[-1])
            return reason or "InvalidDataset", message or job_message
        return pod_reason or "TrainerFailed", pod_message or job_message
    if job_reason == "DeadlineExceeded":
        limit = _get(job, "spec", "activeDeadlineSeconds")
        return "DeadlineExceeded", f"spec.runPolicy.activeDeadlineSeconds ({limit}s) elapsed" + (
            f"; last attempt: {pod_message}" if pod_message else ""
        )
    if job_reason == "BackoffLimitExceeded":
        if pod_reason in ("InvalidDataset", "InvalidSpec"):
            return pod_reason, pod_message  # the trainer said so, even if its exit code got lost on the way
        if pod_reason == "OOMKilled":
            return "OOMKilled", pod_message + "; raise resources.memory or lower batch sizes"
        limit = _get(job, "spec", "backoffLimit")
        return "BackoffLimitExceeded", _short(
            f"the trainer failed {len(failed)} time(s) (backoffLimit {limit}); last: {pod_message or job_message}"
        )
    return pod_reason or "TrainerFailed", _short(pod_message or f"{job_reason}: {job_message}")


def derive_status(
    ftj: Mapping[str, Any],
    job: Mapping[str, Any] | None,
    pods: Sequence[Mapping[str, Any]],
    now: dt.datetime,
    settings: Settings | None = None,
    *,
    workload: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The status patch for ``ftj`` (operator-owned keys, full conditions list); ``{}`` when final. ``workload`` is
    Kueue's Workload of the Job, when Kueue manages it."""
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
        if created and created.get("reason") == "ChildCreateFailed":
            phase, reason, message = "Pending", "ChildCreateFailed", str(created.get("message") or "")
        else:
            phase, reason, message = "Pending", "WaitingForPods", "creating the workload"
    elif _true(job, "Complete") or _true(job, "SuccessCriteriaMet"):
        success = _success(pods)
        if success is None:
            phase, reason, message = "Uploading", "Uploading", "the Job completed; reading the trainer's report"
        else:
            phase, reason, message, extra = success
    elif _true(job, "Failed") or _true(job, "FailureTarget"):
        phase = "Failed"
        reason, message = _failure(job, pods)
    elif _get(job, "spec", "suspend") or _true(job, "Suspended"):
        phase, reason, message = held_phase(ftj, workload)
    else:
        phase, reason, message = _phase_from_pods(job, pods, status, now, settings)

    patch: dict[str, Any] = {"phase": phase, "reason": reason, "message": _short(message)}
    if job is not None:
        patch["jobName"] = _get(job, "metadata", "name") or name
    if generation is not None:
        patch["observedGeneration"] = generation
    attempts = _attempts(pods)
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
    admitted = admission_time(workload)
    if admitted:
        patch["admissionTime"] = admitted
    if phase in TERMINAL_PHASES:
        done = parse_time(_get(job, "status", "completionTime")) if phase == "Succeeded" else None
        patch["completionTime"] = rfc3339(done or now)

    # Conditions (all six, kubebuilder style; False ones carry the phase's reason).
    pod_list = [p for p in pods if _is_active(p)]
    created = (
        set_condition(existing, C.CREATED, True, "JobCreated", f"Job and Service {name} exist", now, generation)
        if job is not None
        else set_condition(existing, C.CREATED, False, reason, message, now, generation)
    )
    if reason == "Unschedulable":
        scheduled = set_condition(existing, C.SCHEDULED, False, reason, message, now, generation)
    elif pod_list and all(_true(p, "PodScheduled") for p in pod_list):
        scheduled = set_condition(
            existing, C.SCHEDULED, True, "Scheduled", f"{len(pod_list)} trainer pod(s) bound", now, generation
        )
    elif phase in TERMINAL_PHASES or phase == "Uploading":
        old = next((c for c in existing if c.get("type") == C.SCHEDULED), None)
        scheduled = dict(old) if old else set_condition(existing, C.SCHEDULED, False, reason, message, now, generation)
    else:
        scheduled = set_condition(existing, C.SCHEDULED, False, reason, message, now, generation)
    conds = [
        created,
        scheduled,
        set_condition(existing, C.RUNNING, phase in ("Running", "Uploading"), reason, message, now, generation),
        set_condition(existing, C.SUSPENDED, phase in ("Suspended", "Queued"), reason, message, now, generation),
        set_condition(existing, C.SUCCEEDED, phase == "Succeeded", reason, message, now, generation),
        set_condition(existing, C.FAILED, phase == "Failed", reason, message, now, generation),
    ]
    patch["conditions"] = conds
    patch.update(extra)
    return patch


# ---------------------------------------------------------------------------------------------
# Kueue: a Job with spec.runPolicy.queueName is created suspended; Kueue admits it (un-suspends it) within
# its ClusterQueue's quota, and may preempt it later (suspends it again). Its Workload says why.
# ---------------------------------------------------------------------------------------------


def _after(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> bool:
    """Condition ``a`` changed no earlier than ``b`` (RFC 3339 seconds compare as strings)."""
    return str((a or {}).get("lastTransitionTime") or "") >= str((b or {}).get("lastTransitionTime") or "")


def admission_time(workload: Mapping[str, Any] | None) -> str | None:
    """When Kueue last admitted the workload (its Admitted condition turned True), or None while it is not."""
    admitted = _cond(workload, "Admitted")
    if not admitted or admitted.get("status") != "True":
        return None
    return str(admitted.get("lastTransitionTime") or "") or None


def queued_phase(ftj: Mapping[str, Any], workload: Mapping[str, Any] | None) -> tuple[str, str, str]:
    """(phase, reason, message) of a Job Kueue holds: Kueue's own reason and message, the queue named. A preempted
    job says so until it is admitted again, and what it waits for now."""
    queue = _get(ftj, "spec", "runPolicy", "queueName")
    if workload is None:
        return "Queued", "Queued", f"waiting for Kueue to create the job's Workload (queue {queue})"
    evicted = _cond(workload, "Evicted")
    evicted = evicted if evicted and evicted.get("status") == "True" else None
    admitted = _cond(workload, "Admitted")
    reserved = _cond(workload, "QuotaReserved")
    waiting = reserved if reserved and reserved.get("status") == "False" else None
    if admission_time(workload) and (evicted is None or _after(admitted, evicted)):
        return "Pending", "Admitted", f"Kueue admitted the job (queue {queue}); waiting for the Job to start"
    now = f"{waiting.get('reason') or 'Pending'}: {waiting.get('message') or ''}" if waiting else ""
    if evicted is not None:
        why = str(evicted.get("reason") or "Evicted")
        text = f"Kueue {why}: {evicted.get('message') or ''}" + (f"; now {now}" if now else "")
        return "Queued", "Preempted" if why == "Preempted" else "Evicted", _short(f"{text} (queue {queue})")
    if waiting is not None:
        reason = "Inadmissible" if waiting.get("reason") == "Inadmissible" else "Queued"
        return "Queued", reason, _short(f"Kueue {now} (queue {queue})")
    return "Queued", "Queued", f"waiting for Kueue to admit the job (queue {queue})"


def held_phase(ftj: Mapping[str, Any], workload: Mapping[str, Any] | None) -> tuple[str, str, str]:
    """(phase, reason, message) of a suspended Job: the user's suspend, or Kueue's queue."""
    if _get(ftj, "spec", "runPolicy", "suspend"):
        return "Suspended", "Suspended", "spec.runPolicy.suspend is true; no trainer pods run"
    if _get(ftj, "spec", "runPolicy", "queueName"):
        return queued_phase(ftj, workload)
    return "Suspended", "Suspended", "the Job is suspended"


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


def needs_suspend(patch: Mapping[str, Any], job: Mapping[str, Any] | None) -> bool:
    """After a failure the operator decided (image pull, unverified upload) no pod may keep its GPUs."""
    if job is None or patch.get("phase") != "Failed":
        return False
    return not (_true(job, "Failed") or _true(job, "Complete") or _get(job, "spec", "suspend"))
