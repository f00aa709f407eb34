"""The FineTuneJob resource, defined once.

Every other artefact derives from these models: ``make manifests`` renders
``crds/finetunejob.yaml`` from them (see :mod:`ftcrd.generate`), the API builds
specs with them, the operator parses objects with them and the trainer's typed
configuration (:mod:`ftcrd.trainer_config`) embeds them, so a default or a range
is written once, here. Field doc strings become the CRD's ``description`` and
therefore what ``kubectl explain`` prints.

Names are camelCase on the wire (Kubernetes convention) and snake_case in Python.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self

from pydantic import ConfigDict, Field, model_validator

from ftcrd.adapter import (  # noqa: F401 (re-exported)
    QLORA_ONE_GPU,
    QLORA_RESOURCES_RULE,
    AdapterSpec,
    QuantizationSpec,
    qlora_fits,
)
from ftcrd.base import (  # noqa: F401 (re-exported: ftcrd.types is the model's one import)
    MAX_NAME_LENGTH,
    PHASE_FAILED,
    PHASE_PENDING,
    PHASE_QUEUED,
    PHASE_RUNNING,
    PHASE_SUCCEEDED,
    PHASE_SUSPENDED,
    PHASE_UPLOADING,
    STAGE_UPLOADING,
    STATUS_METRIC_DIGITS,
    TERMINAL_PHASES,
    BatchSize,
    Beta,
    CamelModel,
    CheckpointingPolicy,
    CommunityId,
    Compression,
    DatasetFormat,
    Epochs,
    MethodType,
    ModelPreset,
    Optimizer,
    Phase,
    Quantity,
    Stage,
    cel,
    immutable,
    round_metric,
)
from ftcrd.dataset import TruncationSide
from ftcrd.names import (  # noqa: F401 (re-exported: the identity lives with the other wire names)
    API_VERSION,
    CATEGORIES,
    GROUP,
    KIND,
    PLURAL,
    RESERVED_ENV,
    SHORT_NAMES,
    SINGULAR,
    VERSION,
)
from ftcrd.status import (  # noqa: F401 (re-exported)
    Artifact,
    CheckpointRecord,
    Condition,
    EvalSamples,
    FineTuneJobStatus,
    Metrics,
    Progress,
    RestartRecord,
    Sample,
)
from ftcrd.storage import (  # noqa: F401 (re-exported)
    JOB_NAME_PATTERN,
    SHA256_PATTERN,
    CheckpointSpec,
    ModelSource,
)

# ---------------------------------------------------------------------------------------------
# spec
# ---------------------------------------------------------------------------------------------


class SecretKeyRef(CamelModel):
    """A key inside a Kubernetes Secret in the job's namespace."""

    name: Annotated[str, Field(min_length=1, max_length=253, description="Name of the Secret.")]
    key: Annotated[str, Field(min_length=1, max_length=253, description="Key inside the Secret.")]


