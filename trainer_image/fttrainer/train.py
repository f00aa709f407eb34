"""Trainer entry point: DPO / IPO / cDPO / SFT with FSDP2 under torchrun, configured by Hydra.

Two CPU processes on one machine (the tiny preset needs no download)::

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 torchrun --standalone --nnodes 1 --nproc-per-node 2 \\
        -m fttrainer.train model=tiny datasets=[novalto] loss=dpo loss.beta=0.1 exp_name=demo \\
        dataset.path=/tmp/pairs.json batch_size=8 eval_batch_size=8 lr=1e-3 optimizer=AdamW \\
        warmup_steps=0 n_epochs=2 run_dir=/tmp/run checkpoint_dir=/tmp/run/checkpoints

The reference implementation's spelling works too (one process, world size 1)::

    python -m fttrainer.train model=zephyr datasets=[novalto] loss=dpo loss.beta=0.1 exp_name=community_123

Order of work: parse and validate the configuration and the dataset (pure Python, before torch
touches a model: bad input fails in about a second with exit code 2 and a termination message), join
the process group, build tokenizer, policy and reference, shard them, resume from the latest
checkpoint if any, train, export on rank 0, upload, write the termination message.

Exit codes (docs/contract.md): 0 success, 2 invalid input (InvalidDataset / InvalidSpec), 3 upload
failed, anything else a crash (TrainerFailed). Only global rank 0 writes the termination message
and Hydra's ``.hydra/`` output in the run directory; other ranks run Hydra without an output subdir
and with console-only logging, so no per-rank directories appear.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("fttrainer")

CONFIG_DIR = Path(os.environ.get("FTT_CONFIG_DIR", Path(__file__).resolve().parents[2] / "config"))
FORMATS = ("novalto", "jsonl", "openai")
LOSSES = ("dpo", "ipo", "sft")
EXIT_OK, EXIT_INVALID, EXIT_UPLOAD = 0, 2, 3


class InvalidInput(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _world() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


# ---------------------------------------------------------------------------------------------- input


def validate_config(cfg: DictConfig) -> dict[str, Any]:
    """Resolve every interpolation and check the values; raises ``InvalidInput(InvalidSpec)``."""
    try:
        plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except Exception as exc:  # MissingMandatoryValue, InterpolationResolutionError, ...
        raise InvalidInput("InvalidSpec", f"configuration: {exc}".splitlines()[0]) from None
    assert isinstance(plain, dict)
    c: dict[str, Any] = {str(k): v for k, v in plain.items()}
    problems: list[str] = []

    def need(ok: bool, message: str) -> None:
        if not ok:
            problems.append(message)

    datasets = c["datasets"]
    need(
        isinstance(datasets, list) and len(datasets) == 1 and datasets[0] in FORMATS,
        f"datasets must be a one-element list of {list(FORMATS)}, got {datasets!r}",
    )
    loss = c["loss"]
    need(loss["name"] in LOSSES, f"loss.name must be one of {list(LOSSES)}, got {loss['name']!r}")
    need(_num(loss["beta"]) and loss["beta"] > 0, f"loss.beta must be > 0, got {loss['beta']!r}")
    need(
        _num(loss["label_smoothing"]) and 0 <= loss["label_smoothing"] < 0.5,
        f"loss.label_smoothing must be in [0, 0.5), got {loss['label_smoothing']!r}",
    )
    for key in ("batch_size", "eval_batch_size", "gradient_accumulation_steps", "max_length", "max_prompt_length"):
        need(_int(c[key]) and c[key] >= 1, f"{key} must be a positive integer, got {c[key]!r}")
    for key in ("checkpoint_every", "eval_every"):
        need(_int(c[key]) and c[key] >= 1, f"{key} must be a positive integer, got {c[key]!r}")
    need(_int(c["warmup_steps"]) and c["warmup_steps"] >= 0, f"warmup_steps must be >= 0, got {c['warmup_steps']!r}")
    need(c["n_examples"] is None or (_int(c["n_examples"]) and c["n_examples"] >= 1), "n_examples must be >= 1")
    need(_int(c["n_epochs"]) and c["n_epochs"] >= 1, f"n_epochs must be a positive integer, got {c['n_epochs']!r}")
    need(_num(c["lr"]) and 0 < c["lr"] <= 1, f"lr must be in (0, 1], got {c['lr']!r}")
    need(_num(c["max_grad_norm"]) and c["max_grad_norm"] > 0, "max_grad_norm must be > 0")
    need(c["optimizer"] in ("RMSprop", "AdamW", "Adam", "SGD"), f"unknown optimizer {c['optimizer']!r}")
    frac = c["dataset"]["validation_fraction"]
    need(_num(frac) and 0 <= frac < 1, f"dataset.validation_fraction must be in [0, 1), got {frac!r}")
    need(
        c["dataset"]["compression"] in ("auto", "none", "gzip"),
        f"dataset.compression must be auto, none or gzip, got {c['dataset']['compression']!r}",
    )
    if not problems:
        need(c["max_prompt_length"] < c["max_length"], "max_prompt_length must be smaller than max_length")
        per_step = c["gradient_accumulation_steps"] * _world()
        need(
            c["batch_size"] % per_step == 0,
            f"batch_size {c['batch_size']} must be divisible by gradient_accumulation_steps x world size = {per_step}",
        )
    if problems:
        raise InvalidInput("InvalidSpec", "; ".join(problems))
    return c


def _int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _num(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def read_dataset(c: dict[str, Any]) -> list[Any]:
    """Parse and validate the dataset with ftcrd (the API's rules); raises ``InvalidInput(InvalidDataset)``."""
    from ftcrd.dataset import DatasetError, load_rows

    path = Path(c["dataset"]["path"])
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InvalidInput("InvalidDataset", f"dataset file {path} does not exist") from None
    except OSError as exc:
        raise InvalidInput("InvalidDataset", f"dataset file {path} cannot be read: {exc.strerror}") from None
    try:
        return load_rows(data, c["datasets"][0], c["dataset"]["compression"], max_rows=c["dataset"]["max_rows"])
    except DatasetError as exc:
        raise InvalidInput("InvalidDataset", f"dataset {path.name}: {exc}") from None


def fail(reason: str, message: str, code: int) -> int:
    from fttrainer.report import write_termination

    print(f"error: {reason}: {message}", file=sys.stderr, flush=True)
    # Every rank writes it (identical bytes): torchrun SIGTERMs the other workers as soon as the first one
    # exits, so rank 0 may never get the chance, and on a multi-node job any pod may be the one that fails.
    write_termination({"status": "failed", "reason": reason, "message": message})
    return code


# ---------------------------------------------------------------------------------------------- models


@dataclass
class Models:
    tokenizer: Any
    policy: Any
    reference: Any | None
    hf_config: Any


def _dtype(name: str, on_gpu: bool) -> Any:
    from fttrainer.parallel import DTYPES

    return DTYPES[name] if on_gpu else DTYPES["float32"]  # bf16 matmuls on CPU are slow; fp32 there


def resolve_model_path(c: dict[str, Any], rows: list[Any], d: Any) -> str:
    """The directory or hub id to load; for ``tiny``, build it (first process of each node) and wait."""
    from fttrainer import tiny

    name = c["model"]["name_or_path"]
    if name != tiny.TINY_NAME:
        return str(name)
    knobs = c["model"].get("tiny") or {}
    spec = tiny.TinySpec(seed=c["seed"], **knobs)
    texts = [t for r in rows for t in (r.prompt_text(), r.chosen, r.rejected)]
    cache = Path(c["tiny_cache_dir"])
    if d.is_local_main:
        path = tiny.ensure(cache, texts, spec)
    d.barrier()
    if not d.is_local_main:
        path = tiny.ensure(cache, texts, spec)  # already built: just the path
    return str(path)


def load_models(c: dict[str, Any], rows: list[Any], d: Any, needs_reference: bool) -> Models:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from fttrainer.parallel import build_sharded, find_blocks

    hf_logging.disable_progress_bar()
    m = c["model"]
    path = resolve_model_path(c, rows, d)
    on_gpu = d.device.type == "cuda"
    revision = m.get("revision")
    tokenizer = AutoTokenizer.from_pretrained(m.get("tokenizer_name_or_path") or path, revision=revision)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    hf_config = AutoConfig.from_pretrained(path, revision=revision)

    def loader(dtype_name: str) -> tuple[Any, Any]:
        dtype = _dtype(dtype_name, on_gpu)

        def load_full() -> Any:
            model = AutoModelForCausalLM.from_pretrained(path, revision=revision, dtype=dtype)
            if m.get("archive"):
                _load_archive(model, Path(m["archive"]))
            find_blocks(model, m["block_name"])  # fail early, naming the layer classes, if the preset is wrong
            return model

        return load_full, lambda: AutoModelForCausalLM.from_config(hf_config, dtype=dtype)

    t0 = time.monotonic()
    policy = build_sharded(
        *loader(m["policy_dtype"]),
        m["block_name"],
        d,
        mixed_precision=on_gpu and m["fsdp_policy_mp"] == "bfloat16",
        activation_checkpointing=bool(c["activation_checkpointing"]),
    )
    reference = None
    if needs_reference:
        reference = build_sharded(*loader(m["reference_dtype"]), m["block_name"], d, mixed_precision=False, frozen=True)
    log.info("models loaded from %s in %.1fs (reference: %s)", path, time.monotonic() - t0, needs_reference)
    return Models(tokenizer=tokenizer, policy=policy, reference=reference, hf_config=hf_config)


def _load_archive(model: Any, archive: Path) -> None:
    """Start from a previous run's weights: a reference-format policy.pt or an export directory."""
    import torch

    file = archive / "policy.pt" if archive.is_dir() else archive
    state = torch.load(file, map_location="cpu", weights_only=True)["state"]
    model.load_state_dict(state)
    log.info("loaded policy weights from %s", file)


# ---------------------------------------------------------------------------------------------- main


def train(c: dict[str, Any], rows: list[Any]) -> int:
    import torch

    from fttrainer.data import Schedule, split_indices, tokenize_rows
    from fttrainer.export import export
    from fttrainer.loop import LoopConfig, LossSpec, Trainer, precompute_reference_logps
    from fttrainer.parallel import init_distributed
    from fttrainer.report import Reporter, write_termination

    d = init_distributed()
    reporter = Reporter.from_env(d.rank)
    try:
        torch.manual_seed(c["seed"])
        loss = LossSpec(
            name=c["loss"]["name"],
            beta=float(c["loss"]["beta"]),
            label_smoothing=float(c["loss"]["label_smoothing"]),
            reference_free=bool(c["loss"]["reference_free"]),
        )
        reporter.progress(step=0, total_steps=0, epoch=0.0, examples=0, stage="loading", metrics={})
        train_idx, eval_idx = split_indices(len(rows), c["dataset"]["validation_fraction"], c["seed"])
        if c["n_eval_examples"] is not None:
            eval_idx = eval_idx[: c["n_eval_examples"]]
        try:
            schedule = Schedule.create(
                train_idx,
                batch_size=c["batch_size"],
                gradient_accumulation_steps=c["gradient_accumulation_steps"],
                world_size=d.world_size,
                seed=c["seed"],
                n_epochs=c["n_epochs"],
                n_examples=c["n_examples"],
            )
        except ValueError as exc:
            return fail("InvalidSpec", str(exc), EXIT_INVALID)

        models = load_models(c, rows, d, needs_reference=loss.needs_reference)
        tok = models.tokenizer
        examples = tokenize_rows(rows, tok, c["max_length"], c["max_prompt_length"])
        reference_logps = None
        if models.reference is not None and c["precompute_reference"]:
            t0 = time.monotonic()
            reference_logps = precompute_reference_logps(
                models.reference, examples, d, c["eval_batch_size"], tok.pad_token_id
            )
            models.reference = None
            gc.collect()
            log.info("reference log-probs precomputed for %d examples in %.1fs", len(examples), time.monotonic() - t0)

        trainer = Trainer(
            cfg=LoopConfig(
                lr=float(c["lr"]),
                optimizer=c["optimizer"],
                warmup_steps=c["warmup_steps"],
                max_grad_norm=float(c["max_grad_norm"]),
                eval_every=c["eval_every"],
                eval_batch_size=c["eval_batch_size"],
                do_first_eval=c["do_first_eval"],
                checkpoint_every=c["checkpoint_every"],
                checkpoint_dir=Path(c["checkpoint_dir"]),
                minimum_log_interval_secs=float(c["minimum_log_interval_secs"]),
                exit_after_step=c["exit_after_step"],
            ),
            loss=loss,
            d=d,
            policy=models.policy,
            reference=models.reference,
            examples=examples,
            schedule=schedule,
            eval_indices=eval_idx,
            pad_token_id=tok.pad_token_id,
            reporter=reporter,
            reference_logps=reference_logps,
        )
        log.info(
            "training %s: %d train / %d eval rows, %d steps of %d examples, world size %d",
            loss.name,
            len(train_idx),
            len(eval_idx),
            schedule.total_steps,
            schedule.batch_size,
            d.world_size,
        )
        result = trainer.run()
        metrics = {k: float(v) for k, v in result.metrics.items()}

        reporter.progress(
            step=result.step,
            total_steps=schedule.total_steps,
            epoch=schedule.epoch(result.step),
            examples=result.examples,
            stage="exporting",
            metrics=metrics,
        )
        export_dir = export(
            models.policy,
            models.hf_config,
            tok,
            Path(c["run_dir"]) / "export",
            d=d,
            step=result.step,
            examples=result.examples,
            metrics=metrics,
        )
        code = EXIT_OK
        if d.is_main:
            assert export_dir is not None
            code = _upload_and_report(
                c,
                export_dir,
                step=result.step,
                examples=result.examples,
                metrics=metrics,
                schedule=schedule,
                reporter=reporter,
            )
        code = _broadcast_int(code, d)
        return code
    except BaseException as exc:
        if d.is_main and not isinstance(exc, SystemExit | KeyboardInterrupt):
            msg = f"{type(exc).__name__}: {exc}"
            write_termination({"status": "failed", "reason": "TrainerFailed", "message": msg[:2000]})
        raise
    finally:
        reporter.close()


def _upload_and_report(
    c: dict[str, Any],
    export_dir: Path,
    *,
    step: int,
    examples: int,
    metrics: dict[str, float],
    schedule: Any,
    reporter: Any,
) -> int:
    from fttrainer.report import write_termination

    up = c["upload"]
    if up["bucket"] is None:
        artifact: dict[str, Any] = {"uri": export_dir.resolve().as_uri() + "/"}
    else:
        from fttrainer.upload import UploadError, upload_export

        reporter.progress(
            step=step,
            total_steps=schedule.total_steps,
            epoch=schedule.epoch(step),
            examples=examples,
            stage="uploading",
            metrics=metrics,
        )
        try:
            res = upload_export(
                export_dir,
                bucket=up["bucket"],
                prefix=up["prefix"],
                community_id=up["community_id"],
                job=c["exp_name"],
                metrics=metrics,
                config=c,
            )
        except UploadError as exc:
            return fail("UploadFailed", str(exc), EXIT_UPLOAD)
        artifact = {
            "uri": res.uri,
            "sizeBytes": res.size_bytes,
            "sha256": res.sha256,
            "manifestUri": res.manifest_uri,
            "files": res.files,
        }
    write_termination(
        {"status": "succeeded", "artifact": artifact, "metrics": metrics, "steps": step, "examples": examples}
    )
    log.info("done: %s", artifact["uri"])
    return EXIT_OK


def _broadcast_int(value: int, d: Any) -> int:
    import torch
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.long, device=d.device)
    dist.broadcast(t, src=0)
    return int(t.item())


