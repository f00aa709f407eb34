"""Trainer entry point: DPO / IPO / cDPO / SFT with FSDP2 under torchrun.

The operator hands over one typed configuration file (:class:`ftcrd.trainer_config.TrainerConfig`,
docs/contract.md)::

    torchrun --standalone --nproc-per-node 2 -m fttrainer.train --config /etc/finetune/trainer-config.json

By hand, the reference implementation's Hydra command line works too; :mod:`fttrainer.config` turns it
into the same typed configuration (two CPU processes; the tiny preset needs no download)::

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 torchrun --standalone --nnodes 1 --nproc-per-node 2 \\
        -m fttrainer.train model=tiny datasets=[novalto] loss=dpo loss.beta=0.1 exp_name=demo \\
        dataset.path=/tmp/pairs.json batch_size=8 eval_batch_size=8 lr=1e-3 optimizer=AdamW \\
        warmup_steps=0 n_epochs=2 run_dir=/tmp/run checkpoint_dir=/tmp/run/checkpoints
    python -m fttrainer.train model=zephyr datasets=[novalto] loss=dpo loss.beta=0.1 exp_name=community_123

Order of work: read and check the configuration and the dataset (pure Python, before torch touches a
model: bad input fails in about a second with exit code 2 and a termination message), join the process
group, and then either train (build tokenizer, policy and reference, shard them, resume from the latest
checkpoint, train, export under the checkpoint directory) or, when that directory already holds this
job's complete export (a retry after a failed upload), skip straight to the upload; upload, write the
termination message, leave.

Exit codes: :class:`ftcrd.conditions.ExitCode`. Success is decided by the verified upload: rank 0 writes
the termination message, the first process of every node gets a copy, every rank leaves through
:func:`leave_together` (no process-group teardown to abort in), and ``fttrainer.launch`` exits 0 on a
verified upload whatever the teardown did. Only global rank 0 writes Hydra's ``.hydra/``, the resolved
``trainer-config.json`` and ``train.log`` in the run directory.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, NoReturn

from ftcrd.conditions import ExitCode, Reason
from ftcrd.names import ENV_TEST_HOOKS
from ftcrd.termination import TerminationMessage
from ftcrd.trainer_config import TrainerConfig

from fttrainer.config import (
    CONFIG_DIR,
    RESOLVED_NAME,
    InvalidInput,
    check_world_size,
    config_path,
    from_file,
    from_hydra,
    register_resolver,
    with_preset,
    with_test_hooks,
)

log = logging.getLogger("fttrainer")
LOG_FORMAT = "[rank{rank}] %(asctime)s %(name)s %(levelname)s %(message)s"


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _world() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


# ---------------------------------------------------------------------------------------------- input


def read_dataset(cfg: TrainerConfig, validation: bool = False) -> list[Any]:
    """Parse and validate the training dataset (or the separate ``validation`` one, ``[]`` when there is none)
    with ftcrd (the API's rules); raises ``InvalidInput(InvalidDataset)``."""
    from ftcrd.dataset import DatasetError, load_rows

    ds: Any = cfg.dataset.validation if validation else cfg.dataset
    if ds is None:
        return []
    path = Path(ds.path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InvalidInput(Reason.INVALID_DATASET, f"dataset file {path} does not exist") from None
    except OSError as exc:
        raise InvalidInput(Reason.INVALID_DATASET, f"dataset file {path} cannot be read: {exc.strerror}") from None
    try:
        return load_rows(data, ds.format, ds.compression, max_rows=cfg.dataset.max_rows)
    except DatasetError as exc:
        raise InvalidInput(Reason.INVALID_DATASET, f"dataset {path.name}: {exc}") from None


def fail(reason: str, message: str, code: int) -> int:
    from fttrainer.report import write_termination

    print(f"error: {reason}: {message}", file=sys.stderr, flush=True)
    # Every rank writes it (identical bytes): torchrun SIGTERMs the other workers as soon as the first one
    # exits, so rank 0 may never get the chance, and on a multi-node job any pod may be the one that fails.
    write_termination(TerminationMessage(status="failed", reason=reason, message=message))
    return code


# ---------------------------------------------------------------------------------------------- training


def train_and_export(
    cfg: TrainerConfig, rows: list[Any], validation: list[Any], d: Any, *, reporter: Any, recorder: Any
) -> tuple[Any, int]:
    """Train (resuming from the latest checkpoint) and export; returns (rank 0's KeptExport or None, the
    optimizer steps this attempt ran). ``validation``: the separate validation rows (evaluated on all of them,
    training on every row of ``rows``), or ``[]`` to hold out ``validationFraction`` of ``rows``."""
    import torch

    from fttrainer import adapters, source
    from fttrainer.checkpoint import open_store
    from fttrainer.data import Schedule, split_indices, tokenize_rows
    from fttrainer.export import export, export_dir, mark_complete
    from fttrainer.loop import LoopConfig, LossSpec, Trainer, precompute_reference_logps
    from fttrainer.metrics_file import copy_into
    from fttrainer.models import load_models
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
    if validation:
        train_idx, eval_idx = list(range(len(rows))), list(range(len(rows), len(rows) + len(validation)))
        rows = rows + validation
    else:
        train_idx, eval_idx = split_indices(len(rows), cfg.dataset.validation_fraction, hp.seed)
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
    models = load_models(cfg, rows, d, needs_reference=loss.needs_reference)
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
    examples = tokenize_rows(rows, tok, hp.max_length, hp.max_prompt_length, truncation_side=hp.truncation_side)
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


def train(cfg: TrainerConfig, rows: list[Any], validation: list[Any]) -> int:
    """Everything after the input checks, on every rank; returns the job's exit code (the same on every rank)."""
    from fttrainer.export import export_dir, find_kept_export
    from fttrainer.parallel import broadcast_from_main, init_distributed
    from fttrainer.report import Reporter, write_termination
    from fttrainer.tracking import RunRecorder, planned_artifact_uri, run_params

    d = init_distributed()
    reporter = Reporter.from_env(d.rank)
    recorder = RunRecorder.create(cfg, reporter) if d.is_main else None
    artifact_uri: str | None = None  # for the trackers, once the upload is verified
    try:
        kept = find_kept_export(cfg) if d.is_main else None
        if broadcast_from_main(kept is not None, d):
            attempt_steps = 0
            if d.is_main:
                assert kept is not None
                log.info(
                    "found the complete export of step %d of job %s in %s: skipping training, uploading it",
                    kept.step,
                    cfg.job,
                    cfg.run.checkpoint_dir,
                )
                if recorder is not None:
                    recorder.start(run_params(cfg))
        else:
            try:
                kept, attempt_steps = train_and_export(cfg, rows, validation, d, reporter=reporter, recorder=recorder)
            except InvalidInput as exc:
                return fail(exc.reason, str(exc), ExitCode.INVALID_INPUT)
        outcome: tuple[int, TerminationMessage | None] = (ExitCode.OK, None)
        if d.is_main:
            assert kept is not None
            if recorder is not None and attempt_steps:  # an offline W&B run of this training goes up with it
                recorder.seal(export_dir(cfg), planned_artifact_uri(cfg, export_dir(cfg)))
            outcome = upload_and_report(cfg, kept, attempt_steps, reporter)
        code, message = broadcast_from_main(outcome, d)
        if code == ExitCode.OK and message is not None and message.artifact is not None:
            artifact_uri = message.artifact.uri
        if message is not None and message.verified and d.is_local_main and not d.is_main:
            write_termination(message)  # this node's launcher decides its pod's exit code by it, too
        if cfg.run.crash_rank_after_upload == d.rank and code == ExitCode.OK:
            log.warning("crash_rank_after_upload=%d: aborting after the verified upload (test hook)", d.rank)
            os.abort()
        return int(code)
    except BaseException as exc:
        if d.is_main and not isinstance(exc, SystemExit | KeyboardInterrupt):
            msg = f"{type(exc).__name__}: {exc}"
            write_termination(TerminationMessage(status="failed", reason=Reason.TRAINER_FAILED, message=msg[:2000]))
        raise
    finally:
        if recorder is not None:
            recorder.close(artifact_uri, ok=artifact_uri is not None)
        reporter.close()


def upload_and_report(
    cfg: TrainerConfig, kept: Any, attempt_steps: int, reporter: Any
) -> tuple[int, TerminationMessage | None]:
    """Rank 0: upload the kept export and write the termination message; (exit code, the success message)."""
    from fttrainer.export import export_dir
    from fttrainer.report import camel_metrics, write_termination

    folder = export_dir(cfg)
    if cfg.output is None:
        artifact: dict[str, Any] = {"uri": folder.resolve().as_uri() + "/"}
    else:
        from fttrainer.adapters import contents
        from fttrainer.upload import UploadError, upload_export

        reporter.progress(
            step=kept.step,
            total_steps=kept.step,
            epoch=kept.epoch,
            examples=kept.examples,
            stage="uploading",
            metrics=kept.metrics,
        )
        try:
            res = upload_export(
                folder,
                bucket=cfg.output.bucket,
                prefix=cfg.output.prefix,
                community_id=cfg.output.community_id,
                job=cfg.job,
                metrics=kept.metrics,
                config=cfg.model_dump(mode="json", by_alias=True),
                contents=contents(cfg.method.adapter, cfg.model.name_or_path, cfg.model.revision),
            )
        except UploadError as exc:
            return fail(Reason.UPLOAD_FAILED, str(exc), ExitCode.UPLOAD_FAILED), None
        artifact = res.artifact()
    message = TerminationMessage.model_validate(
        {
            "status": "succeeded",
            "artifact": artifact,
            "metrics": camel_metrics(kept.metrics),
            "steps": kept.step,
            "examples": kept.examples,
            "attempt_steps": attempt_steps,
        }
    )
    write_termination(message)
    log.info("done: %s (%d optimizer steps in this attempt)", artifact["uri"], attempt_steps)
    return ExitCode.OK, message


def leave_together(code: int) -> NoReturn:
    """Every rank exits here, after the last collective, with the job's exit code.

    The ranks meet at a barrier (a peer that already died makes it fail; the code stands) and then
    ``os._exit``: no process-group teardown and no interpreter shutdown run. Tearing gloo down while a peer
    still talked to it aborted the process ("terminate called without an active exception", SIGABRT), and
    an NCCL communicator's destructor can hang on a peer that is gone; the OS frees what they hold."""
    import torch.distributed as dist

    if dist.is_initialized():
        try:
            dist.barrier()
        except Exception as exc:
            log.warning("ranks could not leave together (%s); exiting with code %d anyway", exc, code)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run(cfg: TrainerConfig) -> int:
    """Check the input, then train/upload and leave; returns only when the input is invalid (exit code 2)."""
    if _rank() != 0:  # one log stream per job: rank 0's (others still log warnings and errors)
        logging.getLogger("fttrainer").setLevel(logging.WARNING)
    try:
        cfg = with_test_hooks(with_preset(cfg), os.environ.get(ENV_TEST_HOOKS))
        check_world_size(cfg, _world())
        if cfg.method.adapter is not None:  # (torch is imported only then: other bad input fails in a second)
            from fttrainer.adapters import preflight

            preflight(cfg.method.adapter, _world())  # QLoRA without a GPU: refused before any model is read
        rows = read_dataset(cfg)
        validation = read_dataset(cfg, validation=True)
    except InvalidInput as exc:
        return fail(exc.reason, str(exc), ExitCode.INVALID_INPUT)
    if _rank() == 0:
        log.info("dataset: %d rows (%s), config valid", len(rows), cfg.dataset.format)
        if cfg.dataset.validation is not None:
            log.info("validation dataset: %d rows (%s)", len(validation), cfg.dataset.validation.format)
        run_dir = Path(cfg.run.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / RESOLVED_NAME).write_text(cfg.render() + "\n")
    import torch.distributed as dist

    try:
        code = train(cfg, rows, validation)
    except BaseException:
        if dist.is_initialized():
            dist.destroy_process_group()
        raise
    leave_together(code)


def main_file(path: Path) -> int:
    """``--config <file>``: the operator's way in."""
    try:
        cfg = from_file(path)
    except InvalidInput as exc:
        return fail(exc.reason, str(exc), ExitCode.INVALID_INPUT)
    if _rank() == 0:
        run_dir = Path(cfg.run.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(run_dir / "train.log")
        handler.setFormatter(logging.Formatter(LOG_FORMAT.format(rank=0)))
        logging.getLogger().addHandler(handler)
    return run(cfg)


def main_hydra() -> None:
    """The reference's Hydra command line (``model=… loss=… exp_name=…``)."""
    import hydra
    from omegaconf import DictConfig

    @hydra.main(version_base=None, config_path=str(CONFIG_DIR), config_name="config")
    def main(dcfg: DictConfig) -> None:
        try:
            cfg = from_hydra(dcfg)
        except InvalidInput as exc:
            sys.exit(fail(exc.reason, str(exc), ExitCode.INVALID_INPUT))
        sys.exit(run(cfg))

    main()


def _rank_overrides(argv: list[str]) -> list[str]:
    """Hydra writes ``.hydra/`` and ``train.log`` on global rank 0 only (no per-rank output dirs)."""
    if _rank() == 0:
        return argv
    return [*argv, "hydra.output_subdir=null", "hydra/job_logging=stdout"]


def entrypoint(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT.format(rank=_rank()))
    register_resolver()
    try:
        path = config_path(argv)
    except InvalidInput as exc:
        return fail(exc.reason, str(exc), ExitCode.INVALID_INPUT)
    try:
        if path is not None:
            return main_file(path)
        sys.argv = _rank_overrides([sys.argv[0], *argv])
        main_hydra()
    except SystemExit:
        raise
    except BaseException:
        traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(entrypoint(sys.argv[1:]))
