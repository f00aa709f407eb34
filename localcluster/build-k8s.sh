#!/usr/bin/env bash
# Builds etcd, kube-apiserver, kube-controller-manager and kube-scheduler from their Go
# modules into a cache directory keyed by version, so a machine builds them once.
#
# k8s.io/kubernetes is not meant to be consumed as a module: its go.mod points every
# staging module (k8s.io/api, k8s.io/apiserver, ...) at v0.0.0 with a local replace, so a
# small wrapper module pins each staging module to the matching published tag.
# Prints the bin directory on its last line.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"
cache="${FTO_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/finetune-operator}"
bin="$cache/k8s-$KUBE_VERSION-etcd-$ETCD_VERSION/bin"
if [[ -x "$bin/kube-apiserver" && -x "$bin/kube-controller-manager" && -x "$bin/kube-scheduler" && -x "$bin/etcd" ]]; then
  echo "$bin"; exit 0
fi
mkdir -p "$bin"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo ">> building Kubernetes $KUBE_VERSION and etcd $ETCD_VERSION from Go modules (first time only; ~15-30 min on 2 cores)" >&2
start=$(date +%s)

# --- etcd: a one-line main around the server module's etcdmain (the root module is not on the proxy as a library)
mkdir -p "$work/etcd"
cat >"$work/etcd/main.go" <<'GO'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
(cd "$work/etcd" && go mod init local/etcd >/dev/null 2>&1 && go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >&2 && go mod tidy >&2 \
  && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$bin/etcd.tmp" . && mv "$bin/etcd.tmp" "$bin/etcd")

# --- kubernetes: wrapper module with replace lines for every staging module
mkdir -p "$work/kube"
cd "$work/kube"
staging=$(curl -fsSL "${GOPROXY_URL:-https://proxy.golang.org}/k8s.io/kubernetes/@v/$KUBE_VERSION.mod" \
  | sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#\1#p' | sort -u)
if [[ -z "$staging" ]]; then
  # Fall back to go's own download when the proxy URL cannot be read directly.
  staging=$(go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | python3 -c 'import json,sys;print(json.load(sys.stdin)["GoMod"])' \
    | xargs sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#\1#p' | sort -u)
fi
{
  echo "module local/kube"
  echo
  echo "go 1.26.0"
  echo
  echo "require k8s.io/kubernetes $KUBE_VERSION"
  echo
  echo "replace ("
  for m in $staging; do echo "	$m => $m $KUBE_STAGING_VERSION"; done
  echo ")"
} >go.mod
cat >tools.go <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
)
GO
go mod tidy -e >&2 || true
go mod download >&2
minor=${KUBE_VERSION#v1.}; minor=${minor%%.*}
ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$KUBE_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean -X k8s.io/client-go/pkg/version.gitVersion=$KUBE_VERSION"
for cmd in kube-apiserver kube-controller-manager kube-scheduler; do
  echo ">> go build $cmd" >&2
  CGO_ENABLED=0 go build -trimpath -tags tools -ldflags "$ldflags" -o "$bin/$cmd.tmp" "k8s.io/kubernetes/cmd/$cmd"
  mv "$bin/$cmd.tmp" "$bin/$cmd"
done
echo ">> built in $(( $(date +%s) - start ))s" >&2
echo "$bin"
