"""Pure mappings: FineTuneJob / ConfigMap (wire dicts) -> OpenAI-shaped objects.

No I/O here; the routers fetch objects and these functions shape them, so every mapping is
unit-tested without a cluster.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from ftcrd import conditions as cond
from ftcrd.conditions import Reason
from ftcrd.names import (
    ANN_ACTIONS,
    ANN_BASE_LR,
    ANN_BYTES,
    ANN_CANCELLED,
    ANN_CREATED_AT,
    ANN_FILENAME,
    ANN_METADATA,
    ANN_OPENAI_MODEL,
    ANN_PURPOSE,
    ANN_SUFFIX,
    ANN_TRAINING_FILE,
    ANN_VALIDATION_FILE,
)
from ftcrd.trainer_config import default
from ftcrd.types import PHASE_RUNNING, PHASE_SUCCEEDED, PHASE_UPLOADING, TERMINAL_PHASES, HyperparametersSpec

from ftapi import delivery, lora

DEFAULT_LR = HyperparametersSpec.model_validate({}).learning_rate
OpenAIStatus = str  # validating_files | queued | running | succeeded | failed | cancelled
RESULTS_FILE_PREFIX = "file-results-"
"""A job's results file id is this prefix and the job's name (see ftapi.results)."""
_JOB_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


def valid_job_name(name: str) -> bool:
    return len(name) <= 253 and bool(_JOB_NAME.match(name))


def results_file_id(job: str) -> str:
    return RESULTS_FILE_PREFIX + job


def epoch(ts: Any) -> int | None:
    """RFC 3339 (or datetime) -> Unix seconds."""
    if ts is None or ts == "":
        return None
    if isinstance(ts, datetime):
        dt = ts
    else:
        try:
            dt = datetime.fromisoformat(str(ts).replace("Z", "+00:00"))
        except ValueError:
            return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp())


def _meta(obj: dict[str, Any]) -> dict[str, Any]:
    return obj.get("metadata") or {}


def _annotations(obj: dict[str, Any]) -> dict[str, str]:
    return _meta(obj).get("annotations") or {}


def _status(obj: dict[str, Any]) -> dict[str, Any]:
    return obj.get("status") or {}


def is_cancelled(ftj: dict[str, Any]) -> bool:
    return _annotations(ftj).get(ANN_CANCELLED) == "true"


def is_suspended(ftj: dict[str, Any]) -> bool:
    return bool(((ftj.get("spec") or {}).get("runPolicy") or {}).get("suspend"))


def is_terminal(ftj: dict[str, Any]) -> bool:
    return _status(ftj).get("phase") in TERMINAL_PHASES


def openai_status(ftj: dict[str, Any]) -> OpenAIStatus:
    phase = _status(ftj).get("phase")
    if phase == "Succeeded":
        return "succeeded"
    if phase == "Failed" and not is_cancelled(ftj):
        return "failed"
    if is_cancelled(ftj):
        return "cancelled"
    if phase in (PHASE_RUNNING, PHASE_UPLOADING):
        return "running"
    # None, Pending, Suspended (paused: the 3.57 client's Literal has no "paused"; the job waits to run)
    return "queued"


def _round(x: float) -> float:
    return float(f"{x:.6g}")


def hyperparameters(ftj: dict[str, Any]) -> dict[str, Any]:
    hp = (ftj.get("spec") or {}).get("hyperparameters") or {}
    lr = float(hp.get("learningRate", DEFAULT_LR))
    try:
        base = float(_annotations(ftj).get(ANN_BASE_LR) or DEFAULT_LR)
    except ValueError:
        base = DEFAULT_LR
    # What the apiserver defaulted is in the object; the contract's defaults only stand in for an older object.
    return {
        "batch_size": int(hp.get("batchSize", default("hyperparameters.batch_size"))),
        "learning_rate_multiplier": _round(lr / base) if base > 0 else 1.0,
        "n_epochs": int(hp.get("epochs") or default("hyperparameters.epochs") or 1),
    }


def method(ftj: dict[str, Any]) -> dict[str, Any]:
    spec_method = (ftj.get("spec") or {}).get("method") or {}
    hp = hyperparameters(ftj)
    if spec_method.get("type", default("method.type")) == "sft":
        return {"type": "supervised", "supervised": {"hyperparameters": hp}}
    beta = float(spec_method.get("beta", default("method.beta")))
    return {"type": "dpo", "dpo": {"hyperparameters": {"beta": beta, **hp}}}


def job_error(ftj: dict[str, Any]) -> dict[str, Any] | None:
    status = _status(ftj)
    if status.get("phase") != "Failed":
        return None
    reason = status.get("reason") or Reason.TRAINER_FAILED
    message = status.get("message") or cond.REASONS.get(reason, "The job failed.")
    param = "training_file" if reason == Reason.INVALID_DATASET else None
    return {"code": reason, "message": message, "param": param}


def estimated_finish(ftj: dict[str, Any]) -> int | None:
    if openai_status(ftj) != "running":
        return None
    progress = _status(ftj).get("progress") or {}
    eta = progress.get("etaSeconds")
    if eta is None:
        return None
    base = epoch(progress.get("updatedAt")) or int(datetime.now(UTC).timestamp())
    return base + int(eta)


def fine_tuned_model(ftj: dict[str, Any]) -> str | None:
    """OpenAI's ``fine_tuned_model``: the verified artifact's gs:// folder once the job succeeded. Passing it as
    ``model`` of a new job starts that job from it (spec.model.from)."""
    artifact = _status(ftj).get("artifact") or {}
    return artifact.get("uri") if openai_status(ftj) == "succeeded" else None


def to_openai_job(ftj: dict[str, Any], organization: str = "") -> dict[str, Any]:
    meta = _meta(ftj)
    ann = _annotations(ftj)
    spec = ftj.get("spec") or {}
    status = _status(ftj)
    dataset = spec.get("dataset") or {}
    metrics = status.get("metrics") or {}
    state = openai_status(ftj)
    try:
        metadata = json.loads(ann[ANN_METADATA]) if ANN_METADATA in ann else None
    except ValueError:
        metadata = None
    finished = epoch(status.get("completionTime")) if state in ("succeeded", "failed", "cancelled") else None
    if state == "cancelled" and finished is None:
        finished = _last_action_time(ftj, "cancelled")
    return {
        "object": "fine_tuning.job",
        "id": meta.get("name", ""),
        "created_at": epoch(meta.get("creationTimestamp")) or 0,
        "model": ann.get(ANN_OPENAI_MODEL) or (spec.get("model") or {}).get("name", ""),
        "organization_id": organization or f"org-{meta.get('namespace', '')}",
        "status": state,
        "fine_tuned_model": fine_tuned_model(ftj),
        "finished_at": finished,
        "error": job_error(ftj),
        "hyperparameters": hyperparameters(ftj),
        "method": method(ftj),
        "result_files": [results_file_id(meta.get("name", ""))] if fine_tuned_model(ftj) else [],
        "seed": int((spec.get("hyperparameters") or {}).get("seed", 0)),
        "trained_tokens": metrics.get("tokens"),
        "training_file": ann.get(ANN_TRAINING_FILE) or (dataset.get("configMap") or {}).get("name", ""),
        "validation_file": ann.get(ANN_VALIDATION_FILE),
        "estimated_finish": estimated_finish(ftj),
        "integrations": integrations(spec),
        "metadata": metadata,
        "user_provided_suffix": ann.get(ANN_SUFFIX),
        "training_type": lora.training_type(spec),
    }


def integrations(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """spec.tracking.wandb as OpenAI's integrations list (the API key Secret is not shown)."""
    wandb = (spec.get("tracking") or {}).get("wandb")
    if not wandb:
        return []
    return [{"type": "wandb", "wandb": {k: wandb.get(k) for k in ("project", "name", "entity", "tags")}}]


