"""The trainer's termination message: written by the trainer, read by the operator and the launcher.

Kubernetes copies a container's ``terminationMessagePath`` (:data:`ftcrd.names.TERMINATION_LOG`) into the
pod's ``status.containerStatuses[].state.terminated.message``, capped at :data:`TERMINATION_LIMIT` bytes.
The trainer writes one JSON object there (:meth:`TerminationMessage.encode` keeps it under the cap); the
operator turns it into the FineTuneJob's status (:meth:`TerminationMessage.parse`), and
``fttrainer.launch`` reads its own pod's message to decide success by the verified upload rather than by
how the processes tore down::

    {"status": "succeeded", "artifact": {"uri": "gs://b/models/c1/job/", "sizeBytes": 123, "sha256": "…",
     "manifestUri": "gs://b/models/c1/job/manifest.json", "files": 7},
     "metrics": {"loss": 0.6131, "rewardAccuracy": 0.8, …}, "steps": 40, "examples": 320, "attemptSteps": 40}
    {"status": "failed", "reason": "InvalidDataset", "message": "row 3: field 'chosen': must be a non-empty string"}
"""

from __future__ import annotations

import json
from typing import Any, Final, Literal, Self

from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from ftcrd.conditions import TRAINER_REASONS
from ftcrd.types import Artifact, CamelModel, round_metric

TERMINATION_LIMIT: Final = 4096
"""Bytes of a termination message the kubelet keeps."""
# What survives when a message must shrink (status.metrics' declared fields, most useful first).
CORE_METRICS: Final = ("loss", "rewardAccuracy", "rewardMargin", "evalLoss", "evalRewardAccuracy", "tokens")
SUCCEEDED: Final = "succeeded"
FAILED: Final = "failed"


class TerminationMessage(CamelModel):
    """One trainer attempt's outcome (camelCase on the wire, like the status it ends up in)."""

    model_config = ConfigDict(extra="ignore")

    status: Literal["succeeded", "failed"]
    reason: str | None = Field(default=None, description="For failed: one of ftcrd.conditions.TRAINER_REASONS.")
    message: str | None = Field(default=None, description="For failed: what went wrong, for a user.")
    artifact: Artifact | None = Field(default=None, description="For succeeded: the verified upload.")
    metrics: dict[str, float | int] | None = Field(
        default=None, description="Final metrics, status.metrics names, rounded (round_metric)."
    )
    steps: int | None = Field(default=None, description="Optimizer steps of the exported model.")
    examples: int | None = Field(default=None, description="Training examples of the exported model.")
    attempt_steps: int | None = Field(
        default=None,
        description="Optimizer steps this attempt ran: 0 when it found a complete export and only uploaded it.",
    )

    @field_validator("metrics")
    @classmethod
    def _rounded(cls, value: dict[str, float | int] | None) -> dict[str, float | int] | None:
        if value is None:
            return None
        return {k: v if isinstance(v, int) and not isinstance(v, bool) else round_metric(v) for k, v in value.items()}

    @model_validator(mode="after")
    def _known_reason(self) -> Self:
        if self.status == FAILED and self.reason is not None and self.reason not in TRAINER_REASONS:
            raise ValueError(f"reason {self.reason!r} is not one of {sorted(TRAINER_REASONS)}")
        return self

    @property
    def verified(self) -> bool:
        """A success the operator may report: an artifact with its manifest's sha256."""
        return (
            self.status == SUCCEEDED and self.artifact is not None and bool(self.artifact.uri and self.artifact.sha256)
        )

    @classmethod
    def parse(cls, text: str | bytes | None) -> TerminationMessage | None:
        """The message, or None when ``text`` is empty, not JSON (a log tail) or not this model."""
        raw = text.encode() if isinstance(text, str) else text
        if not raw or not raw.strip().startswith(b"{"):
            return None
        try:
            return cls.model_validate_json(raw)
        except ValidationError:
            return None

    def encode(self, limit: int = TERMINATION_LIMIT - 96) -> bytes:
        """The JSON within ``limit`` bytes: metric detail goes first, then long strings are cut."""
        return shrink(self.wire(), limit)


def _encode(result: dict[str, Any]) -> bytes:
    return json.dumps(result, separators=(",", ":"), default=str, allow_nan=False).encode()


def shrink(result: dict[str, Any], limit: int) -> bytes:
    """The JSON of ``result`` within ``limit`` bytes, dropping the least useful parts first."""
    result = dict(result)
    data = _encode(result)
    if len(data) <= limit:
        return data
    if isinstance(result.get("metrics"), dict):
        result["metrics"] = {k: v for k, v in result["metrics"].items() if k in CORE_METRICS}
        data = _encode(result)
        if len(data) <= limit:
            return data
        result.pop("metrics")
        data = _encode(result)
        if len(data) <= limit:
            return data
    # Still too big: cut the longest strings (a message with a traceback, say) until it fits.
    for _ in range(20):
        key = max((k for k, v in result.items() if isinstance(v, str)), key=lambda k: len(result[k]), default=None)
        if key is None:
            break
        excess = len(data) - limit
        s = result[key]
        keep = max(0, len(s.encode()) - excess - 32)
        result[key] = s.encode()[:keep].decode(errors="ignore") + "…[truncated]"
        data = _encode(result)
        if len(data) <= limit:
            return data
    # Last resort: only the scalars that matter.
    return _encode({k: result[k] for k in ("status", "reason") if k in result})
