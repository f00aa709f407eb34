"""DPO step throughput: our trainer vs TRL's DPOTrainer vs the floor, on the same model and data.

Each side runs in its own process (so peak RSS / peak GPU memory are its own), builds the same
random-initialised Llama (seeded) and the same synthetic preference pairs (a word-level tokenizer, so token
counts are exact: ``bench/trainer_setup.py``), runs ``--warmup`` untimed then ``--steps`` timed optimizer
steps of ``--batch`` pairs, and reports examples/s, real tokens/s, step time and peak memory:

* ``ours``:  ``fttrainer.loop.Trainer.step`` exactly as ``fttrainer.train`` runs it on one rank (a plain module,
  bf16 autocast on GPU: ``fttrainer.parallel.shard_or_not``)
  (layout, one chosen+rejected forward, reference forward, DPO loss, clip, AdamW, metrics), padded batches;
* ``ours_packed``: the same with ``packing`` (padding-free batches: ``fttrainer.packing``);
* ``trl``:   ``trl.DPOTrainer`` (``loss_type=sigmoid``, same optimizer/lr/clip) through ``Trainer.train``, on the
  same batches in the same order (sequential sampling over the rows in our step order);
* ``trl_grouped``: TRL with ``train_sampling_strategy=group_by_length`` (its padding-saving setting; TRL 1.16's
  ``padding_free`` falls back to padding), so its batches differ: compare it on real tokens per second;
* ``floor``: a bare forward+backward of the plain (unsharded) policy on the same padded chosen+rejected batches,
  a no-grad reference forward, and the AdamW step: what a padded DPO step must cost.

``--lengths fixed`` (default): every sequence ``--seq`` tokens (prompt and reply half each). ``--lengths skewed``:
log-normal prompt and reply lengths (``trainer_setup.pair_lengths``), where padding costs.

``--lora`` runs LoRA-DPO instead (``fttrainer.adapters``; rank ``--lora-r``, alpha 2r, every linear layer):

* ``ours``: full DPO as above, the comparison on the same model and data;
* ``ours_lora``: ``Trainer.step`` with the policy wrapped by ``adapters.wrap`` and its own reference (the adapter
  disabled), as ``fttrainer.train`` runs a ``method.adapter`` job;
* ``trl_peft``: ``trl.DPOTrainer`` with ``peft_config`` (the same ``LoraConfig``), reference = adapters disabled.

Its JSON adds ``lora_vs_full_memory``, ``lora_vs_full_time``, ``ratio_vs_trl_peft`` and ``memory_vs_trl_peft``
(:func:`lora_ratios`); on CPU every side runs with :data:`LIVE_RSS_ENV` so peak RSS measures live memory.

Examples: ``python bench/trainer.py --quick`` (CPU, ~17M params, seq 256, a few minutes on 2 cores);
``python bench/trainer.py --lora --seq 256 --batch 2 --warmup 1 --steps 5 --threads 1`` (CPU, ~63M params);
``python bench/trainer.py --lengths skewed --seq 512 --batch 8 --threads 1`` (CPU); ``bench/gpu.sh`` (GPU). The last
line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SRC = [ROOT / p for p in ("crds", "trainer_image")]
if str(ROOT) not in sys.path:  # `python bench/trainer.py` as well as `python -m bench.trainer`
    sys.path.insert(0, str(ROOT))

from bench.trainer_report import lora_ratios, ratios, table  # noqa: E402
from bench.trainer_setup import (  # noqa: E402 (after the path set-up above)
    BETA,
    LR,
    MAX_GRAD_NORM,
    PRESETS,
    Clock,
    device_name,
    make_model,
    make_rows,
    make_tokenizer,
    n_params,
    rss_mib,
    step_order,
    summary,
    trainable,
)

# ------------------------------------------------------------------------------------------ sides


def _steps(args: argparse.Namespace) -> int:
    return args.warmup + args.steps


def _examples(args: argparse.Namespace) -> list[Any]:
    from ftcrd.dataset import PreferenceRow
    from fttrainer.data import tokenize_rows

    vocab = PRESETS[args.preset]["vocab"]
    rows = make_rows(_steps(args) * args.batch, args.seq, vocab, args.lengths)
    pairs = [PreferenceRow(prompt=r["prompt"], chosen=r["chosen"], rejected=r["rejected"]) for r in rows]
    examples = tokenize_rows(pairs, make_tokenizer(vocab), max_length=args.seq, max_prompt_length=args.seq // 2)
    want = [len(r["prompt"].split()) + len(r["chosen"].split()) + 1 for r in rows]
    assert [len(e.chosen_input_ids) for e in examples] == want, "synthetic rows must not be truncated"
    return examples


def adapter_spec(args: argparse.Namespace) -> Any:
    """The LoRA configuration both LoRA sides train (ours: ``method.adapter``; TRL: the same ``LoraConfig``)."""
    from ftcrd.types import AdapterSpec

    return AdapterSpec(r=args.lora_r, alpha=2 * args.lora_r, dropout=0.0)


def run_ours(args: argparse.Namespace, packing: bool = False, lora: bool = False) -> dict | None:
    import torch
    from fttrainer import adapters
    from fttrainer.loop import LoopConfig, LossSpec, Trainer
    from fttrainer.parallel import compile_blocks, freeze, init_distributed, shard_or_not

    d = init_distributed()
    on_gpu = d.device.type == "cuda"
    examples = _examples(args)
    baseline = rss_mib()
    policy = make_model(args.preset, 0, str(d.device))
    params = n_params(policy)
    if lora:
        # as fttrainer.models: the frozen base in the preset's reference_dtype (bf16 on GPU), the adapter in float32;
        # the reference is the policy with its adapter disabled (no second copy)
        policy = adapters.wrap(policy.to(torch.bfloat16) if on_gpu else policy, adapter_spec(args))
        reference = policy
    else:
        reference = copy.deepcopy(policy)
        if on_gpu:
            reference = reference.to(torch.bfloat16)  # the llama preset's reference_dtype
    if args.compile:
        compile_blocks(policy, "LlamaDecoderLayer")
        if reference is not policy:
            compile_blocks(reference, "LlamaDecoderLayer")
    # as fttrainer.train: FSDP2 over several ranks, a plain module (bf16 autocast on GPU) over one
    shard_or_not(policy, "LlamaDecoderLayer", d, mixed_precision=on_gpu)
    if reference is not policy:
        shard_or_not(freeze(reference), "LlamaDecoderLayer", d, mixed_precision=False)

    class NoReport:
        def progress(self, **kw: Any) -> None: ...

        def checkpoints(self, *a: Any) -> None: ...

    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(
            cfg=LoopConfig(
                lr=LR,
                optimizer="AdamW",
                warmup_steps=0,
                max_grad_norm=MAX_GRAD_NORM,
                eval_every=10**12,
                eval_batch_size=args.batch,
                do_first_eval=False,
                checkpoint_every=10**9,
                checkpoint_dir=Path(tmp),
                packing=packing,
                chunked_logps=not args.unchunked,
            ),
            loss=LossSpec(name="dpo", beta=BETA),
            d=d,
            policy=policy,
            reference=reference,
            examples=examples,
            schedule=step_order(len(examples), args.batch, d.world_size),
            eval_indices=[],
            pad_token_id=0,
            reporter=NoReport(),
        )
        policy.train()
        clock = Clock()
        seen = 0
        for _ in range(_steps(args)):
            clock.start()
            metrics = trainer.step()
            clock.stop(int(metrics["tokens"]) - seen)
            seen = int(metrics["tokens"])
    if not d.is_main:
        return None  # rank 0 reports (the metrics, tokens included, are global)
    side = "ours_lora" if lora else "ours_packed" if packing else "ours"
    extra = {"loss": round(metrics["loss"], 5), "compile": args.compile, "baseline_rss_mib": baseline}
    return summary(side, clock, args, params, extra, world=d.world_size, trained=trainable(policy))


def run_floor(args: argparse.Namespace) -> dict:
    import torch
    from fttrainer.data import collate

    dev = device_name()
    on_gpu = dev == "cuda"
    examples = _examples(args)
    order = step_order(len(examples), args.batch)
    policy = make_model(args.preset, 0, dev)
    reference = copy.deepcopy(policy).eval().requires_grad_(False)
    if on_gpu:
        reference = reference.to(torch.bfloat16)
    params = n_params(policy)
    opt = torch.optim.AdamW(policy.parameters(), lr=LR)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if on_gpu else contextlib.nullcontext()
    clock = Clock()
    for step in range(_steps(args)):
        batch = collate([examples[i] for i in order.global_batch(step)], 0)  # padded to the step's longest row
        clock.start()
        ids, mask = batch["input_ids"].to(dev), batch["attention_mask"].to(dev)
        with autocast:
            loss = policy(input_ids=ids, attention_mask=mask, use_cache=False).logits.float().mean()
        loss.backward()
        with torch.no_grad():
            reference(input_ids=ids, attention_mask=mask, use_cache=False)
        opt.step()
        opt.zero_grad(set_to_none=True)
        clock.stop(int(batch["attention_mask"].sum()))
    return summary("floor", clock, args, params)


def run_trl(args: argparse.Namespace, grouped: bool = False, lora: bool = False) -> dict:
    import torch
    from datasets import Dataset
    from fttrainer import adapters
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    dev = device_name()
    on_gpu = dev == "cuda"
    n = _steps(args) * args.batch
    rows = make_rows(n, args.seq, PRESETS[args.preset]["vocab"], args.lengths)
    if not grouped:  # our step order, sampled sequentially: the same batches as ours and the floor
        order = step_order(n, args.batch)
        rows = [rows[i] for step in range(_steps(args)) for i in order.global_batch(step)]
    tok = make_tokenizer(PRESETS[args.preset]["vocab"])
    baseline = rss_mib()
    policy = make_model(args.preset, 0, dev)
    params = n_params(policy)
    reference: Any = None  # TRL + peft: its reference is the base, adapters disabled (peft_config below)
    if lora:
        policy = policy.to(torch.bfloat16) if on_gpu else policy  # TRL's advice for LoRA: the base in bf16
    else:
        reference = copy.deepcopy(policy)
        if on_gpu:
            reference = reference.to(torch.bfloat16)
    clock = Clock()
    batch_tokens: list[int] = []  # real tokens of every collated batch, in order (the loader may run one ahead)

    class Timer(TrainerCallback):
        started = False

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if not self.started:
                clock.start()
                self.started = True

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            # step end to step end: data loading included, as in ours
            clock.stop(batch_tokens[len(clock.wall)], restart=True)

    with tempfile.TemporaryDirectory() as tmp:
        cfg = DPOConfig(
            output_dir=tmp,
            beta=BETA,
            loss_type=["sigmoid"],
            learning_rate=LR,
            optim="adamw_torch",
            lr_scheduler_type="constant",
            warmup_steps=0,
            max_grad_norm=MAX_GRAD_NORM,
            per_device_train_batch_size=args.batch,
            gradient_accumulation_steps=1,
            max_steps=_steps(args),
            max_length=args.seq + 8,
            bf16=on_gpu,
            use_cpu=not on_gpu,
            gradient_checkpointing=False,
            train_sampling_strategy="group_by_length" if grouped else "sequential",
            remove_unused_columns=not grouped,  # keep the length column the grouped sampler reads
            report_to=[],
            logging_steps=10**6,
            save_strategy="no",
            disable_tqdm=True,
            dataloader_num_workers=0,
            seed=0,
        )
        trainer = DPOTrainer(
            model=policy,
            ref_model=reference,
            args=cfg,
            train_dataset=Dataset.from_list(rows),
            processing_class=tok,
            callbacks=[Timer()],
            peft_config=adapters.lora_config(adapter_spec(args)) if lora else None,
        )
        if grouped:  # LengthGroupedSampler reads a length column (TRL's tokenised rows have no input_ids)
            data = trainer.train_dataset
            lengths = [
                len(p) + len(c) + len(r)
                for p, c, r in zip(*(data[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")), strict=True)
            ]
            trainer.train_dataset = data.add_column("length", lengths)
        collator = trainer.data_collator

        def counting(features: list[dict]) -> dict:
            batch = collator(features)
            batch_tokens.append(int(batch["attention_mask"].sum()))
            return batch

        trainer.data_collator = counting
        trainer.train()
    side = "trl_peft" if lora else "trl_grouped" if grouped else "trl"
    return summary(side, clock, args, params, {"baseline_rss_mib": baseline}, trained=trainable(trainer.model))


SIDES: dict[str, Any] = {
    "ours": run_ours,
    "ours_packed": lambda args: run_ours(args, packing=True),
    "trl": run_trl,
    "trl_grouped": lambda args: run_trl(args, grouped=True),
    "floor": run_floor,
    "ours_lora": lambda args: run_ours(args, lora=True),
    "trl_peft": lambda args: run_trl(args, lora=True),
}


# ------------------------------------------------------------------------------------------ driver


# glibc keeps freed heap memory for reuse, so a process's peak RSS is its allocator's high-water mark rather than the
# most memory it held at once (on CPU, full and LoRA DPO then peak alike). With these, every allocation of 64 KiB or
# more (every tensor that matters) is its own mapping, returned to the OS when freed: peak RSS follows live memory.
LIVE_RSS_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


def child_env(lora: bool = False) -> dict[str, str]:
    env = dict(os.environ)
    if lora:  # --lora compares peak memory: every side under the same allocator settings
        env = LIVE_RSS_ENV | env
    paths = [str(p) for p in SRC] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("ACCELERATE_DISABLE_RICH", "1")
    return env


def run_side(side: str, args: argparse.Namespace, passthrough: list[str]) -> dict:
    cmd = [sys.executable, "-m", "bench.trainer", "--side", side, *passthrough]
    if side.startswith("ours") and (args.launcher == "torchrun" or args.nproc > 1):
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(args.nproc)]
        cmd = [*torchrun, *cmd[1:]]
    print(f">> {side}: {' '.join(cmd)}", file=sys.stderr, flush=True)
    t0 = time.monotonic()
    # Own process group: on a timeout, torchrun's worker must die with it (or it keeps the GPU's memory).
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=child_env(args.lora),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=args.side_timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        print(f">> {side} timed out after {args.side_timeout:.0f}s:\n{stderr[-2000:]}", file=sys.stderr, flush=True)
        return {"side": side, "error": f"timed out after {args.side_timeout:.0f}s"}
    if proc.returncode != 0:
        tail = (stderr or "")[-3000:]
        print(f">> {side} failed ({proc.returncode}):\n{tail}", file=sys.stderr, flush=True)
        return {"side": side, "error": f"exit {proc.returncode}: {tail.strip().splitlines()[-1:] or ''}"}
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if not lines:
        return {"side": side, "error": "no result line"}
    last = lines[-1]
    result: dict = json.loads(last)
    print(f">> {side}: {time.monotonic() - t0:.0f}s {last}", file=sys.stderr, flush=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side", choices=sorted(SIDES), help="run one side in this process (internal)")
    ap.add_argument("--sides", default=None, help="comma-separated sides to run (default: all for the --lengths)")
    ap.add_argument("--preset", choices=sorted(PRESETS), default=None, help="model shape (cpu20m on CPU, 1b on GPU)")
    ap.add_argument("--lengths", choices=["fixed", "skewed"], default="fixed", help="sequence length distribution")
    ap.add_argument("--seq", type=int, default=256, help="tokens per sequence (fixed) or the longest (skewed)")
    ap.add_argument("--batch", type=int, default=4, help="preference pairs per optimizer step")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10, help="timed optimizer steps")
    ap.add_argument("--quick", action="store_true", help="CPU smoke settings: --warmup 2 --steps 5")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--compile", action="store_true", help="ours: torch.compile the blocks (parallel.compile_blocks)")
    ap.add_argument("--unchunked", action="store_true", help="ours: score through the model's full logits")
    ap.add_argument("--launcher", choices=["python", "torchrun"], default="python", help="how to start ours")
    ap.add_argument(
        "--nproc", type=int, default=1, help="ours: FSDP2 over this many GPUs (torchrun); --batch is global"
    )
    ap.add_argument("--side-timeout", type=float, default=1800)
    ap.add_argument(
        "--lora", action="store_true", help="LoRA-DPO: ours_lora vs full DPO (ours) vs TRL + peft (trl_peft)"
    )
    ap.add_argument("--lora-r", type=int, default=16, help="LoRA rank of --lora (alpha = 2r, all linear layers)")
    args = ap.parse_args()
    if args.quick:
        args.warmup, args.steps = 2, 5
    if args.preset is None:
        import torch

        args.preset = "1b" if torch.cuda.is_available() else "cpu60m" if args.lora else "cpu20m"

    if args.side:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        result = SIDES[args.side](args)
        if result is not None:
            print(json.dumps(result), flush=True)
        return

    sides = args.sides or ("floor,ours,trl" if args.lengths == "fixed" else "floor,ours,ours_packed,trl,trl_grouped")
    if args.lora and not args.sides:
        sides = "ours,ours_lora,trl_peft"
    passthrough = ["--preset", args.preset, "--seq", str(args.seq), "--batch", str(args.batch)]
    passthrough += ["--lora-r", str(args.lora_r)]
    passthrough += ["--warmup", str(args.warmup), "--steps", str(args.steps), "--lengths", args.lengths]
    passthrough += ["--threads", str(args.threads)] if args.threads else []
    passthrough += ["--compile"] if args.compile else []
    passthrough += ["--unchunked"] if args.unchunked else []
    results = {side: run_side(side, args, passthrough) for side in sides.split(",")}
    print(table(results), flush=True)
    headline = lora_ratios(results) if args.lora else ratios(results, args.lengths)
    print(json.dumps(dict(results) | headline), flush=True)


if __name__ == "__main__":
    main()