def actions(ftj: dict[str, Any]) -> list[dict[str, Any]]:
    try:
        out = json.loads(_annotations(ftj).get(ANN_ACTIONS) or "[]")
    except ValueError:
        return []
    return [a for a in out if isinstance(a, dict)] if isinstance(out, list) else []


def _last_action_time(ftj: dict[str, Any], action: str) -> int | None:
    times = [a.get("at") for a in actions(ftj) if a.get("action") == action]
    return times[-1] if times and isinstance(times[-1], int) else None


def _event(
    job: str,
    created_at: int,
    level: str,
    message: str,
    *,
    kind: str = "message",
    data: Any = None,
    uid: str | None = None,
) -> dict[str, Any]:
    ident = uid or hashlib.sha256(f"{job}|{created_at}|{kind}|{message}".encode()).hexdigest()[:24]
    return {
        "object": "fine_tuning.job.event",
        "id": f"ftevent-{ident}",
        "created_at": created_at,
        "level": level,
        "message": message,
        "data": data if data is not None else {},
        "type": kind,
    }


_ACTION_MESSAGES = {
    "paused": "Fine-tuning job paused (spec.runPolicy.suspend=true)",
    "resumed": "Fine-tuning job resumed (spec.runPolicy.suspend=false)",
    "cancelled": "Fine-tuning job cancelled",
}
_WARN_REASONS = frozenset(
    {Reason.UNSCHEDULABLE, Reason.IMAGE_PULL_FAILED, Reason.OOM_KILLED, Reason.CHILD_CREATE_FAILED}
)