class ModelSpec(CamelModel):
    """The base model to fine-tune and the trainer preset that fits it."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [immutable("spec.model")]})

    name: Annotated[
        str,
        Field(
            min_length=1,
            max_length=512,
            description=(
                "Hugging Face repository id (for example HuggingFaceH4/zephyr-7b-beta) or, with claimName, a "
                "path inside that volume. Weights are read from the volume or the Hub cache; nothing else is "
                "downloaded by the operator."
            ),
        ),
    ]
    revision: Annotated[
        str | None,
        Field(default=None, max_length=256, description="Git revision (branch, tag or commit) of the model."),
    ]
    tokenizer: Annotated[
        str | None,
        Field(
            default=None, max_length=512, description="Tokenizer repository id or path; defaults to the model's own."
        ),
    ]
    preset: Annotated[
        ModelPreset,
        Field(
            default="zephyr",
            description=(
                "Trainer preset from config/model (block class to shard, dtype, defaults): zephyr, pythia28, llama, "
                "or tiny (a small random-initialised model for CPU demos and tests)."
            ),
        ),
    ]
    claim_name: Annotated[
        str | None,
        Field(
            default=None,
            max_length=253,
            description="PersistentVolumeClaim holding the model; mounted read-only at /models and name is a path in it.",
        ),
    ]
    hf_token_secret: Annotated[
        SecretKeyRef | None,
        Field(default=None, description="Secret with a Hugging Face token for gated models (exposed as HF_TOKEN)."),
    ]
    from_: Annotated[
        ModelSource | None,
        Field(
            default=None,
            alias="from",
            description=(
                "Start from a trained model (an earlier job's artifact or an export in the bucket) instead of the "
                "base weights: SFT first, then DPO from the SFT policy. name and preset still describe the "
                "architecture."
            ),
        ),
    ]


class MethodSpec(CamelModel):
    """The preference-optimisation objective: the loss (type), its temperature (beta) and conservative label
    smoothing. Immutable once the job is created."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [immutable("spec.method")]})

    type: Annotated[
        MethodType,
        Field(
            default="dpo",
            description=(
                "dpo: sigmoid DPO; cdpo: conservative DPO (DPO with labelSmoothing); ipo: identity preference "
                "optimisation (squared loss); sft: supervised fine-tuning on the chosen responses."
            ),
        ),
    ]
    beta: Annotated[
        Beta,
        Field(
            default=0.1,
            description="Temperature of the implicit reward; higher stays closer to the reference model. Must be > 0.",
        ),
    ]
    label_smoothing: Annotated[
        float,
        Field(
            default=0.0,
            ge=0,
            lt=0.5,
            description="Assumed probability that a preference label is flipped (conservative DPO), in [0, 0.5).",
        ),
    ]
    reference_free: Annotated[
        bool,
        Field(default=False, description="Ignore the reference model (implicit uniform reference)."),
    ]
    adapter: Annotated[
        AdapterSpec | None,
        Field(
            default=None,
            description="Unset: full fine-tuning (every weight trained, DPO keeps a frozen copy as reference).",
        ),
    ]


PROMPT_SHORTER_THAN_MAX = "maxPromptLength must be smaller than maxLength"


