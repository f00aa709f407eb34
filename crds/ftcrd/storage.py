"""Where a job's state lives beyond its pods: the durable checkpoint storage (``spec.checkpoint``) and the trained
model a job starts from (``spec.model.from``). Re-exported by :mod:`ftcrd.types`; import from there."""

from __future__ import annotations

from typing import Annotated

from pydantic import ConfigDict, Field

from ftcrd.base import CamelModel, Quantity, cel, immutable

JOB_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
SHA256_PATTERN = r"^[0-9a-f]{64}$"


class ModelSource(CamelModel):
    """A trained model to start from instead of the base weights: an earlier FineTuneJob's verified artifact, or an
    export (or the policy.pt inside one) in object storage. The trainer downloads it and checks every file against
    the export's manifest.json before any training; a mismatch fails the job (InvalidModel)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("has(self.job) != has(self.uri)", "exactly one of spec.model.from.job or spec.model.from.uri"),
                cel(
                    "!has(self.sha256) || has(self.uri)",
                    "spec.model.from.sha256 pins a uri; the operator pins a job's artifact itself",
                ),
            ]
        }
    )

    job: Annotated[
        str | None,
        Field(
            default=None,
            max_length=253,
            pattern=JOB_NAME_PATTERN,
            description=(
                "An earlier FineTuneJob in this namespace: its verified artifact (status.artifact, pinned by its "
                "sha256). While that job is still running this one waits (Pending/WaitingForModel, no pods); if it "
                "failed or does not exist, this one fails (ModelSourceFailed)."
            ),
        ),
    ]
    uri: Annotated[
        str | None,
        Field(
            default=None,
            max_length=1024,
            pattern=r"^gs://[^/]+/.+",
            description=(
                "gs:// URI of an export folder holding manifest.json (what a FineTuneJob uploads), or of the "
                "reference-format policy.pt inside one (its weights are loaded into spec.model.name)."
            ),
        ),
    ]
    sha256: Annotated[
        str | None,
        Field(
            default=None,
            pattern=SHA256_PATTERN,
            description="sha256 of the export's manifest.json (status.artifact.sha256 of the job that made it).",
        ),
    ]


class CheckpointSpec(CamelModel):
    """Where the resumable checkpoints (and the export kept for an upload retry) live. On durable storage a
    replaced pod, a resumed pause, a preemption, a retry or a gang restart continues from the last complete
    checkpoint; on the emptyDir fallback only the same pod's processes could."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!has(self.claimName) || !has(self.storageClassName)",
                    "set spec.checkpoint.claimName or spec.checkpoint.storageClassName, not both",
                ),
                immutable("spec.checkpoint"),
            ]
        }
    )

    claim_name: Annotated[
        str | None,
        Field(
            default=None,
            max_length=253,
            description=(
                "An existing PersistentVolumeClaim in the namespace (ReadWriteMany for multi-node jobs). The job "
                "writes under <job>-<uid>/ in it (a subPath), so several jobs can share one claim and a re-created "
                "job of the same name never resumes another's checkpoints."
            ),
        ),
    ]
    storage_class_name: Annotated[
        str | None,
        Field(
            default=None,
            max_length=253,
            description=(
                "Have the operator create the PersistentVolumeClaim <job>-checkpoints of this StorageClass, owned by "
                "(and deleted with) the FineTuneJob. With neither this nor claimName the operator's default applies "
                "(FTO_CHECKPOINT_STORAGE_CLASS); without one, an emptyDir that does not survive the pod."
            ),
        ),
    ]
    size: Annotated[
        Quantity | None,
        Field(default=None, description="Request of the operator-created claim (default FTO_CHECKPOINT_SIZE_LIMIT)."),
    ]
    keep: Annotated[
        int,
        Field(default=2, ge=1, le=100, description="Complete checkpoints kept; older ones are deleted after a save."),
    ]
    termination_grace_period_seconds: Annotated[
        int | None,
        Field(
            default=None,
            ge=0,
            le=86400,
            description=(
                "terminationGracePeriodSeconds of the trainer pods: the time the checkpoint written on SIGTERM "
                "(preemption, eviction, pause) has. Default: the operator's FTO_TERMINATION_GRACE_SECONDS."
            ),
        ),
    ]
