"""Condition types, reasons and the trainer's exit codes of FineTuneJob.status, documented once.

The operator sets the conditions, the trainer names a reason in its termination message, the API maps
reasons to OpenAI statuses and error codes, and docs/conditions.md is generated from this module, so a
reason means the same thing everywhere.
"""

from __future__ import annotations

import enum
from typing import Final

# Condition types (each True/False/Unknown, kubebuilder-style).
CREATED: Final = "Created"  # the Job (and, multi-node, its Service) exist
SCHEDULED: Final = "Scheduled"  # every trainer pod has been bound to a node
RUNNING: Final = "Running"  # trainer processes are running
SUSPENDED: Final = "Suspended"
SUCCEEDED: Final = "Succeeded"
FAILED: Final = "Failed"
CONDITION_TYPES: Final = (CREATED, SCHEDULED, RUNNING, SUSPENDED, SUCCEEDED, FAILED)

# Reasons, with the text that explains them to a user.
REASONS: Final[dict[str, str]] = {
    "JobCreated": "The Indexed Job (and, for multi-node jobs, the headless Service) was created.",
    "Unschedulable": "The scheduler cannot place a trainer pod (for example not enough nvidia.com/gpu).",
    "WaitingForPods": "Pods exist and are waiting to start.",
    "Training": "The trainer is running.",
    "Uploading": "Training finished; the trainer is uploading the model.",
    "Completed": "The model was exported, uploaded and its checksums verified.",
    "Suspended": "spec.runPolicy.suspend is true (or Kueue holds the job); no pods run.",
    "Queued": "Phase Queued: Kueue has not admitted the job yet (the message quotes Kueue's reason, e.g. insufficient quota).",
    "Inadmissible": "Phase Queued: Kueue cannot admit the job as it is (e.g. its LocalQueue does not exist).",
    "Admitted": "Kueue admitted the job within its ClusterQueue's quota; its pods are being created.",
    "Preempted": "Phase Queued: Kueue preempted the job for a higher-priority one; it runs again when re-admitted.",
    "Evicted": "Phase Queued: Kueue evicted the job (not a preemption; the message says why); it waits for re-admission.",
    "ImagePullFailed": "The trainer image could not be pulled within the grace period.",
    "InvalidDataset": "The trainer rejected the dataset (exit code 2); retrying cannot help.",
    "InvalidSpec": "The spec could not be turned into a workload or a training run; fix the resource.",
    "UploadFailed": "The model was trained and exported but its upload failed after retries (exit code 3).",
    "OOMKilled": "A trainer container ran out of memory; raise resources.memory or lower batch sizes.",
    "DeadlineExceeded": "spec.runPolicy.activeDeadlineSeconds elapsed.",
    "BackoffLimitExceeded": "The trainer failed more times than spec.runPolicy.backoffLimit allows.",
    "UploadNotVerified": "The trainer exited 0 without reporting a verified upload.",
    "TrainerFailed": "The trainer exited with an error; see the message.",
    "ChildCreateFailed": "The operator could not create a child object (see the message).",
}


class ExitCode(enum.IntEnum):
    """The trainer's exit codes (docs/contract.md "Trainer -> operator")."""

    OK = 0
    """The model was uploaded and verified; the termination message holds the artifact."""
    INVALID_INPUT = 2
    """The dataset or the configuration is invalid: never retried (the Job's podFailurePolicy fails it)."""
    UPLOAD_FAILED = 3
    """Training and export finished, the upload failed after retries."""
    STOPPED_AFTER_STEP = 75
    """Test hook ``exit_after_step``: a hard exit right after a checkpoint (simulates a preemption)."""


# Reasons the trainer itself reports in its termination message ({"status": "failed", "reason": ...}).
TRAINER_REASONS: Final[dict[str, ExitCode | None]] = {
    "InvalidDataset": ExitCode.INVALID_INPUT,
    "InvalidSpec": ExitCode.INVALID_INPUT,
    "UploadFailed": ExitCode.UPLOAD_FAILED,
    "TrainerFailed": None,  # a crash: whatever code the process died with
}
