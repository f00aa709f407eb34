#!/usr/bin/env bash
# Create an API key for a tenant namespace and print it ONCE (only its sha256 is stored).
#
#   hack/api-key.sh <name> <namespace> [--api-namespace finetune-system] [--kubeconfig PATH]
#
# Adds {name, sha256, namespace} to keys.yaml in Secret finetune-api-keys (replacing an entry with the same
# name, i.e. rotating that key), and binds ClusterRole finetune-api-tenant to ServiceAccount finetune-api in
# <namespace> so the API may act there. Revoke: remove the entry from the Secret (the API re-reads it within
# FTAPI_KEYS_REFRESH_SECONDS).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
[[ $# -ge 2 ]] || { sed -n '2,9p' "$0" >&2; exit 2; }
name=$1 tenant_ns=$2; shift 2
api_ns=finetune-system
kubeconfig=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --api-namespace) api_ns=$2; shift 2 ;;
    --kubeconfig) kubeconfig=(--kubeconfig "$2"); shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
venv=$(bash "$root/hack/venv.sh")
k() { "$venv/bin/kubectl" "${kubeconfig[@]}" "$@"; }

key="ftk-$("$venv/bin/python" -c 'import secrets; print(secrets.token_urlsafe(32))')"
current=$(k -n "$api_ns" get secret finetune-api-keys -o 'jsonpath={.data.keys\.yaml}' 2>/dev/null | base64 -d || true)
updated=$(KEY="$key" NAME="$name" NS="$tenant_ns" CURRENT="$current" "$venv/bin/python" - <<'PY'
import hashlib, os, yaml
entries = yaml.safe_load(os.environ["CURRENT"] or "[]") or []
entries = [e for e in entries if isinstance(e, dict) and e.get("name") != os.environ["NAME"]]
entries.append({"name": os.environ["NAME"], "sha256": hashlib.sha256(os.environ["KEY"].encode()).hexdigest(),
                "namespace": os.environ["NS"]})
print(yaml.safe_dump(entries, sort_keys=False), end="")
PY
)
k -n "$api_ns" create secret generic finetune-api-keys --from-literal=keys.yaml="$updated" \
  --dry-run=client -o yaml | k apply --server-side --force-conflicts --field-manager=api-key -f - >/dev/null
k create namespace "$tenant_ns" --dry-run=client -o yaml | k apply -f - >/dev/null
k -n "$tenant_ns" create rolebinding finetune-api-tenant --clusterrole=finetune-api-tenant \
  --serviceaccount="$api_ns:finetune-api" --dry-run=client -o yaml | k apply -f - >/dev/null
echo "key for $name (namespace $tenant_ns), shown once:" >&2
echo "$key"
