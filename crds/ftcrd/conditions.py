"""Condition types and reasons of FineTuneJob.status, documented once.

The operator sets them, the API maps them to OpenAI statuses and error codes, and
docs/conditions.md is generated from this table, so a reason means the same thing
everywhere.
"""

from __future__ import annotations

from typing import Final

# Condition types (each True/False/Unknown, kubebuilder-style).
CREATED: Final = "Created"  # the Job and its Service exist
SCHEDULED: Final = "Scheduled"  # every trainer pod has been bound to a node
RUNNING: Final = "Running"  # trainer processes are running
SUSPENDED: Final = "Suspended"
SUCCEEDED: Final = "Succeeded"
FAILED: Final = "Failed"

# Reasons, with the text that explains them to a user.
REASONS: Final[dict[str, str]] = {
    "JobCreated": "The Indexed Job and headless Service were created.",
    "Unschedulable": "The scheduler cannot place a trainer pod (for example not enough nvidia.com/gpu).",
    "WaitingForPods": "Pods exist and are waiting to start.",
    "Training": "The trainer is running.",
    "Uploading": "Training finished; the trainer is uploading the model.",
    "Completed": "The model was exported, uploaded and its checksums verified.",
    "Suspended": "spec.runPolicy.suspend is true (or Kueue holds the job); no pods run.",
    "ImagePullFailed": "The trainer image could not be pulled within the grace period.",
    "InvalidDataset": "The trainer rejected the dataset (exit code 2); retrying cannot help.",
    "InvalidSpec": "The spec could not be turned into a workload; fix the resource.",
    "OOMKilled": "A trainer container ran out of memory; raise resources.memory or lower batch sizes.",
    "DeadlineExceeded": "spec.runPolicy.activeDeadlineSeconds elapsed.",
    "BackoffLimitExceeded": "The trainer failed more times than spec.runPolicy.backoffLimit allows.",
    "UploadNotVerified": "The trainer exited 0 without reporting a verified upload.",
    "TrainerFailed": "The trainer exited with an error; see the message.",
    "ChildCreateFailed": "The operator could not create a child object (see the message).",
}
