"""Completion notifications: the API process delivers ``fine_tuning.job.succeeded|failed|cancelled``.

Why here: the API already holds the tenants' keys (and so their endpoints and signing secrets) and may
patch FineTuneJobs; the trainer and the operator need neither. Every ``notify_interval_seconds`` the loop
lists, in each namespace some key uses, the jobs labelled ``finetune.dev/notify=pending`` (set at creation
when the key has a webhook or the request a ``callbackUrl``), and for each that has reached an OpenAI
terminal status sends the due attempts.

State lives on the job (:mod:`ftapi.delivery`), written with the job's resourceVersion as precondition:
an attempt is first *claimed* (state ``sending`` with a lease), then sent, then its result recorded. So an
API restart loses nothing (the next process reads the record), two replicas never send the same attempt,
and an attempt whose result was not recorded (the process died) is sent again after its lease with the same
``webhook-id``: at-least-once, duplicates detectable. When every target is delivered or has failed for good
the label becomes ``done`` and the job is not listed again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import aiohttp
from ftcrd.names import ANN_CALLBACK_URL, ANN_NOTIFICATIONS, ANN_NOTIFY, LABEL_NOTIFY
from kubernetes_asyncio.client.exceptions import ApiException

from ftapi import delivery, mapping, webhooks
from ftapi.auth import Endpoint, KeyStore
from ftapi.delivery import Attempt, Record, Target
from ftapi.k8s import K8s
from ftapi.settings import Settings

log = logging.getLogger("ftapi.notify")

PENDING, DONE = "pending", "done"
LEASE_SLACK_SECONDS = 30
CONCURRENCY = 8


def new_record(ftj: dict[str, Any], status: str, tenant: Endpoint | None) -> Record:
    """The event for a job that reached ``status``: to the key's endpoint (when it has a url) and the callback."""
    meta = ftj.get("metadata") or {}
    event_type = webhooks.EVENT_TYPES[status]
    finished = mapping.to_openai_job(ftj)["finished_at"] or int(time.time())
    ann = meta.get("annotations") or {}
    targets = []
    if tenant is not None and tenant.url:
        targets.append(Target(kind="tenant", host=webhooks.host_of(tenant.url)))
    if ann.get(ANN_CALLBACK_URL):
        targets.append(Target(kind="callback", host=webhooks.host_of(ann[ANN_CALLBACK_URL])))
    return Record(
        id=webhooks.event_id(str(meta.get("uid", meta.get("name", ""))), event_type),
        type=event_type,
        created_at=finished,
        targets=targets,
    )