def to_events(ftj: dict[str, Any], k8s_events: Sequence[dict[str, Any]] = ()) -> list[dict[str, Any]]:
    """Newest first: the API's own actions, condition transitions, progress metrics and Kubernetes Events."""
    meta = _meta(ftj)
    job = meta.get("name", "")
    status = _status(ftj)
    created = epoch(meta.get("creationTimestamp")) or 0
    out = [_event(job, created, "info", f"Created fine-tuning job: {job}")]
    for action in actions(ftj):
        at = action.get("at")
        name = str(action.get("action"))
        if isinstance(at, int) and name in _ACTION_MESSAGES:
            out.append(_event(job, at, "info", _ACTION_MESSAGES[name]))
    for c in status.get("conditions") or []:
        at = epoch(c.get("lastTransitionTime"))
        if at is None:
            continue
        reason = c.get("reason") or ""
        ctype = c.get("type", "")
        if ctype == cond.FAILED and c.get("status") == "True":
            level = "error"
        elif reason in _WARN_REASONS:
            level = "warn"
        else:
            level = "info"
        text = f"{ctype}={c.get('status')}"
        if reason:
            text += f" ({reason})"
        detail = c.get("message") or cond.REASONS.get(reason, "")
        if detail:
            text += f": {detail}"
        out.append(_event(job, at, level, text, data={"condition": ctype, "reason": reason}))
    progress = status.get("progress") or {}
    metrics = status.get("metrics") or {}
    at = epoch(progress.get("updatedAt"))
    if at is not None and (progress.get("step") is not None or metrics):
        data = {
            "step": progress.get("step"),
            "total_steps": progress.get("totalSteps"),
            "train_loss": metrics.get("loss"),
            "valid_loss": metrics.get("evalLoss"),
            "reward_accuracy": metrics.get("rewardAccuracy"),
            "percent": progress.get("percent"),
        }
        summary = progress.get("summary") or f"step {progress.get('step')}"
        out.append(_event(job, at, "info", f"Step {summary}", kind="metrics", data=data))
    record = delivery.read(ftj)
    for at, level, message, data in delivery.events(record) if record else ():
        out.append(_event(job, at, level, message, data=data))
    artifact = status.get("artifact") or {}
    if status.get("phase") == PHASE_SUCCEEDED and artifact.get("uri"):
        done = epoch(status.get("completionTime")) or created
        out.append(_event(job, done, "info", f"The job has successfully completed; model at {artifact['uri']}"))
    for ev in k8s_events:
        emeta = ev.get("metadata") or {}
        at = epoch(ev.get("lastTimestamp") or ev.get("eventTime") or ev.get("firstTimestamp")) or epoch(
            emeta.get("creationTimestamp")
        )
        reason = ev.get("reason") or ""
        message = ev.get("message") or ""
        text = f"{reason}: {message}" if reason and message else reason or message
        level = "warn" if ev.get("type") == "Warning" else "info"
        out.append(_event(job, at or created, level, text, uid=emeta.get("uid"), data={"reason": reason}))
    # stable newest-first; ties keep insertion order reversed so "Created" ends up last
    indexed = list(enumerate(out))
    indexed.sort(key=lambda p: (p[1]["created_at"], p[0]), reverse=True)
    return [e for _, e in indexed]


