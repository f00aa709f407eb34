"""Request bodies. Their JSON schemas state every constraint the API enforces on a request's shape, so a
request that is valid by ``api/openapi.json`` is accepted unless it refers to something that does not exist
(a file) or does not fit the data (a batch larger than the dataset). Responses are in :mod:`ftapi.responses`.

Numbers, booleans and strings are strict (``"5"`` is not an integer, ``true`` is not a number), as JSON
Schema reads them. Limits that depend on the deployment (the model catalog, the dataset limits) are written
into the served document by :func:`ftapi.openapi.document`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from ftcrd.adapter import (
    MAX_TARGET_MODULES,
    MODULE_LIST_MAX_LENGTH,
    MODULE_LIST_PATTERN,
    AdapterType,
    LoraAlpha,
    LoraDropout,
    LoraRank,
    ModuleName,
    unique_modules,
)
from ftcrd.types import WANDB_MAX_TAGS, WANDB_NAME_LIMITS, WANDB_TAG_LIMITS, BatchSize, Beta, CommunityId, Epochs
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Strict,
    StrictInt,
    StrictStr,
    Tag,
)


def _ranges(codepoints: list[int]) -> str:
    """A regex character-class body for ``codepoints`` (sorted), with ``\\uXXXX`` escapes every engine reads."""
    out, start = [], 0
    while start < len(codepoints):
        end = start
        while end + 1 < len(codepoints) and codepoints[end + 1] == codepoints[end] + 1:
            end += 1
        first, last = codepoints[start], codepoints[end]
        out.append(f"\\u{first:04x}" + (f"-\\u{last:04x}" if last > first else ""))
        start = end + 1
    return "".join(out)


NON_BLANK = "[^" + _ranges([c for c in range(0x10000) if chr(c).isspace()]) + "]"
"""JSON-schema pattern of a string that is not all whitespace, whitespace as the dataset parser (str.strip)
reads it: JSON Schema's own \\s is ECMA-262's, which differs (U+001C-U+001F, U+0085)."""


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must be a non-empty string")
    return value


def _integral(value: Any) -> Any:
    """2.0 is an integer in JSON Schema: accept it as 2 (strings and booleans stay refused)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


NonBlank = Annotated[StrictStr, AfterValidator(_not_blank), Field(json_schema_extra={"pattern": NON_BLANK})]
INTEGRAL = BeforeValidator(_integral)
"""Put last in an Annotated integer, after its bounds (so they stay minimum/maximum in the JSON schema)."""
Auto = Literal["auto"]
FILE_ID_PATTERN = r"^file-[0-9a-f]{24}$"
FileId = Annotated[StrictStr, Field(pattern=FILE_ID_PATTERN, description="A file id from POST /v1/files.")]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


# The CRD's own ranges (ftcrd.types, ftcrd.adapter), read strictly as JSON Schema does
BatchSizeIn = Annotated[BatchSize, Strict(), INTEGRAL]
EpochsIn = Annotated[Epochs, Strict(), INTEGRAL]
BetaIn = Annotated[Beta, Field(allow_inf_nan=False)]
LoraRankIn = Annotated[LoraRank, Strict(), INTEGRAL]
LoraAlphaIn = Annotated[LoraAlpha, Strict(), INTEGRAL]
LoraDropoutIn = Annotated[LoraDropout, Field(allow_inf_nan=False)]


def _tag_of_type(tags: dict[str, str]) -> Callable[[Any], str | None]:
    """A discriminated union's tag function: the tag of the value's ``type`` (None, for an unknown one, makes
    pydantic report the union's own error)."""

    def tag(value: Any) -> str | None:
        kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
        return tags.get(kind) if isinstance(kind, str) else None

    return tag


# --- seed webhook --------------------------------------------------------------------------------

_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_PORT = r"(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3})"


def callback_url_pattern(allow_http: bool) -> str:
    """A callback URL: https (or http where the deployment allows it), a DNS host name (no user, no IP literal),
    an optional port, a path or query. ftapi.openapi writes the deployment's variant into the served document."""
    scheme = "https?" if allow_http else "https"
    return f"^{scheme}://" + _LABEL + r"(\." + _LABEL + ")*(:" + _PORT + r")?([/?][^\s#]*)?$"


ANY_CALLBACK_URL = callback_url_pattern(allow_http=True)
"""The model's own pattern; whether http is allowed is checked with the deployment's setting (routers.webhook)."""


