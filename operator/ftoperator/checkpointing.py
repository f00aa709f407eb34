"""Where a job's checkpoints live (pure): an existing claim with a per-job subPath, a claim the operator creates
and the FineTuneJob owns, or, with no durable storage configured, an emptyDir; and the grace period the SIGTERM
checkpoint gets. docs/operations.md, "Checkpoints and resume"."""

from __future__ import annotations

import dataclasses

from ftcrd.names import CHECKPOINT_CLAIM_SUFFIX, CHECKPOINT_URI_SCHEME
from ftcrd.types import FineTuneJob, FineTuneJobSpec

from ftoperator.settings import Settings

DEFAULT_STORAGE_CLASS = "default"
"""FTO_CHECKPOINT_STORAGE_CLASS value meaning: the cluster's default StorageClass (no storageClassName)."""
FALLBACK_CLAIM_SIZE = "500Gi"


@dataclasses.dataclass(frozen=True)
class CheckpointStorage:
    """Where a job's /checkpoints lives: an existing claim (a per-job subPath), a claim the operator creates and
    the FineTuneJob owns, or (no durable storage configured) an emptyDir."""

    claim: str | None = None
    sub_path: str | None = None
    owned: bool = False
    storage_class: str | None = None
    size: str | None = None

    @property
    def durable(self) -> bool:
        return self.claim is not None

    @property
    def location(self) -> str | None:
        """What users read in status.checkpoints[].path: ``pvc://<claim>[/<subPath>]``."""
        if self.claim is None:
            return None
        return CHECKPOINT_URI_SCHEME + self.claim + (f"/{self.sub_path}" if self.sub_path else "")


def checkpoint_storage(ftj: FineTuneJob, settings: Settings | None = None) -> CheckpointStorage:
    """spec.checkpoint, else the operator's default (FTO_CHECKPOINT_STORAGE_CLASS), else an emptyDir."""
    settings = settings or Settings()
    spec, md = ftj.spec.checkpoint, ftj.metadata
    if spec.claim_name:
        # the uid: a re-created job of the same name never resumes its predecessor's checkpoints
        return CheckpointStorage(claim=spec.claim_name, sub_path=f"{md['name']}-{md.get('uid', '')}".rstrip("-"))
    storage_class = spec.storage_class_name or settings.checkpoint_storage_class
    if not storage_class:
        return CheckpointStorage()
    return CheckpointStorage(
        claim=md["name"] + CHECKPOINT_CLAIM_SUFFIX,
        owned=True,
        storage_class=None if storage_class == DEFAULT_STORAGE_CLASS else storage_class,
        size=spec.size or settings.checkpoint_size_limit or FALLBACK_CLAIM_SIZE,
    )


def grace_seconds(spec: FineTuneJobSpec, settings: Settings) -> int:
    """The pods' terminationGracePeriodSeconds: spec.checkpoint's, else the operator's default."""
    configured = spec.checkpoint.termination_grace_period_seconds
    return settings.termination_grace_seconds if configured is None else configured