class Notifier:
    def __init__(self, k8s: K8s, keys: KeyStore, settings: Settings) -> None:
        self.k8s = k8s
        self.keys = keys
        self.settings = settings
        self._session: aiohttp.ClientSession | None = None
        self._limit = asyncio.Semaphore(CONCURRENCY)

    async def run(self) -> None:
        async with aiohttp.ClientSession() as session:
            self._session = session
            while True:
                try:
                    await self.tick()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # the apiserver or the key table may be briefly unavailable
                    log.warning("notification round failed: %s", type(exc).__name__)
                await asyncio.sleep(self.settings.notify_interval_seconds)

    async def tick(self) -> None:
        """One round over every namespace some API key uses."""
        namespaces = sorted({e.namespace for e in await self.keys.entries()})
        jobs: list[dict[str, Any]] = []
        for namespace in namespaces:
            try:
                jobs += await self.k8s.list_ftj(namespace, f"{LABEL_NOTIFY}={PENDING}")
            except Exception as exc:
                log.warning("cannot list jobs to notify in %s: %s", namespace, type(exc).__name__)
        await asyncio.gather(*(self.handle(job) for job in jobs))

    async def handle(self, ftj: dict[str, Any]) -> None:
        status = mapping.openai_status(ftj)
        if status not in webhooks.EVENT_TYPES:
            return
        async with self._limit:
            record = delivery.read(ftj)
            if record is None:
                entry = await self.keys.by_name(
                    ((ftj.get("metadata") or {}).get("annotations") or {}).get(ANN_NOTIFY, "")
                )
                record = new_record(ftj, status, entry.webhook if entry else None)
            now = int(time.time())
            if record.done:
                await self._save(ftj, record, None, None)
                return
            for index, target in enumerate(record.targets):
                if target.due(now):
                    claimed = await self._claim(ftj, record, index, now)
                    if claimed is None:
                        return  # the job changed under us (or another replica claimed it): next round
                    ftj, record = claimed
                    await self._attempt(ftj, record, index)
                    return  # one attempt per job and round keeps rounds short; the next is due at once

    def _patch(self, record: Record, resource_version: str | None) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "annotations": {ANN_NOTIFICATIONS: record.annotation()},
            "labels": {LABEL_NOTIFY: DONE if record.done else PENDING},
        }
        if resource_version:
            meta["resourceVersion"] = resource_version
        return {"metadata": meta}

    async def _claim(
        self, ftj: dict[str, Any], record: Record, index: int, now: int
    ) -> tuple[dict[str, Any], Record] | None:
        target = record.targets[index]
        target.state, target.tries = "sending", target.tries + 1
        target.lease_until = now + int(self.settings.webhook_timeout_seconds) + LEASE_SLACK_SECONDS
        meta = ftj["metadata"]
        try:
            updated = await self.k8s.patch_ftj(
                meta["namespace"], meta["name"], self._patch(record, meta["resourceVersion"])
            )
        except ApiException as exc:
            if exc.status in (404, 409):
                return None
            raise
        return updated, record

    async def _attempt(self, ftj: dict[str, Any], record: Record, index: int) -> None:
        target = record.targets[index]
        url, endpoint, problem = await self._endpoint(ftj, target)
        if problem or url is None or endpoint is None or endpoint.secret is None:
            outcome = webhooks.Outcome(None, problem or "no endpoint")
            final = True
        else:
            assert self._session is not None
            target.host = webhooks.host_of(url)
            outcome = await webhooks.deliver(
                self._session,
                url,
                secret=endpoint.secret,
                msg_id=record.id,
                body=webhooks.payload(record.id, record.type, record.created_at, ftj["metadata"]["name"]),
                timeout=self.settings.webhook_timeout_seconds,
                allow_http=self.settings.webhook_allow_http,
                allow_private=self.settings.webhook_allow_private,
            )
            final = False
        now = int(time.time())
        retries = self.settings.webhook_retry_seconds
        target.history = [*target.history, Attempt(n=target.tries, at=now, status=outcome.status, error=outcome.error)]
        target.history = target.history[-delivery.MAX_HISTORY :]
        if outcome.delivered:
            target.state = "delivered"
        elif final or target.tries > len(retries):
            target.state = "failed"
        else:
            target.state, target.next_at = "pending", now + round(retries[target.tries - 1])
        target.lease_until = 0
        name = ftj["metadata"]["name"]
        log.info(
            "webhook %s for %s/%s to %s endpoint %s: attempt %d %s",
            record.type,
            ftj["metadata"]["namespace"],
            name,
            target.kind,
            target.host,
            target.tries,
            "delivered" if outcome.delivered else f"failed ({outcome.error}), now {target.state}",
        )
        await self._save(ftj, record, index, target)

    async def _endpoint(self, ftj: dict[str, Any], target: Target) -> tuple[str | None, Endpoint | None, str | None]:
        """(url, endpoint with the signing secret, why not) from the current key table."""
        ann = (ftj.get("metadata") or {}).get("annotations") or {}
        entry = await self.keys.by_name(ann.get(ANN_NOTIFY, ""))
        if entry is None or entry.webhook is None:
            return None, None, "the API key's webhook secret is no longer configured"
        url = entry.webhook.url if target.kind == "tenant" else ann.get(ANN_CALLBACK_URL)
        if not url:
            return None, None, "the API key has no webhook url"
        return url, entry.webhook, None

    async def _save(self, ftj: dict[str, Any], record: Record, index: int | None, target: Target | None) -> None:
        """Write ``target`` (the result of our attempt) into the job's current record; retried on conflicts."""
        meta = ftj["metadata"]
        for _ in range(5):
            current = delivery.read(ftj) or record
            if index is not None and target is not None and index < len(current.targets):
                current.targets[index] = target
            try:
                await self.k8s.patch_ftj(
                    meta["namespace"], meta["name"], self._patch(current, ftj["metadata"]["resourceVersion"])
                )
                return
            except ApiException as exc:
                if exc.status == 404:
                    return
                if exc.status != 409:
                    raise
            ftj = await self.k8s.get_ftj(meta["namespace"], meta["name"])
        log.warning(
            "could not record a webhook attempt for %s/%s (conflicts); it will be retried",
            meta["namespace"],
            meta["name"],
        )
