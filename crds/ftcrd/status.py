"""FineTuneJob.status: what the operator (phase, conditions) and the trainer (progress, metrics, artifact)
write. Re-exported by :mod:`ftcrd.types`; import from there."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field

from ftcrd.base import CamelModel, Phase, Stage

# ---------------------------------------------------------------------------------------------
# status
# ---------------------------------------------------------------------------------------------


class Condition(CamelModel):
    """A standard metav1.Condition. Types and reasons are listed in ftcrd.conditions."""

    model_config = ConfigDict(extra="allow")

    type: Annotated[
        str, Field(description="Condition type: Created, Scheduled, Running, Suspended, Succeeded or Failed.")
    ]
    status: Annotated[Literal["True", "False", "Unknown"], Field(description="True, False or Unknown.")]
    reason: Annotated[str, Field(default="", description="CamelCase reason, listed in docs/conditions.md.")]
    message: Annotated[str, Field(default="", description="Human-readable detail.")]
    last_transition_time: Annotated[str | None, Field(default=None, description="When status last changed (RFC 3339).")]
    observed_generation: Annotated[
        int | None, Field(default=None, description="metadata.generation the condition was set for.")
    ]


class Progress(CamelModel):
    """Training progress, reported by the trainer's rank 0 every few seconds."""

    model_config = ConfigDict(extra="allow")

    step: Annotated[int | None, Field(default=None, description="Optimizer steps done.")]
    total_steps: Annotated[int | None, Field(default=None, description="Optimizer steps planned.")]
    epoch: Annotated[float | None, Field(default=None, description="Fractional epoch.")]
    percent: Annotated[float | None, Field(default=None, description="step / totalSteps in percent (0-100).")]
    eta_seconds: Annotated[int | None, Field(default=None, description="Estimated seconds until training ends.")]
    examples: Annotated[int | None, Field(default=None, description="Training examples consumed.")]
    summary: Annotated[str | None, Field(default=None, description="Human form, e.g. '30% (120/400)'.")]
    stage: Annotated[
        Stage | None,
        Field(default=None, description="What the trainer is doing; 'uploading' shows as phase Uploading."),
    ]
    updated_at: Annotated[str | None, Field(default=None, description="When the trainer last reported (RFC 3339).")]
    resumed_from: Annotated[
        int | None,
        Field(default=None, description="Step of the checkpoint this attempt resumed from (absent: from step 0)."),
    ]


class Metrics(CamelModel):
    """Latest training metrics (rank-0 view, averaged over the optimizer step), rounded for display; the
    artifact's manifest.json keeps full precision."""

    model_config = ConfigDict(extra="allow")

    loss: Annotated[float | None, Field(default=None, description="Training loss.")]
    reward_accuracy: Annotated[
        float | None, Field(default=None, description="Share of pairs whose chosen reward exceeds the rejected one.")
    ]
    reward_margin: Annotated[
        float | None, Field(default=None, description="Mean chosen minus rejected implicit reward.")
    ]
    rewards_chosen: Annotated[
        float | None, Field(default=None, description="Mean implicit reward of chosen responses.")
    ]
    rewards_rejected: Annotated[
        float | None, Field(default=None, description="Mean implicit reward of rejected responses.")
    ]
    logps_chosen: Annotated[
        float | None, Field(default=None, description="Mean policy log-probability of chosen responses.")
    ]
    logps_rejected: Annotated[
        float | None, Field(default=None, description="Mean policy log-probability of rejected responses.")
    ]
    grad_norm: Annotated[float | None, Field(default=None, description="Gradient norm before clipping.")]
    learning_rate: Annotated[float | None, Field(default=None, description="Current learning rate.")]
    eval_loss: Annotated[float | None, Field(default=None, description="Loss on the held-out split.")]
    eval_reward_accuracy: Annotated[
        float | None, Field(default=None, description="Reward accuracy on the held-out split.")
    ]
    tokens: Annotated[int | None, Field(default=None, description="Tokens processed so far.")]
    token_accuracy: Annotated[
        float | None,
        Field(default=None, description="sft: share of trained tokens the policy predicts (greedy) correctly."),
    ]
    eval_token_accuracy: Annotated[
        float | None, Field(default=None, description="sft: token accuracy on the held-out split.")
    ]
    eval_examples: Annotated[
        int | None, Field(default=None, description="Held-out examples the last evaluation scored.")
    ]


SAMPLE_TEXT_CHARS = 300
"""Characters of a prompt or completion kept in status.samples (and the samples Event); trackers keep more."""
MAX_SAMPLES = 16


class Sample(CamelModel):
    """One held-out prompt completed at an evaluation (greedy decoding), shortened to SAMPLE_TEXT_CHARS."""

    prompt: Annotated[str, Field(max_length=SAMPLE_TEXT_CHARS, description="The prompt (its end, when shortened).")]
    policy: Annotated[str, Field(max_length=SAMPLE_TEXT_CHARS, description="The policy's completion.")]
    reference: Annotated[
        str | None,
        Field(default=None, max_length=SAMPLE_TEXT_CHARS, description="The reference model's completion, if any."),
    ]


