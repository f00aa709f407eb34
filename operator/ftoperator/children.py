"""Creating a FineTuneJob's children: the namespace's trainer identity, then the Job (and the headless Service of
a multi-node job), adopting those that exist and are ours.

One function, :meth:`Workloads.ensure`, makes one attempt; ``create-workload``, ``adopt-workload`` and the
resync (for a Job that went missing) all call it. Failures are counted per FineTuneJob against one
:class:`RetryBudget`, whichever path made the attempt; when the budget runs out the job goes ``Failed`` with
``ChildCreateFailed`` and a message naming the last error.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import time
from collections.abc import Awaitable, Mapping
from typing import Any

import aiohttp
import pydantic
from ftcrd import conditions as C
from ftcrd.conditions import Reason as R
from ftcrd.names import KIND
from ftcrd.types import TERMINAL_PHASES

from ftoperator import admission, builders, metrics, sources
from ftoperator import status as st
from ftoperator.kube import ApiError
from ftoperator.objects import rfc3339, short
from ftoperator.reconciler import Logger, Reconciler
from ftoperator.settings import Settings
from ftoperator.snapshots import Key, ftj_logger, key_of, owner_uid, slim, slim_job, uid_of


@dataclasses.dataclass(frozen=True)
class RetryBudget:
    """Attempts at creating a job's children: the n-th retry waits ``backoff * n`` seconds; no attempt starts
    after the ``attempts``-th failure or when it would start more than ``timeout`` seconds after the first."""

    attempts: int
    backoff: float
    timeout: float

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryBudget:
        return cls(max(1, settings.handler_retries), max(0.0, settings.handler_backoff), settings.handler_timeout)

    def delay(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th failed attempt."""
        return self.backoff * failures

    def exhausted(self, failures: int, elapsed: float) -> bool:
        """No further attempt after ``failures`` failures, ``elapsed`` seconds after the first attempt started."""
        return failures >= self.attempts or elapsed + self.delay(failures) > self.timeout

    def retries_fit(self) -> bool:
        """Whether every attempt fits in the timeout (waits alone; the attempts' own time comes on top)."""
        return sum(self.delay(n) for n in range(1, self.attempts)) <= self.timeout


@dataclasses.dataclass
class Attempts:
    """Failed attempts at one job's children (in memory; a restarted operator starts a new budget)."""

    first: float
    """time.monotonic() when the first attempt started."""
    failures: int = 0
    last_error: str = ""
    retry_at: float = 0.0
    """time.monotonic() of the retry kopf has scheduled (until then the resync leaves the job alone)."""
    gave_up: str = ""
    """The failure message once the budget ran out (or the job was refused)."""
    gave_up_reason: str = R.CHILD_CREATE_FAILED


class Permanent(Exception):
    """Retrying cannot help (an invalid object, a child owned by someone else, a model source that failed)."""

    default_reason: str = R.CHILD_CREATE_FAILED

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason or self.default_reason


class Refused(Permanent):
    """The job breaks an admission rule (ftoperator.admission)."""

    default_reason = R.ADMISSION_REFUSED


class Conflict(Exception):
    """A child of the same name is in the way for now (being deleted, or owned by a deleted job)."""


def describe(exc: BaseException) -> str:
    """The error as a user reads it: the API server's message, or what went wrong on the way there."""
    if isinstance(exc, Conflict):
        return str(exc)
    if isinstance(exc, ApiError):
        return f"{exc.status} {exc.reason}: {exc.message}".replace(" : ", ": ")
    if isinstance(exc, aiohttp.ClientError | OSError | TimeoutError):
        return f"cannot reach the API server: {type(exc).__name__}: {exc}".rstrip(": ")
    return f"{type(exc).__name__}: {exc}"


