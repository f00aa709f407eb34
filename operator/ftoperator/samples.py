"""Evaluation samples as Events of the FineTuneJob.

The trainer cannot post Events (its Role allows only ``patch`` on its job's status): it reports the latest
evaluation's completions as ``status.samples`` (:class:`ftcrd.types.EvalSamples`, already shortened), and the
status sync (:mod:`ftoperator.reconciler`) turns each new set into one ``Normal`` Event, reason
``EvalSamples``, message capped at :data:`MESSAGE_CHARS`. The Event's name is derived from the job and the
step, so a set is posted once however many replicas, restarts or syncs see it (a second create is a 409).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from typing import Any

import aiohttp
from ftcrd.conditions import Reason
from ftcrd.types import EvalSamples
from pydantic import ValidationError

from ftoperator.kube import ApiError, Kube
from ftoperator.snapshots import uid_of

MESSAGE_CHARS = 1024  # what kopf (and kubectl describe) keep of an Event message
COMPONENT = "finetune-operator"

log = logging.getLogger("ftoperator")


def event_name(job: str, step: int) -> str:
    return f"{job}.samples-{step}"


def message(samples: EvalSamples) -> str:
    """``step 8: [1] 'prompt' -> 'policy' (reference 'reference') [2] ...``, at most MESSAGE_CHARS."""
    parts = [f"step {samples.step}:"]
    for i, s in enumerate(samples.items, start=1):
        ref = f" (reference {s.reference!r})" if s.reference is not None else ""
        parts.append(f"[{i}] {s.prompt!r} -> {s.policy!r}{ref}")
    text = " ".join(parts)
    return text if len(text) <= MESSAGE_CHARS else text[: MESSAGE_CHARS - 1] + "…"


def render_event(ftj: Mapping[str, Any], samples: EvalSamples, now: dt.datetime) -> dict[str, Any]:
    md = ftj["metadata"]
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": event_name(md["name"], samples.step), "namespace": md["namespace"]},
        "involvedObject": {
            "apiVersion": ftj.get("apiVersion"),
            "kind": ftj.get("kind"),
            "name": md["name"],
            "namespace": md["namespace"],
            "uid": md.get("uid"),
        },
        "type": "Normal",
        "reason": Reason.EVAL_SAMPLES,
        "message": message(samples),
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


class SampleEvents:
    """Posts each job's new ``status.samples`` once; remembers the last step posted per FineTuneJob uid."""

    def __init__(self) -> None:
        self.posted: dict[str, Any] = {}  # uid -> the status.samples step last handled

    def forget(self, uid: str) -> None:
        self.posted.pop(uid, None)

    async def post_new(self, kube: Kube, ftj: Mapping[str, Any], status: Mapping[str, Any]) -> bool:
        """Post the Event of ``status.samples`` unless this step's is already out; never raises. Returns
        whether an Event was created now."""
        raw = status.get("samples")
        if not isinstance(raw, Mapping) or not raw:
            return False
        uid = uid_of(ftj)
        if uid in self.posted and self.posted[uid] == raw.get("step"):
            return False
        self.posted[uid] = raw.get("step")  # tried once per step: a failure is logged, not retried every sync
        try:
            samples = EvalSamples.model_validate(raw)
        except ValidationError as exc:
            log.warning("ignoring malformed status.samples of %s: %s", ftj["metadata"].get("name"), exc.errors()[0])
            return False
        try:
            await kube.create(render_event(ftj, samples, dt.datetime.now(dt.UTC)))
        except ApiError as exc:
            if exc.status != 409:  # 409: posted before (another replica, or before a restart)
                log.warning("cannot post the samples Event of %s: %s", ftj["metadata"].get("name"), exc)
            return False
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("cannot post the samples Event of %s: %s", ftj["metadata"].get("name"), exc)
            return False
        return True
