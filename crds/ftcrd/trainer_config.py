"""The trainer's configuration, typed: what the operator hands a trainer pod, as one JSON file.

The operator renders :class:`TrainerConfig` from a FineTuneJob (``ftoperator.builders.trainer_config``),
puts it on the pod template as the annotation :data:`ftcrd.names.ANN_TRAINER_CONFIG`, and a downwardAPI
volume exposes it at :data:`ftcrd.names.TRAINER_CONFIG_PATH`; the trainer reads it with ``--config``.
No command-line quoting and no interpolation stand between the spec and the trainer, so a communityId
"007" or "1e3" arrives as that exact string.

The CRD's own models are embedded (``method`` is a :class:`~ftcrd.types.MethodSpec`, ``hyperparameters`` a
:class:`~ftcrd.types.HyperparametersSpec`) and the other fields reuse the CRD fields' definitions
(:func:`crd_field`), so every default and range is written once, in :mod:`ftcrd.types`. The trainer's
Hydra command line (``model=zephyr loss=dpo loss.beta=0.1 …``) is only an adapter producing this model,
and its YAML reads these defaults through :func:`default` (the ``${contract:…}`` resolver).

Pure pydantic: imported by the operator and the API, which never import torch.
"""

from __future__ import annotations

import copy
import types as pytypes
import typing
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, Field

from ftcrd.types import (
    CamelModel,
    CheckpointSpec,
    Compression,
    DatasetFormat,
    DatasetSpec,
    FineTuneJobSpec,
    HyperparametersSpec,
    MethodSpec,
    ModelPreset,
    ModelSpec,
    OutputSpec,
    TrackingSpec,
)

CONFIG_VERSION: Final = 1
Dtype = Literal["float32", "bfloat16", "float16"]


def crd_field(model: type[BaseModel], name: str) -> Any:
    """The CRD field ``model.name`` as a field of another model: same type constraints, default, description."""
    return copy.copy(model.model_fields[name])


class TrainerModel(CamelModel):
    """The base model. ``preset`` names the trainer's config/model/<preset>.yaml, which fills the
    architecture fields left unset (the block class FSDP2 shards, dtypes, the tiny model's shape)."""

    preset: ModelPreset | None = Field(default=None, description="None: every architecture field is given here.")
    name_or_path: str = Field(min_length=1, max_length=1024, description="Hub id, or a path (/models/... in a pod).")
    revision: str | None = crd_field(ModelSpec, "revision")
    tokenizer_name_or_path: str | None = Field(
        default=None, max_length=1024, description="Tokenizer; defaults to the model's own."
    )
    archive: str | None = Field(
        default=None, description="A reference-format policy.pt, or an export directory, to start from."
    )
    source_uri: str | None = Field(
        default=None,
        description="gs:// export folder (or a policy.pt in one) to download, verify against its manifest and start "
        "from (spec.model.from, resolved by the operator).",
    )
    source_sha256: str | None = Field(default=None, description="sha256 the export's manifest.json must have.")
    block_name: str | None = Field(default=None, description="Transformer block class FSDP2 shards.")
    policy_dtype: Dtype | None = None
    fsdp_policy_mp: Dtype | None = None
    reference_dtype: Dtype | None = None
    tiny: dict[str, int | bool] | None = Field(default=None, description="The tiny preset's shape.")


class TrainerDatasetFile(CamelModel):
    """A dataset file inside the pod and how to read it (a spec.dataset source without its source)."""

    path: str = Field(min_length=1, description="The dataset file (under /data or /data-validation in a pod).")
    format: DatasetFormat = crd_field(DatasetSpec, "format")
    compression: Compression = crd_field(DatasetSpec, "compression")


class TrainerDataset(TrainerDatasetFile):
    """The training dataset, the held-out share, and the separate validation file if there is one."""

    validation_fraction: float = crd_field(DatasetSpec, "validation_fraction")
    max_rows: int | None = Field(default=None, ge=1, description="Read at most this many rows (of each file).")
    validation: TrainerDatasetFile | None = Field(
        default=None,
        description="Evaluate on all rows of this file and train on every training row (validationFraction ignored).",
    )


class TrainerOutput(CamelModel):
    """Where the export is uploaded: gs://<bucket>/<prefix>/<communityId or "default">/<job>/."""

    bucket: str = crd_field(OutputSpec, "bucket")
    prefix: str = crd_field(OutputSpec, "prefix")
    community_id: str | None = crd_field(FineTuneJobSpec, "community_id")


