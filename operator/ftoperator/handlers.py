"""The kopf registrations: one handler per event, each with an explicit id (docs/operator.md), and nothing else.

* ``configure`` (startup): kopf settings, the API client, the indexes handed to the reconciler, the TTL
  sweep; ``close`` (cleanup); ``login``; the ``tracked`` probe.
* indexes ``ftj_index``, ``job_index``, ``pod_index``: slim snapshots of FineTuneJobs and their Jobs and pods;
  ``pod_index`` also schedules the status sync of a pod's job, ``ftj_index`` starts the resync;
  ``workload_index``: Kueue's Workloads of the Jobs (:mod:`ftoperator.kueue`), each event a sync of the job.
* ``create-workload`` (on.create) and ``adopt-workload`` (on.resume): one attempt at the job's children
  (:meth:`ftoperator.children.Workloads.ensure`), retried with its delay until the retry budget runs out.
* ``suspend-resume`` (on.update of spec.runPolicy.suspend): the Job's spec.suspend.
* ``ftj-events``, ``job-events`` (on.event): schedule the status sync (:mod:`ftoperator.reconciler`).

No on.delete handler, daemon or timer is registered for FineTuneJobs, so kopf never adds a finalizer:
deleting a FineTuneJob works with the operator down, and the garbage collector removes the children through
their ownerReferences. The TTL after finish and the resync are background tasks, not per-object timers.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf
from ftcrd.names import GROUP, KIND, LABEL_JOB, PLURAL, VERSION
from ftcrd.types import TERMINAL_PHASES

from ftoperator import kueue, metrics, ttl
from ftoperator.children import Workloads, describe
from ftoperator.kube import ApiError, Kube, connection_info
from ftoperator.reconciler import Logger, Reconciler
from ftoperator.restarts import Restarter
from ftoperator.resync import Resync
from ftoperator.settings import Settings
from ftoperator.snapshots import Key, owner_uid, slim, slim_job, slim_pod
from ftoperator.storage import MemoryDiffBaseStorage, MemoryProgressStorage

SETTINGS = Settings.from_env()
FTJ = (GROUP, VERSION, PLURAL)
DIFFBASE = MemoryDiffBaseStorage()
PROGRESS = MemoryProgressStorage()
RECONCILER = Reconciler(SETTINGS, on_forget=[DIFFBASE.forget, PROGRESS.forget])
WORKLOADS = Workloads(RECONCILER, SETTINGS)
RECONCILER.on_forget.append(WORKLOADS.forget)
RECONCILER.restarter = Restarter(RECONCILER, WORKLOADS)  # gang restarts and the progress watchdog
RESYNC = Resync(RECONCILER, WORKLOADS, SETTINGS)
TASKS: list[asyncio.Task[None]] = []

# kopf's own limits are a safety net above the operator's retry budget (ftoperator.children.RetryBudget),
# which decides when an attempt is the last and fails the job with the last error: kopf's must never be
# reached first (a handler kopf gives up on leaves the job without a final status).
WORKLOAD_RETRIES = SETTINGS.handler_retries + 1


# ---------------------------------------------------------------------------------------------
# startup, login, probes
# ---------------------------------------------------------------------------------------------


@kopf.on.startup(id="configure")
async def configure(*, settings: kopf.OperatorSettings, logger: Logger, **kwargs: Any) -> None:
    s = SETTINGS
    # Handler progress and the diff base live in memory: nothing is written on users' objects (see
    # ftoperator.storage for why that is safe across restarts).
    settings.persistence.progress_storage = PROGRESS
    settings.persistence.diffbase_storage = DIFFBASE
    # Watches: a bounded server-side timeout and an inactivity timeout so a silently dead stream is
    # re-established (bookmarks arrive every minute); only our children are streamed (label selector).
    settings.watching.server_timeout = s.watch_server_timeout
    settings.watching.client_timeout = s.watch_client_timeout
    settings.watching.connect_timeout = 10
    settings.watching.inactivity_timeout = s.watch_inactivity_timeout
    settings.watching.label_selectors["batch", "jobs"] = LABEL_JOB
    settings.watching.label_selectors["v1", "pods"] = LABEL_JOB
    # Events: handler log lines at event_level and above become Kubernetes Events on the object.
    settings.posting.enabled = True
    settings.posting.level = logging.getLevelName(s.event_level)
    settings.posting.reporting_component = "finetune-operator"
    # Handlers are async; the thread pool only serves kopf's own sync bits.
    settings.execution.max_workers = 4
    settings.networking.request_timeout = 60
    settings.networking.connect_timeout = 10
    settings.queueing.worker_limit = None
    # Peering: the highest-priority alive replica acts; the others pause their watches (and the resync asks
    # the same question before each round: ftoperator.peering).
    settings.peering.name = s.peering_name
    settings.peering.priority = s.priority
    settings.peering.lifetime = s.peering_lifetime
    settings.peering.mandatory = False
    settings.peering.stealth = False

    # kopf hands the live indexes to startup handlers too: the reconciler and the resync read them.
    RECONCILER.indexes = {k: kwargs[k] for k in ("ftj_index", "job_index", "pod_index", kueue.INDEX)}
    RECONCILER.kube = await Kube.connect(settings, s)
    metrics.serve(s.metrics_port)
    TASKS.append(asyncio.create_task(ttl.sweeper(RECONCILER, s.ttl_sweep_seconds)))
    logger.info(
        "finetune-operator configured: trainer image %s, resync every %ss, grace periods: image pull %ss, "
        "missing config %ss, init crash loop %ss, unschedulable %s; peering %s (priority %s)",
        s.trainer_image,
        s.resync_seconds,
        s.image_pull_grace_seconds,
        s.missing_config_grace_seconds,
        s.crash_loop_grace_seconds,
        f"{s.unschedulable_grace_seconds}s" if s.unschedulable_grace_seconds > 0 else "reported only",
        s.peering_name,
        s.priority,
    )


@kopf.on.cleanup(id="close")
async def close(**_: Any) -> None:
    for task in [*TASKS, RESYNC.task]:
        if task is not None:
            task.cancel()
    if RECONCILER.kube is not None:
        await RECONCILER.kube.close()


@kopf.on.login(id="login", retries=3)
def login(*, settings: kopf.OperatorSettings, logger: Logger, **_: Any) -> kopf.ConnectionInfo:
    """The in-cluster ServiceAccount, else $KUBECONFIG: the same credentials the operator's own client uses
    (kube.connection_info); never a client library's login, even when one is installed."""
    return connection_info(settings, logger)


