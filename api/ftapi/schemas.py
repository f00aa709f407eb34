"""Request bodies. Responses are plain dicts shaped by :mod:`ftapi.mapping` (OpenAI's shapes)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from ftcrd.types import BatchSize, Beta, CommunityId, Epochs
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, Strict, StrictStr


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must be a non-empty string")
    return value


def _no_integrations(value: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    if value:
        raise ValueError("integrations (e.g. wandb) are not supported; progress is in the job's events")
    return value


NonBlank = Annotated[StrictStr, AfterValidator(_not_blank)]
Auto = Literal["auto"]


# --- seed webhook --------------------------------------------------------------------------------


class SeedRow(BaseModel):
    """One preference pair, as the original microservice accepted it."""

    model_config = ConfigDict(extra="ignore")

    prompt: NonBlank
    chosen: NonBlank
    rejected: NonBlank


class SeedTrigger(BaseModel):
    """``POST /trigger-finetune``: the original microservice's payload."""

    model_config = ConfigDict(extra="ignore")

    communityId: Annotated[
        CommunityId,
        Strict(),
        AfterValidator(_not_blank),
        Field(description="Community (tenant) id: letters, digits, '-', '_', '.'; at most 63 characters."),
    ]
    dataset: Annotated[list[SeedRow], Field(min_length=1, description="Preference pairs (at least one).")]


class SeedAccepted(BaseModel):
    status: Literal["accepted"] = "accepted"
    jobName: str
    namespace: str
    communityId: str
    rows: int
    statusUrl: str
    openaiUrl: str


# --- OpenAI fine-tuning jobs ---------------------------------------------------------------------

# batch size, epochs and beta: the CRD's own ranges (ftcrd.types)
LrMultiplier = Annotated[float, Field(gt=0, le=1e6)]


class Hyperparameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    batch_size: BatchSize | Auto | None = None
    learning_rate_multiplier: LrMultiplier | Auto | None = None
    n_epochs: Epochs | Auto | None = None


class DpoHyperparameters(Hyperparameters):
    beta: Beta | Auto | None = None


class DpoMethod(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hyperparameters: DpoHyperparameters | None = None


class SupervisedMethod(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hyperparameters: Hyperparameters | None = None


class Method(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["supervised", "dpo", "reinforcement"]
    dpo: DpoMethod | None = None
    supervised: SupervisedMethod | None = None
    reinforcement: dict[str, Any] | None = None


MetadataKey = Annotated[str, Field(min_length=1, max_length=64)]
MetadataValue = Annotated[str, Field(max_length=512)]


class JobCreate(BaseModel):
    """``POST /v1/fine_tuning/jobs`` (the openai client's ``fine_tuning.jobs.create``)."""

    model_config = ConfigDict(extra="forbid")

    model: Annotated[NonBlank, Field(max_length=256, description="A model name from the catalog (e.g. 'tiny').")]
    training_file: Annotated[NonBlank, Field(max_length=64, description="File id from POST /v1/files.")]
    validation_file: Annotated[NonBlank | None, Field(default=None, max_length=64)] = None
    method: Annotated[Method | None, Field(default=None, description="Defaults to DPO.")] = None
    hyperparameters: Annotated[
        Hyperparameters | None, Field(default=None, description="Deprecated: use method.<type>.hyperparameters.")
    ] = None
    suffix: Annotated[
        str | None, Field(default=None, max_length=64, pattern=r"^[A-Za-z0-9_.:-]*$", description="Up to 64 chars.")
    ] = None
    seed: Annotated[int | None, Field(default=None, ge=0, le=2**31 - 1)] = None
    metadata: Annotated[dict[MetadataKey, MetadataValue] | None, Field(default=None, max_length=16)] = None
    integrations: Annotated[
        list[dict[str, Any]] | None, AfterValidator(_no_integrations), Field(default=None, description="Unsupported.")
    ] = None


# --- errors ---------------------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    """Every error: OpenAI's shape."""

    error: ErrorDetail


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in (
        (400, "Invalid request (bad file, unknown model or file)"),
        (401, "Missing or invalid API key"),
        (404, "Not found (or another tenant's)"),
        (409, "Conflict (job state, file in use, reused Idempotency-Key)"),
        (413, "Request or dataset too large"),
        (422, "Schema error naming the field"),
        (503, "Kubernetes API unavailable"),
    )
}