class HyperparametersSpec(CamelModel):
    """Optimisation settings. Defaults follow the reference DPO implementation."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!has(self.maxPromptLength) || !has(self.maxLength) || self.maxPromptLength < self.maxLength",
                    PROMPT_SHORTER_THAN_MAX,
                ),
            ]
        }
    )

    epochs: Annotated[Epochs | None, Field(default=1, description="Passes over the dataset.")]
    examples: Annotated[
        int | None,
        Field(default=None, ge=1, description="Stop after this many training examples (overrides epochs when set)."),
    ]
    learning_rate: Annotated[float, Field(default=5e-7, gt=0, le=1, description="Peak learning rate.")]
    batch_size: Annotated[BatchSize, Field(default=128, description="Examples per optimizer step, across all ranks.")]
    gradient_accumulation_steps: Annotated[
        int, Field(default=1, ge=1, le=1024, description="Micro-batches accumulated per optimizer step.")
    ]
    max_length: Annotated[int, Field(default=512, ge=8, le=131072, description="Max tokens of prompt + response.")]
    max_prompt_length: Annotated[
        int,
        Field(default=256, ge=1, le=131072, description="Prompts longer than this are truncated (see truncationSide)."),
    ]
    truncation_side: Annotated[
        TruncationSide,
        Field(
            default="keep_end",
            description="Which end of a too-long prompt is kept: keep_end (the turn nearest the reply) or keep_start.",
        ),
    ]
    warmup_steps: Annotated[int, Field(default=150, ge=0, description="Linear learning-rate warmup steps.")]
    optimizer: Annotated[Optimizer, Field(default="RMSprop", description="Optimizer class (torch.optim).")]
    seed: Annotated[int, Field(default=0, ge=0, le=2**31 - 1, description="Random seed for data order and init.")]
    eval_every: Annotated[
        int, Field(default=20000, ge=1, description="Evaluate on the held-out split every N training examples.")
    ]
    max_grad_norm: Annotated[float, Field(default=10.0, gt=0, description="Gradient-norm clipping threshold.")]
    activation_checkpointing: Annotated[
        bool, Field(default=False, description="Recompute activations in backward to save memory.")
    ]
    checkpoint_every: Annotated[
        int, Field(default=100, ge=1, description="Save a resumable distributed checkpoint every N optimizer steps.")
    ]
    precompute_reference: Annotated[
        bool,
        Field(
            default=False,
            description="Compute reference log-probs in a first pass and drop the reference model (saves memory).",
        ),
    ]
    # Throughput knobs (docs/trainer.md#performance): how the same examples are computed, never which.
    packing: Annotated[
        bool,
        Field(
            default=False,
            description=(
                "Padding-free batches: each micro-batch's sequences are concatenated without padding, attention "
                "kept inside each sequence. Same loss as padded batches; faster when lengths vary."
            ),
        ),
    ]
    max_tokens_per_micro_batch: Annotated[
        int | None,
        Field(
            default=None,
            ge=16,
            le=16777216,
            description=(
                "Cut each rank's share of a step into forwards of at most this many tokens (real tokens with "
                "packing, rows x longest without) instead of gradientAccumulationSteps equal parts. Unset: off."
            ),
        ),
    ]
    activation_checkpointing_policy: Annotated[
        CheckpointingPolicy,
        Field(
            default="full",
            description=(
                "With activationCheckpointing: full (recompute whole blocks), selective (keep matmul and attention "
                "outputs, recompute the rest) or every_other (full, on every second block)."
            ),
        ),
    ]
    compile: Annotated[
        bool,
        Field(
            default=False, description="torch.compile the transformer blocks (first steps are slower while compiling)."
        ),
    ]

    @model_validator(mode="after")
    def _prompt_shorter_than_max(self) -> Self:
        # The CEL rule above, for the API and the trainer, which validate without an apiserver.
        if self.max_prompt_length >= self.max_length:
            raise ValueError(PROMPT_SHORTER_THAN_MAX)
        return self


class ConfigMapSource(CamelModel):
    """A dataset stored in a ConfigMap (binaryData for compressed content)."""

    name: Annotated[str, Field(min_length=1, max_length=253, description="Name of the ConfigMap.")]
    key: Annotated[
        str, Field(default="dataset.json", min_length=1, max_length=253, description="Key in the ConfigMap.")
    ]


class VolumeSource(CamelModel):
    """A dataset stored on a PersistentVolumeClaim."""

    claim_name: Annotated[str, Field(min_length=1, max_length=253, description="Name of the PersistentVolumeClaim.")]
    path: Annotated[
        str,
        Field(
            min_length=1,
            max_length=1024,
            pattern=r"^[^/].*$",
            description="Path of the dataset file relative to the volume root (no leading slash).",
        ),
    ]


class DatasetSource(CamelModel):
    """A dataset file: exactly one of configMap or volume, and how to read it."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "has(self.configMap) != has(self.volume)",
                    "exactly one of spec.dataset.validation.configMap or spec.dataset.validation.volume must be set",
                ),
            ]
        }
    )

    config_map: Annotated[ConfigMapSource | None, Field(default=None, description="Dataset in a ConfigMap.")]
    volume: Annotated[VolumeSource | None, Field(default=None, description="Dataset on a PersistentVolumeClaim.")]
    format: Annotated[
        DatasetFormat,
        Field(
            default="novalto",
            description=(
                "novalto: a JSON list of {prompt, chosen, rejected}; jsonl: one such object per line; openai: "
                "OpenAI DPO JSONL (input.messages, preferred_output, non_preferred_output)."
            ),
        ),
    ]
    compression: Annotated[
        Compression, Field(default="auto", description="auto detects gzip by its magic bytes; none or gzip force it.")
    ]


