"""LoRA and QLoRA (``spec.method.adapter``) with ``peft``: wrapping, the reference model, checkpoint selection and
the adapter export.

* **Wrapping** (:func:`wrap`): the base model is loaded as for full fine-tuning (rank 0 reads it, other ranks build
  it on the meta device), then ``peft.get_peft_model`` adds the low-rank matrices and freezes everything else,
  *before* activation checkpointing, ``torch.compile`` and ``fully_shard``: FSDP2 then shards the frozen base and
  the adapter together, block by block, and ``set_model_state_dict(broadcast_from_rank0=True)`` fills every rank's
  shards, adapter initialisation included, from rank 0. The frozen base is kept in the preset's
  ``reference_dtype`` (bf16 on GPU: it *is* the reference model) and the adapter in float32 (peft's default).
  QLoRA loads the base 4-bit through bitsandbytes on the one GPU of the job (:func:`load_kwargs`).
* **Reference model** (:func:`reference_context`): the policy itself with the adapter disabled
  (``PeftModel.disable_adapter``), so DPO holds one copy of the weights. A disabled LoRA layer returns its base
  layer's output unchanged: the reference log-probs are the base model's, bit for bit. The loop marks this by
  passing the policy as its own reference.
* **Checkpoints** (:func:`state_dict_options`): frozen parameters are left out, so a checkpoint holds the adapter,
  the optimizer state, the scheduler and the loop state; the base is read again from the model on resume.
* **Export** (:func:`write_adapter`, :func:`merged_state`): ``adapter_model.safetensors`` + ``adapter_config.json``
  (peft's format: ``PeftModel.from_pretrained`` and vLLM's ``--lora-modules`` load it) and the tokenizer; with
  ``exportMerged`` also ``merged/``, the base with ``(alpha / r) * B @ A`` added (peft's ``merge_and_unload``), as a
  full model. :func:`contents` describes which, for ``manifest.json``.
* **Checks** (:func:`preflight`): QLoRA needs CUDA, bitsandbytes and one process; refused with ``InvalidSpec`` before
  anything is loaded or downloaded.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from ftcrd.types import AdapterSpec
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions

log = logging.getLogger(__name__)

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
MERGED_DIR = "merged"


# ------------------------------------------------------------------------------------------------ checks


def preflight(adapter: AdapterSpec | None, world_size: int) -> None:
    """Refuse what cannot run here, before any model is loaded; raises ``InvalidInput(InvalidSpec)``."""
    from fttrainer.config import invalid_spec

    if adapter is None or adapter.type != "qlora":
        return
    if not torch.cuda.is_available():
        raise invalid_spec(
            "method.adapter.type qlora needs a GPU: bitsandbytes 4-bit quantization has no CPU kernels "
            "(use type lora on CPU nodes)"
        )
    if world_size != 1:
        raise invalid_spec(
            f"method.adapter.type qlora runs on one GPU per job, not {world_size} processes: bitsandbytes 4-bit "
            "weights are not sharded by FSDP2 (use type lora on several GPUs)"
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise invalid_spec(
            "method.adapter.type qlora needs the bitsandbytes package, which this trainer image lacks (build it "
            "with trainer_image/Dockerfile --build-arg WITH_BITSANDBYTES=1)"
        )


# ------------------------------------------------------------------------------------------------ models


def base_dtype(model_cfg: Any) -> str:
    """Storage dtype of a frozen base: the reference's (it is the reference), unless the policy computes in full
    precision (then an fp32 adapter beside a bf16 base would mix dtypes inside one FSDP2 all-gather)."""
    return str(model_cfg.reference_dtype if model_cfg.fsdp_policy_mp == "bfloat16" else model_cfg.policy_dtype)


def load_kwargs(adapter: AdapterSpec | None, device: torch.device) -> dict[str, Any]:
    """Extra ``from_pretrained`` arguments: QLoRA's 4-bit quantization, straight onto the job's GPU."""
    quant = adapter.quantized() if adapter is not None else None
    if quant is None:
        return {}
    from transformers import BitsAndBytesConfig

    compute = getattr(torch, quant.compute_dtype)
    return {
        "quantization_config": BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=quant.quant_type,
            bnb_4bit_use_double_quant=quant.double_quant,
            bnb_4bit_compute_dtype=compute,
        ),
        "device_map": {"": device},
        "dtype": compute,
    }


def lora_config(adapter: AdapterSpec) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=adapter.r,
        lora_alpha=adapter.alpha,
        lora_dropout=adapter.dropout,
        target_modules=adapter.targets(),
        bias="none",
        task_type="CAUSAL_LM",
    )


def wrap(model: nn.Module, adapter: AdapterSpec) -> nn.Module:
    """``model`` with LoRA layers (trainable, float32) and everything else frozen."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    if adapter.type == "qlora":
        # float32 norms/embeddings, no HF gradient checkpointing (ours is applied by parallel.build_sharded)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    wrapped = get_peft_model(model, lora_config(adapter))
    trainable = sum(p.numel() for p in wrapped.parameters() if p.requires_grad)
    total = sum(p.numel() for p in wrapped.parameters())
    log.info("%s adapter r=%d alpha=%d: %d trainable of %d parameters", adapter.type, adapter.r, adapter.alpha,
             trainable, total)  # fmt: skip
    return wrapped


