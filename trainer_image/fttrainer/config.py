"""The trainer's configuration: a typed :class:`ftcrd.trainer_config.TrainerConfig`, from a file or Hydra.

Two ways in, one model out:

* ``python -m fttrainer.train --config <file>``: the JSON the operator renders (docs/contract.md); read
  as is, so every string stays a string (a communityId "007" or "12345" never becomes a number).
* ``python -m fttrainer.train model=zephyr datasets=[novalto] loss=dpo loss.beta=0.1 exp_name=…``: the
  reference implementation's Hydra command line. Hydra composes ``config/`` and :func:`from_hydra` maps the
  reference's keys (:data:`HYDRA_KEYS`) onto the typed model. The YAML states no contract default: it
  reads them with the ``${contract:<section>.<field>}`` resolver (:func:`register_resolver`).

Either way the model preset (``config/model/<preset>.yaml``) fills the architecture fields left unset
(:func:`with_preset`), and a bad value raises :class:`InvalidInput` naming the field as the user spelled
it. Torch-free: a bad configuration fails in about a second, before any model is touched.
"""

from __future__ import annotations

import json
import os
import typing
from pathlib import Path
from typing import Any

import yaml
from ftcrd import names
from ftcrd.conditions import Reason
from ftcrd.trainer_config import TEST_HOOKS, TrainerConfig, TrainerRun, default
from ftcrd.types import DatasetFormat
from pydantic import ValidationError

CONFIG_DIR = Path(os.environ.get("FTT_CONFIG_DIR", Path(__file__).resolve().parents[2] / "config"))
CONFIG_FLAG = "--config"
RESOLVED_NAME = names.TRAINER_CONFIG_FILE
"""The resolved configuration, written to the run directory by rank 0 (the same document as the pod's file)."""

# The reference's Hydra keys and the typed model's fields (Python names) they set.
HYDRA_KEYS: tuple[tuple[str, str], ...] = (
    ("exp_name", "job"),
    *((f"model.{k}", f"model.{k}") for k in ("name_or_path", "tokenizer_name_or_path", "revision", "archive")),
    *((f"model.{k}", f"model.{k}") for k in ("block_name", "policy_dtype", "fsdp_policy_mp", "reference_dtype")),
    ("model.tiny", "model.tiny"),
    ("loss.name", "method.type"),
    ("loss.beta", "method.beta"),
    ("loss.label_smoothing", "method.label_smoothing"),
    ("loss.reference_free", "method.reference_free"),
    ("adapter", "method.adapter"),  # config/adapter/<lora|qlora>.yaml (absent: full fine-tuning)
    ("n_epochs", "hyperparameters.epochs"),
    ("n_examples", "hyperparameters.examples"),
    ("lr", "hyperparameters.learning_rate"),
    *(
        (k, f"hyperparameters.{k}")
        for k in (
            "batch_size",
            "gradient_accumulation_steps",
            "max_length",
            "max_prompt_length",
            "truncation_side",
            "warmup_steps",
            "optimizer",
            "seed",
            "eval_every",
            "max_grad_norm",
            "activation_checkpointing",
            "checkpoint_every",
            "precompute_reference",
        )
    ),
    *((f"dataset.{k}", f"dataset.{k}") for k in ("path", "compression", "validation_fraction", "max_rows")),
    ("sample_during_eval", "tracking.sample_during_eval"),
    ("n_eval_model_samples", "tracking.samples"),
    ("sample_max_new_tokens", "tracking.sample_max_new_tokens"),
    ("upload.bucket", "output.bucket"),
    ("upload.prefix", "output.prefix"),
    ("upload.community_id", "output.community_id"),
    *(
        (k, f"run.{k}")
        for k in (
            "run_dir",
            "checkpoint_dir",
            "keep_checkpoints",
            "eval_batch_size",
            "n_eval_examples",
            "do_first_eval",
            "minimum_log_interval_secs",
            "tiny_cache_dir",
            "exit_after_step",
            "crash_rank_after_upload",
            "hold_at_steps",
            "exit_during_checkpoint",
        )
    ),
)
_HYDRA_NAME = {typed: hydra for hydra, typed in HYDRA_KEYS} | {"dataset.format": "datasets"}
# Architecture fields a preset fills when the configuration leaves them unset.
PRESET_FIELDS = ("block_name", "policy_dtype", "fsdp_policy_mp", "reference_dtype", "tiny")


