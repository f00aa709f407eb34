"""Build FineTuneJob objects with :mod:`ftcrd.types` (never hand-written dicts)."""

from __future__ import annotations

import hashlib
import json
import secrets
from typing import Any

from ftcrd.types import (
    ConfigMapSource,
    DatasetSpec,
    EnvVar,
    FineTuneJob,
    FineTuneJobSpec,
    HyperparametersSpec,
    MethodSpec,
    ModelSpec,
    OutputSpec,
    ResourcesSpec,
    RunPolicySpec,
    SecretKeyRef,
    TrackingSpec,
)
from pydantic import ValidationError

from ftapi.errors import APIError, field_path
from ftapi.settings import CatalogModel, Settings

JOB_PREFIX = "ftjob-"
FILE_PREFIX = "file-"


def new_job_name(namespace: str, idempotency_key: str | None) -> str:
    if idempotency_key:
        digest = hashlib.sha256(f"{namespace}\0{idempotency_key}".encode()).hexdigest()
        return JOB_PREFIX + digest[:12]
    return JOB_PREFIX + secrets.token_hex(6)


def new_file_id() -> str:
    return FILE_PREFIX + secrets.token_hex(12)


def request_digest(kind: str, payload: Any) -> str:
    """Fingerprint of a create request, to tell a retry from a reused Idempotency-Key."""
    text = json.dumps({"kind": kind, "payload": payload}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def resolve_model(settings: Settings, model: str) -> CatalogModel:
    entry = settings.models.get(model)
    if entry is None:
        names = ", ".join(sorted(settings.models))
        raise APIError(
            400,
            f"The model '{model}' does not exist or is not available for fine-tuning; available models: {names}",
            code="model_not_found",
            param="model",
        )
    return entry


def _secret_ref(value: str | None, default_key: str) -> SecretKeyRef | None:
    """``<secret>/<key>`` (or ``<secret>``, meaning ``default_key``) as a reference: the value stays in the Secret."""
    if not value:
        return None
    name, _, key = value.partition("/")
    return SecretKeyRef(name=name, key=key or default_key)


def webhook_method(settings: Settings) -> MethodSpec:
    """The seed webhook's method: the configured loss and beta, the CRD's defaults for what is not configured."""
    configured = {"type": settings.webhook_method, "beta": settings.webhook_beta}
    return MethodSpec.model_validate({k: v for k, v in configured.items() if v is not None})


def base_learning_rate(settings: Settings) -> float:
    return float(HyperparametersSpec.model_validate(settings.hyperparameters).learning_rate)


def build_job(
    settings: Settings,
    *,
    name: str,
    namespace: str,
    model: CatalogModel,
    dataset: DatasetSpec,
    method: MethodSpec,
    hyperparameters: dict[str, Any],
    community_id: str | None,
    labels: dict[str, str],
    annotations: dict[str, str],
    tracking: TrackingSpec | None = None,
    model_from: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The FineTuneJob as a wire dict; ``hyperparameters`` (camelCase) override the configured defaults;
    ``model_from``: spec.model.from (start from a previous job's artifact)."""
    try:
        hp = HyperparametersSpec.model_validate({**settings.hyperparameters, **hyperparameters})
        # model_validate (not keyword construction) so mypy, without the pydantic plugin, sees the defaults
        spec = FineTuneJobSpec.model_validate(
            {
                "community_id": community_id,
                "model": ModelSpec.model_validate(
                    {
                        "name": model.name,
                        "preset": model.preset,
                        "hf_token_secret": _secret_ref(model.hf_token_secret, "token"),
                        **({"from": model_from} if model_from else {}),
                    }
                ),
                "method": method,
                "hyperparameters": hp,
                "dataset": dataset,
                "resources": ResourcesSpec.model_validate(settings.resources),
                "output": OutputSpec.model_validate(
                    {
                        "bucket": settings.output_bucket,
                        "prefix": settings.output_prefix,
                        "credentials_secret": _secret_ref(settings.output_credentials_secret, "service-account.json"),
                    }
                ),
                "image": settings.trainer_image,
                "env": [EnvVar(name=k, value=v) for k, v in sorted(settings.trainer_env.items())] or None,
                "run_policy": RunPolicySpec.model_validate(settings.run_policy),
                "tracking": tracking,
            }
        )
    except ValidationError as exc:
        err = exc.errors()[0]
        where = field_path(err.get("loc", ()))
        raise APIError(422, f"{where}: {err.get('msg')}", code="invalid_value", param=where) from None
    job = FineTuneJob.model_validate(
        {"metadata": {"name": name, "namespace": namespace, "labels": labels, "annotations": annotations}, "spec": spec}
    )
    return job.wire()


def dataset_from_configmap(settings: Settings, name: str, key: str, fmt: str) -> DatasetSpec:
    extra = {} if settings.validation_fraction is None else {"validation_fraction": settings.validation_fraction}
    return DatasetSpec.model_validate(
        {"config_map": ConfigMapSource(name=name, key=key), "format": fmt, "compression": "gzip", **extra}
    )


__all__ = ["build_job", "new_file_id", "new_job_name", "resolve_model"]
