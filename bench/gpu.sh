#!/usr/bin/env bash
# DPO throughput on one GPU (prepared for a lent H100; ~2-4 minutes, hard limit 7.5):
# a ~1.1B random-initialised Llama (TinyLlama shape), fp32 master weights + bf16 compute, seq 1024,
# 4 preference pairs per step (8 sequences, 8192 tokens), AdamW:
#   ours  = fttrainer's loop on FSDP2 (MixedPrecisionPolicy bf16), launched by torchrun --nproc-per-node 1
#   trl   = trl.DPOTrainer (bf16 autocast), same model/data/optimizer
#   floor = bare policy fwd+bwd + reference fwd + AdamW step (autocast bf16)
# Prints tokens/s, MFU (8·N·tokens per step: 6N policy fwd+bwd + 2N reference fwd, vs 989 TFLOP/s) and peak
# GPU memory per side; the last line is one JSON object (bench/trainer.py's).
#
# Needs only the repo plus the GPU image's torch/transformers/accelerate. TRL and datasets are not in that
# image: fetch them here first with `bash bench/gpu-wheels.sh` (writes .whl/, gitignored) and carry .whl;
# without them the trl side reports an error and the others still run.
#   device run: carry=[".whl"], command="bash bench/gpu.sh"
set -uo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-python3}"
out="${OUT:-/tmp}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if compgen -G ".whl/*.whl" >/dev/null; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/bench-site .whl/*.whl \
    && export PYTHONPATH="/tmp/bench-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/crds:$PWD/trainer_image${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
"$py" - <<'PY'
import importlib
for m in ("torch", "transformers", "accelerate", "trl", "datasets"):
    try:
        print(m, importlib.import_module(m).__version__)
    except Exception as e:  # noqa: BLE001
        print(m, "MISSING:", type(e).__name__, e)
import torch
print("cuda", torch.version.cuda, "device", torch.cuda.get_device_name() if torch.cuda.is_available() else None)
PY
timeout 450 "$py" bench/trainer.py --preset 1b --seq 1024 --batch 4 --warmup 3 --steps 15 \
  --sides ours,trl,floor --launcher torchrun --side-timeout 140 2>&1 | tee "$out/bench-gpu.log"
exit "${PIPESTATUS[0]}"
