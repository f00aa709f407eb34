"""The training loop: one readable file, nanoGPT style.

Per optimizer step: each rank runs ``gradient_accumulation_steps`` micro-batches of its slice of the
global batch (see :mod:`fttrainer.data`), one concatenated chosen+rejected forward each, scales the
loss by ``1 / gradient_accumulation_steps`` (FSDP2's reduce-scatter averages over ranks, so the
gradient is the mean over the global batch), clips the global gradient norm, steps the optimizer and
the warmup schedule, all-reduces the metrics, reports progress, evaluates every ``eval_every``
examples and checkpoints every ``checkpoint_every`` steps.

Everything that decides the weights is a function of the seed and the step number, so a run resumed
from a checkpoint ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import signal
import time
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from ftcrd.conditions import ExitCode
from ftcrd.types import Optimizer, Stage
from torch import nn
from torch.distributed.tensor import DTensor

from fttrainer import checkpoint
from fttrainer.checkpoint import LoopState
from fttrainer.data import Example, Schedule, collate, shard_for_eval
from fttrainer.losses import IGNORE_INDEX, batch_logps, preference_loss, sft_loss
from fttrainer.parallel import Dist, compute_context

log = logging.getLogger(__name__)

OPTIMIZERS: tuple[Optimizer, ...] = typing.get_args(Optimizer)


class ProgressSink(Protocol):
    def progress(
        self, *, step: int, total_steps: int, epoch: float, examples: int, stage: Stage, metrics: dict[str, float]
    ) -> None: ...

    def checkpoint(self, step: int, path: str, metrics: dict[str, float]) -> None: ...


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
    exit_after_step: int | None = None  # test hook: hard-exit right after the checkpoint of this step


@dataclass
class Result:
    step: int
    examples: int
    metrics: dict[str, float] = field(default_factory=dict)
    resumed_from: int | None = None


def build_optimizer(name: str, params: Any, lr: float) -> torch.optim.Optimizer:
    """``torch.optim.<name>(params, lr=lr)``; Adam/AdamW over plain (unsharded) CUDA parameters use the fused
    kernel (one launch per step instead of a foreach chain; same algorithm and state layout)."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")
    params = list(params)
    cls = getattr(torch.optim, name)
    kwargs: dict[str, Any] = {}
    tensors = [p for p in params if isinstance(p, torch.Tensor)]
    if name in ("Adam", "AdamW") and tensors and all(p.is_cuda and not isinstance(p, DTensor) for p in tensors):
        kwargs["fused"] = True
    optimizer: torch.optim.Optimizer = cls(params, lr=lr, **kwargs)
    return optimizer


