"""A succeeded job's results file: its per-step metrics as OpenAI's ``step_metrics.csv``.

The trainer uploads ``metrics.jsonl`` (:mod:`ftcrd.results`) next to the model; the file id
``file-results-<job>`` names the job, so no extra object is stored. The file is served through
``/v1/files/{id}`` and ``/v1/files/{id}/content`` like an uploaded file, in the job's namespace only.
"""

from __future__ import annotations

from typing import Any

from ftcrd.names import METRICS_FILE
from ftcrd.results import RESULTS_FILENAME, RESULTS_PURPOSE, MetricsFileError, parse_metrics, results_csv
from ftcrd.trainer_config import TrainerOutput
from pydantic import ValidationError

from ftapi import mapping
from ftapi.errors import APIError, not_found
from ftapi.k8s import K8s, find_ftj
from ftapi.settings import Settings
from ftapi.storage import ArtifactStore


def is_results_id(file_id: str) -> bool:
    return file_id.startswith(mapping.RESULTS_FILE_PREFIX)


def metrics_location(ftj: dict[str, Any], settings: Settings) -> tuple[str, str] | None:
    """(bucket, object) of the job's metrics file, when the job succeeded with an artifact in this API's bucket.

    The artifact URI comes from the job's status; it is read only when it is exactly this job's own folder
    (``<prefix>/<namespace>/<communityId>/<job>-<uid>/``, ftcrd.trainer_config.TrainerOutput) in the configured
    bucket, so a status pointing elsewhere cannot make the API read another job's or tenant's objects."""
    if mapping.openai_status(ftj) != "succeeded":
        return None
    uri = str(((ftj.get("status") or {}).get("artifact") or {}).get("uri") or "")
    meta = ftj.get("metadata") or {}
    try:
        own = TrainerOutput(
            bucket=settings.output_bucket,
            prefix=settings.output_prefix,
            community_id=(ftj.get("spec") or {}).get("communityId"),
            namespace=meta.get("namespace"),
            job_uid=meta.get("uid"),
        ).object_prefix(meta.get("name", ""))
    except (ValidationError, ValueError):  # nothing this job could have uploaded to
        return None
    if uri != f"gs://{settings.output_bucket}/{own}":
        return None
    return settings.output_bucket, own + METRICS_FILE


async def _job(k8s: K8s, namespace: str, fid: str) -> dict[str, Any]:
    job = await find_ftj(k8s, namespace, fid[len(mapping.RESULTS_FILE_PREFIX) :])
    if job is None:
        raise not_found("file", fid, param="file_id")
    return job


async def load(
    k8s: K8s, store: ArtifactStore, settings: Settings, namespace: str, fid: str
) -> tuple[dict[str, Any], bytes]:
    """(file object, CSV); 404 until the job has succeeded and its metrics file is in the bucket."""
    ftj = await _job(k8s, namespace, fid)
    where = metrics_location(ftj, settings)
    data = await store.read(*where) if where else None
    if data is None:
        raise not_found("file", fid, param="file_id")
    try:
        csv = results_csv(parse_metrics(data)).encode()
    except MetricsFileError as exc:
        raise APIError(
            503, f"The job's metrics file is malformed ({exc}); the results file cannot be made", code="bad_results"
        ) from None
    meta = ftj.get("metadata") or {}
    created = mapping.epoch((ftj.get("status") or {}).get("completionTime")) or mapping.epoch(
        meta.get("creationTimestamp")
    )
    obj = {
        "object": "file",
        "id": fid,
        "bytes": len(csv),
        "created_at": created or 0,
        "filename": RESULTS_FILENAME,
        "purpose": RESULTS_PURPOSE,
        "status": "processed",
        "status_details": None,
        "expires_at": None,
    }
    return obj, csv
