"""Bearer keys from a Kubernetes Secret.

Secret ``finetune-api-keys`` (in the API's own namespace), key ``keys.yaml``::

    - name: team-a            # shown in logs instead of the key
      sha256: 9f86d0...        # hex sha256 of the bearer key
      namespace: team-a       # the only namespace this key may use
      communities: [c-1, c-2] # optional: the communityIds it may name ("*": any); default: only its namespace
      webhook:                # optional: where the jobs this key creates are notified when they end
        url: https://hooks.team-a.example/finetune
        secretKey: team-a-webhook   # a key of this same Secret holding the whsec_... signing secret

Keys are stored hashed and compared with :func:`hmac.compare_digest` against every entry
(no early exit). The Secret is re-read at most every ``keys_refresh_seconds``; if a refresh
fails the previous table keeps serving. Neither the key, its hash nor a signing secret is ever logged.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import re
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import yaml

from ftapi.errors import APIError
from ftapi.webhooks import valid_secret

if TYPE_CHECKING:
    from ftapi.k8s import K8s

log = logging.getLogger("ftapi.auth")

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


ANY_COMMUNITY = "*"
_COMMUNITY = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")  # ftcrd.base.CommunityId


@dataclass(frozen=True)
class Endpoint:
    """A key's webhook endpoint; the signing secret is read from the keys Secret (by ``secret_key``)."""

    url: str | None
    secret_key: str
    secret: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Tenant:
    name: str
    namespace: str
    communities: tuple[str, ...] | None = None
    """The communityIds this key may name; None: the one derived from the key, its namespace."""
    webhook: Endpoint | None = None

    def may_use(self, community: str) -> bool:
        """Whether this key may write under ``community`` (the artifact folder <prefix>/<namespace>/<community>/)."""
        allowed = self.communities if self.communities is not None else (self.namespace,)
        return ANY_COMMUNITY in allowed or community in allowed


@dataclass(frozen=True)
class KeyEntry:
    name: str
    sha256: bytes = field(repr=False)
    namespace: str
    communities: tuple[str, ...] | None = None
    webhook: Endpoint | None = None


def _communities(name: str, raw: object) -> tuple[str, ...] | None:
    """The entry's ``communities`` list; a malformed list grants nothing rather than everything."""
    if raw is None:
        return None
    if not isinstance(raw, list) or not all(
        isinstance(c, str) and (c == ANY_COMMUNITY or _COMMUNITY.match(c)) for c in raw
    ):
        log.warning("keys.yaml entry %r has a malformed communities list; it may name no community", name)
        return ()
    return tuple(raw)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def parse_keys(text: str) -> list[KeyEntry]:
    """Parse keys.yaml; malformed entries are skipped (and reported by name only)."""
    data = yaml.safe_load(text) or []
    if isinstance(data, dict) and "keys" in data:
        data = data["keys"]
    if not isinstance(data, list):
        raise ValueError("keys.yaml must be a list of {name, sha256, namespace}")
    out = []
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            log.warning("keys.yaml entry %d is not a mapping; skipped", i)
            continue
        name = str(item.get("name") or f"entry-{i}")
        digest = str(item.get("sha256") or "").strip().lower()
        namespace = str(item.get("namespace") or "")
        if not _HEX64.match(digest) or not _DNS_LABEL.match(namespace):
            log.warning("keys.yaml entry %r has no valid sha256/namespace; skipped", name)
            continue
        communities = _communities(name, item.get("communities"))
        out.append(
            KeyEntry(
                name=name,
                sha256=bytes.fromhex(digest),
                namespace=namespace,
                communities=communities,
                webhook=_endpoint(item, name),
            )
        )
    return out


