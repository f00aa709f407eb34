"""LoRA options in and out of the API: Together's ``training_type`` on ``POST /v1/fine_tuning/jobs``, the seed
webhook's ``adapter`` block (and the deployment's default for it), both to ``spec.method.adapter``; and back,
``spec.method.adapter`` as the job's ``training_type``."""

from __future__ import annotations

from typing import Any

from ftcrd.adapter import ALL_LINEAR, QLORA_ONE_GPU, AdapterSpec, qlora_fits
from ftcrd.trainer_config import default
from ftcrd.types import ResourcesSpec
from pydantic import ValidationError

from ftapi.errors import APIError, field_path
from ftapi.schemas import LoraTrainingType, SeedTrigger, TrainingType
from ftapi.settings import Settings

# spec.method.adapter's wire names as Together's training_type spells them
TOGETHER_NAMES = {
    "r": "lora_r",
    "alpha": "lora_alpha",
    "dropout": "lora_dropout",
    "targetModules": "lora_trainable_modules",
}


def checked(
    fields: dict[str, Any], settings: Settings, *, param: str, status: int = 400, names: dict[str, str] | None = None
) -> AdapterSpec:
    """``spec.method.adapter`` from request fields (None: the CRD's default), checked against the deployment's
    resources (QLoRA needs one GPU per job); raises APIError naming ``param`` (fields spelled as in ``names``)."""
    try:
        adapter = AdapterSpec.model_validate({k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = err.get("loc", ())
        field = (names or {}).get(str(loc[0]), field_path(loc)) if loc else ""
        where = f"{param}.{field}" if field else param
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        raise APIError(status, f"{where}: {msg}", code="invalid_value", param=where) from None
    resources = ResourcesSpec.model_validate(settings.resources)
    if not qlora_fits(adapter, resources.gpus_per_node, resources.nodes):
        raise APIError(
            status,
            f"{QLORA_ONE_GPU}; this deployment runs jobs on {resources.nodes} node(s) x {resources.gpus_per_node} GPU(s)",
            code="invalid_value",
            param=f"{param}.type",
        )
    return adapter


def from_training_type(training_type: TrainingType | None, settings: Settings) -> AdapterSpec | None:
    """Together's ``training_type``; absent or ``Full``: full fine-tuning (OpenAI's only kind)."""
    if not isinstance(training_type, LoraTrainingType):
        return None
    modules = training_type.lora_trainable_modules
    fields = {
        "type": "qlora" if training_type.type == "QLora" else "lora",
        "r": training_type.lora_r,
        "alpha": training_type.lora_alpha,
        "dropout": training_type.lora_dropout,
        # a name written twice in the string is meant once (the list is a set)
        "target_modules": None if modules in (None, ALL_LINEAR) else list(dict.fromkeys(modules.split(","))),
    }
    return checked(fields, settings, param="training_type", names=TOGETHER_NAMES)


def for_webhook(body: SeedTrigger, settings: Settings) -> AdapterSpec | None:
    """The seed request's ``adapter`` block; omitted: the deployment's default (``FTAPI_WEBHOOK_ADAPTER``), ``null``:
    full fine-tuning. Errors answer 422, as the webhook's other request errors."""
    if "adapter" in body.model_fields_set:
        if body.adapter is None:
            return None
        return checked(body.adapter.model_dump(), settings, param="adapter", status=422)
    if settings.webhook_adapter is None:
        return None
    return AdapterSpec.model_validate(settings.webhook_adapter)  # checked when the settings were read


def training_type(spec: dict[str, Any]) -> dict[str, Any]:
    """A job's ``training_type`` (Together's shape) from its spec."""
    adapter = (spec.get("method") or {}).get("adapter")
    if not adapter:
        return {"type": "Full"}
    modules = adapter.get("targetModules")
    return {
        "type": "QLora" if adapter.get("type") == "qlora" else "Lora",
        "lora_r": int(adapter.get("r", default("method.adapter.r"))),
        "lora_alpha": int(adapter.get("alpha", default("method.adapter.alpha"))),
        "lora_dropout": float(adapter.get("dropout", default("method.adapter.dropout"))),
        "lora_trainable_modules": ",".join(modules) if modules else ALL_LINEAR,
    }
