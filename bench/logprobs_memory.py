"""Peak memory of scoring tokens through the LM head: full logits vs ``fttrainer.logprobs``' chunked head.

Each case runs in its own process: hidden states ``[tokens, hidden]`` and a head ``[vocab, hidden]`` (a 1B Llama's
by default: hidden 2048, vocab 32000), the per-token log-probs of random targets, their sum backpropagated to the
hidden states and the head. Reported: the peak memory the computation added on top of its inputs (CPU: peak RSS
growth, ``ru_maxrss``; GPU: ``torch.cuda.max_memory_allocated`` growth, bf16 autocast as the one-rank trainer),
and the full-logits size for scale. The last line is one JSON object.

    python bench/logprobs_memory.py                 # CPU, 2048 and 8192 tokens
    python bench/logprobs_memory.py --tokens 16384  # (on a GPU: bench/gpu.sh runs it)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def measure(tokens: int, hidden: int, vocab: int, chunked: bool) -> dict:
    import torch
    from fttrainer.logprobs import auto_chunk_tokens, token_logps

    cuda = torch.cuda.is_available()
    dev = "cuda" if cuda else "cpu"
    g = torch.Generator(device=dev).manual_seed(0)
    h = torch.randn(tokens, hidden, device=dev, generator=g).requires_grad_()
    w = (torch.randn(vocab, hidden, device=dev, generator=g) * 0.02).requires_grad_()
    targets = torch.randint(0, vocab, (tokens,), device=dev, generator=g)
    chunk = auto_chunk_tokens(vocab) if chunked else None
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with torch.autocast(dev, dtype=torch.bfloat16, enabled=cuda):
        logps = token_logps(h, w, None, targets, chunk)
    logps.sum().backward()
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {
        "tokens": tokens,
        "hidden": hidden,
        "vocab": vocab,
        "chunked": chunked,
        "chunk_tokens": chunk,
        "device": dev,
        "peak_added_mib": round(peak / 2**20, 1),
        "full_logits_fp32_mib": round(tokens * vocab * 4 / 2**20, 1),
        "logp_sum": round(float(logps.sum()), 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, nargs="+", default=[2048, 8192])
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--case", nargs=2, metavar=("TOKENS", "CHUNKED"), help="run one case in this process (internal)")
    args = ap.parse_args()
    if args.case:
        print(json.dumps(measure(int(args.case[0]), args.hidden, args.vocab, args.case[1] == "1")), flush=True)
        return
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "trainer_image"), str(ROOT / "crds"), env.get("PYTHONPATH", "")])
    results = []
    for tokens in args.tokens:
        for chunked in (False, True):
            cmd = [sys.executable, __file__, "--case", str(tokens), "1" if chunked else "0"]
            cmd += ["--hidden", str(args.hidden), "--vocab", str(args.vocab)]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            if out.returncode != 0:
                results.append({"tokens": tokens, "chunked": chunked, "error": out.stderr.strip()[-500:]})
                continue
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(results[-1], file=sys.stderr, flush=True)
    print("| tokens | path | peak added MiB | full fp32 logits MiB |\n|---|---|---|---|")
    for r in results:
        path = f"chunked ({r.get('chunk_tokens')} tokens/chunk)" if r["chunked"] else "full logits"
        print(
            f"| {r['tokens']} | {path} | {r.get('peak_added_mib', r.get('error'))} | {r.get('full_logits_fp32_mib')} |"
        )
    print(json.dumps({"logprobs_memory": results}), flush=True)


if __name__ == "__main__":
    main()
