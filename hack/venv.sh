#!/usr/bin/env bash
# Creates (once) and prints the project's virtual environment.
#
# The venv lives outside the clone, keyed by the hash of uv.lock, so a second clone or a
# CI run on the same machine reuses it and torch (the CUDA wheel, several GB: no CPU index
# is reachable from here) is unpacked once. uv itself is installed from PyPI into the same
# cache, pinned, so a fresh machine needs only python3.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cache="${FTO_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/finetune-operator}"
uv_version=0.13.8
python="${FTO_PYTHON:-$(command -v python3.11 || command -v python3)}"
uv_home="$cache/uv-$uv_version"
if [[ ! -x "$uv_home/bin/uv" ]]; then
  echo ">> installing uv $uv_version into $uv_home" >&2
  "$python" -m pip install --quiet --disable-pip-version-check --target "$uv_home.tmp" "uv==$uv_version" >&2
  rm -rf "$uv_home" && mv "$uv_home.tmp" "$uv_home"
fi
uv="$uv_home/bin/uv"
key=$( (cat "$root/uv.lock"; "$python" -c "import sys; print(sys.version)") | sha256sum | cut -c1-16)
venv="$cache/venv-$key"
if [[ ! -f "$venv/.synced" ]]; then
  echo ">> creating $venv (first time: downloads torch, several GB)" >&2
  rm -rf "$venv"
  UV_PROJECT_ENVIRONMENT="$venv" "$uv" sync --frozen --all-extras --no-install-project --python "$python" \
    --project "$root" >&2
  touch "$venv/.synced"
fi
echo "$venv"
