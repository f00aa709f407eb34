"""Hyperparameters of a new job: explicit values checked against the dataset, ``"auto"`` resolved from it.

The API knows the dataset's row count when it accepts a job, so a batch that cannot fit is refused (400)
or, when the caller left the choice to the service, made to fit, instead of a job that is accepted and
fails minutes later with ``InvalidSpec``. ``"auto"`` (or an omitted value) takes the deployment's
configured default (``FTAPI_HYPERPARAMETERS``) when there is one, else OpenAI's documented heuristics:

* ``n_epochs``: 3, raised so that about 100 examples are seen for a small dataset (at most 25 epochs),
  lowered so that at most 25,000 are seen for a large one (at least 1);
* ``batch_size``: about 0.2 % of the training rows, at least 1 and at most 256;
* ``learning_rate_multiplier``: 1 (the deployment's base learning rate); ``beta``: the CRD's default.

A batch is always a multiple of gradientAccumulationSteps x processes (the trainer splits it that way) and
at most the number of training rows (the rows the trainer does not hold out for validation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ftcrd.dataset import held_out_rows
from ftcrd.types import DatasetSpec, HyperparametersSpec, ResourcesSpec

from ftapi.errors import APIError
from ftapi.schemas import DpoHyperparameters, Hyperparameters
from ftapi.settings import Settings

TARGET_EPOCHS = 3
MIN_TARGET_EXAMPLES = 100
MAX_TARGET_EXAMPLES = 25_000
MAX_AUTO_EPOCHS = 25
AUTO_BATCH_FRACTION = 0.002
MAX_AUTO_BATCH = 256


@dataclass(frozen=True)
class Data:
    """The training data as the trainer will split it."""

    rows: int
    held_out: int
    param: str  # what to name when the data is too small

    @property
    def train_rows(self) -> int:
        return self.rows - self.held_out


def training_data(settings: Settings, rows: int, *, separate_validation: bool, param: str) -> Data:
    """``rows`` of the training file; the trainer holds out validationFraction of them unless a separate
    validation file is given (then it trains on every row)."""
    if separate_validation:
        return Data(rows, 0, param)
    fraction = settings.validation_fraction
    if fraction is None:
        fraction = DatasetSpec.model_fields["validation_fraction"].default
    return Data(rows, held_out_rows(rows, float(fraction)), param)


def examples_per_step(settings: Settings) -> int:
    """gradientAccumulationSteps x torchrun processes of a job with the configured resources (a batch is split
    evenly across them); processes per node as the operator starts them (GPUs, else processesPerNode, else 1)."""
    res = ResourcesSpec.model_validate(settings.resources)
    hp = HyperparametersSpec.model_validate(settings.hyperparameters)
    return hp.gradient_accumulation_steps * res.nodes * (res.gpus_per_node or res.processes_per_node or 1)


def auto_epochs(train_rows: int) -> int:
    if train_rows * TARGET_EPOCHS < MIN_TARGET_EXAMPLES:
        return min(MAX_AUTO_EPOCHS, math.ceil(MIN_TARGET_EXAMPLES / train_rows))
    if train_rows * TARGET_EPOCHS > MAX_TARGET_EXAMPLES:
        return max(1, MAX_TARGET_EXAMPLES // train_rows)
    return TARGET_EPOCHS


def fit_batch(wanted: int, data: Data, per_step: int) -> int:
    """The multiple of ``per_step`` nearest below ``wanted`` (at least ``per_step``) that fits the training rows."""
    fitting = min(max(wanted, per_step), data.train_rows) // per_step * per_step
    if fitting < 1:
        raise APIError(
            400,
            f"The dataset has {data.train_rows} training rows ({data.rows} rows, {data.held_out} held out for "
            f"validation), fewer than the {per_step} examples one optimizer step needs "
            "(gradientAccumulationSteps x processes); add rows",
            code="dataset_too_small",
            param=data.param,
        )
    return fitting


def check_batch(batch: int, data: Data, per_step: int, param: str) -> int:
    if batch > data.train_rows:
        held = f" after holding out {data.held_out} for validation" if data.held_out else ""
        raise APIError(
            400,
            f"batch_size {batch} is larger than the {data.train_rows} training rows of the dataset "
            f"({data.rows} rows{held}); use a batch size of at most {data.train_rows} or 'auto'",
            code="batch_size_too_large",
            param=param,
        )
    if batch % per_step:
        raise APIError(
            400,
            f"batch_size {batch} must be a multiple of {per_step} (gradientAccumulationSteps x processes)",
            code="invalid_value",
            param=param,
        )
    return batch


def resolve(
    requested: Hyperparameters | None,
    *,
    settings: Settings,
    data: Data,
    param_prefix: str,
    openai_auto: bool = True,
) -> dict[str, Any]:
    """spec.hyperparameters overrides (camelCase) for the request; raises APIError (400) naming the field.

    ``openai_auto``: unconfigured "auto" values follow OpenAI's heuristics; the seed webhook (False) keeps the
    CRD's defaults, as before, and only shrinks a batch that does not fit."""
    configured = settings.hyperparameters
    defaults = HyperparametersSpec.model_validate(configured)
    per_step = examples_per_step(settings)
    hp = requested or Hyperparameters()
    out: dict[str, Any] = {}

    if isinstance(hp.n_epochs, int):
        out["epochs"] = hp.n_epochs
    elif "epochs" not in configured and openai_auto:
        out["epochs"] = auto_epochs(data.train_rows)

    if isinstance(hp.batch_size, int):
        out["batchSize"] = check_batch(hp.batch_size, data, per_step, f"{param_prefix}.batch_size")
    else:
        wanted = defaults.batch_size
        if "batchSize" not in configured and openai_auto:
            wanted = max(1, min(MAX_AUTO_BATCH, round(AUTO_BATCH_FRACTION * data.train_rows)))
        out["batchSize"] = fit_batch(wanted, data, per_step)

    if isinstance(hp.learning_rate_multiplier, int | float):
        lr = defaults.learning_rate * float(hp.learning_rate_multiplier)
        if lr > 1 + 1e-9:  # the schema's maximum is 1/base: allow its rounding
            raise APIError(
                400,
                f"learning_rate_multiplier {hp.learning_rate_multiplier} gives a learning rate above 1 "
                f"(base {defaults.learning_rate})",
                code="invalid_value",
                param=f"{param_prefix}.learning_rate_multiplier",
            )
        out["learningRate"] = min(lr, 1.0)
    return out


def beta(requested: Hyperparameters | None) -> float | None:
    """The DPO beta asked for; None: the CRD's default."""
    if isinstance(requested, DpoHyperparameters) and isinstance(requested.beta, int | float):
        return float(requested.beta)
    return None


def max_learning_rate_multiplier(settings: Settings) -> float:
    """The largest multiplier that keeps the learning rate at most 1 (the CRD's bound)."""
    return 1.0 / HyperparametersSpec.model_validate(settings.hyperparameters).learning_rate
