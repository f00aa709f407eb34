"""The per-step metrics file (``metrics.jsonl``, :data:`ftcrd.names.METRICS_FILE`): rank 0's record of every optimizer
step, which the upload carries next to the model and the API serves as OpenAI's ``step_metrics.csv``.

The file is written while training, in the checkpoint directory (it survives a resume with the checkpoints, and a
resumed run drops the lines of the steps it trains again), one :class:`ftcrd.results.StepMetrics` line per step in
step order, and copied into the export directory before the export is marked complete (:func:`copy_into`), so it is
uploaded and listed in ``manifest.json``.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from ftcrd.names import METRICS_FILE
from ftcrd.results import MetricsFileError, StepMetrics, parse_metrics

log = logging.getLogger(__name__)


def step_metrics(step: int, train: dict[str, float] | None, evaluation: dict[str, float], final: bool) -> StepMetrics:
    """One step's line from the loop's metrics (status names). Accuracies are whichever the method has: reward
    accuracy for the preference methods, token accuracy for sft; ``full_valid_*`` only on the last step."""
    train = train or {}
    accuracy = train.get("tokenAccuracy", train.get("rewardAccuracy"))
    valid_loss = evaluation.get("evalLoss")
    valid_accuracy = evaluation.get("evalTokenAccuracy", evaluation.get("evalRewardAccuracy"))
    return StepMetrics(
        step=step,
        train_loss=train.get("loss"),
        train_accuracy=accuracy,
        valid_loss=valid_loss,
        valid_mean_token_accuracy=valid_accuracy,
        full_valid_loss=valid_loss if final else None,
        full_valid_mean_token_accuracy=valid_accuracy if final else None,
    )


class MetricsLog:
    """Appends one line per step to ``<checkpoint_dir>/metrics.jsonl``; a step recorded again (a resumed run's last
    step, evaluated after the resume) is merged with its earlier line, never loses the training half."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: dict[int, StepMetrics] = {}

    @classmethod
    def open(cls, checkpoint_dir: Path, resumed_step: int | None) -> MetricsLog:
        """A fresh file, or (``resumed_step``) the lines of the steps up to the resumed checkpoint."""
        out = cls(checkpoint_dir / METRICS_FILE)
        if resumed_step is not None and out.path.is_file():
            try:
                out.rows = {r.step: r for r in parse_metrics(out.path.read_bytes()) if r.step <= resumed_step}
            except MetricsFileError as exc:
                log.warning("metrics file %s unreadable (%s): starting it again", out.path, exc)
        out.path.parent.mkdir(parents=True, exist_ok=True)
        out.path.write_text("".join(r.line() for r in out.rows.values()))
        return out

    def write(self, row: StepMetrics) -> None:
        earlier = self.rows.get(row.step)
        if earlier is not None:
            given = row.model_dump(exclude_none=True)
            row = earlier.model_copy(update=given)
        self.rows[row.step] = row
        with self.path.open("a") as f:
            f.write(row.line())


def copy_into(checkpoint_dir: Path, export_dir: Path) -> None:
    """Rank 0, after the export: put the metrics file into the export directory (uploaded with the model)."""
    source = checkpoint_dir / METRICS_FILE
    if source.is_file():
        shutil.copyfile(source, export_dir / METRICS_FILE)
    else:
        log.warning("no metrics file in %s: the upload carries none", checkpoint_dir)
