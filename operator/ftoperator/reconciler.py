"""The status reconciler: one FineTuneJob's status recomputed from its Job, pods and pod Events, and written.

Syncs are triggered by watch events (debounced), by timers when a stuck pod's grace period ends, and by the
periodic resync (:mod:`ftoperator.resync`). They are serialised per FineTuneJob and level-triggered: a sync
reads the current state from kopf's indexes and writes only what differs, so running one more never hurts,
and a sync whose write failed is repaired by the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import aiohttp
import kopf
from ftcrd.conditions import Reason as R
from ftcrd.names import KIND
from ftcrd.types import TERMINAL_PHASES

from ftoperator import kueue, metrics, stuck
from ftoperator import status as st
from ftoperator.kube import MERGE_PATCH, ApiError, Kube, collection_path
from ftoperator.samples import SampleEvents
from ftoperator.settings import Settings
from ftoperator.snapshots import Key, first, ftj_logger, owner_uid, uid_of

Logger = logging.Logger | logging.LoggerAdapter[Any]
EVENTS_REFRESH_SECONDS = 15.0
"""A stuck pod's Events are read again at most this often."""
WARNING_REASONS = frozenset(
    {R.UNSCHEDULABLE, R.CHILD_CREATE_FAILED, R.JOB_MISSING, R.GANG_RESTART, R.PROGRESS_DEADLINE_EXCEEDED}
)


@dataclasses.dataclass(frozen=True)
class Observed:
    """What one sync sees of a job: the FineTuneJob, its effective status, its Job and pods, and when."""

    key: Key
    ftj: Mapping[str, Any]
    status: Mapping[str, Any]
    job: Mapping[str, Any] | None
    pods: Sequence[Mapping[str, Any]]
    now: dt.datetime


class Hook(Protocol):
    """What the reconciler asks before it maps a job's status (:class:`ftoperator.restarts.Restarter`):
    (whether the hook took the sync over, seconds until it wants to look again)."""

    async def step(self, seen: Observed, logger: Logger) -> tuple[bool, float]: ...


@dataclasses.dataclass
class Written:
    """The operator-owned status fields this replica last wrote, and the resourceVersion that write made."""

    resource_version: str
    fields: dict[str, Any]


def predates(indexed_rv: object, written_rv: str) -> bool:
    """Whether an indexed body is older than our last write to it. resourceVersions are etcd revisions (one
    counter, increasing): compared as numbers; an unparseable one counts as older until it equals ours."""
    try:
        return int(str(indexed_rv)) < int(written_rv)
    except ValueError:
        return str(indexed_rv) != written_rv


