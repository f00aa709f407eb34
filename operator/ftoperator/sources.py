"""``spec.model.from``, resolved (pure): the verified export a job starts from, or why it must wait or fail.

* ``from.uri`` (and its optional ``sha256``) is handed to the trainer as it is;
* ``from.job`` names an earlier FineTuneJob of the namespace. Once it is ``Succeeded`` its artifact
  (``status.artifact.uri``, pinned by ``status.artifact.sha256``, the sha256 of its manifest) is the source. While
  it is live, this job waits (``Pending/WaitingForModel``, no Job, no pods, no GPUs held). If it failed, has no
  verified artifact, or is still missing after the operator's missing-config grace period (it may simply not be in
  the index yet when both were applied together), this job fails (``ModelSourceFailed``).

The trainer downloads the source and verifies every file against the manifest (``fttrainer.source``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from typing import Any

from ftcrd.conditions import Reason as R
from ftcrd.names import ANN_CANCELLED
from ftcrd.objects import get
from ftcrd.types import PHASE_FAILED, PHASE_SUCCEEDED

from ftoperator.builders import ModelSource
from ftoperator.objects import parse_time


@dataclasses.dataclass(frozen=True)
class Unresolved:
    """The source is not usable (yet): wait (``final`` False) or fail the job with ``reason``."""

    reason: str
    message: str
    final: bool


def source_job(ftj: Mapping[str, Any]) -> str | None:
    """The name in spec.model.from.job, if any."""
    return get(ftj, "spec", "model", "from", "job")


def resolve(
    ftj: Mapping[str, Any], source: Mapping[str, Any] | None, now: dt.datetime, grace_seconds: float
) -> ModelSource | Unresolved | None:
    """The model ``ftj`` starts from: None (the base weights), a :class:`ModelSource`, or :class:`Unresolved`.
    ``source``: the FineTuneJob named by spec.model.from.job, as the operator's index has it (None: not there)."""
    spec = get(ftj, "spec", "model", "from") or {}
    if spec.get("uri"):
        return ModelSource(uri=str(spec["uri"]), sha256=spec.get("sha256"))
    name = spec.get("job")
    if not name:
        return None
    if name == get(ftj, "metadata", "name"):
        return Unresolved(R.MODEL_SOURCE_FAILED, f"spec.model.from.job names this job itself ({name})", True)
    if source is None:
        created = parse_time(get(ftj, "metadata", "creationTimestamp")) or now
        waited = (now - created).total_seconds()
        message = f"spec.model.from.job: FineTuneJob {name} does not exist in this namespace"
        if waited >= grace_seconds:
            return Unresolved(R.MODEL_SOURCE_FAILED, message, True)
        return Unresolved(R.WAITING_FOR_MODEL, f"{message} (yet; failing after {int(grace_seconds)}s)", False)
    status: Mapping[str, Any] = source.get("status") or {}
    phase = status.get("phase")
    artifact: Mapping[str, Any] = status.get("artifact") or {}
    if phase == PHASE_SUCCEEDED:
        if artifact.get("uri") and artifact.get("sha256"):
            return ModelSource(uri=str(artifact["uri"]), sha256=str(artifact["sha256"]))
        return Unresolved(R.MODEL_SOURCE_FAILED, f"FineTuneJob {name} succeeded without a verified artifact", True)
    if phase == PHASE_FAILED:
        why = f"{status.get('reason')}: {status.get('message')}" if status.get("reason") else "no reason given"
        return Unresolved(R.MODEL_SOURCE_FAILED, f"FineTuneJob {name} failed ({why})", True)
    if (get(source, "metadata", "annotations") or {}).get(ANN_CANCELLED) == "true":
        return Unresolved(R.MODEL_SOURCE_FAILED, f"FineTuneJob {name} was cancelled", True)
    return Unresolved(R.WAITING_FOR_MODEL, f"waiting for FineTuneJob {name} to succeed (it is {phase or 'new'})", False)
