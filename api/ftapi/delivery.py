"""The delivery record of a job's completion event, kept in the job's annotation ``finetune.dev/notifications``.

One event per job (the first of succeeded, failed or cancelled the API sees), sent to each target: the API
key's endpoint (``tenant``) and the seed webhook's ``callbackUrl`` (``callback``). Per target the record holds
its state, the attempts made (the last 10) and when the next is due; ``sending`` with a lease marks an attempt
in flight, so a second API replica leaves it alone and an API that died mid-attempt is retried after the lease
(at-least-once, same ``webhook-id``). Pure data: :mod:`ftapi.notify` writes it, :mod:`ftapi.mapping` shows it
in the job's events.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from ftcrd.names import ANN_NOTIFICATIONS
from pydantic import BaseModel, Field, ValidationError

MAX_HISTORY = 10


class Attempt(BaseModel):
    n: int
    at: int
    status: int | None = None
    error: str | None = None


class Target(BaseModel):
    kind: Literal["tenant", "callback"]
    host: str = "?"
    state: Literal["pending", "sending", "delivered", "failed"] = "pending"
    tries: int = 0
    next_at: int = 0
    lease_until: int = 0
    history: list[Attempt] = Field(default_factory=list)

    @property
    def final(self) -> bool:
        return self.state in ("delivered", "failed")

    def due(self, now: int) -> bool:
        if self.state == "pending":
            return self.next_at <= now
        return self.state == "sending" and self.lease_until <= now


class Record(BaseModel):
    id: str
    type: str
    created_at: int
    targets: list[Target]

    @property
    def done(self) -> bool:
        return all(t.final for t in self.targets)

    def annotation(self) -> str:
        return json.dumps(self.model_dump(exclude_defaults=False), separators=(",", ":"))


def read(ftj: dict[str, Any]) -> Record | None:
    raw = ((ftj.get("metadata") or {}).get("annotations") or {}).get(ANN_NOTIFICATIONS)
    if not raw:
        return None
    try:
        return Record.model_validate_json(raw)
    except ValidationError:
        return None


def events(record: Record) -> list[tuple[int, str, str, dict[str, Any]]]:
    """(time, level, message, data) for the job's events list: every attempt, then the final state."""
    out: list[tuple[int, str, str, dict[str, Any]]] = []
    for target in record.targets:
        where = f"{target.kind} endpoint {target.host}"
        base = {"webhook_event": record.type, "webhook_id": record.id, "endpoint": f"{target.kind}:{target.host}"}
        for i, attempt in enumerate(target.history):
            last = i == len(target.history) - 1
            data = {**base, "attempt": attempt.n, "http_status": attempt.status}
            if attempt.error is None:
                out.append(
                    (
                        attempt.at,
                        "info",
                        f"Webhook {record.type} delivered to {where}",
                        {**data, "delivery": "delivered"},
                    )
                )
                continue
            if last and target.state == "failed":
                text, level, state = f"gave up after {attempt.n} attempts", "error", "failed"
            elif last and target.state == "pending":
                text, level, state = f"retrying at {target.next_at}", "warn", "pending"
            else:
                text, level, state = "retried", "warn", "pending"
            message = f"Webhook {record.type} to {where}: attempt {attempt.n} failed ({attempt.error}); {text}"
            out.append((attempt.at, level, message, {**data, "delivery": state}))
    return out
