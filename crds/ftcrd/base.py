"""The building blocks of the FineTuneJob model: value types with their ranges, literals, phases, the
progress stage, status rounding, CEL helpers and the camelCase base model. Re-exported by
:mod:`ftcrd.types`; import from there."""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic.alias_generators import to_camel

# Children are named "<name>", "<name>-dataset" and pods "<name>-<index>-<5 random>" (hostname
# "<name>-<index>"): 52 keeps every derived name inside the 63-character DNS label limit,
# the same bound Kubernetes puts on CronJob names for the same reason.
MAX_NAME_LENGTH = 52

# The trainer's presets in config/model/*.yaml; a test keeps the two in step.
ModelPreset = Literal["zephyr", "pythia28", "llama", "tiny"]
MethodType = Literal["dpo", "ipo", "cdpo", "sft"]
Optimizer = Literal["RMSprop", "AdamW", "Adam", "SGD"]
# fttrainer.parallel.CHECKPOINT_POLICIES (the trainer checks they match)
CheckpointingPolicy = Literal["full", "selective", "every_other"]
DatasetFormat = Literal["novalto", "jsonl", "openai"]
Compression = Literal["auto", "none", "gzip"]
Phase = Literal["Pending", "Queued", "Running", "Uploading", "Succeeded", "Failed", "Suspended"]
PHASE_PENDING: Final[Phase] = "Pending"
PHASE_RUNNING: Final[Phase] = "Running"
PHASE_UPLOADING: Final[Phase] = "Uploading"
PHASE_SUCCEEDED: Final[Phase] = "Succeeded"
PHASE_FAILED: Final[Phase] = "Failed"
PHASE_SUSPENDED: Final[Phase] = "Suspended"
PHASE_QUEUED: Final[Phase] = "Queued"
"""Kueue holds the job (spec.runPolicy.queueName): not admitted yet, or preempted."""
TERMINAL_PHASES: frozenset[str] = frozenset({PHASE_SUCCEEDED, PHASE_FAILED})

# What the trainer is doing (status.progress.stage); "uploading" shows as phase Uploading.
Stage = Literal["loading", "training", "evaluating", "exporting", "uploading"]
STAGE_UPLOADING: Final[Stage] = "uploading"

# status.metrics (and the termination message's metrics) carry this many significant digits: enough to
# follow a loss curve, short in `kubectl get ftj`. The uploaded manifest keeps full precision.
STATUS_METRIC_DIGITS: Final = 4


def round_metric(value: float) -> float:
    """``value`` to :data:`STATUS_METRIC_DIGITS` significant digits (0.12643009051680565 -> 0.1264)."""
    return float(f"{value:.{STATUS_METRIC_DIGITS}g}")


# A resource.Quantity ("8", "500m", "64Gi"): a string or a number on the wire, always a string in Python.
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)


def _quantity_to_str(value: object) -> object:
    if isinstance(value, bool):
        return value
    return str(value) if isinstance(value, int | float) else value


Quantity = Annotated[
    str,
    BeforeValidator(_quantity_to_str),
    Field(
        max_length=64,
        pattern=QUANTITY_PATTERN,
        # The apiserver checks quantities with CEL's isQuantity (a clearer message than the regex).
        json_schema_extra={
            "x-kubernetes-int-or-string": True,
            "x-kubernetes-validations": [
                {
                    "rule": "type(self) == int || isQuantity(self)",
                    "message": "must be a Kubernetes quantity such as 8, 500m or 64Gi",
                }
            ],
        },
    ),
]


# Value types with their ranges, shared by the fields below and the API's OpenAI-shaped requests (a value
# entering through any door meets the same range).
Beta = Annotated[float, Field(gt=0, le=100)]
BatchSize = Annotated[int, Field(ge=1, le=65536)]
Epochs = Annotated[int, Field(ge=1, le=1000)]
CommunityId = Annotated[str, Field(max_length=63, pattern=r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")]


def cel(rule: str, message: str, *, field_path: str | None = None, reason: str | None = None) -> dict[str, Any]:
    """One ``x-kubernetes-validations`` entry; the message is what a kubectl user reads."""
    entry: dict[str, Any] = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    if reason:
        entry["reason"] = reason
    return entry


def immutable(what: str) -> dict[str, Any]:
    return cel("self == oldSelf", f"{what} is immutable once the job is created; create a new FineTuneJob")


class CamelModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    def wire(self) -> dict[str, Any]:
        """The object as Kubernetes stores it: camelCase keys, unset fields omitted."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class SecretKeyRef(CamelModel):
    """A key inside a Kubernetes Secret in the job's namespace."""

    name: Annotated[str, Field(min_length=1, max_length=253, description="Name of the Secret.")]
    key: Annotated[str, Field(min_length=1, max_length=253, description="Key inside the Secret.")]
