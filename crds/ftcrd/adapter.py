"""Parameter-efficient fine-tuning: ``spec.method.adapter`` (LoRA, QLoRA). Re-exported by :mod:`ftcrd.types`.

Without an adapter the whole model is trained (and DPO keeps a second, frozen copy as its reference). With
``adapter.type: lora`` the base model is frozen, small low-rank update matrices are trained on its linear
layers (peft's LoRA), and the reference model of DPO/IPO is the same base with the adapter switched off, so
there is no second copy of the weights. ``qlora`` does the same over a 4-bit (bitsandbytes) base: GPU only,
one GPU per job. The artifact is the adapter in PEFT format (``adapter_model.safetensors`` +
``adapter_config.json``, loadable by ``peft`` and vLLM's ``--lora-modules``), optionally a merged full model.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal, Self

from pydantic import ConfigDict, Field, field_validator, model_validator

from ftcrd.base import CamelModel, cel

AdapterType = Literal["lora", "qlora"]
QuantType = Literal["nf4", "fp4"]
ComputeDtype = Literal["bfloat16", "float16"]

# Value types with their ranges, shared with the API's request schemas (Together's lora_r, lora_alpha, ...).
LoraRank = Annotated[int, Field(ge=1, le=1024)]
LoraAlpha = Annotated[int, Field(ge=1, le=16384)]
LoraDropout = Annotated[float, Field(ge=0, lt=1)]

ALL_LINEAR: Final = "all-linear"
"""peft's name for "every linear layer of the transformer blocks" (attention and MLP projections; never the LM
head): the default target, right for every decoder-only family without a per-family table."""
MODULE_NAME_PATTERN: Final = r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$"
MAX_MODULE_NAME: Final = 128
ModuleName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_MODULE_NAME,
        pattern=MODULE_NAME_PATTERN,
        description="A module name or suffix: q_proj.",
    ),
]
MAX_TARGET_MODULES: Final = 64
_NAME = rf"[A-Za-z0-9_][A-Za-z0-9_.-]{{0,{MAX_MODULE_NAME - 1}}}"
MODULE_LIST_PATTERN: Final = rf"^{_NAME}(,{_NAME}){{0,{MAX_TARGET_MODULES - 1}}}$"
"""The same names, comma-separated in one string (the API's ``lora_trainable_modules``): what ``targetModules``
accepts, so a string that matches always becomes a valid list."""


def unique_modules(names: list[str] | None) -> list[str] | None:
    """``names`` when no name repeats (targetModules is a set: the apiserver refuses a repeat)."""
    if names is not None and len(set(names)) != len(names):
        repeated = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"targetModules names a module more than once: {', '.join(repeated)}")
    return names


MODULE_LIST_MAX_LENGTH: Final = MAX_TARGET_MODULES * (MAX_MODULE_NAME + 1) - 1

QUANTIZATION_ONLY_FOR_QLORA: Final = "spec.method.adapter.quantization is only for type qlora"
NO_MERGED_QLORA: Final = (
    "spec.method.adapter.exportMerged is not available for type qlora (its base is 4-bit): use type lora, or "
    "merge the adapter into the full-precision base yourself (peft merge_and_unload)"
)
QLORA_ONE_GPU: Final = (
    "spec.method.adapter type qlora needs exactly one GPU (resources.gpusPerNode 1, nodes 1): bitsandbytes has no "
    "CPU kernels and its 4-bit weights are not sharded across GPUs; use type lora on CPU or on several GPUs"
)


class QuantizationSpec(CamelModel):
    """How a qlora base model is quantized (bitsandbytes 4-bit)."""

    quant_type: Annotated[
        QuantType, Field(default="nf4", description="4-bit data type: nf4 (NormalFloat, the QLoRA paper's) or fp4.")
    ]
    double_quant: Annotated[
        bool, Field(default=True, description="Quantize the quantization constants too (saves ~0.4 bit/parameter).")
    ]
    compute_dtype: Annotated[
        ComputeDtype,
        Field(default="bfloat16", description="Dtype the 4-bit weights are dequantized to for each matmul."),
    ]


class AdapterSpec(CamelModel):
    """Train a LoRA adapter instead of the whole model: the base stays frozen, the reference model of DPO/IPO is
    the base with the adapter disabled (no second copy of the weights), and the artifact is the adapter in PEFT
    format (adapter_model.safetensors + adapter_config.json; vLLM: --lora-modules)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("self.type == 'qlora' || !has(self.quantization)", QUANTIZATION_ONLY_FOR_QLORA),
                cel("self.type != 'qlora' || !has(self.exportMerged) || !self.exportMerged", NO_MERGED_QLORA),
            ]
        }
    )

    type: Annotated[
        AdapterType,
        Field(
            default="lora",
            description="lora: low-rank adapters on a frozen base in its own precision; qlora: the same over a "
            "4-bit (bitsandbytes NF4) base, GPU only, one GPU per job.",
        ),
    ]
    r: Annotated[
        int,
        Field(
            default=8,
            ge=1,
            le=1024,
            description="Rank of the update matrices (Together's lora_r, Fireworks' loraRank).",
        ),
    ]
    alpha: Annotated[
        int,
        Field(
            default=16,
            ge=1,
            le=16384,
            description="Scaling numerator: the update is (alpha / r) * B @ A (peft's lora_alpha).",
        ),
    ]
    dropout: Annotated[float, Field(default=0.0, ge=0, lt=1, description="Dropout on the adapter's input, in [0, 1).")]
    target_modules: Annotated[
        list[ModuleName] | None,
        Field(
            default=None,
            min_length=1,
            max_length=MAX_TARGET_MODULES,
            description=(
                "Names (or name suffixes) of the linear layers to adapt, e.g. [q_proj, v_proj]. Unset or "
                "[all-linear]: every linear layer of the transformer blocks (the model family's attention and "
                "MLP projections), never the LM head."
            ),
            json_schema_extra={"x-kubernetes-list-type": "set"},
        ),
    ]
    export_merged: Annotated[
        bool,
        Field(
            default=False,
            description="Also export the base with the adapter merged in, a full model under merged/ in the "
            "artifact (lora only).",
        ),
    ]
    quantization: Annotated[
        QuantizationSpec | None,
        Field(default=None, description="qlora: how the base is quantized (defaults: nf4, double quantization, bf16)."),
    ]

    @field_validator("target_modules")
    @classmethod
    def _no_repeats(cls, names: list[str] | None) -> list[str] | None:
        # x-kubernetes-list-type: set, for the API and the trainer (a CRD schema may not say uniqueItems)
        return unique_modules(names)

    @model_validator(mode="after")
    def _rules(self) -> Self:
        # The CEL rules above, for the API and the trainer, which validate without an apiserver.
        if self.quantization is not None and self.type != "qlora":
            raise ValueError(QUANTIZATION_ONLY_FOR_QLORA)
        if self.type == "qlora" and self.export_merged:
            raise ValueError(NO_MERGED_QLORA)
        return self

    def targets(self) -> str | list[str]:
        """peft's ``target_modules``: the listed names, or ``"all-linear"``."""
        if not self.target_modules or self.target_modules == [ALL_LINEAR]:
            return ALL_LINEAR
        return list(self.target_modules)

    def quantized(self) -> QuantizationSpec | None:
        """The quantization of a qlora base (its defaults when unset); None for lora."""
        if self.type != "qlora":
            return None
        return self.quantization or QuantizationSpec.model_validate({})


# On FineTuneJobSpec (it needs spec.resources): the CEL rule and the same check in Python.
QLORA_RESOURCES_RULE: Final = (
    "!has(self.method.adapter) || self.method.adapter.type != 'qlora' "
    "|| (self.resources.gpusPerNode == 1 && self.resources.nodes == 1)"
)


def qlora_fits(adapter: AdapterSpec | None, gpus_per_node: int, nodes: int) -> bool:
    return adapter is None or adapter.type != "qlora" or (gpus_per_node == 1 and nodes == 1)