class Reconciler:
    """Serialises status syncs per FineTuneJob and remembers what it last wrote.

    The FineTuneJob index lags behind our own status patches (the watch event arrives later), so the
    operator-owned part of the status last written is overlaid on an indexed body older than that write: a
    sync right after a patch neither repeats it nor re-posts the transition Event. Once the index has caught
    up, the index is the truth again, so a status changed by anyone since is seen (and repaired).
    """

    def __init__(self, settings: Settings, on_forget: Sequence[Callable[[str], None]] = ()) -> None:
        self.settings = settings
        self.on_forget = list(on_forget)
        self.on_final: list[Callable[[Key], None]] = []  # called when this replica writes a final phase
        self.restarter: Hook | None = None  # gang restarts and the progress watchdog, asked before each mapping
        self.kube: Kube | None = None
        self.indexes: Mapping[str, kopf.Index[Key, Any]] = {}  # kopf's live indexes, set at startup
        self.locks: dict[Key, asyncio.Lock] = {}
        self.written: dict[str, Written] = {}  # FineTuneJob uid -> what we last wrote
        self.ttl_due: dict[str, tuple[str, str, float]] = {}  # uid -> (namespace, name, due unix time)
        self.pending: dict[Key, asyncio.Task[None]] = {}
        self.wakeups: dict[Key, asyncio.TimerHandle] = {}
        self.suspended: dict[str, str] = {}  # FineTuneJob uid -> uid of the Job this replica suspended
        self.events: dict[Key, dict[str, tuple[float, list[dict[str, Any]]]]] = {}  # pod uid -> (read at, Events)
        self.samples = SampleEvents()  # status.samples -> one Event per evaluation
        # Child creation (what users wait on: time to pods and GPUs) goes first: while creations are in
        # flight, status writes hold back for up to FTO_STATUS_YIELD_SECONDS.
        self.creating = 0
        self.no_creations = asyncio.Event()
        self.no_creations.set()
        # Status writes share the connection pool with child creation; under a burst of new jobs they must
        # not starve it (time to Job is what users wait on), so at most a quarter of the pool goes to them.
        self.status_slots = asyncio.Semaphore(max(2, settings.api_connections // 4))

    # -- the indexes ------------------------------------------------------------------------------

    def ftj(self, key: Key) -> Mapping[str, Any] | None:
        return first(self.indexes["ftj_index"].get(key)) if self.indexes else None

    def job_of(self, key: Key, uid: str) -> Mapping[str, Any] | None:
        jobs = self.indexes["job_index"].get(key, ()) if self.indexes else ()
        return next((j for j in jobs if owner_uid(j, KIND) == uid), None)

    def workload_of(self, key: Key, job_uid: str | None) -> Mapping[str, Any] | None:
        """Kueue's Workload of the Job (ftoperator.kueue), or None (no queue, no Kueue, not created yet)."""
        index = self.indexes.get(kueue.INDEX) if job_uid else None
        workloads = index.get(key, ()) if index is not None else ()
        return next((w for w in workloads if owner_uid(w, "Job") == job_uid), None)

    def pods_of(self, key: Key, job_uid: str | None) -> list[Mapping[str, Any]]:
        if not job_uid or not self.indexes:
            return []
        return [p for p in self.indexes["pod_index"].get(key, ()) if owner_uid(p, "Job") == job_uid]

    def pods_left(self, key: Key) -> list[Mapping[str, Any]]:
        """Every pod of the job's name that a Job still owns, of whichever Job (one deleted and not yet gone too)."""
        return list(self.indexes["pod_index"].get(key, ())) if self.indexes else []

    # -- scheduling syncs -------------------------------------------------------------------------

    def trigger(self, namespace: str, name: str, *, logger: Logger, handler: str) -> None:
        """Sync soon (after ``status_debounce_seconds``), once for all triggers that arrive meanwhile: a
        burst of pod/Job/FineTuneJob events becomes one status computation and at most one patch."""
        key = (namespace, name)
        if key in self.pending:
            return
        self.pending[key] = asyncio.get_running_loop().create_task(self._later(key, logger=logger, handler=handler))

    async def _later(self, key: Key, *, logger: Logger, handler: str) -> None:
        try:
            await asyncio.sleep(self.settings.status_debounce_seconds)
            if self.creating:
                # A burst of new jobs: their creations go first, and every event meanwhile joins this sync.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.no_creations.wait(), self.settings.status_yield_seconds)
        finally:
            self.pending.pop(key, None)  # events from now on schedule the next sync
        try:
            await self.sync(key[0], key[1], logger=logger, handler=handler)
        except Exception as exc:
            logger.warning("status sync of %s/%s failed (the resync retries): %s", key[0], key[1], exc)

    def wake_after(self, key: Key, delay: float, logger: Logger) -> None:
        """Sync again after ``delay`` seconds even if nothing changes (a grace period ends)."""
        loop = asyncio.get_running_loop()
        due = loop.time() + delay
        current = self.wakeups.get(key)
        if current is not None and current.when() <= due:
            return
        if current is not None:
            current.cancel()

        def fire() -> None:
            self.wakeups.pop(key, None)
            self.trigger(*key, logger=logger, handler="grace")

        self.wakeups[key] = loop.call_at(due, fire)

    @contextlib.contextmanager
    def creation(self) -> Iterator[None]:
        """Marks a child creation in flight (status writes yield to it)."""
        self.creating += 1
        self.no_creations.clear()
        try:
            yield
        finally:
            self.creating -= 1
            if not self.creating:
                self.no_creations.set()

    def lock(self, key: Key) -> asyncio.Lock:
        lock = self.locks.get(key)
        if lock is None:
            lock = self.locks[key] = asyncio.Lock()
        return lock

    def forget(self, key: Key, uid: str | None) -> None:
        self.locks.pop(key, None)
        self.events.pop(key, None)
        timer = self.wakeups.pop(key, None)
        if timer is not None:
            timer.cancel()
        if uid:
            self.written.pop(uid, None)
            self.ttl_due.pop(uid, None)
            self.suspended.pop(uid, None)
            self.samples.forget(uid)
            metrics.PHASE_TRACKER.forget(uid)
            for callback in self.on_forget:
                callback(uid)

    # -- status -----------------------------------------------------------------------------------

    def effective_status(self, ftj: Mapping[str, Any]) -> dict[str, Any]:
        status = dict(ftj.get("status") or {})
        uid = uid_of(ftj)
        mine = self.written.get(uid)
        if mine is not None:
            if predates((ftj.get("metadata") or {}).get("resourceVersion"), mine.resource_version):
                status.update(mine.fields)
            else:
                del self.written[uid]  # the index has caught up: it is the truth again
        return status

    async def write_status(self, ftj: Mapping[str, Any], delta: Mapping[str, Any], logger: Logger) -> None:
        """Merge-patch ``delta`` into the status subresource; post an Event when the phase or reason changed."""
        assert self.kube is not None
        md = ftj["metadata"]
        before = self.effective_status(ftj)
        if self.creating:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.no_creations.wait(), self.settings.status_yield_seconds)
        async with self.status_slots:
            written = await self.kube.patch_ftj_status(md["namespace"], md["name"], delta)
        metrics.STATUS_PATCHES.inc()
        uid = str(md["uid"])
        mine = self.written.setdefault(uid, Written("", {}))
        mine.fields.update({k: v for k, v in delta.items() if k in st.OPERATOR_KEYS})
        mine.resource_version = str((written.get("metadata") or {}).get("resourceVersion") or "")
        phase, reason = delta.get("phase", before.get("phase")), delta.get("reason", before.get("reason"))
        metrics.PHASE_TRACKER.set(uid, phase)
        if phase in TERMINAL_PHASES and before.get("phase") not in TERMINAL_PHASES:
            for callback in self.on_final:
                callback((md["namespace"], md["name"]))
        if (phase, reason) != (before.get("phase"), before.get("reason")):
            metrics.TRANSITIONS.labels(phase or "", reason or "").inc()
            message = str(delta.get("message", before.get("message")) or "")
            warning = phase == "Failed" or reason in WARNING_REASONS
            text = f"{phase}: {message}" if message else str(phase)
            ftj_logger(ftj).info("phase %s (%s): %s", phase, reason, message)
            kopf.event(
                kopf.Body(dict(ftj)),  # type: ignore[arg-type]
                type="Warning" if warning else "Normal",
                reason=str(reason or phase),
                message=text[:1024],
            )
        self.schedule_ttl(ftj, {**before, **delta})

    def schedule_ttl(self, ftj: Mapping[str, Any], status: Mapping[str, Any]) -> None:
        """Register (or drop) the job's deletion after spec.runPolicy.ttlSecondsAfterFinished: finished and
        cancelled jobs expire alike."""
        uid = uid_of(ftj)
        ttl = ((ftj.get("spec") or {}).get("runPolicy") or {}).get("ttlSecondsAfterFinished")
        done = st.finished_at(ftj, status)
        if ttl is None or done is None:
            self.ttl_due.pop(uid, None)
            return
        md = ftj["metadata"]
        self.ttl_due[uid] = (md["namespace"], md["name"], done.timestamp() + float(ttl))

    async def pod_events(
        self, key: Key, pods: Sequence[Mapping[str, Any]], now: dt.datetime
    ) -> tuple[dict[str, list[dict[str, Any]]], float]:
        """The Events of pods that are still being created after a while (:func:`stuck.pods_needing_events`;
        cached briefly), by pod uid; and the seconds until another pod reaches that age."""
        due, soonest = stuck.pods_needing_events(pods, now, self.settings)
        cache = self.events.setdefault(key, {})
        for uid in [u for u in cache if u not in {uid_of(p) for p in due}]:
            del cache[uid]
        stale = [p for p in due if time.monotonic() - cache.get(uid_of(p), (-1e9, []))[0] >= EVENTS_REFRESH_SECONDS]
        if stale:
            fetched = await asyncio.gather(*(self._read_events(key[0], uid_of(p)) for p in stale))
            for p, items in zip(stale, fetched, strict=True):
                if items is not None:
                    cache[uid_of(p)] = (time.monotonic(), items)
        return {uid: items for uid, (_, items) in cache.items()}, soonest

    async def _read_events(self, namespace: str, pod_uid: str) -> list[dict[str, Any]] | None:
        assert self.kube is not None
        try:
            found = await self.kube.request(
                "GET",
                collection_path("v1", "Event", namespace),
                query={"fieldSelector": f"involvedObject.uid={pod_uid}"},
            )
        except (ApiError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            logging.getLogger("ftoperator").warning("cannot read the Events of pod %s: %s", pod_uid, exc)
            return None
        keep = ("reason", "message", "type", "count", "lastTimestamp", "eventTime")
        return [{k: e.get(k) for k in keep} for e in found.get("items") or []]

    async def suspend_job(self, ftj: Mapping[str, Any], job: Mapping[str, Any], logger: Logger) -> None:
        """Suspend the Job of a job that failed while its pods were not finished: the Job controller deletes
        them, so no pod keeps GPUs reserved."""
        assert self.kube is not None
        md = ftj["metadata"]
        logger.warning("suspending Job %s: %s", md["name"], self.effective_status(ftj).get("reason"))
        await self.kube.merge_patch("batch/v1", "Job", md["namespace"], md["name"], {"spec": {"suspend": True}})
        self.suspended[uid_of(ftj)] = uid_of(job)

    async def hold(
        self, ftj: Mapping[str, Any], workload: Mapping[str, Any], phase: str | None, logger: Logger
    ) -> bool:
        """Deactivate (or activate again) a queued job's Workload as its spec and phase want: Kueue un-suspends an
        admitted Job that anyone else suspends, so pausing, cancelling and failing go through the Workload."""
        if not kueue.needs_activation_change(ftj, workload, phase):
            return False
        assert self.kube is not None
        active = kueue.wanted_active(ftj, phase)
        path, patch = kueue.activation_patch(workload, active)
        await self.kube.request("PATCH", path, patch, content_type=MERGE_PATCH)
        logger.info("%s Kueue Workload %s", "activated" if active else "deactivated", workload["metadata"]["name"])
        return True

    async def sync(
        self,
        namespace: str,
        name: str,
        *,
        logger: Logger,
        handler: str,
        ftj: Mapping[str, Any] | None = None,
        job: Mapping[str, Any] | None = None,
    ) -> bool:
        """Recompute one FineTuneJob's status from its Job and pods, write what changed and re-apply the
        Job suspension a failure needs. Returns whether anything was written."""
        key = (namespace, name)
        started = time.perf_counter()
        try:
            async with self.lock(key):
                return await self._sync(key, logger=logger, handler=handler, ftj=ftj, job=job)
        except Exception:
            metrics.ERRORS.labels(handler).inc()
            raise
        finally:
            metrics.RECONCILE_SECONDS.labels(handler).observe(time.perf_counter() - started)

    async def _sync(
        self,
        key: Key,
        *,
        logger: Logger,
        handler: str,
        ftj: Mapping[str, Any] | None,
        job: Mapping[str, Any] | None,
    ) -> bool:
        ftj = ftj if ftj is not None else self.ftj(key)
        if ftj is None or (ftj.get("metadata") or {}).get("deletionTimestamp"):
            return False
        uid = uid_of(ftj)
        status = self.effective_status(ftj)
        metrics.PHASE_TRACKER.set(uid, status.get("phase"))
        if status.get("samples") and self.kube is not None:  # the trainer's evaluation samples, as an Event
            await self.samples.post_new(self.kube, ftj, status)
        job = job if job is not None else self.job_of(key, uid)
        job_uid = (job or {}).get("metadata", {}).get("uid")
        workload = self.workload_of(key, job_uid)
        if status.get("phase") in TERMINAL_PHASES:
            self.schedule_ttl(ftj, status)
            if workload is not None:  # Kueue owns the Job's suspend: a failed job's Workload gives its GPUs back
                return await self.hold(ftj, workload, status.get("phase"), logger)
            # A failure the operator decided (stuck pod, unverified upload) suspends the Job; if that patch
            # was lost, this repairs it (once per Job from events, every time from the resync).
            if st.needs_suspend(status, job) and (handler == "resync" or self.suspended.get(uid) != uid_of(job or {})):
                assert job is not None
                await self.suspend_job(ftj, job, logger)
                return True
            return False
        if job is None and not status.get("phase"):
            return False  # not created yet: create-workload writes the first status
        first_status = job is not None and not status.get("phase")
        # The first status is the state the job was accepted in (Pending, JobCreated), whatever the pods did
        # since: users see every job pass through Pending; the next sync catches up.
        pods = [] if first_status else self.pods_of(key, job_uid)
        now = dt.datetime.now(dt.UTC)
        watch_due = math.inf
        if self.restarter is not None and not first_status:
            handled, watch_due = await self.restarter.step(Observed(key, ftj, status, job, pods, now), logger)
            if handled:  # a restart in progress: the restarter wrote what there was to write
                return False
            if watch_due != math.inf:
                self.wake_after(key, watch_due + 0.5, logger)
        events, events_due = await self.pod_events(key, pods, now)
        view = {**ftj, "status": status}
        patch = st.derive_status(view, job, pods, now, self.settings, events, workload=workload)
        if workload is not None:
            await self.hold(ftj, workload, patch.get("phase"), logger)
        delta = st.changed(status, patch)
        if delta:
            await self.write_status(ftj, delta, logger)
        else:
            self.schedule_ttl(ftj, status)
        if first_status:
            self.trigger(*key, logger=logger, handler=handler)
        if job is not None and workload is None and st.needs_suspend(patch, job):
            await self.suspend_job(ftj, job, logger)
        wake = min(stuck.next_decision(pods, events, now, self.settings), events_due)
        if wake != float("inf"):
            self.wake_after(key, wake + 0.5, logger)
        return bool(delta)