def _endpoint(item: dict[str, object], name: str) -> Endpoint | None:
    hook = item.get("webhook")
    if hook is None:
        return None
    url = hook.get("url") if isinstance(hook, dict) else None
    secret_key = hook.get("secretKey") if isinstance(hook, dict) else None
    if not isinstance(secret_key, str) or not secret_key or (url is not None and not isinstance(url, str)):
        log.warning("keys.yaml entry %r: webhook needs secretKey (and an optional url string); ignored", name)
        return None
    return Endpoint(url=url or None, secret_key=secret_key)


def match(entries: list[KeyEntry], key: str) -> KeyEntry | None:
    digest = hashlib.sha256(key.encode()).digest()
    found = None
    for entry in entries:  # constant time per entry, every entry compared
        if hmac.compare_digest(entry.sha256, digest) and found is None:
            found = entry
    return found


def _with_secret(entry: KeyEntry, data: dict[str, str]) -> KeyEntry:
    """The entry with its webhook's signing secret from the Secret's data (an unusable one disables it)."""
    if entry.webhook is None:
        return entry
    raw = data.get(entry.webhook.secret_key)
    secret = base64.b64decode(raw).decode(errors="replace").strip() if raw else ""
    if not secret or not valid_secret(secret):
        log.warning(
            "key %r: webhook secret %r is missing or not a whsec_ secret; no notifications",
            entry.name,
            entry.webhook.secret_key,
        )
        return replace(entry, webhook=None)
    return replace(entry, webhook=replace(entry.webhook, secret=secret))


def unauthorized(message: str) -> APIError:
    return APIError(
        401, message, code="invalid_api_key", type="invalid_request_error", headers={"WWW-Authenticate": "Bearer"}
    )


class KeyStore:
    """Caches the key table read from the Secret."""

    def __init__(self, k8s: K8s, namespace: str, name: str, key: str, refresh_seconds: float) -> None:
        self._k8s = k8s
        self.namespace = namespace
        self.name = name
        self.key = key
        self.refresh_seconds = refresh_seconds
        self._entries: list[KeyEntry] | None = None
        self._loaded_at = 0.0
        self._lock = asyncio.Lock()

    async def _load(self) -> list[KeyEntry]:
        secret = await self._k8s.read_secret(self.namespace, self.name)
        data = secret.data or {}
        raw = data.get(self.key)
        if raw is None:
            raise ValueError(f"Secret {self.namespace}/{self.name} has no key {self.key}")
        return [_with_secret(entry, data) for entry in parse_keys(base64.b64decode(raw).decode())]

    async def entries(self) -> list[KeyEntry]:
        now = time.monotonic()
        if self._entries is not None and now - self._loaded_at < self.refresh_seconds:
            return self._entries
        async with self._lock:
            if self._entries is not None and time.monotonic() - self._loaded_at < self.refresh_seconds:
                return self._entries
            try:
                self._entries = await self._load()
                self._loaded_at = time.monotonic()
            except Exception as exc:
                # Never include the Secret's content; the exception type and status are enough.
                status = getattr(exc, "status", None)
                log.error(
                    "cannot load API keys from Secret %s/%s: %s %s",
                    self.namespace,
                    self.name,
                    type(exc).__name__,
                    status or "",
                )
                if self._entries is None:
                    raise APIError(
                        503, "API keys are not available yet; retry later", code="keys_unavailable"
                    ) from None
                self._loaded_at = time.monotonic() - self.refresh_seconds + min(2.0, self.refresh_seconds)
            return self._entries

    async def authenticate(self, authorization: str | None) -> Tenant:
        if not authorization:
            raise unauthorized("Missing bearer authentication in header (Authorization: Bearer <key>)")
        scheme, _, key = authorization.partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise unauthorized("Malformed Authorization header; expected 'Bearer <key>'")
        entry = match(await self.entries(), key)
        if entry is None:
            raise unauthorized("Incorrect API key provided")
        return Tenant(name=entry.name, namespace=entry.namespace, communities=entry.communities, webhook=entry.webhook)

    async def by_name(self, name: str) -> KeyEntry | None:
        return next((e for e in await self.entries() if e.name == name), None)