class SeedRow(BaseModel):
    """One preference pair, as the original microservice accepted it (other fields are ignored)."""

    model_config = ConfigDict(extra="ignore", strict=True)

    prompt: NonBlank
    chosen: NonBlank
    rejected: NonBlank


class SeedAdapter(StrictModel):
    """Train a LoRA adapter for the community instead of the whole model (spec.method.adapter, same names and
    ranges); omitted: the deployment's default (FTAPI_WEBHOOK_ADAPTER), ``null``: full fine-tuning."""

    type: Annotated[AdapterType, Field(description="lora, or qlora (4-bit base; needs one GPU per job).")] = "lora"
    r: LoraRankIn | None = None
    alpha: LoraAlphaIn | None = None
    dropout: LoraDropoutIn | None = None
    targetModules: Annotated[
        list[Annotated[ModuleName, Strict()]] | None,
        Field(
            min_length=1,
            max_length=MAX_TARGET_MODULES,
            description="Default: every linear layer (all-linear). Each name once.",
            json_schema_extra={"uniqueItems": True},
        ),
        AfterValidator(unique_modules),
    ] = None
    exportMerged: Annotated[
        bool | None, Field(description="Also export the base with the adapter merged in (lora only).")
    ] = None


class SeedTrigger(BaseModel):
    """``POST /trigger-finetune``: the original microservice's payload, plus an optional ``callbackUrl``."""

    model_config = ConfigDict(extra="ignore", strict=True)

    communityId: Annotated[
        CommunityId,
        Strict(),
        AfterValidator(_not_blank),
        Field(description="Community (tenant) id: letters, digits, '-', '_', '.'; at most 63 characters."),
    ]
    dataset: Annotated[list[SeedRow], Field(min_length=1, description="Preference pairs (at least one).")]
    callbackUrl: Annotated[
        StrictStr | None,
        Field(
            default=None,
            max_length=2048,
            pattern=ANY_CALLBACK_URL,
            description="Notified (signed, Standard Webhooks) when the job succeeds, fails or is cancelled. Needs "
            "a webhook signing secret on the API key; https only unless the deployment allows http.",
        ),
    ] = None
    adapter: Annotated[
        SeedAdapter | None,
        Field(
            default=None,
            description="A LoRA adapter per community on the shared base; omitted: the deployment's default, null: "
            "full fine-tuning.",
        ),
    ] = None


class SeedAccepted(BaseModel):
    status: Literal["accepted"] = "accepted"
    jobName: str
    namespace: str
    communityId: str
    rows: int
    statusUrl: str
    openaiUrl: str


# --- OpenAI fine-tuning jobs ---------------------------------------------------------------------

# At least 1e-6: a smaller multiplier of the base learning rate can underflow to a learning rate of 0.
LrMultiplier = Annotated[float, Field(ge=1e-6, le=1e6, allow_inf_nan=False)]


class Hyperparameters(StrictModel):
    """``"auto"`` (or leaving a field out) lets the service choose from the dataset size, as OpenAI does."""

    batch_size: BatchSizeIn | Auto | None = None
    learning_rate_multiplier: LrMultiplier | Auto | None = None
    n_epochs: EpochsIn | Auto | None = None


class DpoHyperparameters(Hyperparameters):
    beta: BetaIn | Auto | None = None


class DpoMethod(StrictModel):
    hyperparameters: DpoHyperparameters | None = None


class SupervisedMethod(StrictModel):
    hyperparameters: Hyperparameters | None = None


class SupervisedChoice(StrictModel):
    type: Literal["supervised"]
    supervised: SupervisedMethod | None = None


class DpoChoice(StrictModel):
    type: Literal["dpo"]
    dpo: DpoMethod | None = None


# Tags are capitalised so error locations read "method.type", not "method.dpo.type" (see errors.field_path).
Method = Annotated[
    Annotated[SupervisedChoice, Tag("Supervised")] | Annotated[DpoChoice, Tag("Dpo")],
    Discriminator(
        _tag_of_type({"supervised": "Supervised", "dpo": "Dpo"}),
        custom_error_type="invalid_method",
        custom_error_message="method.type must be 'supervised' or 'dpo' (reinforcement is not supported)",
    ),
]


