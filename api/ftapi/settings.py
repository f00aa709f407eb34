"""Settings, read from the environment (prefix ``FTAPI_``; nested values as JSON).

Example: ``FTAPI_KUBECONFIG=/path/kubeconfig FTAPI_KEYS_NAMESPACE=finetune-system
FTAPI_TRAINER_ENV='{"STORAGE_EMULATOR_HOST": "http://127.0.0.1:9023"}'``.
"""

from __future__ import annotations

from typing import Any

from ftcrd.types import AdapterSpec, ModelPreset
from pydantic import BaseModel, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class CatalogModel(BaseModel):
    """What an OpenAI ``model`` name resolves to: the spec.model.name and the trainer preset."""

    name: str
    preset: ModelPreset


def default_catalog() -> dict[str, CatalogModel]:
    zephyr = CatalogModel(name="HuggingFaceH4/zephyr-7b-beta", preset="zephyr")
    pythia = CatalogModel(name="EleutherAI/pythia-2.8b", preset="pythia28")
    llama = CatalogModel(name="meta-llama/Llama-3.1-8B-Instruct", preset="llama")
    return {
        "tiny": CatalogModel(name="tiny", preset="tiny"),
        "zephyr": zephyr,
        "HuggingFaceH4/zephyr-7b-beta": zephyr,
        "pythia28": pythia,
        "EleutherAI/pythia-2.8b": pythia,
        "llama": llama,
        "meta-llama/Llama-3.1-8B-Instruct": llama,
    }


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FTAPI_", extra="ignore")

    # --- server
    host: str = "0.0.0.0"
    port: int = 8080
    log_level: str = "info"
    public_url: str = Field(default="", description="Base URL put in poll links; empty: relative links.")

    # --- Kubernetes
    kubeconfig: str | None = Field(default=None, description="Path of a kubeconfig; unset: in-cluster config.")
    keys_secret_name: str = "finetune-api-keys"
    keys_secret_key: str = "keys.yaml"
    keys_namespace: str = "finetune-system"
    keys_refresh_seconds: float = 10.0
    request_timeout_seconds: float = 15.0

    # --- defaults of created jobs
    models: dict[str, CatalogModel] = Field(default_factory=default_catalog)
    webhook_model: str = "zephyr"
    webhook_method: str | None = Field(default=None, description="spec.method.type of webhook jobs; unset: the CRD's.")
    webhook_beta: float | None = Field(default=None, description="spec.method.beta of webhook jobs; unset: the CRD's.")
    webhook_adapter: dict[str, Any] | None = Field(
        default=None,
        description='spec.method.adapter of webhook jobs (camelCase), e.g. {"type": "lora", "r": 16}: a LoRA '
        "adapter per community by default; unset: full fine-tuning. A request's own adapter block wins.",
    )
    output_bucket: str = "finetune-models"
    output_prefix: str = "models"
    output_credentials_secret: str | None = Field(
        default=None, description="'<secret>/<key>' with the Firebase service-account JSON; unset: workload identity."
    )
    resources: dict[str, Any] = Field(default_factory=dict, description="spec.resources (camelCase keys).")
    hyperparameters: dict[str, Any] = Field(
        default_factory=dict, description="spec.hyperparameters defaults (camelCase keys), e.g. a quick CPU run."
    )
    run_policy: dict[str, Any] = Field(default_factory=dict, description="spec.runPolicy defaults (camelCase).")
    trainer_env: dict[str, str] = Field(default_factory=dict, description="Extra trainer environment (spec.env).")
    trainer_image: str | None = None
    validation_fraction: float | None = None
    wandb_api_key_secret: str | None = Field(
        default=None,
        description="'<secret>/<key>' with a W&B API key, for jobs with a wandb integration; unset: runs are offline.",
    )

    # --- limits
    max_body_bytes: int = 16 * 1024 * 1024
    max_rows: int = 100_000
    min_rows: int = 1
    max_field_chars: int = 50_000
    configmap_budget_bytes: int = 900 * 1024
    max_list_limit: int = 100

    # --- completion notifications (ftapi.notify)
    notify_enabled: bool = Field(default=True, description="Deliver fine_tuning.job.* webhook events.")
    notify_interval_seconds: float = Field(default=5.0, gt=0, description="How often jobs are checked for events.")
    webhook_timeout_seconds: float = Field(default=10.0, gt=0, description="Per delivery attempt.")
    webhook_retry_seconds: list[float] = Field(
        default_factory=lambda: [5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0],
        description="Waits before the 2nd, 3rd, ... attempt (Standard Webhooks' schedule); then the delivery fails.",
    )
    webhook_allow_http: bool = Field(default=False, description="Allow http:// endpoints (tests, local runs).")
    webhook_allow_private: bool = Field(
        default=False, description="Allow endpoints on loopback, private and link-local addresses (tests)."
    )

    # --- operations
    metrics_public: bool = Field(
        default=True, description="Serve /metrics without a key (it holds route templates and counts only)."
    )

    @field_validator("webhook_adapter")
    @classmethod
    def _adapter_is_valid(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        # a bad default fails at start-up, not at the first webhook call
        if value is not None:
            AdapterSpec.model_validate(value)
        return value