class DatasetSpec(DatasetSource):
    """Where the preference pairs live: exactly one of configMap or volume."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "has(self.configMap) != has(self.volume)",
                    "exactly one of spec.dataset.configMap or spec.dataset.volume must be set",
                ),
                immutable("spec.dataset"),
            ]
        }
    )

    validation_fraction: Annotated[
        float,
        Field(
            default=0.05,
            ge=0,
            lt=1,
            description="Share of rows held out for evaluation metrics (ignored when validation is set).",
        ),
    ]
    validation: Annotated[
        DatasetSource | None,
        Field(
            default=None,
            description=(
                "A separate validation dataset (the OpenAI API's validation_file): the trainer evaluates on all of "
                "its rows and trains on every row of the training dataset (validationFraction is ignored)."
            ),
        ),
    ]


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


class OutputSpec(CamelModel):
    """Where the exported model goes: gs://<bucket>/<prefix>/<communityId>/<job>/."""

    bucket: Annotated[str, Field(min_length=3, max_length=222, description="Firebase Storage (GCS) bucket name.")]
    prefix: Annotated[str, Field(default="models", max_length=512, description="Object prefix inside the bucket.")]
    credentials_secret: Annotated[
        SecretKeyRef | None,
        Field(
            default=None,
            description="Secret holding the Firebase service-account JSON; mounted read-only. Omit to use workload identity.",
        ),
    ]


class EnvVar(CamelModel):
    """An extra environment variable for the trainer (literal values; use Secrets for credentials)."""

    name: Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
    value: Annotated[str, Field(default="", max_length=32768)]


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
WANDB_NAME_LIMITS = Field(min_length=1, max_length=128)
WANDB_TAG_LIMITS = Field(min_length=1, max_length=64, description="A W&B run tag.")
WANDB_MAX_TAGS = 50
WandbName = Annotated[str, WANDB_NAME_LIMITS]
WandbTag = Annotated[str, WANDB_TAG_LIMITS]


class WandbSpec(CamelModel):
    """A Weights & Biases run to report training metrics to (the OpenAI API's wandb integration)."""

    project: Annotated[WandbName, Field(description="W&B project the run is created in.")]
    name: Annotated[WandbName | None, Field(default=None, description="Display name of the run; default: the job.")]
    entity: Annotated[
        WandbName | None, Field(default=None, description="W&B team or user; default: the API key's default entity.")
    ]
    tags: Annotated[
        list[WandbTag] | None, Field(default=None, max_length=WANDB_MAX_TAGS, description="Tags attached to the run.")
    ]
    api_key_secret: Annotated[
        SecretKeyRef | None,
        Field(
            default=None,
            description="Secret holding the W&B API key (exposed to the trainer as WANDB_API_KEY); without it the "
            "run is recorded offline in the trainer's workspace.",
        ),
    ]


class MlflowSpec(CamelModel):
    """An MLflow run to report training to (one run per job, named after the job)."""

    tracking_uri: Annotated[
        str,
        Field(
            min_length=1,
            max_length=2048,
            description="MLflow tracking URI: a tracking server (http(s)://...) or a file: URI (a local file store).",
        ),
    ]
    experiment: Annotated[
        str,
        Field(default="finetune", min_length=1, max_length=256, description="Experiment the run is created in."),
    ]
    token_secret: Annotated[
        SecretKeyRef | None,
        Field(
            default=None,
            description="Secret holding a tracking-server token (exposed to the trainer as MLFLOW_TRACKING_TOKEN).",
        ),
    ]


class TrackingSpec(CamelModel):
    """Experiment tracking: where the trainer reports its metrics besides the job's status, and what it samples.

    Tracking never fails training: a tracker that cannot be reached is logged once and dropped."""

    wandb: Annotated[WandbSpec | None, Field(default=None, description="Report to Weights & Biases.")]
    # Defaults assigned (not in Field) so that type checkers see them: the API builds TrackingSpec(wandb=...).
    mlflow: Annotated[MlflowSpec | None, Field(description="Report to MLflow.")] = None
    sample_during_eval: Annotated[
        bool,
        Field(
            description=(
                "At each evaluation, complete a few held-out prompts with the policy (and the reference model) and "
                "report them to the trackers and, shortened, as Events of the job."
            ),
        ),
    ] = False
    samples: Annotated[int, Field(ge=1, le=16, description="Held-out prompts completed per evaluation.")] = 4
    sample_max_new_tokens: Annotated[
        int, Field(ge=1, le=1024, description="Tokens generated per sample (greedy decoding).")
    ] = 64


