#!/usr/bin/env bash
# DPO throughput on the lent GPU machine (issue 17 item 4), prepared to fit one device run: within 8 minutes it
# stops starting new sections (each section has its own timeout), logs to $OUT/bench-gpu-*.log.
#
#   1. checks     (~30 s)  packed == padded log-probs on the GPU under bf16 autocast, and which packed attention ran
#                          (flash-attention varlen through torch.nn.attention.varlen, or the per-sequence SDPA loop)
#   2. memory     (~30 s)  bench/logprobs_memory.py: peak GPU memory of full vs chunked LM-head scoring
#   3. skewed     (~3 min) bench/trainer.py --lengths skewed --seq 2048 on one GPU, 1B Llama: floor, ours (padded),
#                          ours_packed, trl (same batches): tokens/s, MFU, ratio_vs_trl, ratio_vs_floor
#   4. fixed      (~1 min) 1B, seq 1024, ours only (MFU on uniform lengths, comparable to earlier runs)
#   5. scaling    (when >1 GPU) ours_packed with FSDP2 over 1, 2, 4, ... GPUs, 4 pairs per GPU (weak scaling):
#                          tokens/s per GPU, MFU, scaling efficiency = tokens/s(n) / (n x tokens/s(1)), peak memory
#   6. large      ours_packed full DPO on the largest preset that fits: 8b over >= 2 GPUs, else 3b on one
#   7. lora       (~2 min) bench/trainer.py --lora, 1B, seq 2048: full DPO (ours) vs LoRA-DPO (ours_lora) vs TRL + peft
#                          (trl_peft): lora_vs_full_memory/time, ratio_vs_trl_peft, memory_vs_trl_peft (peak GPU memory)
#   8. lora8b     (~3 min) LoRA-DPO of the 8B Llama on one GPU (full DPO of it does not fit one): ours_lora, trl_peft
#
# Sections 5-8 run only if time is left (GPU_BENCH_SECTIONS overrides the list, e.g. "skewed scaling", "lora lora8b").
# Needs the repo plus the GPU image's torch/transformers/accelerate. TRL and datasets are not in that image: fetch
# them here first with `bash bench/gpu-wheels.sh` (writes .whl/, gitignored) and carry .whl; without them the trl side
# reports an error and the others still run.
#   device run: carry=[".whl"], command="bash bench/gpu.sh", timeout_s=540
set -uo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-python3}"
out="${OUT:-/tmp}"
budget="${GPU_BENCH_SECONDS:-480}"
sections="${GPU_BENCH_SECTIONS:-checks memory skewed fixed scaling large lora lora8b}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if compgen -G ".whl/*.whl" >/dev/null; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/bench-site .whl/*.whl \
    && export PYTHONPATH="/tmp/bench-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/crds:$PWD/trainer_image:$PWD${PYTHONPATH:+:$PYTHONPATH}"
gpus=$(nvidia-smi --list-gpus 2>/dev/null | wc -l)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
"$py" - <<'PY'
import importlib
for m in ("torch", "transformers", "accelerate", "trl", "datasets"):
    try:
        print(m, importlib.import_module(m).__version__)
    except Exception as e:  # noqa: BLE001
        print(m, "MISSING:", type(e).__name__, e)
import torch
print("cuda", torch.version.cuda, "devices", torch.cuda.device_count(), torch.cuda.get_device_name() if torch.cuda.is_available() else None)
PY

# run NAME SECONDS COMMAND...: NAME's part before "-" is the section; skipped when the section is not selected or the
# time left cannot cover it; the output goes to $out/bench-gpu-NAME.log
run() {
  local name="$1" need="$2"; shift 2
  [[ " $sections " == *" ${name%%-*} "* ]] || return 0
  local left=$((budget - SECONDS))
  if ((left < need)); then echo "== $name: skipped (${left}s left, needs ~${need}s)"; return 0; fi
  echo "== $name ($(date -u +%H:%M:%S), ${left}s left)"
  timeout "$left" "$@" 2>&1 | tee "$out/bench-gpu-$name.log"
}

bench=("$py" bench/trainer.py --side-timeout 170)
run checks 60 "$py" bench/gpu_checks.py packed
run memory 60 "$py" bench/logprobs_memory.py --tokens 8192 32768
run skewed 240 "${bench[@]}" --preset 1b --lengths skewed --seq 2048 --batch 4 --warmup 2 --steps 8 \
  --sides floor,ours,ours_packed,trl --launcher torchrun
run fixed 90 "${bench[@]}" --preset 1b --seq 1024 --batch 4 --warmup 3 --steps 15 --sides ours --launcher torchrun
if ((gpus > 1)); then
  n=2
  while ((n <= gpus)); do
    run "scaling-$n" 120 "${bench[@]}" --preset 1b --lengths skewed --seq 2048 --batch $((4 * n)) --warmup 2 \
      --steps 8 --sides ours_packed --nproc "$n"
    n=$((n * 2))
  done
  run large 200 "${bench[@]}" --preset 8b --lengths skewed --seq 2048 --batch $((2 * gpus)) --warmup 1 --steps 4 \
    --sides ours_packed --nproc "$gpus"
else
  run large 200 "${bench[@]}" --preset 3b --lengths skewed --seq 2048 --batch 2 --warmup 1 --steps 4 \
    --sides ours_packed --launcher torchrun
fi
run lora 150 "${bench[@]}" --lora --preset 1b --seq 2048 --batch 4 --warmup 2 --steps 8
run lora8b 200 "${bench[@]}" --lora --preset 8b --seq 2048 --batch 2 --warmup 1 --steps 4 --sides ours_lora,trl_peft
"$py" bench/gpu_checks.py summary "$out" | tee "$out/bench-gpu-summary.json"
echo "== done in ${SECONDS}s; logs: $out/bench-gpu-*.log"
