#!/usr/bin/env bash
# Builds a pinned Go tool from its module into a cache directory keyed by version, once per machine:
#
#   localcluster/build-tool.sh kueue   Kueue's controller manager (sigs.k8s.io/kueue/cmd/kueue, KUEUE_VERSION)
#                                      plus the release's config/ (CRDs, webhook configuration, RBAC) next to it
#   localcluster/build-tool.sh helm    the helm CLI (helm.sh/helm/v3/cmd/helm, HELM_VERSION)
#
# Prints the tool's directory on its last line (`<dir>/bin/<tool>`; for kueue also `<dir>/config/`).
# Versions live in versions.env. `go install module/cmd@version` builds the module with its own go.mod and
# go.sum (neither pins a replace directive), so the binary is what the release's Makefile builds.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"
cache="${FTO_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/finetune-operator}"

case "${1:-}" in
  kueue)
    version=$KUEUE_VERSION module=sigs.k8s.io/kueue pkg=sigs.k8s.io/kueue/cmd/kueue
    ldflags="-X sigs.k8s.io/kueue/pkg/version.GitVersion=$version" ;;
  helm)
    version=$HELM_VERSION module=helm.sh/helm/v3 pkg=helm.sh/helm/v3/cmd/helm
    # As helm's Makefile: the Kubernetes version `helm template`/`lint` assume is the client-go it is built with
    # (without it, v1.20, and a chart's kubeVersion constraint fails offline).
    gomod="$(go mod download -json "$module@$version" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')"
    k8s_minor=$(sed -n 's#^\s*k8s.io/client-go v0\.\([0-9]*\)\..*#\1#p' "$gomod" | head -n1)
    ldflags="-X helm.sh/helm/v3/internal/version.version=$version"
    for pkgvar in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
      ldflags+=" -X $pkgvar.k8sVersionMajor=1 -X $pkgvar.k8sVersionMinor=$k8s_minor"
    done ;;
  *) echo "usage: $0 kueue|helm" >&2; exit 2 ;;
esac
tool=$1
dir="$cache/$tool-$version"
if [[ -x "$dir/bin/$tool" && ( "$tool" != kueue || -f "$dir/config/.done" ) ]]; then
  echo "$dir"; exit 0
fi
mkdir -p "$dir/bin"
echo ">> building $tool $version from $module (first time only)" >&2
start=$(date +%s)
tmp="$dir/bin/.$tool.tmp.$$"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp"
CGO_ENABLED=0 GOBIN="$tmp" go install -trimpath -ldflags "-s -w $ldflags" "$pkg@$version"
mv "$tmp/$(basename "$pkg")" "$dir/bin/$tool"
if [[ "$tool" == kueue ]]; then
  # The release's manifests come from the same module (no network besides the Go proxy).
  src="$(go mod download -json "$module@$version" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')"
  rm -rf "$dir/config"
  cp -r "$src/config" "$dir/config"
  chmod -R u+w "$dir/config"
  touch "$dir/config/.done"
fi
echo ">> built $tool $version in $(( $(date +%s) - start ))s" >&2
echo "$dir"
