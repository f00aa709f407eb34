"""Tokenizer, policy and reference model of a run, loaded once and sharded (FSDP2) for this world size.

With ``method.adapter`` the policy is the base wrapped with LoRA (:mod:`fttrainer.adapters`) and there is no
separate reference model: the loop uses the policy with its adapter disabled."""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftcrd.trainer_config import TrainerConfig

log = logging.getLogger("fttrainer")


@dataclass
class Models:
    tokenizer: Any
    policy: Any
    reference: Any | None
    hf_config: Any


def tiny_cache_dir(cfg: TrainerConfig) -> Path:
    """Where the tiny preset caches its generated model: the configured directory, $FTT_TINY_CACHE or $TMPDIR."""
    configured = cfg.run.tiny_cache_dir or os.environ.get("FTT_TINY_CACHE")
    return Path(configured) if configured else Path(tempfile.gettempdir()) / "fttrainer-tiny"


def _dtype(name: str, on_gpu: bool) -> Any:
    from fttrainer.parallel import DTYPES

    return DTYPES[name] if on_gpu else DTYPES["float32"]  # bf16 matmuls on CPU are slow; fp32 there


def resolve_model_path(cfg: TrainerConfig, rows: list[Any], d: Any) -> str:
    """The directory or hub id to load; for ``tiny``, build it (first process of each node) and wait."""
    from fttrainer import tiny

    name = cfg.model.name_or_path
    if name != tiny.TINY_NAME:
        return name
    spec = tiny.TinySpec(seed=cfg.hyperparameters.seed, **(cfg.model.tiny or {}))  # type: ignore[arg-type]
    texts = [t for r in rows for t in (r.prompt_text(), r.chosen, r.rejected)]
    cache = tiny_cache_dir(cfg)
    if d.is_local_main:
        path = tiny.ensure(cache, texts, spec)
    d.barrier()
    if not d.is_local_main:
        path = tiny.ensure(cache, texts, spec)  # already built: just the path
    return str(path)


def load_models(cfg: TrainerConfig, rows: list[Any], d: Any, needs_reference: bool) -> Models:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from fttrainer import adapters
    from fttrainer.parallel import build_sharded, find_blocks

    hf_logging.disable_progress_bar()
    m = cfg.model
    assert m.block_name and m.policy_dtype and m.reference_dtype  # fttrainer.config.with_preset
    block_name = m.block_name
    path = resolve_model_path(cfg, rows, d)
    on_gpu = d.device.type == "cuda"
    tokenizer = AutoTokenizer.from_pretrained(m.tokenizer_name_or_path or path, revision=m.revision)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    hf_config = AutoConfig.from_pretrained(path, revision=m.revision)
    adapter = cfg.method.adapter

    def loader(dtype_name: str, adapted: bool = False) -> tuple[Any, Any]:
        dtype = _dtype(dtype_name, on_gpu)
        extra = adapters.load_kwargs(adapter, d.device) if adapted else {}

        def load_full() -> Any:
            model = AutoModelForCausalLM.from_pretrained(path, revision=m.revision, **{"dtype": dtype, **extra})
            if m.archive:
                _load_archive(model, Path(m.archive))
            find_blocks(model, block_name)  # fail early, naming the layer classes, if the preset is wrong
            return adapters.wrap(model, adapter) if adapted and adapter else model

        def build_empty() -> Any:
            model = AutoModelForCausalLM.from_config(hf_config, dtype=dtype)
            return adapters.wrap(model, adapter) if adapted and adapter else model

        return load_full, build_empty

    hp = cfg.hyperparameters
    t0 = time.monotonic()
    policy = build_sharded(
        *(loader(adapters.base_dtype(m), adapted=True) if adapter else loader(m.policy_dtype)),
        block_name,
        d,
        mixed_precision=on_gpu and m.fsdp_policy_mp == "bfloat16",
        activation_checkpointing=hp.activation_checkpointing_policy if hp.activation_checkpointing else False,
        compile=hp.compile,
    )
    reference = None
    if needs_reference and adapter is None:  # with an adapter, the reference is the policy with it disabled
        reference = build_sharded(
            *loader(m.reference_dtype), block_name, d, mixed_precision=False, frozen=True, compile=hp.compile
        )
    ref = "the policy, adapter disabled" if adapter and needs_reference else needs_reference
    log.info("models loaded from %s in %.1fs (reference: %s)", path, time.monotonic() - t0, ref)
    return Models(tokenizer=tokenizer, policy=policy, reference=reference, hf_config=hf_config)


def _load_archive(model: Any, archive: Path) -> None:
    """Start from a previous run's weights: a reference-format policy.pt or an export directory."""
    import torch

    file = archive / "policy.pt" if archive.is_dir() else archive
    state = torch.load(file, map_location="cpu", weights_only=True)["state"]
    model.load_state_dict(state)
    log.info("loaded policy weights from %s", file)
