"""What every side of ``bench/trainer.py`` shares: the model shapes, the word-level tokenizer, the synthetic
preference rows (fixed or length-skewed), the step order, and the clock/summary of a side's steps."""

from __future__ import annotations

import argparse
import math
import random
import resource
import statistics
import time
from typing import Any

# Llama shapes. cpu20m: ~17M parameters (a 10-30M model that trains on a laptop CPU); cpu60m: ~63M; 1b: TinyLlama-1.1B;
# 3b: Llama-3.2-3B (the largest full-DPO model one 80-141 GB GPU holds: fp32 weights, grads, AdamW, bf16 reference);
# 8b: Llama-3-8B (full DPO needs FSDP2 over >= 2 such GPUs).
PRESETS: dict[str, dict[str, int]] = {
    "cpu20m": {"vocab": 8192, "hidden": 384, "inter": 1024, "layers": 6, "heads": 6, "kv": 2},
    # ~63M: the LoRA bench's CPU model (--lora), where the weights, not one small batch's activations, dominate memory
    # as they do for a 7B model on a GPU
    "cpu60m": {"vocab": 16384, "hidden": 768, "inter": 2048, "layers": 6, "heads": 12, "kv": 4},
    "1b": {"vocab": 32000, "hidden": 2048, "inter": 5632, "layers": 22, "heads": 32, "kv": 4},
    "3b": {"vocab": 128256, "hidden": 3072, "inter": 8192, "layers": 28, "heads": 24, "kv": 8},
    "8b": {"vocab": 128256, "hidden": 4096, "inter": 14336, "layers": 32, "heads": 32, "kv": 8},
}
BETA, LR, MAX_GRAD_NORM = 0.1, 1e-6, 10.0
PEAK_BF16_FLOPS = {"cuda": 989e12}  # H100 SXM dense bf16
SKEW_SIGMA = 0.8  # log-normal spread of the skewed lengths


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


def pair_lengths(n: int, seq: int, lengths: str, seed: int = 0) -> list[tuple[int, int, int]]:
    """(prompt, chosen, rejected) token counts, replies counting their EOS.

    ``fixed``: prompt seq/2, replies seq - seq/2 (every sequence exactly ``seq`` tokens).
    ``skewed``: real-shaped, long-tailed: log-normal prompt (median seq/16) and replies (median seq/8, drawn
    independently), each clipped to [seq/32, seq/2], so a sequence is at most ``seq`` tokens. With ``--seq 2048``
    (GPU) that is 64-1024 tokens per part, 128-2048 per sequence; the CPU bench scales it to ``--seq 512``.
    """
    if lengths == "fixed":
        return [(seq // 2, seq - seq // 2, seq - seq // 2)] * n
    rng = random.Random(seed)
    lo, hi = max(2, seq // 32), seq // 2

    def draw(median: float) -> int:
        return int(min(hi, max(lo, round(rng.lognormvariate(math.log(median), SKEW_SIGMA)))))

    return [(draw(seq / 16), draw(seq / 8), draw(seq / 8)) for _ in range(n)]


def make_rows(n: int, seq: int, vocab: int, lengths: str = "fixed", seed: int = 0) -> list[dict[str, str]]:
    """Preference rows of exactly :func:`pair_lengths` tokens (both trainers append EOS to the replies)."""
    rng = random.Random(seed)
    w = words(vocab)

    def text(k: int) -> str:
        return " ".join(rng.choice(w) for _ in range(k))

    return [
        {"prompt": text(p), "chosen": " " + text(c - 1), "rejected": " " + text(r - 1)}
        for p, c, r in pair_lengths(n, seq, lengths, seed)
    ]


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


def step_order(n: int, batch: int, world: int = 1) -> Any:
    """The data order of ``fttrainer`` (seed 0): every side that can trains on the same batches, step by step."""
    from fttrainer.data import Schedule

    return Schedule.create(
        list(range(n)),
        batch_size=batch,
        gradient_accumulation_steps=1,
        world_size=world,
        seed=0,
        n_epochs=1,
        n_examples=None,
    )


def n_params(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


def trainable(model: Any) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def rss_mib() -> float:
    """This process's peak RSS so far (MiB): taken before the model is built, the side's baseline (interpreter,
    libraries, data) that :func:`summary` subtracts for ``train_peak_rss_mib``."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def device_name() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


class Clock:
    """Wall and process-CPU time per step, and the real (unpadded) tokens of each step. On a shared CPU the CPU
    time (summed over threads) is the steadier measure of work; with --threads 1 it is close to what the step
    costs on an idle core."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self.tokens: list[int] = []
        self._w = self._c = 0.0

    def start(self) -> None:
        sync()
        self._w, self._c = time.perf_counter(), time.process_time()

    def stop(self, tokens: int, restart: bool = False) -> None:
        sync()
        w, c = time.perf_counter(), time.process_time()
        self.wall.append(w - self._w)
        self.cpu.append(c - self._c)
        self.tokens.append(tokens)
        if restart:
            self._w, self._c = w, c


def summary(
    side: str,
    clock: Clock,
    args: argparse.Namespace,
    params: int,
    extra: dict | None = None,
    *,
    world: int = 1,
    trained: int | None = None,
) -> dict:
    """Per-side result. Fixed lengths: median step times (every step is the same work). Skewed lengths: totals over
    the timed steps (steps differ by design), so throughput = timed examples or real tokens / timed seconds.
    ``world`` GPUs share the steps (FSDP2): per-GPU throughput and MFU divide by it."""
    import torch

    w = args.warmup
    wall, cpu, tokens = clock.wall[w:], clock.cpu[w:], clock.tokens[w:]
    examples = args.batch * len(wall)
    out: dict[str, Any] = {
        "side": side,
        "device": device_name(),
        "params": params,
        "lengths": args.lengths,
        "batch_pairs": args.batch,
        "seq": args.seq,
        "steps": len(wall),
        "step_s": round(statistics.median(wall), 4),
        "step_s_mean": round(sum(wall) / len(wall), 4),
        "step_cpu_s": round(statistics.median(cpu), 4),
        "step_cpu_s_mean": round(sum(cpu) / len(cpu), 4),
        "examples_per_s": round(examples / sum(wall), 3),
        "examples_per_cpu_s": round(examples / sum(cpu), 3),
        "tokens_per_s": round(sum(tokens) / sum(wall), 1),
        "tokens_per_cpu_s": round(sum(tokens) / sum(cpu), 1),
        "real_tokens": sum(tokens),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "threads": torch.get_num_threads(),
        "world_size": world,
    }
    if torch.cuda.is_available():
        out["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        out["gpu"] = torch.cuda.get_device_name()
        out["tokens_per_s_per_gpu"] = round(sum(tokens) / sum(wall) / world, 1)
        # policy fwd+bwd (6N) + reference fwd (2N) per real token; an adapter's backward skips the frozen weights'
        # gradients (4N + 2N)
        per_token = 6 if trained is not None and trained < params / 2 else 8
        out["mfu"] = round(per_token * params * sum(tokens) / sum(wall) / world / PEAK_BF16_FLOPS["cuda"], 4)
    out.update(extra or {})
    if "baseline_rss_mib" in out:
        out["train_peak_rss_mib"] = round(out["peak_rss_mib"] - out["baseline_rss_mib"], 1)
    if trained is not None:
        out["trainable_params"] = trained
    return out
