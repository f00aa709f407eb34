"""One training attempt, on every rank: split the rows, fetch the model to start from, load and shard the
policy and reference, tokenize (through the token cache), optionally precompute the reference log-probs,
run the loop (:mod:`fttrainer.loop`, resuming from the latest checkpoint) and export under the checkpoint
directory. :mod:`fttrainer.train` calls it once its input checks passed and the process group is up."""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftcrd.conditions import Reason
from ftcrd.trainer_config import TrainerConfig

from fttrainer.config import InvalidInput
from fttrainer.datasource import DatasetFile

if TYPE_CHECKING:
    from fttrainer.data import Example

log = logging.getLogger("fttrainer")


def train_and_export(
    cfg: TrainerConfig,
    dataset: DatasetFile,
    validation: DatasetFile | None,
    d: Any,
    *,
    reporter: Any,
    recorder: Any,
) -> tuple[Any, int]:
    """Train (resuming from the latest checkpoint) and export; returns (rank 0's KeptExport or None, the
    optimizer steps this attempt ran). ``validation``: the separate validation rows (evaluated on all of them,
    training on every row of ``rows``), or ``[]`` to hold out ``validationFraction`` of ``rows``."""
    import torch

    from fttrainer import adapters, source
    from fttrainer.checkpoint import open_store
    from fttrainer.data import Schedule, split_indices
    from fttrainer.export import export, export_dir, mark_complete
    from fttrainer.loop import LoopConfig, LossSpec, Trainer, precompute_reference_logps
    from fttrainer.metrics_file import copy_into
    from fttrainer.models import load_models
    from fttrainer.tokencache import Joined, load_examples, rows_used
    from fttrainer.tracking import run_params

    hp, method = cfg.hyperparameters, cfg.method
    torch.manual_seed(hp.seed)
    loss = LossSpec(
        name="dpo" if method.type == "cdpo" else method.type,  # conservative DPO: DPO with label smoothing
        beta=method.beta,
        label_smoothing=method.label_smoothing,
        reference_free=method.reference_free,
    )
    reporter.progress(step=0, total_steps=0, epoch=0.0, examples=0, stage="loading", metrics={})
    n_rows = dataset.counts.rows
    if validation is not None:
        train_idx, eval_idx = list(range(n_rows)), list(range(n_rows, n_rows + validation.counts.rows))
    else:
        train_idx, eval_idx = split_indices(n_rows, cfg.dataset.validation_fraction, hp.seed)
    if recorder is not None:
        recorder.start(run_params(cfg, trainRows=len(train_idx), evalRows=len(eval_idx), worldSize=d.world_size))
    try:
        schedule = Schedule.create(
            train_idx,
            batch_size=hp.batch_size,
            gradient_accumulation_steps=hp.gradient_accumulation_steps,
            world_size=d.world_size,
            seed=hp.seed,
            n_epochs=hp.epochs,
            n_examples=hp.examples,
        )
    except ValueError as exc:
        raise InvalidInput(Reason.INVALID_SPEC, str(exc)) from None

    run = cfg.run
    store = open_store(Path(run.checkpoint_dir), d, keep=run.keep_checkpoints, location=run.checkpoint_location)

    def loading(_: str) -> None:  # a long download is progress too (the operator's progress watchdog)
        reporter.progress(step=0, total_steps=0, epoch=0.0, examples=0, stage="loading", metrics={})

    cfg = source.fetch(cfg, store, d, on_file=loading)
    sample = dataset.sample + (validation.sample if validation is not None else [])
    models = load_models(cfg, sample, d, needs_reference=loss.needs_reference)
    loading("models")
    if hp.packing:
        from fttrainer import varlen

        try:  # refused here, before any step, rather than at the first forward
            for model in (models.policy, models.reference):
                if model is not None:
                    varlen.enable(model)
        except ValueError as exc:
            raise InvalidInput(Reason.INVALID_SPEC, f"hyperparameters.packing: {exc}") from None
    tok = models.tokenizer
    # Precomputed reference log-probs cover every row; otherwise only the rows this run reads are tokenized.
    held_out = eval_idx if validation is None else []  # a validation file is tokenized whole, on its own
    used = None if hp.precompute_reference else rows_used(schedule, held_out, n_rows)
    examples: Sequence[Example] = load_examples(dataset, tok, hp, d, used)
    if validation is not None:
        examples = Joined(examples, load_examples(validation, tok, hp, d, None))
    loading("tokenized")
    # with an adapter the reference is the policy itself, its adapter disabled (fttrainer.adapters)
    reference = models.reference
    if reference is None and method.adapter is not None and loss.needs_reference:
        reference = models.policy
    reference_logps = None
    if reference is not None and hp.precompute_reference:
        t0 = time.monotonic()
        with adapters.reference_context(reference, models.policy):
            reference_logps = precompute_reference_logps(
                reference, examples, d, cfg.run.eval_batch_size, tok.pad_token_id, packing=hp.packing
            )
        reference = models.reference = None
        gc.collect()
        log.info("reference log-probs precomputed for %d examples in %.1fs", len(examples), time.monotonic() - t0)
    sampler = None
    sampling = cfg.tracking is not None and cfg.tracking.sample_during_eval
    if sampling and eval_idx:
        from fttrainer.sampling import Sampler

        assert cfg.tracking is not None
        n, max_new = cfg.tracking.samples, cfg.tracking.sample_max_new_tokens
        sampler = Sampler.from_examples(examples, eval_idx, n=n, tokenizer=tok, max_new_tokens=max_new, d=d)
    elif sampling:
        log.warning("sampleDuringEval: no held-out examples to sample from (validationFraction 0, no validation file)")

    trainer = Trainer(
        cfg=LoopConfig(
            lr=hp.learning_rate,
            optimizer=hp.optimizer,
            warmup_steps=hp.warmup_steps,
            max_grad_norm=hp.max_grad_norm,
            eval_every=hp.eval_every,
            eval_batch_size=cfg.run.eval_batch_size,
            do_first_eval=cfg.run.do_first_eval,
            checkpoint_every=hp.checkpoint_every,
            checkpoint_dir=Path(run.checkpoint_dir),
            minimum_log_interval_secs=run.minimum_log_interval_secs,
            exit_after_step=run.exit_after_step,
            n_eval_examples=run.n_eval_examples,
            packing=hp.packing,
            max_tokens_per_micro_batch=hp.max_tokens_per_micro_batch,
            keep_checkpoints=run.keep_checkpoints,
            checkpoint_location=run.checkpoint_location,
            hold_at_steps=tuple(run.hold_at_steps or ()),
            exit_during_checkpoint=run.exit_during_checkpoint,
            seed=hp.seed,
        ),
        store=store,
        loss=loss,
        d=d,
        policy=models.policy,
        reference=reference,
        examples=examples,
        schedule=schedule,
        eval_indices=eval_idx,
        pad_token_id=tok.pad_token_id,
        reporter=reporter,
        reference_logps=reference_logps,
        observer=recorder,
        sampler=sampler,
    )
    log.info(
        "training %s: %d train / %d eval rows, %d steps of %d examples, world size %d",
        method.type,
        len(train_idx),
        len(eval_idx),
        schedule.total_steps,
        schedule.batch_size,
        d.world_size,
    )
    result = trainer.run()
    metrics = {k: float(v) for k, v in result.metrics.items()}
    epoch = schedule.epoch(result.step)
    reporter.progress(
        step=result.step,
        total_steps=schedule.total_steps,
        epoch=epoch,
        examples=result.examples,
        stage="exporting",
        metrics=metrics,
    )
    export(
        models.policy,
        models.hf_config,
        tok,
        export_dir(cfg),
        d=d,
        step=result.step,
        examples=result.examples,
        metrics=metrics,
        adapter=method.adapter,
        base_model=cfg.model.name_or_path,
        revision=cfg.model.revision,
    )
    kept = None
    if d.is_main:
        copy_into(Path(cfg.run.checkpoint_dir), export_dir(cfg))  # the per-step metrics go up with the model
        kept = mark_complete(cfg, step=result.step, examples=result.examples, epoch=epoch, metrics=metrics)
    return kept, result.step - (result.resumed_from or 0)
