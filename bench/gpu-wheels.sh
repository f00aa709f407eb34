#!/usr/bin/env bash
# Fetch (here, where PyPI is reachable) the wheels bench/gpu.sh needs on the GPU machine, whose image has
# torch, transformers, accelerate, pandas, pyarrow, xxhash, tokenizers, safetensors but not TRL or datasets.
# Output: .whl/ (gitignored). Carry it with the run: run(carry=[".whl"], command="bash bench/gpu.sh").
# Versions are the ones uv.lock pins (TRL is the test/bench-only comparison); transformers too, so both sides run
# the locked version rather than the image's (whose huggingface-hub, tokenizers and safetensors satisfy it).
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
rm -rf .whl && mkdir -p .whl
"$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 transformers==5.24.0
ls -la .whl