class TrainerRun(CamelModel):
    """How this run behaves, beyond the FineTuneJob's spec (trainer-only knobs with their defaults)."""

    run_dir: str = Field(min_length=1, description="Logs and the resolved configuration (rank 0).")
    checkpoint_dir: str = Field(
        min_length=1,
        description="Resumable checkpoints and the export (kept there so a retried upload needs no training).",
    )
    keep_checkpoints: int = crd_field(CheckpointSpec, "keep")
    checkpoint_location: str | None = Field(
        default=None,
        description="How users find checkpoint_dir (pvc://<claim>/<dir>); None: it is the pod's own (an emptyDir).",
    )
    eval_batch_size: int = Field(default=16, ge=1, description="Examples per evaluation forward.")
    n_eval_examples: int | None = Field(
        default=256, ge=1, description="Held-out examples evaluated; None: the whole split."
    )
    do_first_eval: bool = Field(default=True, description="Evaluate before training (not when resuming).")
    minimum_log_interval_secs: float = Field(
        default=1.0, ge=0, description="Minimum seconds between two metric log lines."
    )
    tiny_cache_dir: str | None = Field(
        default=None, description="Cache of the tiny preset; None: $FTT_TINY_CACHE or $TMPDIR."
    )
    exit_after_step: int | None = Field(
        default=None, ge=1, description="Test hook: hard exit (75) right after this step's checkpoint."
    )
    crash_rank_after_upload: int | None = Field(
        default=None, ge=0, description="Test hook: this rank aborts (SIGABRT) once the upload is verified."
    )
    hold_at_steps: list[int] | None = Field(
        default=None,
        description="Test hook: after the checkpoint of each of these steps (reached in this attempt, not resumed "
        "at), stop making progress until SIGTERM, then exit 143: a stalled or preempted trainer at a known step.",
    )
    exit_during_checkpoint: int | None = Field(
        default=None,
        ge=1,
        description="Test hook: hard exit (75) while the checkpoint of this step is being written, before it is "
        "complete (in an attempt that started from step 0).",
    )


TEST_HOOKS: Final = ("exit_after_step", "crash_rank_after_upload", "hold_at_steps", "exit_during_checkpoint")
"""TrainerRun's test hooks: the only fields ``FTJ_TEST_HOOKS`` (ftcrd.names.ENV_TEST_HOOKS) may set in a pod."""


class TrainerConfig(CamelModel):
    """Everything one training run needs; the trainer's ``--config`` file."""

    version: Literal[1] = CONFIG_VERSION
    job: str = Field(
        min_length=1,
        max_length=253,
        pattern=r"^[^/]+$",
        description="The FineTuneJob's name: names the run and the upload folder.",
    )
    model: TrainerModel
    method: Annotated[MethodSpec, Field(default_factory=MethodSpec)]
    hyperparameters: Annotated[HyperparametersSpec, Field(default_factory=HyperparametersSpec)]
    dataset: TrainerDataset
    output: TrainerOutput | None = Field(default=None, description="None: no upload (a local export).")
    tracking: TrackingSpec | None = crd_field(FineTuneJobSpec, "tracking")
    run: TrainerRun

    def render(self) -> str:
        """The JSON the trainer reads (every field, so the file shows what the run used)."""
        return self.model_dump_json(by_alias=True)


def _section(annotation: Any) -> type[BaseModel]:
    """The model class of a section field (``Annotated``/``Optional`` unwrapped)."""
    if typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (typing.Union, pytypes.UnionType):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
        raise KeyError(f"not a section: {annotation!r}")
    return annotation


def default(path: str) -> Any:
    """The default of ``<section>.<field>`` of :class:`TrainerConfig` (Python names), e.g. ``method.beta``, or of a
    field of an optional sub-model, e.g. ``method.adapter.r``.

    What the trainer's Hydra YAML reads through its ``${contract:…}`` resolver, so the YAML never
    restates a default."""
    section, *fields = path.split(".")
    try:
        model = _section(TrainerConfig.model_fields[section].annotation)
        *parents, field = fields
        for name in parents:
            model = _section(model.model_fields[name].annotation)
        info = model.model_fields[field]
    except (KeyError, ValueError):
        raise KeyError(f"no contract default {path!r} (expected <section>.<field> of ftcrd.TrainerConfig)") from None
    if info.is_required():
        raise KeyError(f"{path!r} has no default: it is required")
    return info.get_default(call_default_factory=True)
