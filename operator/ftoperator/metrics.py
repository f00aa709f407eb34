"""Prometheus metrics of the operator, served on their own port (``FTO_METRICS_PORT``)."""

from __future__ import annotations

import collections
import threading
import typing

from ftcrd.types import Phase
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

REGISTRY = CollectorRegistry(auto_describe=True)

JOBS_BY_PHASE = Gauge(
    "finetune_operator_jobs",
    "FineTuneJobs known to this replica, by phase.",
    ["phase"],
    registry=REGISTRY,
)
RECONCILE_SECONDS = Histogram(
    "finetune_operator_reconcile_duration_seconds",
    "Time spent in one reconcile (child creation or status sync), by handler.",
    ["handler"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
    registry=REGISTRY,
)
ERRORS = Counter(
    "finetune_operator_errors_total",
    "Errors raised while reconciling, by handler.",
    ["handler"],
    registry=REGISTRY,
)
CHILDREN_CREATED = Counter(
    "finetune_operator_children_created_total",
    "Child objects created (adopted ones not counted), by kind.",
    ["kind"],
    registry=REGISTRY,
)
STATUS_PATCHES = Counter(
    "finetune_operator_status_patches_total",
    "FineTuneJob status patches written by the operator.",
    registry=REGISTRY,
)
TRANSITIONS = Counter(
    "finetune_operator_transitions_total",
    "FineTuneJob phase transitions, by new phase and reason.",
    ["phase", "reason"],
    registry=REGISTRY,
)
TTL_DELETIONS = Counter(
    "finetune_operator_ttl_deletions_total",
    "Finished FineTuneJobs deleted after spec.runPolicy.ttlSecondsAfterFinished.",
    registry=REGISTRY,
)
RESYNC_ROUNDS = Counter(
    "finetune_operator_resync_rounds_total",
    "Periodic resync rounds run (a replica that kopf's peering pauses runs none).",
    registry=REGISTRY,
)
REPAIRS = Counter(
    "finetune_operator_repairs_total",
    "What the periodic resync found lost and applied again: a status (write), a Job suspension, a Job, a stalled Job "
    "touched (job-nudge), a namespace's trainer identity.",
    ["what"],
    registry=REGISTRY,
)

PHASES: tuple[str, ...] = typing.get_args(Phase)


class PhaseTracker:
    """Keeps JOBS_BY_PHASE equal to the phases of the FineTuneJobs this replica has seen."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._phase: dict[str, str] = {}
        self._counts: collections.Counter[str] = collections.Counter()
        for phase in PHASES:
            JOBS_BY_PHASE.labels(phase).set(0)

    def set(self, uid: str, phase: str | None) -> None:
        phase = phase or "Pending"
        with self._lock:
            old = self._phase.get(uid)
            if old == phase:
                return
            if old is not None:
                self._counts[old] -= 1
                JOBS_BY_PHASE.labels(old).set(self._counts[old])
            self._phase[uid] = phase
            self._counts[phase] += 1
            JOBS_BY_PHASE.labels(phase).set(self._counts[phase])

    def forget(self, uid: str) -> None:
        with self._lock:
            old = self._phase.pop(uid, None)
            if old is not None:
                self._counts[old] -= 1
                JOBS_BY_PHASE.labels(old).set(self._counts[old])


PHASE_TRACKER = PhaseTracker()
_started: set[int] = set()


def serve(port: int, addr: str = "0.0.0.0") -> None:
    """Start the /metrics HTTP server once per port (0 disables it)."""
    if port and port not in _started:
        start_http_server(port, addr=addr, registry=REGISTRY)
        _started.add(port)