@kopf.on.probe(id="tracked")
def tracked(**_: Any) -> int:
    """Liveness detail (/healthz): FineTuneJobs this replica follows."""
    return len(RECONCILER.locks)


# ---------------------------------------------------------------------------------------------
# indexes (kopf holds handlers until all three are populated after a (re)start)
# ---------------------------------------------------------------------------------------------
# Coroutines although they do not await: kopf runs a plain function in its thread pool, a hop (and a GIL
# hand-over) per watch event for a dict lookup.


@kopf.index(*FTJ, id="ftj_index")
async def ftj_index(*, namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Key, Any]:
    if RESYNC.task is None:
        # Started from a handler, not at startup: the task inherits kopf's posting context (kopf.event only
        # works where kopf set it up, and a sync may post a transition Event).
        RESYNC.start()
    return {(namespace or "", name): slim(body)}


@kopf.index("batch", "v1", "jobs", labels={LABEL_JOB: kopf.PRESENT}, id="job_index")
async def job_index(*, namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Key, Any] | None:
    if owner_uid(body, KIND) is None:
        return None
    return {(namespace or "", labels[LABEL_JOB]): slim_job(body)}


@kopf.index("v1", "pods", labels={LABEL_JOB: kopf.PRESENT}, id="pod_index")
async def pod_index(
    *, namespace: str | None, labels: kopf.Labels, body: kopf.Body, logger: Logger, **_: Any
) -> dict[Key, Any] | None:
    """Also schedules the job's status sync: pods are the busiest stream, and a separate on.event handler
    would cost each pod event kopf's whole handler machinery a second time. (A deleted pod is not indexed;
    the Job's own event, its active/failed counts changing, triggers that sync.)"""
    if owner_uid(body, "Job") is None:
        return None
    key = (namespace or "", labels[LABEL_JOB])
    RECONCILER.trigger(*key, logger=logger, handler="pod-events")
    return {key: slim_pod(body)}