class FineTuneJobSpec(CamelModel):
    """What to fine-tune, on which data, with which resources, and where the result goes."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.method.type != 'cdpo' || self.method.labelSmoothing > 0.0",
                    "method cdpo needs spec.method.labelSmoothing > 0",
                ),
                cel(QLORA_RESOURCES_RULE, QLORA_ONE_GPU),
            ]
        }
    )

    community_id: Annotated[
        CommunityId | None,
        Field(
            default=None,
            description="Tenant or community label, copied onto every child object as finetune.dev/community-id.",
        ),
    ]
    model: Annotated[ModelSpec, Field(description="The base model.")]
    method: Annotated[MethodSpec, Field(default_factory=MethodSpec, description="The training objective.")]
    hyperparameters: Annotated[
        HyperparametersSpec, Field(default_factory=HyperparametersSpec, description="Optimisation settings.")
    ]
    dataset: Annotated[DatasetSpec, Field(description="The preference dataset.")]
    resources: Annotated[ResourcesSpec, Field(default_factory=ResourcesSpec, description="Compute per pod.")]
    output: Annotated[OutputSpec, Field(description="Where the trained model is uploaded.")]
    image: Annotated[
        str | None, Field(default=None, max_length=1024, description="Trainer image; defaults to the operator's.")
    ]
    service_account_name: Annotated[
        str | None,
        Field(
            default=None,
            max_length=253,
            description=(
                "Run the trainer as this ServiceAccount instead of the namespace's finetune-trainer (bind it to"
                " ClusterRole finetune-trainer so the trainer can report progress)."
            ),
        ),
    ]
    env: Annotated[
        list[EnvVar] | None,
        Field(
            default=None,
            max_length=64,
            description="Extra environment variables for the trainer; rank-wiring variables are reserved.",
            json_schema_extra={
                # keyed by name: the apiserver refuses the same variable twice
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["name"],
                "x-kubernetes-validations": [
                    cel(
                        "self.all(e, !(e.name in " + str(list(RESERVED_ENV)) + "))",
                        "spec.env may not set the reserved rank-wiring variables " + ", ".join(RESERVED_ENV),
                    )
                ],
            },
        ),
    ]
    run_policy: Annotated[RunPolicySpec, Field(default_factory=RunPolicySpec, description="Retries and lifecycle.")]
    tracking: Annotated[
        TrackingSpec | None,
        Field(default=None, description="Experiment tracking (Weights & Biases, MLflow) and evaluation samples."),
    ]
    checkpoint: Annotated[
        CheckpointSpec,
        Field(default_factory=CheckpointSpec, description="Durable checkpoint storage, retention, grace period."),
    ]

    @model_validator(mode="after")
    def _qlora_on_one_gpu(self) -> Self:
        # The CEL rule QLORA_RESOURCES_RULE, for the API, which builds specs without an apiserver.
        if not qlora_fits(self.method.adapter, self.resources.gpus_per_node, self.resources.nodes):
            raise ValueError(QLORA_ONE_GPU)
        return self


class FineTuneJob(CamelModel):
    """A preference fine-tuning job: a base model, a preference dataset and a method (DPO, IPO, cDPO or SFT) in,
    a trained model uploaded to Firebase Storage out."""

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    f"self.metadata.name.size() <= {MAX_NAME_LENGTH}",
                    f"metadata.name must be at most {MAX_NAME_LENGTH} characters: the operator derives child object "
                    "names (Job, Service, pod hostnames) from it",
                    field_path=".metadata.name",
                ),
                cel(
                    "!has(oldSelf.status) || !has(oldSelf.status.startTime) "
                    "|| self.spec.resources == oldSelf.spec.resources",
                    "spec.resources is immutable once the job has started (status.startTime is set); "
                    "create a new FineTuneJob",
                    field_path=".spec.resources",
                ),
            ]
        },
    )

    api_version: str = API_VERSION
    kind: str = KIND
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: FineTuneJobSpec
    status: FineTuneJobStatus | None = None
