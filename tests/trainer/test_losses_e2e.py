"""Every objective end to end in one process (world size 1): IPO, conservative DPO, SFT, reference-free."""

from __future__ import annotations

import math

import pytest

from tests.support.trainer import Trainer, synthetic_rows


@pytest.mark.parametrize(
    ("overrides", "check"),
    [
        (["loss=ipo"], "rewardAccuracy"),
        (["loss=cdpo"], "rewardAccuracy"),
        (["loss=dpo", "loss.reference_free=true"], "rewardAccuracy"),
        (["loss=sft"], "logpsChosen"),
    ],
    ids=["ipo", "cdpo", "reference-free", "sft"],
)
def test_objective_runs(trainer: Trainer, overrides: list[str], check: str):
    path = trainer.dataset(synthetic_rows(40))
    run = trainer.python("obj", path, "n_examples=24", "checkpoint_every=100", *overrides)
    assert run.returncode == 0, run.output[-4000:]
    msg = run.termination_message()
    assert msg["status"] == "succeeded" and msg["steps"] == 3
    metrics = msg["metrics"]
    assert math.isfinite(metrics["loss"]) and math.isfinite(metrics[check]) and "evalLoss" in metrics
    if overrides == ["loss=sft"]:
        assert "rewardAccuracy" not in metrics and "reference: False" in run.output
