"""Reading Kubernetes objects as plain dicts: conditions, times, pod liveness (nested fields: ftcrd.objects). Pure."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from ftcrd.objects import get

MAX_MESSAGE = 1024


def rfc3339(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: object) -> dt.datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def condition(obj: Mapping[str, Any] | None, ctype: str) -> Mapping[str, Any] | None:
    for c in get(obj, "status", "conditions") or []:
        if c.get("type") == ctype:
            return c
    return None


def is_true(obj: Mapping[str, Any] | None, ctype: str) -> bool:
    c = condition(obj, ctype)
    return bool(c and c.get("status") == "True")


def short(text: str | None, limit: int = MAX_MESSAGE) -> str:
    text = (text or "").strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def created(obj: Mapping[str, Any]) -> str:
    return str(get(obj, "metadata", "creationTimestamp") or "")


def is_active(pod: Mapping[str, Any]) -> bool:
    """Neither finished nor being deleted."""
    return get(pod, "status", "phase") not in ("Succeeded", "Failed") and not get(pod, "metadata", "deletionTimestamp")
