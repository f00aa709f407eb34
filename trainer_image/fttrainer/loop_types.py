"""What the training loop (:mod:`fttrainer.loop`) is given and what it reports to: the loss, the loop's
settings, where per-step metrics go, and its result (progress goes to :class:`fttrainer.report.Reporter`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


class StepObserver(Protocol):
    """Rank 0's record of the run (:class:`fttrainer.tracking.RunRecorder`: the metrics file, the trackers, samples).

    ``begin`` runs once the loop knows whether it resumed (and from which step); ``record`` once per optimizer
    step after its evaluation, if any (``final``: the last step, with the evaluation on the whole validation
    set), and for the evaluation before training (step 0, ``train`` None); ``samples`` after each evaluation
    that completed prompts (:mod:`fttrainer.sampling`)."""

    def begin(self, resumed_step: int | None) -> None: ...

    def record(self, step: int, train: dict[str, float] | None, evaluation: dict[str, float], final: bool) -> None: ...

    def samples(self, step: int, samples: list[Any]) -> None: ...


# The per-example sums of a micro-batch (rows of Trainer._micro_batch's stack), averaged per example by
# Trainer._summarise except the last two: sft's token accuracy is hits over scored tokens.


@dataclass(frozen=True)
class LossSpec:
    name: str  # dpo | ipo | sft ("cdpo" is dpo with label_smoothing > 0)
    beta: float = 0.1
    label_smoothing: float = 0.0
    reference_free: bool = False

    @property
    def needs_reference(self) -> bool:
        return self.name != "sft"


@dataclass(frozen=True)
class LoopConfig:
    lr: float
    optimizer: str
    warmup_steps: int
    max_grad_norm: float
    eval_every: int
    eval_batch_size: int
    do_first_eval: bool
    checkpoint_every: int
    checkpoint_dir: Path
    minimum_log_interval_secs: float = 1.0
    keep_checkpoints: int = 2
    checkpoint_location: str | None = None  # pvc://<claim>/<dir>: how users find checkpoint_dir (status records)
    exit_after_step: int | None = None  # test hook: hard-exit right after the checkpoint of this step
    n_eval_examples: int | None = None  # periodic evaluations score the first n held-out examples; the last one all
    # Throughput (docs/trainer.md#performance). All change how the same examples are computed, not which:
    packing: bool = False  # padding-free forwards: a micro-batch's sequences concatenated, attention per sequence
    max_tokens_per_micro_batch: int | None = None  # cut each rank's share of a step by tokens, not a fixed count
    chunked_logps: bool = True  # score labelled tokens chunk by chunk from the hidden states (no full logits)
    logits_chunk_tokens: int = 0  # tokens per chunk; 0: automatic (<= 64 MiB of float32 logits per chunk)
    hold_at_steps: tuple[int, ...] = ()  # test hook: stop making progress after these steps' checkpoints
    exit_during_checkpoint: int | None = None  # test hook: hard-exit while this step's checkpoint is written
    seed: int = 0  # with the step and the rank, seeds each step's random draws (dropout, e.g. LoRA's)


@dataclass
class Result:
    step: int
    examples: int
    metrics: dict[str, float] = field(default_factory=dict)
    resumed_from: int | None = None
