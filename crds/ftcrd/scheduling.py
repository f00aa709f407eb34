"""Where and how long a FineTuneJob runs: ``spec.resources`` (nodes, GPUs, placement) and ``spec.runPolicy``.
Part of the model :mod:`ftcrd.types` re-exports."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from ftcrd.base import (
    CamelModel,
    Quantity,
)


class Toleration(CamelModel):
    """A core/v1 Toleration, passed through to the trainer pods."""

    key: Annotated[
        str | None, Field(default=None, max_length=316, description="Taint key; empty with Exists matches all.")
    ]
    operator: Annotated[
        Literal["Exists", "Equal"] | None, Field(default=None, description="Exists or Equal (the default).")
    ]
    value: Annotated[str | None, Field(default=None, max_length=63, description="Taint value for Equal.")]
    effect: Annotated[
        Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None,
        Field(default=None, description="Taint effect to match; empty matches all effects."),
    ]
    toleration_seconds: Annotated[
        int | None, Field(default=None, description="For NoExecute: how long the pod stays bound after the taint.")
    ]


class ResourcesSpec(CamelModel):
    """Compute for the trainer pods. Immutable once the job has started."""

    nodes: Annotated[int, Field(default=1, ge=1, le=512, description="Pods (torchrun nodes); must be at least 1.")]
    gpus_per_node: Annotated[
        int,
        Field(default=1, ge=0, le=16, description="nvidia.com/gpu per pod and torchrun processes per node; 0 = CPU."),
    ]
    processes_per_node: Annotated[
        int | None,
        Field(default=None, ge=1, le=64, description="torchrun processes per pod when gpusPerNode is 0 (CPU)."),
    ]
    cpu: Annotated[Quantity | None, Field(default=None, description="CPU request and limit per pod, e.g. '8'.")]
    memory: Annotated[
        Quantity | None, Field(default=None, description="Memory request and limit per pod, e.g. '64Gi'.")
    ]
    node_selector: Annotated[
        dict[str, Annotated[str, Field(max_length=63)]] | None,
        Field(default=None, max_length=32, description="Node labels the pods must match."),
    ]
    tolerations: Annotated[
        list[Toleration] | None, Field(default=None, max_length=32, description="Tolerations for the pods.")
    ]
    priority_class_name: Annotated[
        str | None, Field(default=None, max_length=253, description="PriorityClass of the pods.")
    ]
    shm_size: Annotated[
        Quantity,
        Field(
            default="1Gi", description="Size of the memory-backed /dev/shm (NCCL and data loaders need more than 64Mi)."
        ),
    ]


class RunPolicySpec(CamelModel):
    """Retries, deadlines, clean-up and queueing."""

    backoff_limit: Annotated[
        int,
        Field(default=3, ge=0, le=100, description="Failed attempts (not counting preemptions) before the job fails."),
    ]
    active_deadline_seconds: Annotated[
        int | None, Field(default=None, ge=1, description="Wall-clock limit for the whole job, across attempts.")
    ]
    ttl_seconds_after_finished: Annotated[
        int | None, Field(default=None, ge=0, description="Delete the FineTuneJob this long after it finishes.")
    ]
    suspend: Annotated[bool, Field(default=False, description="Suspend (or resume, when set back to false) the job.")]
    queue_name: Annotated[
        str | None,
        Field(default=None, max_length=63, description="Kueue LocalQueue; set as the kueue.x-k8s.io/queue-name label."),
    ]
    progress_deadline_seconds: Annotated[
        int,
        Field(
            default=3600,
            ge=0,
            le=7 * 86400,
            description=(
                "Progress watchdog: a trainer whose progress (status.progress.updatedAt) has not advanced for this "
                "long while loading, training or evaluating is restarted (every pod) from its last checkpoint, "
                "counting against backoffLimit, with a ProgressDeadlineExceeded Event; 0 disables it. Must exceed "
                "model loading and the slowest step or evaluation."
            ),
        ),
    ]


# Limits of the W&B settings, shared with the API's request schema (ftapi.schemas).