class LoraTrainingType(StrictModel):
    """Together's ``training_type`` for LoRA: ``{"type": "Lora", "lora_r": 8, ...}`` (Fireworks: loraRank)."""

    type: Literal["Lora", "QLora"]
    lora_r: LoraRankIn | None = None
    lora_alpha: LoraAlphaIn | None = None
    lora_dropout: LoraDropoutIn | None = None
    lora_trainable_modules: Annotated[
        StrictStr | None,
        Field(
            default=None,
            max_length=MODULE_LIST_MAX_LENGTH,
            pattern=MODULE_LIST_PATTERN,
            description="'all-linear' (the default) or comma-separated module names, e.g. 'q_proj,v_proj'.",
        ),
    ] = None


class FullTrainingType(StrictModel):
    type: Literal["Full"]


TrainingType = Annotated[
    Annotated[LoraTrainingType, Tag("Lora")] | Annotated[FullTrainingType, Tag("Full")],
    Discriminator(
        _tag_of_type({"Lora": "Lora", "QLora": "Lora", "Full": "Full"}),
        custom_error_type="invalid_training_type",
        custom_error_message="training_type.type must be 'Lora', 'QLora' or 'Full'",
    ),
]

MetadataKey = Annotated[str, Field(min_length=1, max_length=64)]
MetadataValue = Annotated[str, Field(max_length=512)]


class WandbIntegration(StrictModel):
    """OpenAI's wandb settings; recorded as the job's spec.tracking.wandb (same limits)."""

    project: Annotated[NonBlank, WANDB_NAME_LIMITS, Field(description="W&B project the run is created in.")]
    name: Annotated[NonBlank, WANDB_NAME_LIMITS] | None = None
    entity: Annotated[NonBlank, WANDB_NAME_LIMITS] | None = None
    tags: Annotated[list[Annotated[NonBlank, WANDB_TAG_LIMITS]] | None, Field(max_length=WANDB_MAX_TAGS)] = None


class Integration(StrictModel):
    type: Literal["wandb"]
    wandb: WandbIntegration


class JobCreate(StrictModel):
    """``POST /v1/fine_tuning/jobs`` (the openai client's ``fine_tuning.jobs.create``)."""

    model: Annotated[NonBlank, Field(max_length=256, description="A model name from the catalog (e.g. 'tiny').")]
    training_file: FileId
    validation_file: Annotated[
        FileId | None, Field(default=None, description="Evaluated on during training; its rows are not trained on.")
    ] = None
    method: Annotated[Method | None, Field(default=None, description="Defaults to supervised, as OpenAI does.")] = None
    hyperparameters: Annotated[
        Hyperparameters | None, Field(default=None, description="Deprecated: use method.<type>.hyperparameters.")
    ] = None
    suffix: Annotated[
        StrictStr | None,
        Field(default=None, min_length=1, max_length=64, description="Up to 64 characters, kept with the job."),
    ] = None
    seed: Annotated[StrictInt, Field(ge=0, le=2**31 - 1), INTEGRAL] | None = None
    metadata: Annotated[dict[MetadataKey, MetadataValue] | None, Field(default=None, max_length=16)] = None
    integrations: Annotated[
        list[Integration] | None,
        Field(default=None, max_length=1, description="A Weights & Biases run the trainer reports metrics to."),
    ] = None
    training_type: Annotated[
        TrainingType | None,
        Field(
            default=None,
            description="As Together's API: {type: Lora, lora_r, lora_alpha, lora_dropout, lora_trainable_modules} "
            "trains a LoRA adapter on the frozen base (QLora: on a 4-bit base, one GPU); Full (the default, as "
            "OpenAI) trains every weight.",
        ),
    ] = None

    def method_type(self) -> Literal["supervised", "dpo"]:
        return self.method.type if self.method is not None else "supervised"

    def chosen_hyperparameters(self) -> tuple[Hyperparameters | None, str]:
        """The hyperparameters in effect and where they were given (the prefix of their ``param``)."""
        method = self.method
        if isinstance(method, DpoChoice) and method.dpo and method.dpo.hyperparameters:
            return method.dpo.hyperparameters, "method.dpo.hyperparameters"
        if isinstance(method, SupervisedChoice) and method.supervised and method.supervised.hyperparameters:
            return method.supervised.hyperparameters, "method.supervised.hyperparameters"
        return self.hyperparameters, "hyperparameters"