class InvalidInput(Exception):
    """Bad configuration or dataset: exit code 2 with ``reason`` (InvalidSpec or InvalidDataset)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def invalid_spec(message: str) -> InvalidInput:
    return InvalidInput(Reason.INVALID_SPEC, message)


# ---------------------------------------------------------------------------------------------- Hydra


def _contract(path: str) -> Any:
    """``${contract:method.beta}``: a default of the contract; ``${contract:names.DATA_DIR}``: a wire name."""
    section, _, name = path.partition(".")
    if section == "names":
        return getattr(names, name)
    return default(path)


def register_resolver() -> None:
    """Register ``${contract:…}`` with OmegaConf (before Hydra composes config/)."""
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("contract", _contract, replace=True)


def _lookup(tree: dict[str, Any], dotted: str) -> tuple[bool, Any]:
    cur: Any = tree
    for key in dotted.split("."):
        if not isinstance(cur, dict) or key not in cur:
            return False, None
        cur = cur[key]
    return True, cur


def _assign(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for key in parents:
        tree = tree.setdefault(key, {})
    tree[last] = value


def from_hydra(cfg: Any) -> TrainerConfig:
    """The typed configuration of a composed Hydra config (the reference's keys); raises InvalidInput."""
    from omegaconf import OmegaConf

    try:
        plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except Exception as exc:  # MissingMandatoryValue, InterpolationResolutionError, ...
        raise invalid_spec(f"configuration: {exc}".splitlines()[0]) from None
    assert isinstance(plain, dict)
    tree: dict[str, Any] = {str(k): v for k, v in plain.items()}
    datasets = tree.get("datasets")
    formats = typing.get_args(DatasetFormat)
    if not (isinstance(datasets, list) and len(datasets) == 1 and datasets[0] in formats):
        raise invalid_spec(f"datasets must be a one-element list of {list(formats)}, got {datasets!r}")
    typed: dict[str, Any] = {"dataset": {"format": datasets[0]}}
    for hydra_key, path in HYDRA_KEYS:
        found, value = _lookup(tree, hydra_key)
        if found:
            _assign(typed, path, value)
    if typed.get("output", {}).get("bucket") is None:
        typed.pop("output", None)  # upload.bucket null: no upload, the artifact is the local export
    _trackers(typed, tree)
    found, validation_path = _lookup(tree, "dataset.validation_path")
    if found and validation_path is not None:
        ds = typed["dataset"]
        source = {"path": validation_path, "format": ds["format"], "compression": ds.get("compression")}
        ds["validation"] = {k: v for k, v in source.items() if v is not None}
    return validate(typed, hydra=True)


def _trackers(typed: dict[str, Any], tree: dict[str, Any]) -> None:
    """``wandb`` (when ``wandb.enabled``) and ``mlflow`` (when ``mlflow.tracking_uri`` is set) as
    ``tracking.wandb``/``tracking.mlflow``; null keys take the contract's defaults. (Not in HYDRA_KEYS: these
    sections have no contract defaults for the YAML to read.)"""
    tracking = typed.setdefault("tracking", {})
    wandb, mlflow = tree.get("wandb") or {}, tree.get("mlflow") or {}
    if wandb.get("enabled"):
        tracking["wandb"] = {k: wandb[k] for k in ("project", "entity", "name") if wandb.get(k) is not None}
    if mlflow.get("tracking_uri"):
        tracking["mlflow"] = {k: mlflow[k] for k in ("tracking_uri", "experiment") if mlflow.get(k) is not None}


# ---------------------------------------------------------------------------------------------- file


def from_file(path: Path) -> TrainerConfig:
    """The configuration file the operator hands over (JSON, camelCase); raises InvalidInput."""
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise invalid_spec(f"configuration file {path} does not exist") from None
    except OSError as exc:
        raise invalid_spec(f"configuration file {path} cannot be read: {exc.strerror}") from None
    try:
        return TrainerConfig.model_validate_json(text)
    except ValidationError as exc:
        raise invalid_spec(f"configuration file {path}: {describe(exc, hydra=False)}") from None


def config_path(argv: list[str]) -> Path | None:
    """``--config <file>`` or ``--config=<file>`` in ``argv``; None for a Hydra command line."""
    for i, arg in enumerate(argv):
        if arg == CONFIG_FLAG:
            if i + 1 >= len(argv):
                raise invalid_spec(f"{CONFIG_FLAG} needs a file")
            return Path(argv[i + 1])
        if arg.startswith(CONFIG_FLAG + "="):
            return Path(arg.split("=", 1)[1])
    return None


# ---------------------------------------------------------------------------------------------- checks


def validate(data: dict[str, Any], *, hydra: bool) -> TrainerConfig:
    try:
        return TrainerConfig.model_validate(data)
    except ValidationError as exc:
        raise invalid_spec(describe(exc, hydra=hydra)) from None


def describe(exc: ValidationError, *, hydra: bool) -> str:
    """Every problem as ``<field>: <message>``, the field spelled as the user wrote it."""
    problems = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()))
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        if hydra:
            head, _, rest = where.partition(".adapter.")  # a field inside a mapped section: adapter.<field>
            where = _HYDRA_NAME.get(where) or (f"adapter.{rest}" if head == "method" and rest else where)
            if err.get("type") == "string_type" and where in _HYDRA_NAME.values():
                msg += f" (quote it on the command line: {where}='{err.get('input')}')"
        # a rule across fields (maxPromptLength < maxLength) is located at its section: the message names them
        problems.append(f"{where}: {msg}" if where and where not in TrainerConfig.model_fields else msg)
    return "; ".join(problems)