class EvalSamples(CamelModel):
    """The latest evaluation's samples (spec.tracking.sampleDuringEval); the operator posts each set as an Event."""

    step: Annotated[int, Field(ge=0, description="Optimizer step of the evaluation.")]
    items: Annotated[list[Sample], Field(max_length=MAX_SAMPLES, description="The completed prompts.")]


class Artifact(CamelModel):
    """The uploaded, checksum-verified model."""

    model_config = ConfigDict(extra="allow")

    uri: Annotated[str, Field(description="gs:// URI of the uploaded model folder.")]
    size_bytes: Annotated[int | None, Field(default=None, description="Total size of the uploaded files.")]
    sha256: Annotated[str | None, Field(default=None, description="sha256 of the upload manifest.")]
    manifest_uri: Annotated[
        str | None, Field(default=None, description="gs:// URI of the manifest listing every file with its sha256.")
    ]
    files: Annotated[int | None, Field(default=None, description="Number of files uploaded.")]


class CheckpointRecord(CamelModel):
    """A checkpoint the trainer saved (listed by the OpenAI-compatible checkpoints endpoint)."""

    model_config = ConfigDict(extra="allow")

    step: Annotated[int, Field(description="Optimizer step of the checkpoint.")]
    path: Annotated[
        str | None,
        Field(
            default=None,
            description="Where the checkpoint lives: pvc://<claim>/<dir>/step-<N> on durable storage, else the pod's path.",
        ),
    ]
    created_at: Annotated[str | None, Field(default=None, description="When it was saved (RFC 3339).")]
    metrics: Annotated[Metrics | None, Field(default=None, description="Metrics at that step.")]


class RestartRecord(CamelModel):
    """The operator's last restart of every trainer pod together (gang restart, progress watchdog)."""

    model_config = ConfigDict(extra="allow")

    reason: Annotated[str, Field(description="GangRestart or ProgressDeadlineExceeded.")]
    message: Annotated[str, Field(default="", description="What failed or stalled.")]
    time: Annotated[str | None, Field(default=None, description="When the operator decided it (RFC 3339).")]
    job_uid: Annotated[str | None, Field(default=None, description="uid of the Job that was replaced.")]
    counted: Annotated[bool, Field(default=True, description="Whether it counted against backoffLimit.")]


class FineTuneJobStatus(CamelModel):
    """Observed state, written by the operator (phase, conditions) and the trainer (progress, metrics)."""

    model_config = ConfigDict(extra="allow")

    phase: Annotated[
        Phase | None,
        Field(
            default=None,
            description="Pending, Queued (Kueue holds the job), Running, Uploading, Succeeded, Failed or Suspended "
            "(Succeeded and Failed are final).",
        ),
    ]
    reason: Annotated[
        str | None, Field(default=None, description="Machine-readable reason of the phase (see docs/conditions.md).")
    ]
    message: Annotated[str | None, Field(default=None, description="Human-readable detail of the phase.")]
    conditions: Annotated[
        list[Condition] | None,
        Field(
            default=None,
            description="Standard conditions (Created, Scheduled, Running, Suspended, Succeeded, Failed); "
            "reasons are listed in docs/conditions.md.",
            json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
        ),
    ]
    start_time: Annotated[
        str | None,
        Field(default=None, description="When the first trainer pod started (RFC 3339); resources are then fixed."),
    ]
    completion_time: Annotated[
        str | None, Field(default=None, description="When the job reached Succeeded or Failed (RFC 3339).")
    ]
    admission_time: Annotated[
        str | None,
        Field(default=None, description="When Kueue last admitted the job (spec.runPolicy.queueName; RFC 3339)."),
    ]
    progress: Annotated[Progress | None, Field(default=None, description="Training progress.")]
    metrics: Annotated[Metrics | None, Field(default=None, description="Latest training metrics.")]
    artifact: Annotated[Artifact | None, Field(default=None, description="The uploaded model, once verified.")]
    checkpoints: Annotated[
        list[CheckpointRecord] | None, Field(default=None, description="The most recent checkpoints (last 10).")
    ]
    samples: Annotated[
        EvalSamples | None, Field(default=None, description="Completions of held-out prompts at the last evaluation.")
    ]
    observed_generation: Annotated[
        int | None, Field(default=None, description="metadata.generation the operator last acted on.")
    ]
    attempts: Annotated[int | None, Field(default=None, description="Trainer attempts started so far.")]
    restarts: Annotated[
        int | None,
        Field(
            default=None,
            description="Times the operator restarted every trainer pod together from the last checkpoint (a rank "
            "of a multi-node job failed, or the progress watchdog fired).",
        ),
    ]
    counted_failures: Annotated[
        int | None,
        Field(
            default=None,
            description="Failures counted against spec.runPolicy.backoffLimit by the Jobs the operator replaced.",
        ),
    ]
    last_restart: Annotated[RestartRecord | None, Field(default=None, description="The last such restart.")]
    job_name: Annotated[str | None, Field(default=None, description="Name of the batch/v1 Job running the trainer.")]
    kopf: Annotated[
        dict[str, Any] | None,
        Field(default=None, description="Reserved for the kopf framework's own bookkeeping."),
    ]