@kopf.index(kueue.GROUP, kueue.PLURAL, id=kueue.INDEX)
async def workload_index(*, namespace: str | None, body: kopf.Body, logger: Logger, **_: Any) -> dict[Key, Any] | None:
    """Kueue's Workloads by their Job's key; like pods, each event schedules the job's status sync (an admission,
    a preemption, a new reason to wait). Without Kueue's CRDs kopf watches nothing here and waits for nothing."""
    job = kueue.job_owner(body)
    if job is None:
        return None
    key = (namespace or "", job)
    RECONCILER.trigger(*key, logger=logger, handler="workload-events")
    return {key: kueue.slim(body)}


# ---------------------------------------------------------------------------------------------
# workload creation
# ---------------------------------------------------------------------------------------------


@kopf.on.create(*FTJ, id="create-workload", retries=WORKLOAD_RETRIES, backoff=SETTINGS.handler_backoff)
@kopf.on.resume(*FTJ, id="adopt-workload", retries=WORKLOAD_RETRIES, backoff=SETTINGS.handler_backoff)
async def workload(*, body: kopf.Body, reason: str, logger: Logger, **_: Any) -> None:
    """Create the job's children, adopting existing ones (after an operator restart ``adopt-workload`` does
    the same: the previous run may have died mid-way), and let the status sync follow."""
    handler = "adopt-workload" if reason == kopf.Reason.RESUME else "create-workload"
    delay = await WORKLOADS.ensure(body, logger, handler)
    if delay is not None:
        raise kopf.TemporaryError(f"retrying the workload's creation in {delay:g}s", delay=delay)


@kopf.on.update(
    *FTJ,
    field="spec.runPolicy.suspend",
    id="suspend-resume",
    retries=SETTINGS.handler_retries,
    backoff=SETTINGS.handler_backoff,
    timeout=SETTINGS.handler_timeout,
)
async def suspend_resume(
    *, new: Any, body: kopf.Body, namespace: str | None, name: str, logger: Logger, **_: Any
) -> None:
    """spec.runPolicy.suspend → the Job's spec.suspend (its pods stop; resume starts new ones). If this handler's
    retries run out, the resync applies the spec to the Job. Kueue owns the suspend of a queued job's Job: the
    status sync holds or releases its Workload instead (:mod:`ftoperator.kueue`)."""
    if (body.get("status") or {}).get("phase") in TERMINAL_PHASES:
        return
    suspend = bool(new)
    if ((body.get("spec") or {}).get("runPolicy") or {}).get("queueName"):
        return
    kube = RECONCILER.kube
    assert kube is not None
    try:
        await kube.merge_patch("batch/v1", "Job", namespace or "", name, {"spec": {"suspend": suspend}})
    except ApiError as exc:
        if exc.status == 404:
            return  # not created yet; create-workload renders the current spec
        raise kopf.TemporaryError(describe(exc), delay=SETTINGS.handler_backoff) from exc
    logger.info("%s the Job", "suspended" if suspend else "resumed")


# ---------------------------------------------------------------------------------------------
# following the workload
# ---------------------------------------------------------------------------------------------


@kopf.on.event(*FTJ, id="ftj-events")
async def ftj_event(*, type: str, namespace: str | None, name: str, uid: str, logger: Logger, **_: Any) -> None:
    """Trainer progress (stage 'uploading' → phase Uploading), terminal bookkeeping, forgetting deleted ones."""
    if type == "DELETED":
        RECONCILER.forget((namespace or "", name), uid)
        WORKLOADS.forget_identity(namespace or "")
        return
    RECONCILER.trigger(namespace or "", name, logger=logger, handler="ftj-events")


@kopf.on.event("batch", "v1", "jobs", labels={LABEL_JOB: kopf.PRESENT}, id="job-events")
async def job_event(*, namespace: str | None, labels: kopf.Labels, logger: Logger, **_: Any) -> None:
    RECONCILER.trigger(namespace or "", labels[LABEL_JOB], logger=logger, handler="job-events")
