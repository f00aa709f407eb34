"""Condition types, reasons and the trainer's exit codes of FineTuneJob.status, documented once.

The operator sets the conditions, the trainer names a reason in its termination message, the API maps
reasons to OpenAI statuses and error codes, and docs/conditions.md is generated from this module, so a
reason means the same thing everywhere. Import the constants (``Reason.UPLOAD_FAILED``); never spell a
reason as a string literal elsewhere (``tests/contract/test_single_source.py`` fails if one is).
"""

from __future__ import annotations

import enum
from typing import Final

from ftcrd.names import ANN_CANCELLED, KUEUE_ADMITTED, KUEUE_EVICTED, KUEUE_INADMISSIBLE, KUEUE_PREEMPTED

# Condition types (each True/False/Unknown, kubebuilder-style).
CREATED: Final = "Created"  # the Job (and, multi-node, its Service) exist
SCHEDULED: Final = "Scheduled"  # every trainer pod has been bound to a node
RUNNING: Final = "Running"  # trainer processes are running
SUSPENDED: Final = "Suspended"
SUCCEEDED: Final = "Succeeded"
FAILED: Final = "Failed"
CONDITION_TYPES: Final = (CREATED, SCHEDULED, RUNNING, SUSPENDED, SUCCEEDED, FAILED)


class Reason:
    """The reasons of ``status.reason`` and of the conditions (CamelCase, as Kubernetes spells reasons)."""

    JOB_CREATED: Final = "JobCreated"
    SCHEDULED: Final = "Scheduled"
    UNSCHEDULABLE: Final = "Unschedulable"
    WAITING_FOR_PODS: Final = "WaitingForPods"
    TRAINING: Final = "Training"
    UPLOADING: Final = "Uploading"
    COMPLETED: Final = "Completed"
    SUSPENDED: Final = "Suspended"
    IMAGE_PULL_FAILED: Final = "ImagePullFailed"
    INVALID_DATASET: Final = "InvalidDataset"
    INVALID_SPEC: Final = "InvalidSpec"
    UPLOAD_FAILED: Final = "UploadFailed"
    OOM_KILLED: Final = "OOMKilled"
    DEADLINE_EXCEEDED: Final = "DeadlineExceeded"
    BACKOFF_LIMIT_EXCEEDED: Final = "BackoffLimitExceeded"
    UPLOAD_NOT_VERIFIED: Final = "UploadNotVerified"
    TRAINER_FAILED: Final = "TrainerFailed"
    CHILD_CREATE_FAILED: Final = "ChildCreateFailed"
    JOB_MISSING: Final = "JobMissing"
    CANCELLED: Final = "Cancelled"
    VOLUME_MOUNT_FAILED: Final = "VolumeMountFailed"
    CONTAINER_CONFIG_ERROR: Final = "ContainerConfigError"
    VOLUME_CLAIM_MISSING: Final = "VolumeClaimMissing"
    UNSCHEDULABLE_TIMEOUT: Final = "UnschedulableTimeout"
    INIT_CONTAINER_CRASH_LOOP: Final = "InitContainerCrashLoop"
    GANG_RESTART: Final = "GangRestart"
    PROGRESS_DEADLINE_EXCEEDED: Final = "ProgressDeadlineExceeded"
    WAITING_FOR_MODEL: Final = "WaitingForModel"
    MODEL_SOURCE_FAILED: Final = "ModelSourceFailed"
    INVALID_MODEL: Final = "InvalidModel"
    # Kueue (spec.runPolicy.queueName): phase Queued, then Admitted; Preempted/Evicted when it takes the job back.
    QUEUED: Final = "Queued"
    INADMISSIBLE: Final = KUEUE_INADMISSIBLE
    ADMITTED: Final = KUEUE_ADMITTED
    PREEMPTED: Final = KUEUE_PREEMPTED
    EVICTED: Final = KUEUE_EVICTED
    EVAL_SAMPLES: Final = "EvalSamples"


