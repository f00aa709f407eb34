"""What a chaos run is judged by, from what was observed: pure functions over FineTuneJobs, the Jobs and pods seen,
the objects left over and the bucket's contents (read through a callable, so the checks run on any source).

* **stuck**: a FineTuneJob not ``Succeeded``/``Failed`` at the deadline;
* **duplicates**: two live pods of one rank of one FineTuneJob at the same time (``Recorder``), or more Jobs created
  for a FineTuneJob than its restarts (``status.restarts``) and the Jobs the run deleted explain;
* **unverified**: a ``Succeeded`` job whose artifact is not what the bucket holds: ``manifest.json`` missing or with
  another sha256 than ``status.artifact.sha256``, or a file it lists missing or different;
* **orphans**: an object labelled for a FineTuneJob whose controller owner no longer exists (or that has none), and
  a trainer process still running for a pod that is not.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ftcrd.names import MANIFEST_NAME
from ftcrd.types import TERMINAL_PHASES

Reader = Callable[[str, str], bytes | None]
"""(bucket, object name) -> the object's bytes, or None when it does not exist."""


def phase_of(ftj: Mapping[str, Any]) -> str:
    return str((ftj.get("status") or {}).get("phase") or "(no status)")


def terminal_counts(ftjs: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    return dict(sorted(Counter(phase_of(f) for f in ftjs if phase_of(f) in TERMINAL_PHASES).items()))


def stuck(ftjs: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Jobs not finished: name, phase, reason and message, for the report."""
    return [
        {
            "name": f["metadata"]["name"],
            "phase": phase_of(f),
            "reason": (f.get("status") or {}).get("reason"),
            "message": str((f.get("status") or {}).get("message") or "")[:300],
        }
        for f in ftjs
        if phase_of(f) not in TERMINAL_PHASES
    ]


def failed_reasons(ftjs: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    return dict(Counter(str((f.get("status") or {}).get("reason")) for f in ftjs if phase_of(f) == "Failed"))


def extra_jobs(
    ftjs: Iterable[Mapping[str, Any]], job_uids: Mapping[str, set[str]], deleted: Mapping[str, int]
) -> dict[str, dict[str, int]]:
    """FineTuneJobs with more Jobs than explained: one, plus one per restart, plus one per Job the run deleted."""
    out = {}
    for f in ftjs:
        name = f["metadata"]["name"]
        restarts = int((f.get("status") or {}).get("restarts") or 0)
        expected = 1 + restarts + deleted.get(name, 0)
        seen = len(job_uids.get(name, ()))
        if seen > expected:
            out[name] = {"jobs": seen, "expected": expected, "restarts": restarts, "deleted": deleted.get(name, 0)}
    return out


def split_uri(uri: str) -> tuple[str, str]:
    """``gs://bucket/prefix/`` -> (bucket, prefix)."""
    if not uri.startswith("gs://"):
        raise ValueError(f"artifact uri {uri!r} is not gs://")
    bucket, _, prefix = uri[len("gs://") :].partition("/")
    return bucket, prefix


def artifact_problem(status: Mapping[str, Any], read: Reader) -> str | None:
    """Why a Succeeded job's artifact is not verified by the bucket's contents; None when it is."""
    artifact = status.get("artifact") or {}
    uri, sha = artifact.get("uri"), artifact.get("sha256")
    if not uri or not sha:
        return f"status.artifact has no uri or sha256: {artifact}"
    try:
        bucket, prefix = split_uri(str(uri))
    except ValueError as exc:
        return str(exc)
    manifest = read(bucket, prefix + MANIFEST_NAME)
    if manifest is None:
        return f"{uri}{MANIFEST_NAME} does not exist"
    got = hashlib.sha256(manifest).hexdigest()
    if got != sha:
        return f"{uri}{MANIFEST_NAME} has sha256 {got}, status.artifact.sha256 is {sha}"
    try:
        files = json.loads(manifest)["files"]
    except (ValueError, KeyError, TypeError) as exc:
        return f"{uri}{MANIFEST_NAME} is not a manifest: {exc}"
    for entry in files:
        data = read(bucket, prefix + str(entry.get("path")))
        if data is None:
            return f"{uri}{entry.get('path')} is listed in the manifest but missing"
        if len(data) != entry.get("size") or hashlib.sha256(data).hexdigest() != entry.get("sha256"):
            return f"{uri}{entry.get('path')} differs from its manifest entry"
    return None


def controller_uid(obj: Mapping[str, Any]) -> str | None:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return next((r.get("uid") for r in refs if r.get("controller")), None)


def orphaned(objects: Iterable[Mapping[str, Any]], live_uids: set[str]) -> list[str]:
    """``Kind/name`` of each object whose controller owner is not among ``live_uids`` (or that has no controller)."""
    out = []
    for obj in objects:
        owner = controller_uid(obj)
        if owner is None or owner not in live_uids:
            out.append(f"{obj.get('kind')}/{obj['metadata']['name']}")
    return sorted(out)
