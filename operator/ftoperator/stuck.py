"""Trainer pods waiting for something that may never come, and their grace periods. Pure.

Each stuck state has its own grace period (operator settings) and its own reason once the period is over; the
status mapping (:mod:`ftoperator.status`) turns the verdict into the job's phase, and the reconciler suspends
the Job of a job that failed this way, so its pods (and their GPUs) are released. Read the way a kubelet and
the scheduler report them: image pulls and configuration errors in the container's waiting state, a volume
that cannot be mounted only in the pod's ``FailedMount`` Events (the container stays ``ContainerCreating``),
a missing claim and a lack of capacity in the pod's ``PodScheduled`` condition.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Mapping, Sequence
from typing import Any

from ftcrd.conditions import Reason as R
from ftcrd.objects import get

from ftoperator.objects import condition, created, is_active, parse_time, short
from ftoperator.settings import Settings

IMAGE_PULL_REASONS = frozenset({"ImagePullBackOff", "ErrImagePull", "InvalidImageName", "ErrImageNeverPull"})
PodEvents = Mapping[str, Sequence[Mapping[str, Any]]]
"""Events of pods, by pod uid."""

CONFIG_ERROR_REASONS = frozenset({"CreateContainerConfigError"})
CREATING_REASONS = frozenset({"ContainerCreating", "PodInitializing"})
MOUNT_EVENT_REASONS = frozenset({"FailedMount", "FailedAttachVolume"})
EVENTS_AFTER_SECONDS = 30.0
"""A pod still being created after this long (or after its grace period, when shorter) has its Events read: a
kubelet reports a volume it cannot mount only there (the container stays ``ContainerCreating`` without a
message). Not sooner: under a burst of new jobs, pods wait in ContainerCreating for a while, and reading their
Events would compete with the creations."""
# The scheduler's VolumeBinding plugin: a missing, unbound or deleted claim (never resolved by waiting for
# capacity, unlike "Insufficient nvidia.com/gpu").
_CLAIM_MISSING = re.compile(
    r'persistentvolumeclaim "[^"]*" (not found|is being deleted)|unbound immediate PersistentVolumeClaims',
    re.IGNORECASE,
)


@dataclasses.dataclass(frozen=True)
class Stuck:
    """A trainer pod waiting for something that may never come, and how long it may wait."""

    pod: str
    reason: str
    """The FineTuneJob's reason once the grace period is over."""
    detail: str
    """What the kubelet or the scheduler says."""
    since: dt.datetime
    grace: float
    """Seconds; 0 or less: reported while it lasts, never failed."""

    def waited(self, now: dt.datetime) -> float:
        return (now - self.since).total_seconds()

    def expired(self, now: dt.datetime) -> bool:
        return self.grace > 0 and self.waited(now) >= self.grace


def _statuses(pod: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [*(get(pod, "status", "initContainerStatuses") or []), *(get(pod, "status", "containerStatuses") or [])]


def _waiting(cs: Mapping[str, Any]) -> Mapping[str, Any]:
    return get(cs, "state", "waiting") or {}


def _pod_started(pod: Mapping[str, Any], now: dt.datetime) -> dt.datetime:
    """When the kubelet took the pod (its waiting started), else when it was created."""
    return parse_time(get(pod, "status", "startTime")) or parse_time(created(pod)) or now


def _beingcreated(pod: Mapping[str, Any]) -> bool:
    return any(_waiting(cs).get("reason") in CREATING_REASONS for cs in _statuses(pod))


def stuck(
    pod: Mapping[str, Any], events: Sequence[Mapping[str, Any]], now: dt.datetime, settings: Settings
) -> Stuck | None:
    """What ``pod`` (an active trainer pod) is stuck on, if anything: the first match of an init container
    crash loop, an image it cannot pull, a Secret/ConfigMap key its environment lacks, a volume the kubelet
    cannot mount (from the pod's ``FailedMount`` Events), a claim the scheduler cannot find, or no node."""
    name = str(get(pod, "metadata", "name") or "")
    started = _pod_started(pod, now)
    for cs in get(pod, "status", "initContainerStatuses") or []:
        if _waiting(cs).get("reason") == "CrashLoopBackOff":
            last = get(cs, "lastState", "terminated") or {}
            detail = f"init container {cs.get('name')} is crash-looping ({cs.get('restartCount', 0)} restarts"
            detail += f", last exit code {last['exitCode']})" if "exitCode" in last else ")"
            return Stuck(name, R.INIT_CONTAINER_CRASH_LOOP, detail, started, settings.crash_loop_grace_seconds)
    for cs in _statuses(pod):
        waiting = _waiting(cs)
        if waiting.get("reason") in IMAGE_PULL_REASONS:
            detail = f"{waiting.get('reason')}: {waiting.get('message') or 'cannot pull the trainer image'}"
            return Stuck(name, R.IMAGE_PULL_FAILED, detail, started, settings.image_pull_grace_seconds)
        if waiting.get("reason") in CONFIG_ERROR_REASONS:
            detail = f"{waiting.get('reason')}: {waiting.get('message') or 'a Secret or ConfigMap is missing'}"
            return Stuck(name, R.CONTAINER_CONFIG_ERROR, detail, started, settings.missing_config_grace_seconds)
    if _beingcreated(pod):
        mount = [e for e in events if e.get("reason") in MOUNT_EVENT_REASONS]
        if mount:
            latest = max(mount, key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or ""))
            detail = f"{latest.get('reason')}: {latest.get('message') or ''}"
            return Stuck(name, R.VOLUME_MOUNT_FAILED, detail, started, settings.missing_config_grace_seconds)
    sched = condition(pod, "PodScheduled")
    if sched and sched.get("status") == "False":
        since = parse_time(sched.get("lastTransitionTime")) or started
        detail = f"{sched.get('reason')}: {sched.get('message') or ''}"
        if _CLAIM_MISSING.search(str(sched.get("message") or "")):
            return Stuck(name, R.VOLUME_CLAIM_MISSING, detail, since, settings.missing_config_grace_seconds)
        return Stuck(name, R.UNSCHEDULABLE_TIMEOUT, detail, since, settings.unschedulable_grace_seconds)
    return None


