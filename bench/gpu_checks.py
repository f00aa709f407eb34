"""Helpers of ``bench/gpu.sh``.

``python bench/gpu_checks.py packed``: packed and padded log-probs and head gradients agree on the GPU under bf16
autocast (a tiny random Llama, rows of very different lengths), and which packed attention ran (flash-attention
varlen through ``torch.nn.attention.varlen``, or the per-sequence SDPA loop it falls back to).

``python bench/gpu_checks.py summary DIR``: one JSON line from the ``bench-gpu-*.log`` files in DIR: each section's
last JSON object, and the multi-GPU scaling efficiency, tokens/s per GPU with n GPUs over tokens/s with one
(``ours_packed``, 1B, length-skewed, 4 pairs per GPU).
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def packed() -> None:
    import torch

    sys.path.insert(0, str(ROOT / "tests" / "trainer"))
    from fttrainer import varlen
    from fttrainer.logprobs import sequence_logps
    from fttrainer.packing import layout
    from packing_cases import PAD, skewed_examples, tiny_llama

    dev = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: a dry run of the script
    model = tiny_llama(seed=1, dtype=torch.float32).to(dev)
    examples = skewed_examples(8, seed=2)
    out = {}
    for is_packed in (False, True):
        m = copy.deepcopy(model)
        batch = layout(examples, pairs=True, packed=is_packed, pad_token_id=PAD).to(torch.device(dev))
        with torch.autocast(dev, dtype=torch.bfloat16):
            logps = sequence_logps(m, batch)
        logps.sum().backward()
        out[is_packed] = (logps.detach().float().cpu(), m.lm_head.weight.grad.float().cpu())
    rel = ((out[True][0] - out[False][0]).abs().max() / out[False][0].abs().max()).item()
    grad_rel = ((out[True][1] - out[False][1]).abs().max() / out[False][1].abs().max()).item()
    if dev == "cpu":
        path = "per-sequence SDPA loop (CPU)"
    else:
        path = "per-sequence SDPA loop (varlen refused)" if "varlen" in varlen._warned else "flash-attention varlen"
    result = {"packed_vs_padded_logp_rel": rel, "packed_vs_padded_head_grad_rel": grad_rel, "packed_attention": path}
    print(json.dumps(result), flush=True)
    if rel > 2e-2 or grad_rel > 5e-2:
        sys.exit("packed and padded disagree on the GPU")


def summary(logs: Path) -> None:
    sections: dict[str, object] = {}
    for log in sorted(logs.glob("bench-gpu-*.log")):
        lines = [line for line in log.read_text().splitlines() if line.startswith("{")]
        if lines:
            sections[log.stem.removeprefix("bench-gpu-")] = json.loads(lines[-1])
    per_gpu: dict[int, float] = {}
    for result in sections.values():
        side = result.get("ours_packed") if isinstance(result, dict) else None
        if isinstance(side, dict) and side.get("lengths") == "skewed" and side.get("params", 0) < 2e9:
            per_gpu[int(side.get("world_size", 1))] = float(side.get("tokens_per_s_per_gpu", 0.0))
    if per_gpu.get(1):
        sections["scaling_efficiency"] = {str(n): round(v / per_gpu[1], 3) for n, v in sorted(per_gpu.items())}
    print(json.dumps(sections), flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["packed"]:
        packed()
    elif sys.argv[1:2] == ["summary"] and len(sys.argv) == 3:
        summary(Path(sys.argv[2]))
    else:
        sys.exit("usage: gpu_checks.py packed | summary DIR")
