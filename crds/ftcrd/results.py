"""Per-step training metrics: the trainer's metrics file, and the OpenAI results CSV made from it.

The contract (trainer -> API): rank 0 appends one :class:`StepMetrics` JSON object per optimizer step, in
step order, to ``<export dir>/`` :data:`ftcrd.names.METRICS_FILE`, so the file is uploaded with the model
(``gs://<bucket>/<prefix>/<communityId>/<job>/metrics.jsonl``) and listed in ``manifest.json``. The API
serves it as the job's ``result_files[0]``: :func:`results_csv` renders OpenAI's ``step_metrics.csv``.

Pure pydantic (no torch, no storage client), imported by the trainer and the API.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable
from typing import Annotated, Final

from pydantic import BaseModel, ConfigDict, Field, ValidationError

RESULTS_FILENAME: Final = "step_metrics.csv"
"""The results file's name, as OpenAI names it."""
RESULTS_PURPOSE: Final = "fine-tune-results"

Metric = Annotated[float | None, Field(default=None, allow_inf_nan=True)]


class StepMetrics(BaseModel):
    """One optimizer step's metrics (a line of the metrics file). Column names are OpenAI's; for preference
    methods (dpo, ipo, cdpo) the accuracies are reward accuracies (the share of pairs whose chosen reward
    exceeds the rejected one), for sft mean token accuracies. ``valid_*`` are null on steps without an
    evaluation; ``full_valid_*`` are set on the last step only (evaluation on the whole validation set)."""

    model_config = ConfigDict(extra="ignore")

    step: Annotated[int, Field(ge=1, description="Optimizer step, from 1.")]
    train_loss: Metric
    train_accuracy: Metric
    valid_loss: Metric
    valid_mean_token_accuracy: Metric
    full_valid_loss: Metric
    full_valid_mean_token_accuracy: Metric

    def line(self) -> str:
        """The metrics-file line (what the trainer writes); a non-finite metric (a diverged loss) is null."""
        values = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in self.model_dump().items()}
        return json.dumps(values, allow_nan=False) + "\n"


RESULTS_COLUMNS: Final = tuple(StepMetrics.model_fields)


class MetricsFileError(ValueError):
    """A metrics file that does not follow the contract (line number and reason)."""


def parse_metrics(data: bytes) -> list[StepMetrics]:
    """The steps of a metrics file; a repeated step (a resumed run re-logging it) keeps its last line."""
    steps: dict[int, StepMetrics] = {}
    for lineno, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = StepMetrics.model_validate_json(line)
        except ValidationError as exc:
            raise MetricsFileError(f"line {lineno}: {exc.errors()[0].get('msg')}") from None
        steps[row.step] = row
    return [steps[k] for k in sorted(steps)]


def _cell(value: float | int | None) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return str(value) if isinstance(value, int) else format(value, ".8g")


def results_csv(rows: Iterable[StepMetrics]) -> str:
    """OpenAI's results file: a header and one row per step; empty cells where a metric was not measured."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(RESULTS_COLUMNS)
    for row in rows:
        writer.writerow([_cell(getattr(row, name)) for name in RESULTS_COLUMNS])
    return out.getvalue()
