"""One webhook delivery: OpenAI's event payload, signed per the Standard Webhooks spec, POSTed once.

Headers ``webhook-id`` (the event id, the same on every retry, so a receiver can drop duplicates),
``webhook-timestamp`` and ``webhook-signature`` (``v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">``,
made with the ``standardwebhooks`` package from a ``whsec_...`` secret). Receivers verify with any Standard
Webhooks library, or the openai client's ``client.webhooks.unwrap(body, headers, secret=...)``.

Endpoints must be https (http only when the deployment allows it) and, unless allowed, must not resolve to
loopback, private, link-local or otherwise reserved addresses: a caller-chosen callback URL must not make
the API probe the cluster's own network. Secrets and full URLs are never logged.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

import aiohttp
from standardwebhooks.webhooks import Webhook

EVENT_TYPES = {
    "succeeded": "fine_tuning.job.succeeded",
    "failed": "fine_tuning.job.failed",
    "cancelled": "fine_tuning.job.cancelled",
}
"""OpenAI job status -> the event sent when a job reaches it."""

USER_AGENT = "finetune-operator-webhooks/1"


def event_id(job_uid: str, event_type: str) -> str:
    """Stable across retries and API restarts: the receiver's idempotency key."""
    return "evt_" + hashlib.sha256(f"{job_uid}\0{event_type}".encode()).hexdigest()[:32]


def payload(event: str, event_type: str, created_at: int, job_id: str) -> str:
    """OpenAI's webhook event object (``openai.types.webhooks.FineTuningJobSucceededWebhookEvent`` etc.)."""
    body = {"id": event, "object": "event", "type": event_type, "created_at": created_at, "data": {"id": job_id}}
    return json.dumps(body, separators=(",", ":"))


def valid_secret(secret: str) -> bool:
    try:
        Webhook(secret)
    except Exception:
        return False
    return True


def signed_headers(secret: str, msg_id: str, body: str, now: datetime | None = None) -> dict[str, str]:
    when = (now or datetime.now(UTC)).astimezone(UTC)
    return {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, when, body),
    }


def url_problem(url: str, *, allow_http: bool) -> str | None:
    """Why ``url`` cannot be an endpoint (scheme, host), or None."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "is not a valid URL"
    if parts.scheme not in ("https", "http") or (parts.scheme == "http" and not allow_http):
        return "must be an https:// URL" if not allow_http else "must be an http(s):// URL"
    if not parts.hostname or parts.username or parts.password:
        return "must name a host (and no user or password)"
    if port == 0:
        return "must not use port 0"
    return None


def host_of(url: str) -> str:
    """What events show of an endpoint: its host (paths and queries may hold tokens)."""
    try:
        return urlsplit(url).hostname or "?"
    except ValueError:
        return "?"


async def address_problem(url: str, *, allow_private: bool) -> str | None:
    if allow_private:
        return None
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, parts.port or 443, type=socket.SOCK_STREAM)
    except OSError:
        return "host does not resolve"
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if not address.is_global:
            return "host resolves to a non-public address"
    return None


@dataclass(frozen=True)
class Outcome:
    status: int | None
    error: str | None

    @property
    def delivered(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


async def deliver(
    session: aiohttp.ClientSession,
    url: str,
    *,
    secret: str,
    msg_id: str,
    body: str,
    timeout: float,
    allow_http: bool,
    allow_private: bool,
) -> Outcome:
    """One attempt; never raises for the endpoint's faults (they are the Outcome)."""
    problem = url_problem(url, allow_http=allow_http) or await address_problem(url, allow_private=allow_private)
    if problem:
        return Outcome(None, f"endpoint {problem}")
    try:
        async with session.post(
            url,
            data=body.encode(),
            headers=signed_headers(secret, msg_id, body),
            timeout=aiohttp.ClientTimeout(total=timeout),
            allow_redirects=False,
        ) as response:
            await response.read()
            return Outcome(response.status, None if 200 <= response.status < 300 else f"HTTP {response.status}")
    except TimeoutError:
        return Outcome(None, f"no answer within {timeout:g}s")
    except aiohttp.ClientError as exc:
        return Outcome(None, f"connection failed ({type(exc).__name__})")