def _stuck_pods(
    active: Sequence[Mapping[str, Any]], events: PodEvents, now: dt.datetime, settings: Settings
) -> list[Stuck]:
    found = (stuck(p, events.get(str(get(p, "metadata", "uid"))) or (), now, settings) for p in active)
    return [s for s in found if s is not None]


def stuck_verdict(
    active: Sequence[Mapping[str, Any]], events: PodEvents, now: dt.datetime, settings: Settings
) -> tuple[str, str, str] | None:
    """(phase, reason, message) when a pod is stuck: ``Failed`` with the state's own reason once its grace
    period is over, else ``Pending`` with a countdown. None when nothing is stuck, or only in a state that is
    reported as it is (no grace period; unschedulable pods: the scheduler's message)."""
    states = sorted(_stuck_pods(active, events, now, settings), key=lambda s: s.since)
    for s in states:
        if s.expired(now):
            return "Failed", s.reason, short(f"{s.detail} (for {int(s.waited(now))}s, grace {int(s.grace)}s)")
    for s in states:
        if s.grace > 0 and s.reason != R.UNSCHEDULABLE_TIMEOUT:
            left = int(s.grace - s.waited(now))
            pending = R.UNSCHEDULABLE if s.reason == R.VOLUME_CLAIM_MISSING else R.WAITING_FOR_PODS
            return "Pending", pending, short(f"{s.detail}; failing the job in {left}s unless it resolves")
    return None


def pods_needing_events(
    pods: Sequence[Mapping[str, Any]], now: dt.datetime, settings: Settings
) -> tuple[list[Mapping[str, Any]], float]:
    """(active pods still being created for :data:`EVENTS_AFTER_SECONDS` or their grace period, whichever is
    shorter, whose Events say whether a volume cannot be mounted; seconds until the next pod reaches that age,
    or inf). None when mount failures are only reported (no grace period): the kubelet's Events say it."""
    due: list[Mapping[str, Any]] = []
    soonest = float("inf")
    if settings.missing_config_grace_seconds <= 0:
        return due, soonest
    after = min(EVENTS_AFTER_SECONDS, settings.missing_config_grace_seconds)
    for p in pods:
        if not is_active(p) or not _beingcreated(p):
            continue
        age = (now - _pod_started(p, now)).total_seconds()
        if age >= after:
            due.append(p)
        else:
            soonest = min(soonest, after - age)
    return due, soonest


def next_decision(pods: Sequence[Mapping[str, Any]], events: PodEvents, now: dt.datetime, settings: Settings) -> float:
    """Seconds until a stuck pod's grace period ends (when the status must be computed again even if nothing
    changes), or inf."""
    active = [p for p in pods if is_active(p)]
    left = [s.grace - s.waited(now) for s in _stuck_pods(active, events, now, settings) if s.grace > 0]
    return max(0.0, min(left)) if left else float("inf")
