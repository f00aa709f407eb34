"""kopf handlers: create the workload of each FineTuneJob, follow it, keep its status truthful.

Handlers (all with explicit ids, see docs/operator.md):

* ``create-workload`` (on.create) and ``adopt-workload`` (on.resume): make sure the namespace's trainer
  identity exists (once per namespace), then create the Indexed Job and, for multi-node jobs, the headless
  Service; idempotent (409 → adopt the existing child when it is ours).
* ``suspend-resume`` (on.update of spec.runPolicy.suspend): patch the Job's spec.suspend.
* ``ftj-events``, ``job-events`` (on.event) and the ``pod_index`` index: recompute the FineTuneJob status
  from the in-memory indexes (``ftj_index``, ``job_index``, ``pod_index``) and merge-patch the status
  subresource when it changed, posting an Event per phase transition.

No on.delete handler, daemon or timer is registered for FineTuneJobs, so kopf never adds a finalizer:
deleting a FineTuneJob works with the operator down, and the garbage collector removes the children
through their ownerReferences. TTL after finish is a background sweep, not a per-object timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

import kopf
import pydantic
from ftcrd.types import GROUP, KIND, PLURAL, TERMINAL_PHASES, VERSION

from ftoperator import builders, kueue, metrics
from ftoperator import status as st
from ftoperator.kube import MERGE_PATCH, ApiError, Kube, connection_info
from ftoperator.settings import Settings

SETTINGS = Settings.from_env()
FTJ = (GROUP, VERSION, PLURAL)
log = logging.getLogger("ftoperator")

Key = tuple[str, str]
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


def _first(store: Iterable[Any] | None) -> Any:
    for item in store or ():
        return item
    return None


def _slim(body: Mapping[str, Any], keep_spec: bool = True) -> dict[str, Any]:
    """A plain-dict copy of what status mapping needs (indexes keep these, not kopf's live bodies)."""
    md = body.get("metadata") or {}
    out: dict[str, Any] = {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": {
            k: md[k]
            for k in (
                "name",
                "namespace",
                "uid",
                "generation",
                "creationTimestamp",
                "deletionTimestamp",
                "labels",
                "annotations",
                "ownerReferences",
                "resourceVersion",
            )
            if k in md
        },
        "status": dict(body.get("status") or {}),
    }
    if keep_spec:
        out["spec"] = dict(body.get("spec") or {})
    return out


def _slim_job(body: Mapping[str, Any]) -> dict[str, Any]:
    out = _slim(body, keep_spec=False)
    spec = body.get("spec") or {}
    out["spec"] = {
        k: spec.get(k) for k in ("suspend", "parallelism", "completions", "backoffLimit", "activeDeadlineSeconds")
    }
    return out


def _slim_pod(body: Mapping[str, Any]) -> dict[str, Any]:
    out = _slim(body, keep_spec=False)
    out["spec"] = {"nodeName": (body.get("spec") or {}).get("nodeName")}
    return out


def ftj_logger(ftj: Mapping[str, Any]) -> logging.LoggerAdapter[logging.Logger]:
    """Log lines about a FineTuneJob carry its reference (``[ns/name]`` prefix, ``object`` in JSON), whichever
    watch event (pod, Job) led to them."""
    md = ftj.get("metadata") or {}
    ref = {k: md.get(k) for k in ("name", "uid", "namespace")}
    ref.update(apiVersion=ftj.get("apiVersion"), kind=ftj.get("kind"))
    return logging.LoggerAdapter(log, {"k8s_skip": True, "k8s_ref": ref})


def _owner_uid(obj: Mapping[str, Any], kind: str) -> str | None:
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("kind") == kind and ref.get("controller"):
            return str(ref.get("uid"))
    return None


# ---------------------------------------------------------------------------------------------
# state shared by the handlers
# ---------------------------------------------------------------------------------------------