def to_checkpoints(ftj: dict[str, Any]) -> list[dict[str, Any]]:
    meta = _meta(ftj)
    job = meta.get("name", "")
    created = epoch(meta.get("creationTimestamp")) or 0
    out = []
    for ck in (_status(ftj).get("checkpoints") or [])[::-1]:
        step = int(ck.get("step", 0))
        m = ck.get("metrics") or {}
        metrics = {
            "step": float(step),
            "train_loss": m.get("loss"),
            "train_mean_token_accuracy": m.get("meanTokenAccuracy"),
            "valid_loss": m.get("evalLoss"),
            "valid_mean_token_accuracy": None,
            "full_valid_loss": None,
            "full_valid_mean_token_accuracy": None,
            "reward_accuracy": m.get("rewardAccuracy"),
            "reward_margin": m.get("rewardMargin"),
        }
        out.append(
            {
                "object": "fine_tuning.job.checkpoint",
                "id": f"ftckpt-{job}-{step}",
                "created_at": epoch(ck.get("createdAt")) or created,
                # where the durable checkpoint lives (pvc://<claim>/<dir>/step-<N>: docs/operations.md)
                "fine_tuned_model_checkpoint": ck.get("path") or f"{job}:ckpt-step-{step}",
                "fine_tuning_job_id": job,
                "metrics": metrics,
                "step_number": step,
            }
        )
    out.sort(key=lambda c: c["step_number"], reverse=True)
    return out


def file_object(cm: dict[str, Any]) -> dict[str, Any]:
    meta = _meta(cm)
    ann = meta.get("annotations") or {}
    return {
        "object": "file",
        "id": meta.get("name", ""),
        "bytes": int(ann.get(ANN_BYTES) or 0),
        "created_at": int(ann.get(ANN_CREATED_AT) or epoch(meta.get("creationTimestamp")) or 0),
        "filename": ann.get(ANN_FILENAME) or meta.get("name", ""),
        "purpose": ann.get(ANN_PURPOSE) or "fine-tune",
        "status": "processed",
        "status_details": None,
        "expires_at": None,
    }


_HIDDEN_ANNOTATIONS = ("kubectl.kubernetes.io/last-applied-configuration",)


def native(ftj: dict[str, Any]) -> dict[str, Any]:
    """The resource as kubectl shows it, minus managedFields and last-applied noise."""
    meta = dict(_meta(ftj))
    meta.pop("managedFields", None)
    if meta.get("annotations"):
        meta["annotations"] = {k: v for k, v in meta["annotations"].items() if k not in _HIDDEN_ANNOTATIONS}
    return {
        "apiVersion": ftj.get("apiVersion"),
        "kind": ftj.get("kind"),
        "metadata": meta,
        "spec": ftj.get("spec") or {},
        "status": ftj.get("status") or {},
    }


T = TypeVar("T")


def paginate(items: Sequence[T], after: str | None, limit: int, key: Callable[[T], str]) -> dict[str, Any]:
    """OpenAI cursor page: the items following ``after`` (by id), at most ``limit``."""
    start = 0
    if after:
        ids = [key(i) for i in items]
        start = ids.index(after) + 1 if after in ids else len(items)
    page = list(items[start : start + limit])
    return {
        "object": "list",
        "data": page,
        "has_more": start + limit < len(items),
        "first_id": key(page[0]) if page else None,
        "last_id": key(page[-1]) if page else None,
    }


def sort_jobs(ftjs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Newest first, ties broken by name, so cursors are stable."""
    return sorted(
        ftjs,
        key=lambda o: (-(epoch(_meta(o).get("creationTimestamp")) or 0), _meta(o).get("name", "")),
    )