def run(cfg: DictConfig) -> int:
    if _rank() != 0:  # one log stream per job: rank 0's (others still log warnings and errors)
        logging.getLogger("fttrainer").setLevel(logging.WARNING)
    try:
        c = validate_config(cfg)
        rows = read_dataset(c)
    except InvalidInput as exc:
        return fail(exc.reason, str(exc), EXIT_INVALID)
    if _rank() == 0:
        log.info("dataset: %d rows (%s), config valid", len(rows), c["datasets"][0])
    import torch.distributed as dist

    try:
        code = train(c, rows)
    except BaseException:
        if dist.is_initialized():
            dist.destroy_process_group()
        raise
    if dist.is_initialized():
        # Ranks leave together: a rank that tears gloo down while a peer still talks to it aborts
        # ("terminate called without an active exception"), and torchrun reports the job failed.
        dist.barrier()
        dist.destroy_process_group()
    return code


@hydra.main(version_base=None, config_path=str(CONFIG_DIR), config_name="config")
def main(cfg: DictConfig) -> None:
    code = run(cfg)
    if code != EXIT_OK:
        sys.exit(code)


def _rank_overrides(argv: list[str]) -> list[str]:
    """Hydra writes ``.hydra/`` and ``train.log`` on global rank 0 only (no per-rank output dirs)."""
    if _rank() == 0:
        return argv
    return [*argv, "hydra.output_subdir=null", "hydra/job_logging=stdout"]


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format=f"[rank{_rank()}] %(asctime)s %(name)s %(levelname)s %(message)s")
    sys.argv = _rank_overrides(sys.argv)
    try:
        main()
    except SystemExit:
        raise
    except BaseException:
        traceback.print_exc()
        sys.exit(1)