def is_adapted(model: nn.Module) -> bool:
    return callable(getattr(model, "disable_adapter", None)) and hasattr(model, "peft_config")


def reference_context(reference: nn.Module, policy: nn.Module) -> contextlib.AbstractContextManager[Any]:
    """What a reference forward runs in: the adapter disabled when the reference *is* the (adapted) policy."""
    if reference is policy:
        if not is_adapted(policy):
            raise ValueError("the policy can be its own reference only with an adapter to disable")
        return disabled(policy)
    return contextlib.nullcontext()


@contextlib.contextmanager
def disabled(model: nn.Module) -> Iterator[None]:
    """The base model: every adapter layer returns its base layer's output."""
    peft_model: Any = model
    with peft_model.disable_adapter():
        yield


# ------------------------------------------------------------------------------------------------ checkpoints


def state_dict_options(model: nn.Module, **options: Any) -> StateDictOptions:
    """DCP options that leave frozen parameters out (a checkpoint of an adapted model holds the adapter only); a
    fully trained model has none, so for it nothing changes (and loading stays strict)."""
    frozen = any(not p.requires_grad for p in model.parameters())
    return StateDictOptions(ignore_frozen_params=frozen, strict=not frozen, **options)


# ------------------------------------------------------------------------------------------------ export


def adapter_state(model: nn.Module, gathered: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The adapter's tensors in peft's file naming (adapter name dropped), float32, contiguous."""
    from peft import get_peft_model_state_dict

    state = get_peft_model_state_dict(model, state_dict={k: v for k, v in gathered.items() if "lora_" in k})
    return {k: v.detach().to(torch.float32).contiguous() for k, v in state.items()}


def write_adapter(
    model: nn.Module,
    gathered: dict[str, Any],
    out: Path,
    *,
    base_model: str,
    revision: str | None,
) -> None:
    """Rank 0: ``adapter_model.safetensors`` + ``adapter_config.json`` into ``out`` (peft's ``save_pretrained``
    layout, written from the gathered state dict: the model itself is sharded)."""
    from safetensors.torch import save_file

    state = adapter_state(model, gathered)
    if not state:
        raise RuntimeError("the adapter state dict is empty: no LoRA parameters were gathered")
    save_file(state, str(out / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    peft_config: Any = model.peft_config
    config = copy.deepcopy(peft_config["default"])
    config.base_model_name_or_path = base_model
    config.revision = revision
    config.inference_mode = True
    config.save_pretrained(str(out))
    log.info("export: adapter (%d tensors) in %s", len(state), out)


def merged_state(gathered: dict[str, Any], hf_config: Any, adapter: AdapterSpec) -> dict[str, torch.Tensor]:
    """Rank 0: the base with the adapter merged in (peft's ``merge_and_unload`` on a CPU copy assembled from the
    gathered tensors), as the plain model's state dict."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32)
        peft_model = get_peft_model(skeleton, lora_config(adapter))
    # copies: merging adds to the base weights in place, and a one-rank model's gathered tensors are its own
    copied = {k: v.to(torch.float32, copy=True) for k, v in gathered.items()}
    peft_model.load_state_dict(copied, assign=True, strict=True)
    merged = peft_model.merge_and_unload()
    return {k: v.detach() for k, v in merged.state_dict().items()}


def contents(adapter: AdapterSpec | None, base_model: str, revision: str | None) -> dict[str, Any]:
    """What the artifact holds (``manifest.json``'s ``contents``); paths relative to the artifact's folder."""
    if adapter is None:
        return {"kind": "model", "model": ""}
    return {
        "kind": "adapter",
        "adapter": "",
        "format": "peft-lora",
        "adapterType": adapter.type,
        "baseModel": base_model,
        "baseRevision": revision,
        "merged": MERGED_DIR + "/" if adapter.export_merged else None,
    }
