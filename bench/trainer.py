"""DPO step throughput: our trainer vs TRL's DPOTrainer vs the floor, on the same model and data.

Each side runs in its own process (so peak RSS / peak GPU memory are its own), builds the same
random-initialised Llama (seeded) and the same synthetic preference pairs (a word-level tokenizer, so
``--seq`` is the exact token count of prompt + response), runs ``--warmup`` untimed then ``--steps``
timed optimizer steps of ``--batch`` pairs, and reports examples/s, tokens/s, step time and peak memory:

* ``ours``:  ``fttrainer.loop.Trainer.step`` exactly as ``fttrainer.train`` runs it on one rank (a plain module,
  bf16 autocast on GPU: ``fttrainer.parallel.shard_or_not``)
  (collation, one concatenated chosen+rejected forward, reference forward, DPO loss, clip, AdamW, metrics);
* ``trl``:   ``trl.DPOTrainer`` (``loss_type=sigmoid``, same optimizer/lr/clip) through ``Trainer.train``;
* ``floor``: a bare forward+backward of the plain (unsharded) policy on the same concatenated
  chosen+rejected tokens, a no-grad reference forward, and the AdamW step: what any DPO step must cost.

Examples: ``python bench/trainer.py --quick`` (CPU, ~17M params, seq 256, a few minutes on 2 cores);
``bench/gpu.sh`` (one GPU, ~1.1B params, bf16). The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import random
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SRC = [ROOT / p for p in ("crds", "trainer_image")]

# Llama shapes. cpu20m: ~17M parameters (a 10-30M model that trains on a laptop CPU); 1b: TinyLlama-1.1B.
PRESETS: dict[str, dict[str, int]] = {
    "cpu20m": {"vocab": 8192, "hidden": 384, "inter": 1024, "layers": 6, "heads": 6, "kv": 2},
    "1b": {"vocab": 32000, "hidden": 2048, "inter": 5632, "layers": 22, "heads": 32, "kv": 4},
}
BETA, LR, MAX_GRAD_NORM = 0.1, 1e-6, 10.0
PEAK_BF16_FLOPS = {"cuda": 989e12}  # H100 SXM dense bf16


# ------------------------------------------------------------------------------------------ shared


def words(vocab: int) -> list[str]:
    return [f"t{i}" for i in range(2, vocab)]


def make_tokenizer(vocab: int) -> Any:
    """Word-level: one whitespace-separated word = one token; id 0 = <eos> (also pad), 1 = <unk>."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    table = {"<eos>": 0, "<unk>": 1} | {w: i + 2 for i, w in enumerate(words(vocab))}
    tok = Tokenizer(models.WordLevel(vocab=table, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<eos>", unk_token="<unk>")


def make_rows(n: int, seq: int, vocab: int, seed: int = 0) -> list[dict[str, str]]:
    """Prompt seq/2 words, responses seq/2 - 1 words (+ EOS appended by both trainers) = seq tokens."""
    rng = random.Random(seed)
    w = words(vocab)
    p, r = seq // 2, seq - seq // 2 - 1

    def text(k: int) -> str:
        return " ".join(rng.choice(w) for _ in range(k))

    return [{"prompt": text(p), "chosen": " " + text(r), "rejected": " " + text(r)} for _ in range(n)]


def make_model(preset: str, seed: int, device: str) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    s = PRESETS[preset]
    cfg = LlamaConfig(
        vocab_size=s["vocab"],
        hidden_size=s["hidden"],
        intermediate_size=s["inter"],
        num_hidden_layers=s["layers"],
        num_attention_heads=s["heads"],
        num_key_value_heads=s["kv"],
        max_position_embeddings=4096,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
        tie_word_embeddings=False,
    )
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    with torch.device(device):  # init on the GPU directly: a 1B CPU init costs tens of seconds
        model = LlamaForCausalLM(cfg)
    return model.float()


def n_params(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


def device_name() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


class Clock:
    """Wall and process-CPU time per step. On a shared CPU the CPU time (summed over threads) is the steadier
    measure of work; with --threads 1 it is close to what the step costs on an idle core."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self._w = self._c = 0.0

    def start(self) -> None:
        sync()
        self._w, self._c = time.perf_counter(), time.process_time()

    def stop(self, restart: bool = False) -> None:
        sync()
        w, c = time.perf_counter(), time.process_time()
        self.wall.append(w - self._w)
        self.cpu.append(c - self._c)
        if restart:
            self._w, self._c = w, c


def summary(side: str, clock: Clock, args: argparse.Namespace, params: int, extra: dict | None = None) -> dict:
    import torch

    times = clock.wall
    timed = times[args.warmup :]
    step_s = statistics.median(timed)
    mean_s = sum(timed) / len(timed)
    tokens = 2 * args.batch * args.seq  # chosen + rejected rows of seq tokens
    out: dict[str, Any] = {
        "side": side,
        "device": device_name(),
        "params": params,
        "batch_pairs": args.batch,
        "seq": args.seq,
        "steps": len(timed),
        "step_s": round(step_s, 4),
        "step_s_mean": round(mean_s, 4),
        "step_cpu_s": round(statistics.median(clock.cpu[args.warmup :]), 4),
        "examples_per_cpu_s": round(args.batch / statistics.median(clock.cpu[args.warmup :]), 3),
        "examples_per_s": round(args.batch / mean_s, 3),
        "tokens_per_s": round(tokens / mean_s, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        out["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        out["gpu"] = torch.cuda.get_device_name()
        # policy fwd+bwd (6N) + reference fwd (2N) per token
        out["mfu"] = round(8 * params * tokens / mean_s / PEAK_BF16_FLOPS["cuda"], 4)
    out.update(extra or {})
    return out


# ------------------------------------------------------------------------------------------ sides


def run_ours(args: argparse.Namespace) -> dict:
    import torch
    from ftcrd.dataset import PreferenceRow
    from fttrainer.data import Schedule, tokenize_rows
    from fttrainer.loop import LoopConfig, LossSpec, Trainer
    from fttrainer.parallel import freeze, init_distributed, shard_or_not

    d = init_distributed()
    on_gpu = d.device.type == "cuda"
    n = (args.warmup + args.steps) * args.batch
    rows = [
        PreferenceRow(prompt=r["prompt"], chosen=r["chosen"], rejected=r["rejected"])
        for r in make_rows(n, args.seq, PRESETS[args.preset]["vocab"])
    ]
    tok = make_tokenizer(PRESETS[args.preset]["vocab"])
    examples = tokenize_rows(rows, tok, max_length=args.seq, max_prompt_length=args.seq // 2)
    assert all(len(e.chosen_input_ids) == args.seq for e in examples), "synthetic rows must be exactly --seq tokens"

    dev = str(d.device)
    policy = make_model(args.preset, 0, dev)
    reference = copy.deepcopy(policy)
    if on_gpu:
        reference = reference.to(torch.bfloat16)  # the llama preset's reference_dtype
    params = n_params(policy)
    # as fttrainer.train: FSDP2 over several ranks, a plain module (bf16 autocast on GPU) over one
    shard_or_not(policy, "LlamaDecoderLayer", d, mixed_precision=on_gpu)
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
            ),
            loss=LossSpec(name="dpo", beta=BETA),
            d=d,
            policy=policy,
            reference=reference,
            examples=examples,
            schedule=Schedule.create(
                list(range(n)),
                batch_size=args.batch,
                gradient_accumulation_steps=1,
                world_size=1,
                seed=0,
                n_epochs=1,
                n_examples=None,
            ),
            eval_indices=[],
            pad_token_id=tok.pad_token_id,
            reporter=NoReport(),
        )
        policy.train()
        clock = Clock()
        for _ in range(args.warmup + args.steps):
            clock.start()
            metrics = trainer.step()
            clock.stop()
    return summary("ours", clock, args, params, {"loss": round(metrics["loss"], 5)})


def run_floor(args: argparse.Namespace) -> dict:
    import torch
    from fttrainer.data import collate, tokenize_rows

    dev = device_name()
    on_gpu = dev == "cuda"
    from ftcrd.dataset import PreferenceRow

    rows = [
        PreferenceRow(prompt=r["prompt"], chosen=r["chosen"], rejected=r["rejected"])
        for r in make_rows(args.batch, args.seq, PRESETS[args.preset]["vocab"])
    ]
    tok = make_tokenizer(PRESETS[args.preset]["vocab"])
    batch = collate(tokenize_rows(rows, tok, args.seq, args.seq // 2), tok.pad_token_id)
    ids, mask = batch["input_ids"].to(dev), batch["attention_mask"].to(dev)

    policy = make_model(args.preset, 0, dev)
    reference = copy.deepcopy(policy).eval().requires_grad_(False)
    if on_gpu:
        reference = reference.to(torch.bfloat16)
    params = n_params(policy)
    opt = torch.optim.AdamW(policy.parameters(), lr=LR)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if on_gpu else contextlib.nullcontext()
    clock = Clock()
    for _ in range(args.warmup + args.steps):
        clock.start()
        with autocast:
            loss = policy(input_ids=ids, attention_mask=mask, use_cache=False).logits.float().mean()
        loss.backward()
        with torch.no_grad():
            reference(input_ids=ids, attention_mask=mask, use_cache=False)
        opt.step()
        opt.zero_grad(set_to_none=True)
        clock.stop()
    return summary("floor", clock, args, params)


def run_trl(args: argparse.Namespace) -> dict:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    dev = device_name()
    on_gpu = dev == "cuda"
    n = (args.warmup + args.steps) * args.batch
    tok = make_tokenizer(PRESETS[args.preset]["vocab"])
    policy = make_model(args.preset, 0, dev)
    reference = copy.deepcopy(policy)
    if on_gpu:
        reference = reference.to(torch.bfloat16)
    params = n_params(policy)
    clock = Clock()

    class Timer(TrainerCallback):
        started = False

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if not self.started:
                clock.start()
                self.started = True

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            clock.stop(restart=True)  # step end to step end: data loading included, as in ours

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
            max_steps=args.warmup + args.steps,
            max_length=args.seq + 8,
            bf16=on_gpu,
            use_cpu=not on_gpu,
            gradient_checkpointing=False,
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
            train_dataset=Dataset.from_list(make_rows(n, args.seq, PRESETS[args.preset]["vocab"])),
            processing_class=tok,
            callbacks=[Timer()],
        )
        trainer.train()
    return summary("trl", clock, args, params)


SIDES = {"ours": run_ours, "trl": run_trl, "floor": run_floor}


# ------------------------------------------------------------------------------------------ driver


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(p) for p in SRC] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("ACCELERATE_DISABLE_RICH", "1")
    return env


def run_side(side: str, args: argparse.Namespace, passthrough: list[str]) -> dict:
    cmd = [sys.executable, "-m", "bench.trainer", "--side", side, *passthrough]
    if side == "ours" and args.launcher == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1", *cmd[1:]]
    print(f">> {side}: {' '.join(cmd)}", file=sys.stderr, flush=True)
    t0 = time.monotonic()
    # Own process group: on a timeout, torchrun's worker must die with it (or it keeps the GPU's memory).
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=child_env(),
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


def table(results: dict[str, dict]) -> str:
    cols = ["examples_per_s", "tokens_per_s", "step_s", "step_cpu_s", "examples_per_cpu_s", "peak_rss_mib"]
    cols += ["peak_gpu_mib", "mfu"]
    present = [c for c in cols if any(c in r for r in results.values())]
    if any("error" in r for r in results.values()):
        present.append("error")
    lines = ["| side | " + " | ".join(present) + " |", "|---" * (len(present) + 1) + "|"]
    for side, r in results.items():
        cells = [str(r.get(c, "")) for c in present]
        lines.append(f"| {side} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side", choices=sorted(SIDES), help="run one side in this process (internal)")
    ap.add_argument("--sides", default="floor,ours,trl", help="comma-separated sides to run (driver)")
    ap.add_argument("--preset", choices=sorted(PRESETS), default=None, help="model shape (cpu20m on CPU, 1b on GPU)")
    ap.add_argument("--seq", type=int, default=256, help="tokens per sequence (prompt + response)")
    ap.add_argument("--batch", type=int, default=4, help="preference pairs per optimizer step")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10, help="timed optimizer steps")
    ap.add_argument("--quick", action="store_true", help="CPU smoke settings: --warmup 2 --steps 5")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--launcher", choices=["python", "torchrun"], default="python", help="how to start 'ours'")
    ap.add_argument("--side-timeout", type=float, default=1800)
    args = ap.parse_args()
    if args.quick:
        args.warmup, args.steps = 2, 5
    if args.preset is None:
        import torch

        args.preset = "1b" if torch.cuda.is_available() else "cpu20m"

    if args.side:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        print(json.dumps(SIDES[args.side](args)), flush=True)
        return

    passthrough = ["--preset", args.preset, "--seq", str(args.seq), "--batch", str(args.batch)]
    passthrough += ["--warmup", str(args.warmup), "--steps", str(args.steps)]
    if args.threads:
        passthrough += ["--threads", str(args.threads)]
    results = {side: run_side(side, args, passthrough) for side in args.sides.split(",")}
    print(table(results), flush=True)
    out: dict[str, Any] = dict(results)
    ours, trl, floor = (results.get(k, {}) for k in ("ours", "trl", "floor"))

    # Headline ratios: on CPU from per-step process CPU time (a shared machine's wall clock mostly measures the
    # neighbours; with --threads 1 CPU time is what the step costs on a free core), on GPU from wall time.
    # ratio_vs_trl > 1: ours is faster than TRL; ratio_vs_floor: our step time / the floor's (1.0 = no overhead).
    def ratio(a: dict, b: dict, key: str) -> float | None:
        return round(a[key] / b[key], 3) if key in a and key in b and b[key] else None

    on_cpu = ours.get("device", trl.get("device", floor.get("device"))) == "cpu"
    key = "step_cpu_s" if on_cpu else "step_s"
    out["ratio_basis"] = "median process CPU time per step" if on_cpu else "median wall time per step"
    out["ratio_vs_trl"] = ratio(trl, ours, key)
    out["ratio_vs_floor"] = ratio(ours, floor, key)
    out["ratio_vs_trl_wall"] = ratio(trl, ours, "step_s")
    out["ratio_vs_floor_wall"] = ratio(ours, floor, "step_s")
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
