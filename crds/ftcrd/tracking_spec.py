"""``spec.tracking``: the experiment trackers (W&B, MLflow) and evaluation samples. Part of the model
:mod:`ftcrd.types` re-exports."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from ftcrd.base import (
    CamelModel,
    SecretKeyRef,
)

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
