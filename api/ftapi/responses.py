"""Response bodies: OpenAI's object shapes (as the official ``openai`` client's types declare them) and the
error envelope. The routers declare them as ``response_model``, so FastAPI checks every answer against the
same schema ``api/openapi.json`` publishes; :mod:`ftapi.mapping` builds the dicts they validate.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

OpenAIStatus = Literal["validating_files", "queued", "running", "succeeded", "failed", "cancelled"]


class Closed(BaseModel):
    """A response object: every field declared, nothing else."""

    model_config = ConfigDict(extra="forbid")


# --- errors -----------------------------------------------------------------------------------------


class ErrorDetail(Closed):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(Closed):
    """Every error: OpenAI's shape."""

    error: ErrorDetail


# --- files ------------------------------------------------------------------------------------------


class FileObject(Closed):
    object: Literal["file"] = "file"
    id: str
    bytes: int = Field(ge=0)
    created_at: int
    filename: str
    purpose: Literal["fine-tune", "fine-tune-results"]
    status: Literal["uploaded", "processed", "error"]
    status_details: str | None = None
    expires_at: int | None = None


class FileList(Closed):
    object: Literal["list"] = "list"
    data: list[FileObject]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None


class FileDeleted(Closed):
    id: str
    object: Literal["file"] = "file"
    deleted: bool


# --- fine-tuning jobs ---------------------------------------------------------------------------------


class JobError(Closed):
    code: str
    message: str
    param: str | None = None


class JobHyperparameters(Closed):
    """The values in effect: what was asked for, or what "auto" resolved to."""

    batch_size: int
    learning_rate_multiplier: float
    n_epochs: int


class JobDpoHyperparameters(JobHyperparameters):
    beta: float


class JobSupervisedMethod(Closed):
    hyperparameters: JobHyperparameters


class JobDpoMethod(Closed):
    hyperparameters: JobDpoHyperparameters


class JobMethod(Closed):
    type: Literal["supervised", "dpo"]
    supervised: JobSupervisedMethod | None = None
    dpo: JobDpoMethod | None = None


class JobWandb(Closed):
    project: str
    name: str | None = None
    entity: str | None = None
    tags: list[str] | None = None


class JobIntegration(Closed):
    type: Literal["wandb"]
    wandb: JobWandb


class JobTrainingType(Closed):
    """Together's ``training_type``: Full, or Lora/QLora with the adapter's settings."""

    type: Literal["Full", "Lora", "QLora"]
    lora_r: int | None = None
    lora_alpha: int | None = None
    lora_dropout: float | None = None
    lora_trainable_modules: str | None = None


class FineTuningJob(Closed):
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    id: str
    created_at: int
    model: str
    organization_id: str
    status: OpenAIStatus
    fine_tuned_model: str | None = None
    finished_at: int | None = None
    error: JobError | None = None
    hyperparameters: JobHyperparameters
    method: JobMethod
    result_files: list[str]
    seed: int
    trained_tokens: int | None = None
    training_file: str
    validation_file: str | None = None
    estimated_finish: int | None = None
    integrations: list[JobIntegration] | None = None
    metadata: dict[str, str] | None = None
    user_provided_suffix: str | None = None
    training_type: JobTrainingType | None = None


class JobList(Closed):
    object: Literal["list"] = "list"
    data: list[FineTuningJob]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None


class EventData(Closed):
    """What an event is about; only the fields that apply are present."""

    condition: str | None = None
    reason: str | None = None
    step: int | None = None
    total_steps: int | None = None
    train_loss: float | None = None
    valid_loss: float | None = None
    reward_accuracy: float | None = None
    percent: float | None = None
    webhook_event: str | None = Field(default=None, description="Notification: the event type delivered.")
    webhook_id: str | None = Field(default=None, description="Notification: the webhook-id (idempotency key).")
    endpoint: str | None = Field(default=None, description="Notification: 'tenant' or 'callback', and its host.")
    attempt: int | None = None
    http_status: int | None = None
    delivery: Literal["pending", "delivered", "failed"] | None = None


class JobEvent(Closed):
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    id: str
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    data: EventData
    type: Literal["message", "metrics"]


class EventList(Closed):
    object: Literal["list"] = "list"
    data: list[JobEvent]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None


class CheckpointMetrics(Closed):
    step: float | None = None
    train_loss: float | None = None
    train_mean_token_accuracy: float | None = None
    valid_loss: float | None = None
    valid_mean_token_accuracy: float | None = None
    full_valid_loss: float | None = None
    full_valid_mean_token_accuracy: float | None = None
    reward_accuracy: float | None = None
    reward_margin: float | None = None


class Checkpoint(Closed):
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    id: str
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    metrics: CheckpointMetrics
    step_number: int


class CheckpointList(Closed):
    object: Literal["list"] = "list"
    data: list[Checkpoint]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None


# --- native and operations ----------------------------------------------------------------------------


class NativeOpenAI(Closed):
    id: str
    status: OpenAIStatus


class NativeJob(BaseModel):
    """The FineTuneJob as ``kubectl get ftj -o json`` prints it (docs/crd-reference.md describes spec and status)."""

    apiVersion: str | None = None
    kind: str | None = None
    metadata: dict[str, Any]
    spec: dict[str, Any]
    status: dict[str, Any]
    openai: NativeOpenAI | None = None


class NativeJobList(Closed):
    apiVersion: str
    kind: str
    items: list[NativeJob]


class Health(Closed):
    status: Literal["ok"]


class Readiness(Closed):
    status: Literal["ok", "unavailable"]
    kubernetes: str | None = None
    reason: str | None = None


# Error statuses per route family (status_code_conformance: every answer a route can give is documented).
_ERROR_TEXT = {
    400: "Invalid request, naming the field in `param`",
    401: "Missing or invalid API key",
    404: "Not found (or another tenant's)",
    409: "Conflict (job state, file in use, reused Idempotency-Key); `x-should-retry: false` unless retrying helps",
    413: "Request or dataset too large",
    422: "Seed webhook only: schema error naming the field",
    503: "Kubernetes API (or storage) unavailable",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorBody, "description": _ERROR_TEXT[status]} for status in statuses}
