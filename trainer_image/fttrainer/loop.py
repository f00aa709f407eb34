"""The training loop: one readable file, nanoGPT style.

Per optimizer step: each rank runs ``gradient_accumulation_steps`` micro-batches of its slice of the
global batch (see :mod:`fttrainer.data`; or, with ``max_tokens_per_micro_batch``, the same slice cut by
a token budget), one chosen+rejected forward each (padded, or packed without padding:
:mod:`fttrainer.packing`), sums the per-sequence log-probs of the labelled tokens without full logits
(:mod:`fttrainer.logprobs`), scales the summed loss by ``1 / examples on this rank`` (FSDP2's
reduce-scatter averages over ranks, so the gradient is the mean over the global batch), clips the
global gradient norm, steps the optimizer and the warmup schedule, all-reduces the metrics, reports
progress, evaluates every ``eval_every`` examples and checkpoints every ``checkpoint_every`` steps.

Everything that decides the weights is a function of the seed and the step number, so a run resumed
from a checkpoint ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import signal
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from ftcrd.conditions import ExitCode
from ftcrd.types import Optimizer, Stage
from torch import nn
from torch.distributed.tensor import DTensor

from fttrainer import adapters, checkpoint
from fttrainer.checkpoint import LoopState, Store
from fttrainer.data import Example, Schedule, shard_for_eval
from fttrainer.logprobs import sequence_logps, sequence_logps_and_hits
from fttrainer.losses import preference_loss, sft_loss
from fttrainer.packing import SequenceBatch, layout, token_budget_micro_batches
from fttrainer.parallel import Dist

log = logging.getLogger(__name__)

OPTIMIZERS: tuple[Optimizer, ...] = typing.get_args(Optimizer)


class ProgressSink(Protocol):
    def progress(
        self,
        *,
        step: int,
        total_steps: int,
        epoch: float,
        examples: int,
        stage: Stage,
        metrics: dict[str, float],
        resumed_from: int | None = None,
    ) -> None: ...

    def checkpoints(self, records: list[dict[str, Any]]) -> None: ...


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
SUMS = ("loss", "rewardAccuracy", "rewardMargin", "rewardsChosen", "rewardsRejected", "logpsChosen", "logpsRejected")
N_SUMS = len(SUMS) + 2  # + token hits, scored tokens


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


class Trainer:
    def __init__(
        self,
        *,
        cfg: LoopConfig,
        loss: LossSpec,
        d: Dist,
        policy: nn.Module,
        reference: nn.Module | None,
        examples: list[Example],
        schedule: Schedule,
        eval_indices: list[int],
        pad_token_id: int,
        reporter: ProgressSink,
        reference_logps: torch.Tensor | None = None,
        store: Store | None = None,
        observer: StepObserver | None = None,
        sampler: Callable[[nn.Module, nn.Module | None], list[Any]] | None = None,
    ) -> None:
        if loss.needs_reference and reference is None and reference_logps is None:
            raise ValueError(f"loss {loss.name} needs a reference model or precomputed reference log-probs")
        # the policy as its own reference: LoRA, the reference is the base (the adapter disabled; no second copy)
        self._reference_context = (
            (lambda: adapters.reference_context(policy, policy)) if reference is policy else contextlib.nullcontext
        )
        self.cfg, self.loss, self.d = cfg, loss, d
        self.policy, self.reference = policy, reference
        self.examples, self.schedule, self.eval_indices = examples, schedule, eval_indices
        self.pad_token_id, self.reporter = pad_token_id, reporter
        self.reference_logps = reference_logps  # (n_examples, 2): chosen, rejected
        self.observer, self.sampler = observer, sampler  # rank 0's record; prompt completion at evaluations
        self.params = [p for p in policy.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(cfg.optimizer, self.params, cfg.lr)
        self.scheduler = warmup_schedule(self.optimizer, cfg.warmup_steps)
        self.state = LoopState()
        self.store = store  # None: opened (collectively) when the run starts
        self.resumed_from: int | None = None
        self.metrics: dict[str, float] = {}
        self._last_log = 0.0
        self._sigterm = False  # set by the handler on this rank
        self.preempted = False  # set on every rank once any rank got SIGTERM

    # ------------------------------------------------------------------ one micro-batch

    def _logps(self, model: nn.Module, batch: SequenceBatch) -> torch.Tensor:
        return sequence_logps(model, batch, chunked=self.cfg.chunked_logps, chunk_tokens=self.cfg.logits_chunk_tokens)

    def _layout(self, indices: list[int]) -> SequenceBatch:
        """The micro-batch on the host, padded or packed (``cfg.packing``); SFT scores the chosen rows only."""
        examples = [self.examples[i] for i in indices]
        return layout(examples, pairs=self.loss.name != "sft", packed=self.cfg.packing, pad_token_id=self.pad_token_id)

    def _reference_logps(self, batch: SequenceBatch, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.reference_logps is not None:
            ref = self.reference_logps[batch.index].to(self.d.device, non_blocking=True)
            return ref[:, 0], ref[:, 1]
        assert self.reference is not None
        with torch.no_grad(), self._reference_context():
            logps = self._logps(self.reference, batch)
        return logps[:n], logps[n:]

    def _micro_batch(
        self, indices: list[int], train: bool, counted: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
        """(summed loss to backpropagate, the :data:`N_SUMS` metric sums over the first ``counted`` rows as a
        float64 device tensor, [rows counted, tokens counted]) for one micro-batch.

        The batch goes to the device once (policy and reference forwards share it), and nothing here waits
        for the device: the metric sums stay on it until the step's single all-reduce."""
        n = len(indices)
        k = n if counted is None else counted
        host = self._layout(indices)
        lengths = host.lengths
        tokens = float(sum(lengths[:k]) + (sum(lengths[n : n + k]) if self.loss.name != "sft" else 0))
        batch = host.to(self.d.device)
        hits = scored = None
        with torch.set_grad_enabled(train):
            if self.loss.name == "sft":
                logps, hits = sequence_logps_and_hits(
                    self.policy, batch, chunked=self.cfg.chunked_logps, chunk_tokens=self.cfg.logits_chunk_tokens
                )
                scored = torch.bincount(batch.segments, minlength=batch.rows).to(hits.dtype)
            else:
                logps = self._logps(self.policy, batch)
        if self.loss.name == "sft":
            policy_chosen = logps
            losses = sft_loss(policy_chosen)
            policy_rejected = torch.zeros_like(policy_chosen)
            chosen_rewards = rejected_rewards = torch.zeros_like(policy_chosen)
        else:
            policy_chosen, policy_rejected = logps[:n], logps[n:]
            ref_chosen, ref_rejected = self._reference_logps(batch, n)
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
        zeros = torch.zeros_like(losses)
        per_example = torch.stack(
            [
                losses.detach(),
                (chosen_rewards > rejected_rewards).to(losses.dtype),
                chosen_rewards - rejected_rewards,
                chosen_rewards,
                rejected_rewards,
                policy_chosen.detach(),
                policy_rejected.detach(),
                zeros if hits is None else hits[:n].to(losses.dtype),
                zeros if scored is None else scored[:n].to(losses.dtype),
            ]
        )[:, :k]
        return losses.sum(), per_example.sum(dim=1).double(), [float(k), tokens]

    def _reduce(
        self, sums: torch.Tensor, counts: list[float], extra: list[float], after: torch.Tensor | None = None
    ) -> list[float]:
        """All-reduce [rows, N_SUMS metric sums, tokens, *extra] over the ranks in one collective and read it
        back in one device-to-host copy, with ``after`` (already global, not reduced) appended."""
        host = torch.tensor([counts[0], counts[1], *extra], dtype=torch.float64).to(self.d.device)
        t = torch.cat([host[:1], sums, host[1:]])
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        if after is not None:
            t = torch.cat([t, after.detach().reshape(1).to(torch.float64)])
        values: list[float] = t.tolist()
        return values

    @staticmethod
    def _summarise(sums: list[float]) -> dict[str, float]:
        """Per-example means of the reduced sums, and the token accuracy (hits over scored tokens)."""
        n = max(sums[0], 1.0)
        out = {name: sums[i + 1] / n for i, name in enumerate(SUMS)}
        hits, scored = sums[len(SUMS) + 1], sums[len(SUMS) + 2]
        out["tokenAccuracy"] = hits / scored if scored > 0 else float("nan")
        return out

    # ------------------------------------------------------------------ evaluation

    def evaluate(self, full: bool = False) -> dict[str, float]:
        """Metrics on the held-out examples: the first ``n_eval_examples`` of them, or (``full``) all."""
        indices = self.eval_indices if full else self.eval_indices[: self.cfg.n_eval_examples]
        if not indices:
            return {}
        self.policy.eval()
        world = self.d.world_size
        per_rank_batch = max(1, self.cfg.eval_batch_size // world)
        sums = torch.zeros(N_SUMS, dtype=torch.float64, device=self.d.device)
        counts = [0.0, 0.0]
        with torch.no_grad():
            for chunk, counted in shard_for_eval(indices, self.d.rank, world, per_rank_batch):
                _, s, c = self._micro_batch(chunk, train=False, counted=counted)
                sums += s
                counts = [a + b for a, b in zip(counts, c, strict=True)]
        self.policy.train()
        reduced = self._reduce(sums, counts, [])
        out = self._summarise(reduced)
        metrics = {"evalLoss": out["loss"], "evalExamples": reduced[0]}
        if self.loss.name == "sft":
            metrics["evalTokenAccuracy"] = out["tokenAccuracy"]
        else:
            metrics["evalRewardAccuracy"] = out["rewardAccuracy"]
        return metrics

    # ------------------------------------------------------------------ training

    def micro_batches(self, step: int) -> list[list[int]]:
        """This rank's micro-batches for ``step``: the schedule's, or (``max_tokens_per_micro_batch``) the same
        examples cut by a token budget (:func:`fttrainer.packing.token_budget_micro_batches`)."""
        if self.cfg.max_tokens_per_micro_batch is None:
            return self.schedule.micro_batches(step, self.d.rank)
        shares = [[i for mb in self.schedule.micro_batches(step, r) for i in mb] for r in range(self.d.world_size)]
        return token_budget_micro_batches(
            shares,
            self.d.rank,
            self.examples,
            budget=self.cfg.max_tokens_per_micro_batch,
            pairs=self.loss.name != "sft",
            packed=self.cfg.packing,
        )

    def _seed_step(self) -> None:
        """Random draws in a step (dropout) come from (seed, step, rank): a run resumed at any step draws what the
        uninterrupted run drew, whatever the ranks consumed before (their batch shapes differ)."""
        key = hashlib.sha256(f"{self.cfg.seed}/{self.state.step}/{self.d.rank}".encode()).digest()
        torch.manual_seed(int.from_bytes(key[:8], "little"))

    def step(self) -> dict[str, float]:
        self._seed_step()
        micro_batches = self.micro_batches(self.state.step)
        # every rank trains on the same number of examples, so (sum of this rank's losses / its examples),
        # averaged over ranks by FSDP2's reduce-scatter, is the global-batch mean however they are cut
        examples = sum(len(mb) for mb in micro_batches)
        sums = torch.zeros(N_SUMS, dtype=torch.float64, device=self.d.device)
        counts = [0.0, 0.0]
        for indices in micro_batches:
            loss, s, c = self._micro_batch(indices, train=True)
            (loss / examples).backward()
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
        self.state.tokens += int(summed[N_SUMS + 1])
        self.preempted = summed[N_SUMS + 2] > 0
        metrics = self._summarise(summed)
        if self.loss.name == "sft":  # no reference, no rejected forward: preference metrics are meaningless
            metrics = {k: metrics[k] for k in ("loss", "logpsChosen", "tokenAccuracy")}
        else:
            del metrics["tokenAccuracy"]
        metrics.update(gradNorm=grad_norm, learningRate=lr, tokens=float(self.state.tokens))
        return metrics

    def resume(self) -> int | None:
        """Open the checkpoint store and load its newest complete checkpoint (collective); the step or None."""
        cfg = self.cfg
        if self.store is None:
            self.store = checkpoint.open_store(
                cfg.checkpoint_dir, self.d, keep=cfg.keep_checkpoints, location=cfg.checkpoint_location
            )
        found = checkpoint.agreed_latest(cfg.checkpoint_dir, self.d)
        if found is not None:
            step, path = found
            self.state = checkpoint.load(path, self.policy, self.optimizer, self.scheduler)
            self.resumed_from = step
            log.info("resumed from step %d (%s, %d examples seen)", step, self.store.where(path), self.state.examples)
        checkpoint.prune(self.store)  # checkpoints a dead attempt left half-written, before new ones are made
        if self.d.is_main:
            self.reporter.checkpoints(checkpoint.records(self.store))  # status lists what is on the storage
        return self.resumed_from

    def _report(self, stage: Stage) -> None:
        self.reporter.progress(
            step=self.state.step,
            total_steps=self.schedule.total_steps,
            epoch=self.schedule.epoch(self.state.step),
            examples=self.state.examples,
            stage=stage,
            metrics=self.metrics,
            resumed_from=self.resumed_from,
        )

    def _checkpoint(self) -> None:
        """Save this step (collective), list the kept checkpoints in the status, run the test hooks."""
        assert self.store is not None
        step = self.state.step
        reached = self.resumed_from is None or self.resumed_from < step  # not the step this attempt started at
        checkpoint.save(
            self.store,
            self.state,
            model=self.policy,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            d=self.d,
            metrics=self.metrics,
            die_before_commit=self.resumed_from is None and self.cfg.exit_during_checkpoint == step,
        )
        if self.d.is_main:
            self.reporter.checkpoints(checkpoint.records(self.store))
        if reached and step in self.cfg.hold_at_steps and not self.preempted:
            self._hold(step)

    def _hold(self, step: int) -> None:
        """Test hook ``hold_at_steps``: no more progress (a stalled trainer) until SIGTERM; this step's checkpoint
        is complete, so the process exits 143 at once and the next attempt resumes from it."""
        log.warning("hold_at_steps: holding at step %d until SIGTERM (test hook)", step)
        while not self._sigterm:
            time.sleep(0.2)
        log.warning("SIGTERM while holding at step %d (checkpointed): exiting", step)
        logging.shutdown()
        os._exit(ExitCode.PREEMPTED)

    def _log(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self.d.is_main or (not force and now - self._last_log < self.cfg.minimum_log_interval_secs):
            return
        self._last_log = now
        m = self.metrics
        keys = ["loss", "rewardAccuracy", "tokenAccuracy", "rewardMargin", "gradNorm", "learningRate", "evalLoss"]
        keys += ["evalRewardAccuracy", "evalTokenAccuracy"]
        shown = " ".join(f"{k}={m[k]:.4g}" for k in keys if k in m and math.isfinite(m[k]))
        log.info("step %d/%d examples %d %s", self.state.step, self.schedule.total_steps, self.state.examples, shown)

    def _eval(self, full: bool = False) -> dict[str, float]:
        """Evaluate (all held-out examples when ``full``), then complete a few prompts when sampling is on."""
        self._report("evaluating")
        evaluation = self.evaluate(full)
        self.metrics.update(evaluation)
        if evaluation and self.d.is_main:
            log.info("evaluation at step %d on %d held-out examples", self.state.step, int(evaluation["evalExamples"]))
        self._log(force=True)
        if self.sampler is not None:
            samples = self.sampler(self.policy, self.reference)
            if self.d.is_main and self.observer is not None:
                self.observer.samples(self.state.step, samples)
        return evaluation

    def _record(self, train: dict[str, float] | None, evaluation: dict[str, float], final: bool = False) -> None:
        if self.d.is_main and self.observer is not None:
            self.observer.record(self.state.step, train, evaluation, final)

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
        if self.d.is_main and self.observer is not None:
            self.observer.begin(resumed)
        self.policy.train()
        total = self.schedule.total_steps
        last_eval = self.state.examples
        if resumed is None and self.cfg.do_first_eval:
            self._record(None, self._eval())
        train: dict[str, float] | None = None
        while self.state.step < total:
            train = self.step()
            self.metrics.update(train)
            evaluation: dict[str, float] = {}
            if self.state.examples - last_eval >= self.cfg.eval_every and self.state.step < total:
                evaluation = self._eval()
                last_eval = self.state.examples
            if self.state.step < total:  # the last step is recorded with the evaluation on all held-out examples
                self._record(train, evaluation)
            self._report("training")
            self._log(force=self.state.step == total)
            if self.state.step % self.cfg.checkpoint_every == 0 or self.state.step == total or self.preempted:
                self._checkpoint()
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
        self._record(train, self._eval(full=True), final=True)
        return Result(self.state.step, self.state.examples, dict(self.metrics), resumed)


def precompute_reference_logps(
    reference: nn.Module,
    examples: list[Example],
    d: Dist,
    batch_size: int,
    pad_token_id: int,
    *,
    packing: bool = False,
    chunked_logps: bool = True,
    logits_chunk_tokens: int = 0,
) -> torch.Tensor:
    """Reference log-probs ``(n_examples, 2)`` (chosen, rejected) for every example, on every rank.

    Each rank computes its strided share (all ranks run the same number of forwards, as FSDP needs),
    then one all-gather gives everybody the whole table; the caller can then drop the reference model.
    Pass the loop's ``packing``/``chunked_logps``/``logits_chunk_tokens`` so the table is computed as the
    online reference would be.
    """
    world = d.world_size
    all_indices = list(range(len(examples)))
    rows: list[torch.Tensor] = []
    with torch.no_grad():
        for indices, _ in shard_for_eval(all_indices, d.rank, world, max(1, batch_size // world)):
            host = layout([examples[i] for i in indices], pairs=True, packed=packing, pad_token_id=pad_token_id)
            batch = host.to(d.device)
            logps = sequence_logps(reference, batch, chunked=chunked_logps, chunk_tokens=logits_chunk_tokens).double()
            n = len(indices)
            rows.append(torch.stack([host.index.double().to(d.device), logps[:n], logps[n:]], dim=1))
    mine = torch.cat(rows)
    gathered = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(gathered, mine)
    table = torch.empty(len(examples), 2, dtype=torch.float64)
    for part in (g.cpu() for g in gathered):
        table[part[:, 0].long()] = part[:, 1:]
    return table.float()
