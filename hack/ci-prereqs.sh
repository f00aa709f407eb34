#!/usr/bin/env bash
# System tools the suite needs beyond the base image (Go and Python come with the machine).
# Idempotent: installs only what is missing.
set -euo pipefail
need=()
command -v openssl >/dev/null || need+=(openssl)
command -v unshare >/dev/null || need+=(util-linux)
command -v curl >/dev/null || need+=(curl)
command -v go >/dev/null || need+=(golang-go)
if ((${#need[@]})); then
  echo ">> installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
fi
python3 -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 needed"'