def with_preset(cfg: TrainerConfig) -> TrainerConfig:
    """Fill the architecture fields left unset from ``config/model/<preset>.yaml``; raises InvalidInput."""
    model = cfg.model
    if model.preset is not None:
        path = CONFIG_DIR / "model" / f"{model.preset}.yaml"
        preset = yaml.safe_load(path.read_text()) or {}
        filled = {k: preset.get(k) for k in PRESET_FIELDS if getattr(model, k) is None and k in preset}
        model = model.model_copy(update=filled)
    missing = [k for k in PRESET_FIELDS[:4] if getattr(model, k) is None]
    if missing:
        raise invalid_spec(f"model.{missing[0]} is required (or name a model.preset that sets it)")
    return cfg.model_copy(update={"model": model})


def with_test_hooks(cfg: TrainerConfig, raw: str | None) -> TrainerConfig:
    """``cfg`` with the test hooks of ``FTJ_TEST_HOOKS`` (a JSON object, camelCase) set in ``run``; only the hooks
    of :data:`ftcrd.trainer_config.TEST_HOOKS` may be set this way. Raises InvalidInput."""
    if not raw:
        return cfg
    try:
        hooks = json.loads(raw)
        if not isinstance(hooks, dict):
            raise ValueError("not a JSON object")
    except ValueError as exc:
        raise invalid_spec(f"{names.ENV_TEST_HOOKS}: {exc}") from None
    alias = {k: TrainerRun.model_fields[k].alias or k for k in TEST_HOOKS}
    spelled = alias | {a: a for a in alias.values()}  # snake_case or camelCase
    unknown = sorted(set(hooks) - set(spelled))
    if unknown:
        raise invalid_spec(f"{names.ENV_TEST_HOOKS}: not a test hook: {', '.join(unknown)}")
    data = cfg.run.model_dump(by_alias=True) | {spelled[k]: v for k, v in hooks.items()}
    try:
        run = TrainerRun.model_validate(data)
    except ValidationError as exc:
        raise invalid_spec(f"{names.ENV_TEST_HOOKS}: {describe(exc, hydra=False)}") from None
    return cfg.model_copy(update={"run": run})


def check_world_size(cfg: TrainerConfig, world_size: int) -> None:
    """What only the launch decides: the global batch must split evenly over ranks and micro-batches."""
    hp = cfg.hyperparameters
    per_step = hp.gradient_accumulation_steps * world_size
    if hp.batch_size % per_step:
        raise invalid_spec(
            f"batch_size {hp.batch_size} must be divisible by gradient_accumulation_steps x world size = "
            f"{hp.gradient_accumulation_steps} x {world_size} = {per_step} "
            "(spec.hyperparameters.batchSize, gradientAccumulationSteps, resources)"
        )