def warmup_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup to the peak learning rate over ``warmup_steps``, then constant (the reference's)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / (warmup_steps + 1)))


def clip_grad_norm(params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """Global gradient norm over sharded (DTensor) or plain gradients, then clip (torchtitan's recipe).

    Returns the norm as a 0-d tensor on the device (no host sync here; the step reads it together with
    the metrics)."""
    grads = [p.grad for p in params if p.grad is not None]
    total = torch.nn.utils.get_total_norm(grads, norm_type=2.0, foreach=True)
    if isinstance(total, DTensor):
        total = total.full_tensor()
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, total, foreach=True)
    return total


_ACCEPTS_LOGITS_TO_KEEP: dict[type, bool] = {}


def _accepts_logits_to_keep(model: nn.Module) -> bool:
    cls = type(model)
    if cls not in _ACCEPTS_LOGITS_TO_KEEP:
        _ACCEPTS_LOGITS_TO_KEEP[cls] = "logits_to_keep" in inspect.signature(cls.forward).parameters
    return _ACCEPTS_LOGITS_TO_KEEP[cls]


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """The batch's tensors on ``device`` (on CUDA through pinned memory, asynchronously); ``index`` stays on the host."""
    if device.type != "cuda":
        return {k: v.to(device) for k, v in batch.items() if k != "index"} | {"index": batch["index"]}
    moved = {k: v.pin_memory().to(device, non_blocking=True) for k, v in batch.items() if k != "index"}
    return moved | {"index": batch["index"]}


def logits_to_keep(labels: torch.Tensor) -> int:
    """How many trailing positions need logits: from one before the earliest labelled token of any row.

    Call it with the host copy of the labels (no device sync)."""
    first = int((labels != IGNORE_INDEX).to(torch.int8).argmax(dim=1).min())
    return labels.shape[1] - max(first - 1, 0)


def sequence_logps(
    model: nn.Module, batch: dict[str, torch.Tensor], device: torch.device, keep: int | None = None
) -> torch.Tensor:
    """Summed response log-probs for every row of a collated batch (chosen rows, then rejected).

    Only positions from the earliest response token of the batch onwards get logits (``logits_to_keep``):
    the LM head and the float32 log-softmax over the prompts, which no loss reads, are skipped. Same result
    as computing every position; on the CPU bench this took a step from 1.25x to ~1.0x the bare
    forward+backward (docs/benchmarks.md).

    ``batch`` may already be on ``device`` (:func:`to_device`); then pass ``keep`` computed from the host
    labels, so no device-to-host sync is needed. The forward runs in the model's
    :func:`~fttrainer.parallel.compute_context` (bf16 autocast for a one-rank GPU policy).
    """
    if keep is None:
        keep = logits_to_keep(batch["labels"])
    labels = batch["labels"].to(device)
    kwargs: dict[str, Any] = {}
    if _accepts_logits_to_keep(model) and keep < labels.shape[1]:
        kwargs["logits_to_keep"] = keep
        labels = labels[:, -keep:]
    with compute_context(model):
        out = model(
            input_ids=batch["input_ids"].to(device),
            attention_mask=batch["attention_mask"].to(device),
            use_cache=False,
            **kwargs,
        )
    return batch_logps(out.logits.float(), labels, average=False)


class Trainer:
    def __init__(
        self,
        *,
        cfg: LoopConfig,
        loss: LossSpec,
        d: Dist,
        policy: nn.Module,
        reference: nn.Module | None,
        examples: Sequence[Example],
        schedule: Schedule,
        eval_indices: list[int],
        pad_token_id: int,
        reporter: ProgressSink,
        reference_logps: torch.Tensor | None = None,
    ) -> None:
        if loss.needs_reference and reference is None and reference_logps is None:
            raise ValueError(f"loss {loss.name} needs a reference model or precomputed reference log-probs")
        self.cfg, self.loss, self.d = cfg, loss, d
        self.policy, self.reference = policy, reference
        self.examples, self.schedule, self.eval_indices = examples, schedule, eval_indices
        self.pad_token_id, self.reporter = pad_token_id, reporter
        self.reference_logps = reference_logps  # (n_examples, 2): chosen, rejected
        self.params = [p for p in policy.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(cfg.optimizer, self.params, cfg.lr)
        self.scheduler = warmup_schedule(self.optimizer, cfg.warmup_steps)
        self.state = LoopState()
        self.metrics: dict[str, float] = {}
        self._last_log = 0.0
        self._sigterm = False  # set by the handler on this rank
        self.preempted = False  # set on every rank once any rank got SIGTERM

    # ------------------------------------------------------------------ one micro-batch

    def _reference_logps(self, batch: dict[str, torch.Tensor], n: int, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.reference_logps is not None:
            ref = self.reference_logps[batch["index"]].to(self.d.device, non_blocking=True)
            return ref[:, 0], ref[:, 1]
        assert self.reference is not None
        with torch.no_grad():
            logps = sequence_logps(self.reference, batch, self.d.device, keep)
        return logps[:n], logps[n:]

    def _micro_batch(
        self, indices: list[int], train: bool, counted: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
        """(mean loss to backpropagate, the 7 per-example metric sums over the first ``counted`` rows as a
        float64 device tensor, [rows counted, tokens counted]) for one micro-batch.

        The batch goes to the device once (policy and reference forwards share it), and nothing here waits
        for the device: the metric sums stay on it until the step's single all-reduce."""
        n = len(indices)
        k = n if counted is None else counted
        host = collate([self.examples[i] for i in indices], self.pad_token_id)
        if self.loss.name == "sft":
            host = {key: (v[:n] if key != "index" else v) for key, v in host.items()}
        keep = logits_to_keep(host["labels"])
        mask = host["attention_mask"]
        tokens = float(mask[:k].sum()) if self.loss.name == "sft" else float(mask[:k].sum() + mask[n : n + k].sum())
        batch = to_device(host, self.d.device)
        if self.loss.name == "sft":
            with torch.set_grad_enabled(train):
                policy_chosen = sequence_logps(self.policy, batch, self.d.device, keep)
            losses = sft_loss(policy_chosen)
            policy_rejected = torch.zeros_like(policy_chosen)
            chosen_rewards = rejected_rewards = torch.zeros_like(policy_chosen)
        else:
            with torch.set_grad_enabled(train):
                logps = sequence_logps(self.policy, batch, self.d.device, keep)
            policy_chosen, policy_rejected = logps[:n], logps[n:]
            ref_chosen, ref_rejected = self._reference_logps(batch, n, keep)
            losses, chosen_rewards, rejected_rewards = preference_loss(
                policy_chosen,
                policy_rejected,
                ref_chosen,
                ref_rejected,
                beta=self.loss.beta,
                label_smoothing=self.loss.label_smoothing,
                ipo=self.loss.name == "ipo",
                reference_free=self.loss.reference_free,
            )
        per_example = torch.stack(
            [
                losses.detach(),
                (chosen_rewards > rejected_rewards).to(losses.dtype),
                chosen_rewards - rejected_rewards,
                chosen_rewards,
                rejected_rewards,
                policy_chosen.detach(),
                policy_rejected.detach(),
            ]
        )[:, :k]
        return losses.mean(), per_example.sum(dim=1).double(), [float(k), tokens]

    def _reduce(
        self, sums: torch.Tensor, counts: list[float], extra: list[float], after: torch.Tensor | None = None
    ) -> list[float]:
        """All-reduce [rows, 7 metric sums, tokens, *extra] over the ranks in one collective and read it
        back in one device-to-host copy, with ``after`` (already global, not reduced) appended."""
        host = torch.tensor([counts[0], counts[1], *extra], dtype=torch.float64).to(self.d.device)
        t = torch.cat([host[:1], sums, host[1:]])
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        if after is not None:
            t = torch.cat([t, after.detach().reshape(1).to(torch.float64)])
        values: list[float] = t.tolist()
        return values

    @staticmethod
    def _summarise(sums: list[float], prefix: str = "") -> dict[str, float]:
        n = max(sums[0], 1.0)
        names = ["loss", "rewardAccuracy", "rewardMargin", "rewardsChosen", "rewardsRejected"]
        names += ["logpsChosen", "logpsRejected"]
        out = {name: sums[i + 1] / n for i, name in enumerate(names)}
        if prefix:
            return {"evalLoss": out["loss"], "evalRewardAccuracy": out["rewardAccuracy"]}
        return out

    # ------------------------------------------------------------------ evaluation

    def evaluate(self) -> dict[str, float]:
        if not self.eval_indices:
            return {}
        self.policy.eval()
        world = self.d.world_size
        per_rank_batch = max(1, self.cfg.eval_batch_size // world)
        sums = torch.zeros(7, dtype=torch.float64, device=self.d.device)
        counts = [0.0, 0.0]
        with torch.no_grad():
            for indices, counted in shard_for_eval(self.eval_indices, self.d.rank, world, per_rank_batch):
                _, s, c = self._micro_batch(indices, train=False, counted=counted)
                sums += s
                counts = [a + b for a, b in zip(counts, c, strict=True)]
        self.policy.train()
        metrics = self._summarise(self._reduce(sums, counts, []), prefix="eval")
        if self.loss.name == "sft":
            del metrics["evalRewardAccuracy"]
        return metrics

    # ------------------------------------------------------------------ training

    def step(self) -> dict[str, float]:
        micro_batches = self.schedule.micro_batches(self.state.step, self.d.rank)
        accum = len(micro_batches)
        sums = torch.zeros(7, dtype=torch.float64, device=self.d.device)
        counts = [0.0, 0.0]
        for indices in micro_batches:
            loss, s, c = self._micro_batch(indices, train=True)
            (loss / accum).backward()
            sums += s
            counts = [a + b for a, b in zip(counts, c, strict=True)]
        grad_norm_t = clip_grad_norm(self.params, self.cfg.max_grad_norm)
        lr = float(self.scheduler.get_last_lr()[0])
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

        # one collective and one device->host read per step: the metric sums, the SIGTERM flag and (after
        # the reduce, as it is already global) the gradient norm
        summed = self._reduce(sums, counts, [float(self._sigterm)], after=grad_norm_t)
        grad_norm = summed.pop()
        self.state.step += 1
        self.state.examples += int(summed[0])
        self.state.tokens += int(summed[8])
        self.preempted = summed[9] > 0
        metrics = self._summarise(summed)
        if self.loss.name == "sft":  # no reference, no rejected forward: preference metrics are meaningless
            metrics = {"loss": metrics["loss"], "logpsChosen": metrics["logpsChosen"]}
        metrics.update(gradNorm=grad_norm, learningRate=lr, tokens=float(self.state.tokens))
        return metrics

    def resume(self) -> int | None:
        found = checkpoint.agreed_latest(self.cfg.checkpoint_dir, self.d)
        if found is None:
            return None
        step, path = found
        self.state = checkpoint.load(path, self.policy, self.optimizer, self.scheduler)
        log.info("resumed from step %d (%s, %d examples seen)", self.state.step, path, self.state.examples)
        return step

    def _report(self, stage: Stage) -> None:
        self.reporter.progress(
            step=self.state.step,
            total_steps=self.schedule.total_steps,
            epoch=self.schedule.epoch(self.state.step),
            examples=self.state.examples,
            stage=stage,
            metrics=self.metrics,
        )

    def _log(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self.d.is_main or (not force and now - self._last_log < self.cfg.minimum_log_interval_secs):
            return
        self._last_log = now
        m = self.metrics
        keys = ["loss", "rewardAccuracy", "rewardMargin", "gradNorm", "learningRate", "evalLoss", "evalRewardAccuracy"]
        shown = " ".join(f"{k}={m[k]:.4g}" for k in keys if k in m and math.isfinite(m[k]))
        log.info("step %d/%d examples %d %s", self.state.step, self.schedule.total_steps, self.state.examples, shown)

    def _eval(self) -> int:
        self._report("evaluating")
        self.metrics.update(self.evaluate())
        self._log(force=True)
        return self.state.examples

    def _on_sigterm(self, signum: int, frame: object) -> None:
        self._sigterm = True

    def run(self, on_exit: Callable[[int], None] = os._exit) -> Result:
        """Train to ``total_steps``; on SIGTERM (preemption) checkpoint at the end of the step and exit 143.

        torchrun forwards SIGTERM to the workers and gives them 30 s before SIGKILL; the flag is
        combined across ranks in the step's metrics all-reduce, so all ranks stop at the same step.
        """
        previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        try:
            return self._run(on_exit)
        finally:
            signal.signal(signal.SIGTERM, previous)

    def _run(self, on_exit: Callable[[int], None]) -> Result:
        resumed = self.resume()
        self.policy.train()
        total = self.schedule.total_steps
        last_eval = self.state.examples
        if resumed is None and self.cfg.do_first_eval:
            last_eval = self._eval()
        while self.state.step < total:
            self.metrics.update(self.step())
            if self.state.examples - last_eval >= self.cfg.eval_every and self.state.step < total:
                last_eval = self._eval()
            self._report("training")
            self._log(force=self.state.step == total)
            if self.state.step % self.cfg.checkpoint_every == 0 or self.state.step == total or self.preempted:
                path = checkpoint.save(
                    self.cfg.checkpoint_dir,
                    self.state,
                    model=self.policy,
                    optimizer=self.optimizer,
                    scheduler=self.scheduler,
                    d=self.d,
                )
                if self.d.is_main:
                    self.reporter.checkpoint(self.state.step, str(path), dict(self.metrics))
                if self.cfg.exit_after_step == self.state.step:
                    log.warning("exit_after_step=%d: exiting hard after the checkpoint", self.state.step)
                    dist.barrier()
                    on_exit(ExitCode.STOPPED_AFTER_STEP)
                if self.preempted:
                    log.warning(
                        "SIGTERM: checkpointed step %d, exiting for the restarted pod to resume", self.state.step
                    )
                    dist.barrier()
                    on_exit(ExitCode.PREEMPTED)
        self._eval()
        return Result(self.state.step, self.state.examples, dict(self.metrics), resumed)


def precompute_reference_logps(
    reference: nn.Module, examples: Sequence[Example], d: Dist, batch_size: int, pad_token_id: int
) -> torch.Tensor:
    """Reference log-probs ``(n_examples, 2)`` (chosen, rejected) for every example, on every rank.

    Each rank computes its strided share (all ranks run the same number of forwards, as FSDP needs),
    then one all-gather gives everybody the whole table; the caller can then drop the reference model.
    """
    world = d.world_size
    all_indices = list(range(len(examples)))
    rows: list[torch.Tensor] = []
    with torch.no_grad():
        for indices, _ in shard_for_eval(all_indices, d.rank, world, max(1, batch_size // world)):
            batch = collate([examples[i] for i in indices], pad_token_id)
            logps = sequence_logps(reference, batch, d.device).double()
            n = len(indices)
            rows.append(torch.stack([batch["index"].double().to(d.device), logps[:n], logps[n:]], dim=1))
    mine = torch.cat(rows)
    gathered = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(gathered, mine)
    table = torch.empty(len(examples), 2, dtype=torch.float64)
    for part in (g.cpu() for g in gathered):
        table[part[:, 0].long()] = part[:, 1:]
    return table.float()
