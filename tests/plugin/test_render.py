"""ftkubectl.render: the pieces `kubectl finetune` draws with (pure functions)."""

from __future__ import annotations

import pytest
from ftkubectl import render


@pytest.mark.parametrize(
    ("percent", "bar"),
    [
        (None, "[░░░░░░░░]     -"),
        (0, "[░░░░░░░░]   0.0%"),
        (50, "[████░░░░]  50.0%"),
        (56.25, "[████▌░░░]  56.2%"),
        (100, "[████████] 100.0%"),
        (140, "[████████] 100.0%"),  # a trainer's overshoot never breaks the bar
    ],
)
def test_progress_bar(percent, bar):
    assert render.progress_bar(percent, width=8) == bar


def test_sparkline_scales_between_min_and_max():
    assert render.sparkline([0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0]) == "█▇▆▅▄▃▂▁"
    assert render.sparkline([0.5, 0.5]) == "▄▄"
    assert render.sparkline([]) == ""


@pytest.mark.parametrize(("seconds", "text"), [(None, "-"), (0, "0s"), (42, "42s"), (245, "4m 05s"), (3725, "1h 02m")])
def test_duration(seconds, text):
    assert render.duration(seconds) == text


def test_loss_history_is_checkpoints_then_the_latest_step():
    ftj = {
        "status": {
            "checkpoints": [
                {"step": 20, "metrics": {"loss": 0.5}},
                {"step": 10, "metrics": {"loss": 0.6}},
                {"step": 30},  # no metrics: skipped
            ],
            "metrics": {"loss": 0.4},
            "progress": {"step": 35},
        }
    }
    assert render.loss_history(ftj) == [0.6, 0.5, 0.4]
    ftj["status"]["progress"]["step"] = 20  # the latest loss is the last checkpoint's: not counted twice
    assert render.loss_history(ftj) == [0.6, 0.5]


def test_job_table_lists_phase_progress_and_loss():
    jobs = [
        {
            "metadata": {"name": "a", "namespace": "n"},
            "spec": {"model": {"name": "tiny"}},
            "status": {"phase": "Running", "progress": {"percent": 50, "etaSeconds": 30}, "metrics": {"loss": 0.5}},
        },
        {"metadata": {"name": "bb", "namespace": "n"}, "spec": {"model": {"name": "zephyr"}}},
    ]
    assert render.job_table(jobs).splitlines() == [
        "NAME  PHASE    PROGRESS             LOSS  ETA  MODEL",
        "a     Running  [█████░░░░░]  50.0%  0.5   30s  tiny",
        "bb    Pending  [░░░░░░░░░░]     -   -     -    zephyr",
    ]
