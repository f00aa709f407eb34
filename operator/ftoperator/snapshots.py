"""Plain-dict snapshots of watched objects: what the indexes keep instead of kopf's live bodies.

A snapshot holds what the status mapping and the reconciler read (metadata, status, a few spec fields), so
the indexes of hundreds of jobs and their pods stay small, and nothing holds on to kopf's bodies.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

Key = tuple[str, str]
"""(namespace, FineTuneJob name): the key of every index."""

log = logging.getLogger("ftoperator")

_METADATA = (
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
_JOB_SPEC = ("suspend", "parallelism", "completions", "backoffLimit", "activeDeadlineSeconds")


def first(store: Iterable[Any] | None) -> Any:
    """The single value of an index store (or None)."""
    for item in store or ():
        return item
    return None


def slim(body: Mapping[str, Any], keep_spec: bool = True) -> dict[str, Any]:
    """A plain-dict copy of what status mapping needs."""
    md = body.get("metadata") or {}
    out: dict[str, Any] = {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": {k: md[k] for k in _METADATA if k in md},
        "status": dict(body.get("status") or {}),
    }
    if keep_spec:
        out["spec"] = dict(body.get("spec") or {})
    return out


def slim_job(body: Mapping[str, Any]) -> dict[str, Any]:
    out = slim(body, keep_spec=False)
    spec = body.get("spec") or {}
    out["spec"] = {k: spec.get(k) for k in _JOB_SPEC}
    return out


def slim_pod(body: Mapping[str, Any]) -> dict[str, Any]:
    out = slim(body, keep_spec=False)
    out["spec"] = {"nodeName": (body.get("spec") or {}).get("nodeName")}
    return out


def owner_uid(obj: Mapping[str, Any], kind: str) -> str | None:
    """The uid of the object's controller of ``kind`` (None when it has none)."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("kind") == kind and ref.get("controller"):
            return str(ref.get("uid"))
    return None


def uid_of(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("uid"))


def key_of(obj: Mapping[str, Any]) -> Key:
    md = obj.get("metadata") or {}
    return str(md.get("namespace") or ""), str(md.get("name") or "")


def ftj_logger(ftj: Mapping[str, Any]) -> logging.LoggerAdapter[logging.Logger]:
    """Log lines about a FineTuneJob carry its reference (``[ns/name]`` prefix, ``object`` in JSON), whichever
    watch event (pod, Job) or background task led to them."""
    md = ftj.get("metadata") or {}
    ref = {k: md.get(k) for k in ("name", "uid", "namespace")}
    ref.update(apiVersion=ftj.get("apiVersion"), kind=ftj.get("kind"))
    return logging.LoggerAdapter(log, {"k8s_skip": True, "k8s_ref": ref})