# Reasons, with the text that explains them to a user.
REASONS: Final[dict[str, str]] = {
    Reason.JOB_CREATED: "The Indexed Job (and, for multi-node jobs, the headless Service) was created.",
    Reason.SCHEDULED: "Every trainer pod has been bound to a node (reason of the Scheduled condition).",
    Reason.UNSCHEDULABLE: "The scheduler cannot place a trainer pod (for example not enough nvidia.com/gpu).",
    Reason.WAITING_FOR_PODS: "Pods exist and are waiting to start.",
    Reason.TRAINING: "The trainer is running.",
    Reason.UPLOADING: "Training finished; the trainer is uploading the model.",
    Reason.COMPLETED: "The model was exported, uploaded and its checksums verified.",
    Reason.SUSPENDED: "spec.runPolicy.suspend is true; no pods run.",
    Reason.QUEUED: "Phase Queued: Kueue has not admitted the job yet; the message quotes Kueue's reason (for "
    "example insufficient quota).",
    Reason.INADMISSIBLE: "Phase Queued: Kueue cannot admit the job as it is (for example its LocalQueue does not "
    "exist).",
    Reason.ADMITTED: "Kueue admitted the job within its ClusterQueue's quota; its pods are being created.",
    Reason.PREEMPTED: "Phase Queued: Kueue preempted the job for a higher-priority one; it runs again when "
    "re-admitted.",
    Reason.EVICTED: "Phase Queued: Kueue evicted the job (not a preemption; the message says why); it waits for "
    "re-admission.",
    Reason.IMAGE_PULL_FAILED: "The trainer image could not be pulled within the grace period.",
    Reason.INVALID_DATASET: "The trainer rejected the dataset (exit code 2); retrying cannot help.",
    Reason.INVALID_SPEC: "The spec could not be turned into a workload or a training run; fix the resource.",
    Reason.UPLOAD_FAILED: "The model was trained and exported but its upload failed after retries (exit code 3); "
    "a retried pod that finds the export in its checkpoint directory only uploads it again.",
    Reason.OOM_KILLED: "A trainer container ran out of memory; raise resources.memory or lower batch sizes.",
    Reason.DEADLINE_EXCEEDED: "spec.runPolicy.activeDeadlineSeconds elapsed.",
    Reason.BACKOFF_LIMIT_EXCEEDED: "The trainer failed more times than spec.runPolicy.backoffLimit allows "
    "(without reporting a reason of its own).",
    Reason.UPLOAD_NOT_VERIFIED: "The trainer exited 0 without reporting a verified upload.",
    Reason.TRAINER_FAILED: "The trainer exited with an error; see the message.",
    Reason.CHILD_CREATE_FAILED: "The operator could not create a child object (see the message).",
    Reason.JOB_MISSING: "The Job was deleted before the job finished; the operator creates it again.",
    Reason.CANCELLED: (
        f"The job was cancelled (annotation {ANN_CANCELLED} and spec.runPolicy.suspend); it expires after "
        "spec.runPolicy.ttlSecondsAfterFinished like a finished job."
    ),
    Reason.VOLUME_MOUNT_FAILED: (
        "A Secret, ConfigMap or PVC volume of a trainer pod could not be mounted within the operator's grace "
        "period (for example the Firebase credentials Secret is missing in the namespace)."
    ),
    Reason.CONTAINER_CONFIG_ERROR: (
        "A Secret or ConfigMap key of the trainer's environment is missing (CreateContainerConfigError) beyond "
        "the operator's grace period."
    ),
    Reason.VOLUME_CLAIM_MISSING: (
        "A PersistentVolumeClaim of the job does not exist or is not bound, beyond the operator's grace period."
    ),
    Reason.UNSCHEDULABLE_TIMEOUT: (
        "No node could take a trainer pod within the operator's unschedulable grace period (off by default: "
        "an unschedulable job waits as Pending/Unschedulable)."
    ),
    Reason.INIT_CONTAINER_CRASH_LOOP: "An init container of a trainer pod kept crashing beyond the operator's "
    "grace period.",
    Reason.GANG_RESTART: (
        "A rank of a multi-node job failed: the operator replaces the whole Job, so every rank restarts together "
        "from the last checkpoint (counted against backoffLimit unless the pod was disrupted)."
    ),
    Reason.PROGRESS_DEADLINE_EXCEEDED: (
        "The trainer's progress did not advance for spec.runPolicy.progressDeadlineSeconds: every pod is restarted "
        "from the last checkpoint (counted against backoffLimit), or the job fails when backoffLimit is used up."
    ),
    Reason.WAITING_FOR_MODEL: "spec.model.from.job names a job that has not succeeded yet; no pods run until it has.",
    Reason.MODEL_SOURCE_FAILED: "spec.model.from.job names a job that failed, does not exist or has no verified "
    "artifact.",
    Reason.INVALID_MODEL: (
        "The model to start from (spec.model.from) could not be verified: a file differs from its manifest, the "
        "manifest is missing or differs from the pinned sha256 (exit code 2); retrying cannot help."
    ),
    Reason.EVAL_SAMPLES: "Event only (never a phase reason): completions of held-out prompts at an evaluation "
    "(spec.tracking.sampleDuringEval; status.samples holds the latest set).",
}


class ExitCode(enum.IntEnum):
    """The trainer's exit codes (docs/contract.md "Trainer -> operator")."""

    OK = 0
    """The model was uploaded and verified; the termination message holds the artifact."""
    INVALID_INPUT = 2
    """The dataset or the configuration is invalid: never retried (the Job's podFailurePolicy fails it)."""
    UPLOAD_FAILED = 3
    """Training and export finished, the upload failed after retries; the export is kept for the next attempt."""
    STOPPED_AFTER_STEP = 75
    """Test hook ``exit_after_step``: a hard exit right after a checkpoint (simulates a preemption)."""
    PREEMPTED = 143
    """SIGTERM (128 + 15): the current step was checkpointed; the restarted pod resumes from it."""


EXIT_CODE_MEANING: Final[dict[ExitCode, str]] = {
    ExitCode.OK: "The model was uploaded and its checksums verified; the termination message holds the artifact.",
    ExitCode.INVALID_INPUT: "Invalid dataset or configuration (InvalidDataset / InvalidSpec): the Job's "
    "podFailurePolicy fails the Job at once, nothing is retried.",
    ExitCode.UPLOAD_FAILED: "Trained and exported, but the upload failed after retries (UploadFailed). The export "
    "stays complete under the checkpoint directory; a retried pod that sees it (durable checkpoint storage) skips "
    "training and only uploads.",
    ExitCode.STOPPED_AFTER_STEP: "Test hook exit_after_step: a hard exit right after a checkpoint.",
    ExitCode.PREEMPTED: "SIGTERM (preemption, eviction): the step was checkpointed; the next pod resumes from it.",
}
"""What each exit code means (docs/conditions.md); any other code is a crash (TrainerFailed)."""


# Reasons the trainer itself reports in its termination message ({"status": "failed", "reason": ...}).
TRAINER_REASONS: Final[dict[str, ExitCode | None]] = {
    Reason.INVALID_DATASET: ExitCode.INVALID_INPUT,
    Reason.INVALID_SPEC: ExitCode.INVALID_INPUT,
    Reason.INVALID_MODEL: ExitCode.INVALID_INPUT,
    Reason.UPLOAD_FAILED: ExitCode.UPLOAD_FAILED,
    Reason.TRAINER_FAILED: None,  # a crash: whatever code the process died with
}