class Workloads:
    def __init__(self, reconciler: Reconciler, settings: Settings) -> None:
        self.reconciler = reconciler
        self.settings = settings
        self.budget = RetryBudget.from_settings(settings)
        self.identities: dict[str, asyncio.Future[int]] = {}  # namespace -> its trainer identity's creation
        self.attempts: dict[str, Attempts] = {}
        self.in_flight: set[str] = set()
        self.waiting: dict[Key, set[Key]] = {}  # model source (ns, name) -> jobs waiting for it to finish
        reconciler.on_final.append(self.source_finished)

    def forget(self, uid: str) -> None:
        self.attempts.pop(uid, None)

    def busy(self, uid: str) -> bool:
        """An attempt is running, or kopf will make the next one."""
        rec = self.attempts.get(uid)
        return uid in self.in_flight or (rec is not None and not rec.gave_up and rec.retry_at > time.monotonic())

    # -- the trainer identity of a namespace ------------------------------------------------------

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
                del self.identities[namespace]  # the next attempt creates it again
            raise

    async def recheck_identity(self, namespace: str) -> int:
        """Create again whatever part of the namespace's trainer identity was deleted since (the others answer
        409); returns how many objects were missing. Skipped while a creation is in flight."""
        task = self.identities.get(namespace)
        if task is not None and not task.done():
            return 0
        self.identities[namespace] = task = asyncio.ensure_future(self._create_identity(namespace))
        try:
            return await asyncio.shield(task)
        except Exception:
            if self.identities.get(namespace) is task:
                del self.identities[namespace]
            raise

    async def _create_identity(self, namespace: str) -> int:
        kube = self.reconciler.kube
        assert kube is not None

        async def create(obj: dict[str, Any]) -> int:
            try:
                await kube.create(obj)
            except ApiError as exc:
                if exc.status != 409:
                    raise
                return 0
            metrics.CHILDREN_CREATED.labels(obj["kind"]).inc()
            return 1

        sa, role, binding = builders.render_trainer_identity(namespace)
        # The RoleBinding's escalation check resolves the Role it references: not before it.
        made = sum(await asyncio.gather(create(sa), create(role)))
        return made + await create(binding)

    def forget_identity(self, namespace: str) -> None:
        """Once a namespace has no FineTuneJobs left (e.g. it is being deleted), the next job there checks
        the identity again: a namespace re-created under the same name starts without one."""
        if not any(key[0] == namespace for key in self.reconciler.indexes.get("ftj_index", ())):
            self.identities.pop(namespace, None)

    # -- the job's own children -------------------------------------------------------------------

    async def _create_or_adopt(self, obj: dict[str, Any], uid: str, logger: Logger) -> dict[str, Any]:
        kube = self.reconciler.kube
        assert kube is not None
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
            raise Conflict(f"{obj['kind']} {md['name']} keeps conflicting")
        owner = owner_uid(existing, KIND)
        if owner == uid and (existing.get("metadata") or {}).get("deletionTimestamp"):
            # ours, but on its way out (a restart replaces the Job): never adopt it; create anew once it is gone
            raise Conflict(f"{obj['kind']} {md['name']} is being deleted; waiting for it to go")
        if owner != uid:
            if existing.get("metadata", {}).get("deletionTimestamp") or owner:
                raise Conflict(
                    f"{obj['kind']} {md['name']} belongs to another FineTuneJob (uid {owner}); waiting for it to go"
                )
            raise Permanent(f"{obj['kind']} {md['name']} already exists and is not managed by this job")
        logger.info("adopted existing %s %s", obj["kind"], md["name"])
        return existing

    async def create_children(
        self,
        ftj: builders.FineTuneJob,
        logger: Logger,
        *,
        source: builders.ModelSource | None = None,
        carry: builders.Carryover | None = None,
    ) -> dict[str, Any]:
        """Create every child, adopting those that already exist and are ours; returns the Job."""
        uid = ftj.metadata["uid"]
        with self.reconciler.creation():
            if builders.needs_trainer_identity(ftj):
                # Admission rejects pods whose ServiceAccount does not exist yet: the identity goes first.
                await self.ensure_identity(ftj.metadata["namespace"])
            # The Service (multi-node only) is needed once pods resolve their peers, not by the Job: one round
            # trip for both.
            children = builders.render_children(ftj, self.settings, source=source, carry=carry)
            *_, job = await asyncio.gather(*(self._create_or_adopt(o, uid, logger) for o in children))
            return job

    async def reconcile_suspend(self, ftj: Mapping[str, Any], job: Mapping[str, Any], logger: Logger) -> bool:
        """spec.runPolicy.suspend onto the Job. ``suspend-resume`` follows changes while the operator runs; one
        made while it was down (the diff base is in memory) or lost is applied here. Not with a Kueue queue: Kueue
        owns that Job's suspend, and the status sync holds its Workload instead (ftoperator.kueue)."""
        policy = (ftj.get("spec") or {}).get("runPolicy") or {}
        want, have = bool(policy.get("suspend")), bool((job.get("spec") or {}).get("suspend"))
        if want == have or policy.get("queueName"):
            return False
        kube = self.reconciler.kube
        assert kube is not None
        namespace, name = key_of(ftj)
        await kube.merge_patch("batch/v1", "Job", namespace, name, {"spec": {"suspend": want}})
        logger.info("%s the Job (spec.runPolicy.suspend)", "suspended" if want else "resumed")
        return True

    # -- one attempt --------------------------------------------------------------------------------

    async def ensure(self, body: Mapping[str, Any], logger: Logger, handler: str) -> float | None:
        """One attempt at the job's children. None when there is nothing more to do (created or adopted, failed
        for good, already finished); else the seconds to wait before the next attempt."""
        raw = slim(body)
        uid = uid_of(raw)
        if self.reconciler.effective_status(raw).get("phase") in TERMINAL_PHASES:
            self.attempts.pop(uid, None)
            return None
        rec = self.attempts.setdefault(uid, Attempts(first=time.monotonic()))
        if rec.gave_up:  # decided already; only the Failed status was lost
            await self._fail_logged(raw, rec.gave_up_reason, rec.gave_up, logger)
            return None
        started = time.perf_counter()
        self.in_flight.add(uid)
        try:
            try:
                ftj = builders.parse(body)
            except pydantic.ValidationError as exc:
                msg = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
                raise Permanent(f"invalid spec: {msg}") from exc
            if self.reconciler.job_of(key_of(raw), uid) is None:  # pods would be created: the rules decide first
                assert self.reconciler.kube is not None
                refused = await admission.refusals(self.reconciler.kube, body, self.settings)
                if refused:
                    raise Refused(admission.message(refused))
            source = await self._model_source(raw, logger)
            if isinstance(source, sources.Unresolved):
                self.attempts.pop(uid, None)  # waiting is not a failed attempt: the budget starts when it ends
                return None
            carry = builders.Carryover.from_status(raw.get("status") or {}, dt.datetime.now(dt.UTC))
            # Always the whole set: a previous attempt may have died between two creations (409 → adopt).
            job = slim_job(await self.create_children(ftj, logger, source=source, carry=carry))
            await self.reconcile_suspend(raw, job, logger)
        except Permanent as exc:
            metrics.ERRORS.labels(handler).inc()
            reason = R.INVALID_SPEC if str(exc).startswith("invalid spec") else exc.reason
            rec.gave_up, rec.gave_up_reason = str(exc), reason
            await self._fail_logged(raw, reason, str(exc), logger)
            return None
        except ApiError as exc:
            if exc.status in (400, 422):  # the apiserver rejects the object itself: retrying cannot help
                rec.gave_up = f"could not create the workload: {describe(exc)}"
                await self._fail_logged(raw, R.CHILD_CREATE_FAILED, rec.gave_up, logger)
                return None
            return await self._failed_attempt(raw, rec, exc, logger, handler)
        except Exception as exc:  # connection errors, conflicts, anything: counted against the budget
            return await self._failed_attempt(raw, rec, exc, logger, handler)
        finally:
            self.in_flight.discard(uid)
            metrics.RECONCILE_SECONDS.labels(handler).observe(time.perf_counter() - started)
        self.attempts.pop(uid, None)
        # The debounced sync reads the Job from the index (the Job's ADDED event triggers one too).
        self.reconciler.trigger(*key_of(raw), logger=logger, handler=handler)
        return None

    async def _model_source(
        self, raw: Mapping[str, Any], logger: Logger
    ) -> builders.ModelSource | sources.Unresolved | None:
        """spec.model.from resolved (:mod:`ftoperator.sources`); a job that must wait says so in its status and
        is attempted again when its source finishes (or by the resync), one whose source failed fails."""
        namespace, _ = key_of(raw)
        name = sources.source_job(raw)
        found = self.reconciler.ftj((namespace, name)) if name else None
        now = dt.datetime.now(dt.UTC)
        resolved = sources.resolve(raw, found, now, self.settings.missing_config_grace_seconds)
        if not isinstance(resolved, sources.Unresolved):
            return resolved
        if resolved.final:
            raise Permanent(resolved.message, resolved.reason)
        assert name is not None
        self.waiting.setdefault((namespace, name), set()).add(key_of(raw))
        conditions = self.reconciler.effective_status(raw).get("conditions")
        pending = {
            "phase": "Pending",
            "reason": resolved.reason,
            "message": short(resolved.message),
            "conditions": [st.set_condition(conditions, C.CREATED, False, resolved.reason, resolved.message, now)],
        }
        if st.changed(self.reconciler.effective_status(raw), pending):
            await self._write_logged(raw, pending, logger)
        return resolved

    def source_finished(self, key: Key) -> None:
        """A FineTuneJob reached a final phase: attempt the jobs waiting for it as their model source again."""
        for waiting in self.waiting.pop(key, set()):
            body = self.reconciler.ftj(waiting)
            if body is None or self.busy(uid_of(body)):
                continue
            logger = ftj_logger(body)
            asyncio.get_running_loop().create_task(self._logged(self.ensure(body, logger, "model-source"), logger))

    async def _failed_attempt(
        self, raw: Mapping[str, Any], rec: Attempts, exc: Exception, logger: Logger, handler: str
    ) -> float | None:
        metrics.ERRORS.labels(handler).inc()
        rec.failures += 1
        rec.last_error = describe(exc)
        elapsed = time.monotonic() - rec.first
        if self.budget.exhausted(rec.failures, elapsed):
            rec.gave_up = (
                f"gave up creating the workload after {rec.failures} attempt(s) in {int(elapsed)}s; "
                f"last error: {rec.last_error}"
            )
            await self._fail_logged(raw, R.CHILD_CREATE_FAILED, rec.gave_up, logger)
            return None
        delay = self.budget.delay(rec.failures)
        rec.retry_at = time.monotonic() + delay
        msg = f"could not create the workload: {rec.last_error}"
        logger.warning("%s (attempt %d/%d, next in %gs)", msg, rec.failures, self.budget.attempts, delay)
        now = dt.datetime.now(dt.UTC)
        conditions = self.reconciler.effective_status(raw).get("conditions")
        pending = {
            "phase": "Pending",
            "reason": R.CHILD_CREATE_FAILED,
            "message": short(f"{msg} (attempt {rec.failures}/{self.budget.attempts})"),
            "conditions": [st.set_condition(conditions, C.CREATED, False, R.CHILD_CREATE_FAILED, msg, now)],
        }
        await self._write_logged(raw, pending, logger)
        return delay

    async def fail(self, raw: Mapping[str, Any], reason: str, message: str, logger: Logger) -> None:
        now = dt.datetime.now(dt.UTC)
        conditions = self.reconciler.effective_status(raw).get("conditions")
        patch = {
            "phase": "Failed",
            "reason": reason,
            "message": short(message),
            "completionTime": rfc3339(now),
            "conditions": [
                st.set_condition(conditions, C.CREATED, False, reason, message, now),
                st.set_condition(conditions, "Failed", True, reason, message, now),
            ],
        }
        async with self.reconciler.lock(key_of(raw)):
            await self.reconciler.write_status(raw, patch, logger)

    async def _fail_logged(self, raw: Mapping[str, Any], reason: str, message: str, logger: Logger) -> None:
        await self._logged(self.fail(raw, reason, message, logger), logger)

    async def _write_logged(self, raw: Mapping[str, Any], patch: Mapping[str, Any], logger: Logger) -> None:
        await self._logged(self.reconciler.write_status(raw, patch, logger), logger)

    @staticmethod
    async def _logged(write: Awaitable[Any], logger: Logger) -> None:
        """A status write whose failure is logged, not raised: the resync writes it again."""
        try:
            await write
        except (ApiError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            logger.warning("status write failed (the resync retries): %s", describe(exc))
