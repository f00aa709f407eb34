#!/usr/bin/env bash
# `make demo`: prepare the tools (first run only), then run the demo (python -m ftdev.demo) with the project's venv.
# Needs only python3 (>= 3.11); hack/ci-prereqs.sh installs the system tools that are missing (Go, openssl, …).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
t0=$SECONDS
bash hack/ci-prereqs.sh            # openssl, unshare, curl, go: installs only what is missing
echo "==> Preparing tools: the Python venv (first time: downloads torch, several GB) and the Kubernetes binaries"
echo "    (first time: building Kubernetes from source, ~20 min the first time on 2 cores; cached afterwards)"
venv="$(bash hack/venv.sh)"
bin="$(bash localcluster/build-k8s.sh | tail -n1)"
echo "    venv $venv"
echo "    kubernetes $bin ($((SECONDS - t0))s)"
export PYTHONPATH="$root/crds:$root/operator:$root/api:$root/trainer_image:$root/localcluster${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
exec "$venv/bin/python" -m ftdev.demo "$@"