class Reconciler:
    """Serialises status syncs per FineTuneJob and remembers what it last wrote.

    The FineTuneJob index lags behind our own status patches (the watch event arrives later), so the
    operator-owned part of the status it last wrote is overlaid on the indexed body: a sync right after
    a patch neither repeats it nor re-posts the transition Event.
    """

    def __init__(self) -> None:
        self.kube: Kube | None = None
        self.locks: dict[Key, asyncio.Lock] = {}
        self.written: dict[str, dict[str, Any]] = {}  # uid -> operator-owned status last written
        self.ttl_due: dict[str, tuple[str, str, float]] = {}  # uid -> (namespace, name, due unix time)
        self.ttl_task: asyncio.Task[None] | None = None
        self.pending: dict[Key, asyncio.Task[None]] = {}
        self.identities: dict[str, asyncio.Future[None]] = {}  # namespace -> its trainer identity's creation
        # Child creation (what users wait on: time to pods and GPUs) goes first: while creations are in
        # flight, status writes hold back for up to FTO_STATUS_YIELD_SECONDS.
        self.creating = 0
        self.no_creations = asyncio.Event()
        self.no_creations.set()
        # Status writes share the connection pool with child creation; under a burst of new jobs they must
        # not starve it (time to Job is what users wait on), so at most a quarter of the pool goes to them.
        self.status_slots = asyncio.Semaphore(max(2, SETTINGS.api_connections // 4))

    def trigger(
        self,
        namespace: str,
        name: str,
        *,
        indexes: Mapping[str, kopf.Index[Key, Any]],
        logger: logging.Logger | logging.LoggerAdapter[Any],
        handler: str,
    ) -> None:
        """Sync soon (after ``status_debounce_seconds``), once for all triggers that arrive meanwhile: a
        burst of pod/Job/FineTuneJob events becomes one status computation and at most one patch."""
        key = (namespace, name)
        if key in self.pending:
            return
        self.pending[key] = asyncio.get_running_loop().create_task(
            self._later(key, indexes=indexes, logger=logger, handler=handler)
        )

    async def _later(
        self,
        key: Key,
        *,
        indexes: Mapping[str, kopf.Index[Key, Any]],
        logger: logging.Logger | logging.LoggerAdapter[Any],
        handler: str,
    ) -> None:
        try:
            await asyncio.sleep(SETTINGS.status_debounce_seconds)
            if self.creating:
                # A burst of new jobs: their creations go first, and every event meanwhile joins this sync.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.no_creations.wait(), SETTINGS.status_yield_seconds)
        finally:
            self.pending.pop(key, None)  # events from now on schedule the next sync
        try:
            await self.sync(key[0], key[1], indexes=indexes, logger=logger, handler=handler)
        except Exception as exc:
            logger.warning("status sync of %s/%s failed (next event retries): %s", key[0], key[1], exc)

    async def ensure_identity(self, namespace: str) -> None:
        """The namespace's trainer ServiceAccount/Role/RoleBinding, created once per namespace (all jobs of a
        burst wait for the same creation); an existing one is kept as it is."""
        task = self.identities.get(namespace)
        if task is None:
            task = self.identities[namespace] = asyncio.ensure_future(self._create_identity(namespace))
        try:
            await asyncio.shield(task)
        except Exception:
            if self.identities.get(namespace) is task:
                del self.identities[namespace]  # the handler's retry creates it again
            raise

    async def _create_identity(self, namespace: str) -> None:
        assert self.kube is not None
        kube = self.kube

        async def create(obj: dict[str, Any]) -> None:
            try:
                await kube.create(obj)
                metrics.CHILDREN_CREATED.labels(obj["kind"]).inc()
            except ApiError as exc:
                if exc.status != 409:
                    raise

        sa, role, binding = builders.render_trainer_identity(namespace)
        # The RoleBinding's escalation check resolves the Role it references: not before it.
        await asyncio.gather(create(sa), create(role))
        await create(binding)

    def forget_identity(self, namespace: str, ftj_index: kopf.Index[Key, Any]) -> None:
        """Once a namespace has no FineTuneJobs left (e.g. it is being deleted), the next job there checks
        the identity again: a namespace re-created under the same name starts without one."""
        if not any(key[0] == namespace for key in ftj_index):
            self.identities.pop(namespace, None)

    def lock(self, key: Key) -> asyncio.Lock:
        lock = self.locks.get(key)
        if lock is None:
            lock = self.locks[key] = asyncio.Lock()
        return lock

    def forget(self, key: Key, uid: str | None) -> None:
        self.locks.pop(key, None)
        if uid:
            DIFFBASE.essences.pop(uid, None)
            PROGRESS.forget(uid)
            self.written.pop(uid, None)
            self.ttl_due.pop(uid, None)
            metrics.PHASE_TRACKER.forget(uid)

    def effective_status(self, ftj: Mapping[str, Any]) -> dict[str, Any]:
        status = dict(ftj.get("status") or {})
        uid = (ftj.get("metadata") or {}).get("uid")
        mine = self.written.get(str(uid))
        if mine:
            status.update(mine)
        return status

    async def write_status(
        self, ftj: Mapping[str, Any], delta: Mapping[str, Any], logger: logging.Logger | logging.LoggerAdapter[Any]
    ) -> None:
        """Merge-patch ``delta`` into the status subresource; post an Event when the phase or reason changed."""
        assert self.kube is not None
        md = ftj["metadata"]
        before = self.effective_status(ftj)
        if self.creating:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.no_creations.wait(), SETTINGS.status_yield_seconds)
        async with self.status_slots:
            await self.kube.patch_ftj_status(md["namespace"], md["name"], delta)
        metrics.STATUS_PATCHES.inc()
        mine = self.written.setdefault(str(md["uid"]), {})
        mine.update({k: v for k, v in delta.items() if k in st.OPERATOR_KEYS})
        phase, reason = delta.get("phase", before.get("phase")), delta.get("reason", before.get("reason"))
        metrics.PHASE_TRACKER.set(str(md["uid"]), phase)
        if (phase, reason) != (before.get("phase"), before.get("reason")):
            metrics.TRANSITIONS.labels(phase or "", reason or "").inc()
            message = str(delta.get("message", before.get("message")) or "")
            warning = phase == "Failed" or reason in ("Unschedulable", "ChildCreateFailed")
            text = f"{phase}: {message}" if message else str(phase)
            ftj_logger(ftj).info("phase %s (%s): %s", phase, reason, message)
            kopf.event(
                kopf.Body(dict(ftj)),  # type: ignore[arg-type]
                type="Warning" if warning else "Normal",
                reason=str(reason or phase),
                message=text[:1024],
            )
        if phase in TERMINAL_PHASES:
            self.schedule_ttl(ftj, delta.get("completionTime") or before.get("completionTime"))

    def schedule_ttl(self, ftj: Mapping[str, Any], completion_time: object) -> None:
        ttl = ((ftj.get("spec") or {}).get("runPolicy") or {}).get("ttlSecondsAfterFinished")
        done = st.parse_time(completion_time)
        if ttl is None or done is None:
            return
        md = ftj["metadata"]
        self.ttl_due[str(md["uid"])] = (md["namespace"], md["name"], done.timestamp() + float(ttl))

    async def sync(
        self,
        namespace: str,
        name: str,
        *,
        indexes: Mapping[str, kopf.Index[Key, Any]],
        logger: logging.Logger | logging.LoggerAdapter[Any],
        handler: str,
        ftj: Mapping[str, Any] | None = None,
        job: Mapping[str, Any] | None = None,
        pods: list[Mapping[str, Any]] | None = None,
    ) -> None:
        """Recompute one FineTuneJob's status from its Job and pods and write what changed."""
        key = (namespace, name)
        started = time.perf_counter()
        try:
            async with self.lock(key):
                ftj = ftj if ftj is not None else _first(indexes["ftj_index"].get(key))
                if ftj is None or (ftj.get("metadata") or {}).get("deletionTimestamp"):
                    return
                uid = str(ftj["metadata"].get("uid"))
                status = self.effective_status(ftj)
                metrics.PHASE_TRACKER.set(uid, status.get("phase"))
                if status.get("phase") in TERMINAL_PHASES:
                    self.schedule_ttl(ftj, status.get("completionTime"))
                    return
                if job is None:
                    job = next(
                        (j for j in indexes["job_index"].get(key, ()) if _owner_uid(j, "FineTuneJob") == uid), None
                    )
                if job is None and not status.get("phase"):
                    return  # not created yet: create-workload writes the first status
                job_uid = (job or {}).get("metadata", {}).get("uid")
                first = job is not None and not status.get("phase")
                if first:
                    # The first status is the state the job was accepted in (Pending, JobCreated), whatever
                    # the pods did since: users see every job pass through Pending; the next sync catches up.
                    pods = []
                elif pods is None:
                    pods = [p for p in indexes["pod_index"].get(key, ()) if job_uid and _owner_uid(p, "Job") == job_uid]
                view = {**ftj, "status": status}
                workloads = indexes[kueue.INDEX].get(key) if kueue.INDEX in indexes else None
                workload = next((w for w in workloads or () if job and _owner_uid(w, "Job") == job_uid), None)
                patch = st.derive_status(view, job, pods, dt.datetime.now(dt.UTC), SETTINGS, workload=workload)
                if workload is not None and kueue.needs_activation_change(ftj, workload, patch.get("phase")):
                    await self.activate(workload, kueue.wanted_active(ftj, patch.get("phase")), logger)
                delta = st.changed(status, patch)
                if not delta:
                    return
                await self.write_status(ftj, delta, logger)
                if first:
                    self.trigger(namespace, name, indexes=indexes, logger=logger, handler=handler)
                if job is not None and workload is None and st.needs_suspend(patch, job):
                    assert self.kube is not None
                    logger.warning("suspending Job %s: %s", name, patch.get("reason"))
                    await self.kube.merge_patch("batch/v1", "Job", namespace, name, {"spec": {"suspend": True}})
        except Exception:
            metrics.ERRORS.labels(handler).inc()
            raise
        finally:
            metrics.RECONCILE_SECONDS.labels(handler).observe(time.perf_counter() - started)

    async def activate(
        self, workload: Mapping[str, Any], active: bool, logger: logging.Logger | logging.LoggerAdapter[Any]
    ) -> None:
        """Hold (or release) a job Kueue manages through its Workload: Kueue would undo a Job suspend."""
        assert self.kube is not None
        path, patch = kueue.activation_patch(workload, active)
        await self.kube.request("PATCH", path, patch, content_type=MERGE_PATCH)
        logger.info("%s Kueue Workload %s", "activated" if active else "deactivated", workload["metadata"]["name"])


RECONCILER = Reconciler()


class LightDiffBaseStorage(kopf.AnnotationsDiffBaseStorage):
    """kopf's diff base, built from only the fields it keeps.

    kopf deep-copies the *whole* body on every event (managedFields, status and all) before dropping
    everything but spec, labels and annotations: in a 200-job burst that was a third of the operator's CPU.
    The result is identical; the copy is of what is kept.

    Jobs and pods have only event and index handlers, which never look at a diff, yet kopf builds (and
    progress storage copies again) an essence of every pod event: their essence is left empty.

    The copy itself is a JSON round trip (C code) rather than ``copy.deepcopy``: a FineTuneJob's defaulted
    spec has a few hundred nodes, and deepcopy of it was the largest item left in a burst's profile."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        if body.get("kind") != KIND:
            return kopf.BodyEssence()
        md = body.get("metadata") or {}
        if extra_fields:  # status fields followed by a handler (none today): kopf's own way
            light: dict[str, Any] = {k: v for k, v in body.items() if k not in ("metadata", "status")}
            light["metadata"] = {k: md[k] for k in ("name", "namespace", "labels", "annotations") if k in md}
            light["status"] = body.get("status") or {}
            return super().build(body=kopf.Body(light), extra_fields=extra_fields)  # type: ignore[arg-type]
        kept = {k: v for k, v in body.items() if k not in ("apiVersion", "kind", "metadata", "status")}
        essence: dict[str, Any] = json.loads(json.dumps(kept))
        for key in ("labels", "annotations"):
            if md.get(key):
                essence.setdefault("metadata", {})[key] = dict(md[key])
        annotations = essence.get("metadata", {}).get("annotations", {})
        ignored = self._detect_marked_prefixes(annotations)  # other kopf operators' storage
        for name in list(annotations):
            if name == LAST_APPLIED or any(name.startswith(f"{prefix}/") for prefix in ignored):
                del annotations[name]
        result = kopf.BodyEssence(**essence)  # type: ignore[typeddict-item]
        self.remove_annotations(result, set(self.make_keys(self.key, body=body)))
        self.remove_empty_stanzas(result)
        return result


def _uid(body: kopf.Body) -> str:
    return str(body.get("metadata", {}).get("uid"))


class MemoryDiffBaseStorage(LightDiffBaseStorage):
    """The diff base in this process's memory, not in an annotation on every FineTuneJob.

    An annotation costs a PATCH of every new FineTuneJob right after its workload is created (and a watch
    event back), competing with the next jobs' creations during a burst; it also clutters users' objects.
    What is lost on a restart is harmless: kopf then sees every FineTuneJob as new and ``create-workload``
    runs again, which adopts the existing children, re-applies spec.runPolicy.suspend to the Job and re-derives
    the status (the same work ``adopt-workload`` does)."""

    def __init__(self) -> None:
        super().__init__(prefix="finetune.dev", key="last-handled-configuration")
        self.essences: dict[str, kopf.BodyEssence] = {}

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return self.essences.get(_uid(body))

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        self.essences[_uid(body)] = essence


class MemoryProgressStorage(kopf.AnnotationsProgressStorage):
    """Handler progress (retry counts, delays) in memory, for the same reason. Only the "touch" that wakes an
    object up after a retry delay is still an annotation: kopf needs a watch event to retry."""

    def __init__(self) -> None:
        super().__init__(prefix="finetune.dev")
        self.records: dict[tuple[str, str], kopf.ProgressRecord] = {}

    def fetch(self, *, key: kopf.HandlerId, body: kopf.Body) -> kopf.ProgressRecord | None:
        return self.records.get((_uid(body), key))

    def store(self, *, key: kopf.HandlerId, record: kopf.ProgressRecord, body: kopf.Body, patch: kopf.Patch) -> None:
        self.records[(_uid(body), key)] = kopf.ProgressRecord(**record)

    def purge(self, *, key: kopf.HandlerId, body: kopf.Body, patch: kopf.Patch) -> None:
        self.records.pop((_uid(body), key), None)

    def forget(self, uid: str) -> None:
        for k in [k for k in self.records if k[0] == uid]:
            del self.records[k]

    def clear(self, *, essence: kopf.BodyEssence) -> kopf.BodyEssence:
        """The essence without our annotations. kopf deep-copies it first, on every event; a copy is only
        needed when there is something to remove (nobody mutates an essence after it is built)."""
        annotations = essence.get("metadata", {}).get("annotations", {})
        if not any(key.startswith(f"{self.prefix}/") for key in annotations):
            return essence
        return super().clear(essence=essence)


DIFFBASE = MemoryDiffBaseStorage()
PROGRESS = MemoryProgressStorage()


def _indexes(kwargs: Mapping[str, Any]) -> dict[str, kopf.Index[Key, Any]]:
    return {k: kwargs[k] for k in ("ftj_index", "job_index", "pod_index", kueue.INDEX)}


# ---------------------------------------------------------------------------------------------
# startup, login, probes
# ---------------------------------------------------------------------------------------------


@kopf.on.startup(id="configure")
async def configure(
    *, settings: kopf.OperatorSettings, logger: logging.Logger | logging.LoggerAdapter[Any], **_: Any
) -> None:
    s = SETTINGS
    # Handler progress and the diff base live in memory: nothing is written on users' objects (see the
    # storage classes for why that is safe across restarts).
    settings.persistence.progress_storage = PROGRESS
    settings.persistence.diffbase_storage = DIFFBASE
    # Watches: a bounded server-side timeout and an inactivity timeout so a silently dead stream is
    # re-established (bookmarks arrive every minute); only our children are streamed (label selector).
    settings.watching.server_timeout = s.watch_server_timeout
    settings.watching.client_timeout = s.watch_client_timeout
    settings.watching.connect_timeout = 10
    settings.watching.inactivity_timeout = s.watch_inactivity_timeout
    settings.watching.label_selectors["batch", "jobs"] = builders.LABEL_JOB
    settings.watching.label_selectors["v1", "pods"] = builders.LABEL_JOB
    # Events: handler log lines at event_level and above become Kubernetes Events on the object.
    settings.posting.enabled = True
    settings.posting.level = logging.getLevelName(s.event_level)
    settings.posting.reporting_component = "finetune-operator"
    # Handlers are async; the thread pool only serves kopf's own sync bits.
    settings.execution.max_workers = 4
    settings.networking.request_timeout = 60
    settings.networking.connect_timeout = 10
    settings.queueing.worker_limit = None
    # Peering: the highest-priority alive replica acts; the others pause their watches.
    settings.peering.name = s.peering_name
    settings.peering.priority = s.priority
    settings.peering.lifetime = s.peering_lifetime
    settings.peering.mandatory = False
    settings.peering.stealth = False

    RECONCILER.kube = await Kube.connect(settings, s)
    metrics.serve(s.metrics_port)
    RECONCILER.ttl_task = asyncio.create_task(ttl_sweeper())
    logger.info(
        "finetune-operator configured: trainer image %s, image-pull grace %ss, peering %s (priority %s)",
        s.trainer_image,
        s.image_pull_grace_seconds,
        s.peering_name,
        s.priority,
    )


@kopf.on.cleanup(id="close")
async def close(**_: Any) -> None:
    if RECONCILER.ttl_task is not None:
        RECONCILER.ttl_task.cancel()
    if RECONCILER.kube is not None:
        await RECONCILER.kube.close()


@kopf.on.login(id="login", retries=3)
def login(
    *, settings: kopf.OperatorSettings, logger: logging.Logger | logging.LoggerAdapter[Any], **_: Any
) -> kopf.ConnectionInfo:
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
    return {(namespace or "", name): _slim(body)}


@kopf.index("batch", "v1", "jobs", labels={builders.LABEL_JOB: kopf.PRESENT}, id="job_index")
async def job_index(*, namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Key, Any] | None:
    if _owner_uid(body, "FineTuneJob") is None:
        return None
    return {(namespace or "", labels[builders.LABEL_JOB]): _slim_job(body)}


@kopf.index(kueue.GROUP, kueue.PLURAL, id=kueue.INDEX)
async def workload_index(
    *,
    namespace: str | None,
    body: kopf.Body,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    **kwargs: Any,
) -> dict[Key, Any] | None:
    """Kueue's Workloads by their Job's key (ftoperator.kueue); like pods, each event schedules the job's sync."""
    job = kueue.job_owner(body)
    if job is None:
        return None
    key = (namespace or "", job)
    RECONCILER.trigger(*key, indexes=_indexes(kwargs), logger=logger, handler="workload-events")
    return {key: kueue.slim(body)}


@kopf.index("v1", "pods", labels={builders.LABEL_JOB: kopf.PRESENT}, id="pod_index")
async def pod_index(
    *,
    namespace: str | None,
    labels: kopf.Labels,
    body: kopf.Body,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    **kwargs: Any,
) -> dict[Key, Any] | None:
    """Also schedules the job's status sync: pods are the busiest stream, and a separate on.event handler
    would cost each pod event kopf's whole handler machinery a second time. (A deleted pod is not indexed;
    the Job's own event, its active/failed counts changing, triggers that sync.)"""
    if _owner_uid(body, "Job") is None:
        return None
    key = (namespace or "", labels[builders.LABEL_JOB])
    RECONCILER.trigger(*key, indexes=_indexes(kwargs), logger=logger, handler="pod-events")
    return {key: _slim_pod(body)}


# ---------------------------------------------------------------------------------------------
# workload creation
# ---------------------------------------------------------------------------------------------


async def ensure_children(
    ftj: builders.FineTuneJob, logger: logging.Logger | logging.LoggerAdapter[Any]
) -> dict[str, Any]:
    """Create every child, adopting those that already exist and are ours; returns the Job."""
    kube = RECONCILER.kube
    assert kube is not None
    uid = ftj.metadata["uid"]

    async def one(obj: dict[str, Any]) -> dict[str, Any]:
        md = obj["metadata"]
        for _ in range(3):
            try:
                created = await kube.create(obj)
                metrics.CHILDREN_CREATED.labels(obj["kind"]).inc()
                return created
            except ApiError as exc:
                if exc.status != 409:
                    raise
            try:
                existing = await kube.get(obj["apiVersion"], obj["kind"], md["namespace"], md["name"])
                break
            except ApiError as exc:
                if exc.status != 404:  # 409 then 404: it was being deleted; create again
                    raise
        else:
            raise kopf.TemporaryError(f"{obj['kind']} {md['name']} keeps conflicting", delay=SETTINGS.handler_backoff)
        owner = _owner_uid(existing, "FineTuneJob")
        if owner != uid:
            if existing.get("metadata", {}).get("deletionTimestamp") or owner:
                raise kopf.TemporaryError(
                    f"{obj['kind']} {md['name']} belongs to another FineTuneJob (uid {owner}); waiting for it to go",
                    delay=5,
                )
            raise kopf.PermanentError(f"{obj['kind']} {md['name']} already exists and is not managed by this job")
        logger.info("adopted existing %s %s", obj["kind"], md["name"])
        return existing

    RECONCILER.creating += 1
    RECONCILER.no_creations.clear()
    try:
        return await _create_children(ftj, one)
    finally:
        RECONCILER.creating -= 1
        if not RECONCILER.creating:
            RECONCILER.no_creations.set()


async def _create_children(ftj: builders.FineTuneJob, one: Any) -> dict[str, Any]:
    if builders.needs_trainer_identity(ftj):
        # Admission rejects pods whose ServiceAccount does not exist yet: the identity goes first.
        await RECONCILER.ensure_identity(ftj.metadata["namespace"])
    # The Service (multi-node only) is needed once pods resolve their peers, not by the Job: one round trip.
    *_, created_job = await asyncio.gather(*(one(o) for o in builders.render_children(ftj, SETTINGS)))
    return created_job


async def _workload(  # noqa: PLR0917
    body: kopf.Body,
    namespace: str,
    name: str,
    retry: int,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    indexes: dict[str, kopf.Index[Key, Any]],
    handler: str,
) -> None:
    started = time.perf_counter()
    raw = _slim(body)
    status = RECONCILER.effective_status(raw)
    if status.get("phase") in TERMINAL_PHASES:
        return
    try:
        ftj = builders.parse(body)
    except pydantic.ValidationError as exc:
        metrics.ERRORS.labels(handler).inc()
        msg = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
        await _fail(raw, "InvalidSpec", f"invalid spec: {msg}", logger)
        raise kopf.PermanentError(f"invalid spec: {msg}") from exc
    try:
        # Always the whole set: a previous run may have died between two creations (409 → adopt).
        job = _slim_job(await ensure_children(ftj, logger))
        await _reconcile_suspend(ftj, job, logger)
    except kopf.PermanentError as exc:
        metrics.ERRORS.labels(handler).inc()
        await _fail(raw, "ChildCreateFailed", str(exc), logger)
        raise
    except ApiError as exc:
        metrics.ERRORS.labels(handler).inc()
        final = exc.status in (400, 422) or retry + 1 >= SETTINGS.handler_retries
        msg = f"could not create the workload: {exc.message}"
        if final:
            await _fail(raw, "ChildCreateFailed", msg, logger)
            raise kopf.PermanentError(msg) from exc
        await RECONCILER.write_status(
            raw,
            {
                "phase": "Pending",
                "reason": "ChildCreateFailed",
                "message": msg + f" (attempt {retry + 1}/{SETTINGS.handler_retries})",
                "conditions": [
                    st.set_condition(
                        status.get("conditions"), "Created", False, "ChildCreateFailed", msg, dt.datetime.now(dt.UTC)
                    )
                ],
            },
            logger,
        )
        raise kopf.TemporaryError(msg, delay=SETTINGS.handler_backoff * (retry + 1)) from exc
    finally:
        metrics.RECONCILE_SECONDS.labels(handler).observe(time.perf_counter() - started)
    del job  # the debounced sync reads it from the index (the Job's ADDED event triggers one too)
    RECONCILER.trigger(namespace, name, indexes=indexes, logger=logger, handler=handler)


async def _reconcile_suspend(
    ftj: builders.FineTuneJob, job: Mapping[str, Any], logger: logging.Logger | logging.LoggerAdapter[Any]
) -> None:
    """spec.runPolicy.suspend onto an adopted Job. ``suspend-resume`` follows changes while the operator runs;
    one made while it was down arrives as a new object (the diff base is in memory) and is applied here."""
    want, have = ftj.spec.run_policy.suspend, bool((job.get("spec") or {}).get("suspend"))
    if want == have or ftj.spec.run_policy.queue_name:  # with Kueue, its Workload is held instead (sync)
        return
    assert RECONCILER.kube is not None
    md = ftj.metadata
    await RECONCILER.kube.merge_patch("batch/v1", "Job", md["namespace"], md["name"], {"spec": {"suspend": want}})
    logger.info("%s the Job (spec.runPolicy.suspend)", "suspended" if want else "resumed")


async def _fail(
    raw: Mapping[str, Any], reason: str, message: str, logger: logging.Logger | logging.LoggerAdapter[Any]
) -> None:
    now = dt.datetime.now(dt.UTC)
    status = RECONCILER.effective_status(raw)
    patch = {
        "phase": "Failed",
        "reason": reason,
        "message": message[: st.MAX_MESSAGE],
        "completionTime": st.rfc3339(now),
        "conditions": [
            st.set_condition(status.get("conditions"), "Created", False, reason, message, now),
            st.set_condition(status.get("conditions"), "Failed", True, reason, message, now),
        ],
    }
    async with RECONCILER.lock((raw["metadata"]["namespace"], raw["metadata"]["name"])):
        await RECONCILER.write_status(raw, patch, logger)


@kopf.on.create(
    *FTJ,
    id="create-workload",
    retries=SETTINGS.handler_retries,
    backoff=SETTINGS.handler_backoff,
    timeout=SETTINGS.handler_timeout,
)
async def create_workload(
    *,
    body: kopf.Body,
    namespace: str | None,
    name: str,
    retry: int,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    **kwargs: Any,
) -> None:
    indexes = _indexes(kwargs)
    await _workload(body, namespace or "", name, retry, logger, indexes, "create-workload")


@kopf.on.resume(
    *FTJ,
    id="adopt-workload",
    retries=SETTINGS.handler_retries,
    backoff=SETTINGS.handler_backoff,
    timeout=SETTINGS.handler_timeout,
)
async def adopt_workload(
    *,
    body: kopf.Body,
    namespace: str | None,
    name: str,
    retry: int,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    **kwargs: Any,
) -> None:
    """After an operator (re)start: re-create missing children (the previous run may have died mid-way),
    adopt existing ones, and re-derive the status."""
    indexes = _indexes(kwargs)
    await _workload(body, namespace or "", name, retry, logger, indexes, "adopt-workload")


@kopf.on.update(
    *FTJ,
    field="spec.runPolicy.suspend",
    id="suspend-resume",
    retries=SETTINGS.handler_retries,
    backoff=SETTINGS.handler_backoff,
    timeout=SETTINGS.handler_timeout,
)
async def suspend_resume(
    *,
    new: Any,
    body: kopf.Body,
    namespace: str | None,
    name: str,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    **_: Any,
) -> None:
    """spec.runPolicy.suspend → the Job's spec.suspend (its pods stop; resume starts new ones).
    With a Kueue queue, the status sync holds or releases its Workload instead (ftoperator.kueue)."""
    if (body.get("status") or {}).get("phase") in TERMINAL_PHASES:
        return
    suspend = bool(new)
    if ((body.get("spec") or {}).get("runPolicy") or {}).get("queueName"):
        return  # Kueue owns the Job's suspend: the status sync (de)activates its Workload (ftoperator.kueue)
    kube = RECONCILER.kube
    assert kube is not None
    try:
        await kube.merge_patch("batch/v1", "Job", namespace or "", name, {"spec": {"suspend": suspend}})
    except ApiError as exc:
        if exc.status == 404:
            return  # not created yet; create-workload renders the current spec
        raise kopf.TemporaryError(str(exc), delay=SETTINGS.handler_backoff) from exc
    logger.info("%s the Job", "suspended" if suspend else "resumed")


# ---------------------------------------------------------------------------------------------
# following the workload
# ---------------------------------------------------------------------------------------------


@kopf.on.event(*FTJ, id="ftj-events")
async def ftj_event(
    *,
    type: str,
    body: kopf.Body,
    namespace: str | None,
    name: str,
    uid: str,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    **kwargs: Any,
) -> None:
    """Trainer progress (stage 'uploading' → phase Uploading), terminal bookkeeping, forgetting deleted ones."""
    if type == "DELETED":
        RECONCILER.forget((namespace or "", name), uid)
        RECONCILER.forget_identity(namespace or "", kwargs["ftj_index"])
        return
    RECONCILER.trigger(
        namespace or "",
        name,
        indexes=_indexes(kwargs),
        logger=logger,
        handler="ftj-events",
    )


@kopf.on.event("batch", "v1", "jobs", labels={builders.LABEL_JOB: kopf.PRESENT}, id="job-events")
async def job_event(
    *,
    namespace: str | None,
    labels: kopf.Labels,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    **kwargs: Any,
) -> None:
    RECONCILER.trigger(
        namespace or "",
        labels[builders.LABEL_JOB],
        indexes=_indexes(kwargs),
        logger=logger,
        handler="job-events",
    )


# ---------------------------------------------------------------------------------------------
# TTL after finished
# ---------------------------------------------------------------------------------------------


async def sweep_ttl(now: float | None = None) -> int:
    """Delete finished FineTuneJobs whose completionTime + ttlSecondsAfterFinished has passed.

    Entries are registered only by syncs (which run on the active peering replica); the uid
    precondition makes a stale entry harmless (a re-created job of the same name is never deleted)."""
    kube = RECONCILER.kube
    assert kube is not None
    now = time.time() if now is None else now
    deleted = 0
    for uid, (namespace, name, due) in list(RECONCILER.ttl_due.items()):
        if due > now:
            continue
        try:
            await kube.delete(f"{GROUP}/{VERSION}", "FineTuneJob", namespace, name, uid=uid)
            metrics.TTL_DELETIONS.inc()
            deleted += 1
            log.info("deleted finished FineTuneJob %s/%s (ttlSecondsAfterFinished)", namespace, name)
        except ApiError as exc:
            if exc.status not in (404, 409):
                metrics.ERRORS.labels("ttl").inc()
                log.warning("TTL deletion of %s/%s failed: %s", namespace, name, exc)
                continue
        RECONCILER.ttl_due.pop(uid, None)
    return deleted


async def ttl_sweeper() -> None:
    while True:
        await asyncio.sleep(SETTINGS.ttl_sweep_seconds)
        try:
            await sweep_ttl()
        except asyncio.CancelledError:
            raise
        except Exception:
            metrics.ERRORS.labels("ttl").inc()
            log.exception("TTL sweep failed")
