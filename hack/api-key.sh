#!/usr/bin/env bash
# Create an API key for a tenant namespace and print it ONCE (only its sha256 is stored).
#
#   hack/api-key.sh <name> <namespace> [--communities c1,c2] [--api-namespace finetune-system] [--kubeconfig PATH]
#
# Adds {name, sha256, namespace[, communities]} to keys.yaml in Secret finetune-api-keys (replacing an entry with
# the same name, i.e. rotating that key), and prepares <namespace> with hack/tenant-namespace.sh (RoleBinding so
# the API may act there, trainer NetworkPolicy). Without --communities the key's seed-webhook jobs may only name
# the communityId <namespace>; `--communities '*'` allows any (each still under <prefix>/<namespace>/).
# Revoke: remove the entry from the Secret (the API re-reads it within FTAPI_KEYS_REFRESH_SECONDS).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
[[ $# -ge 2 ]] || { sed -n '2,10p' "$0" >&2; exit 2; }
name=$1 tenant_ns=$2; shift 2
api_ns=finetune-system
kubeconfig=()
communities=""
while [[ $# -gt 0 ]]; do
  case $1 in
    --api-namespace) api_ns=$2; shift 2 ;;
    --communities) communities=$2; shift 2 ;;
    --kubeconfig) kubeconfig=(--kubeconfig "$2"); shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
[[ $tenant_ns != "$api_ns" ]] || { echo "a key's namespace may not be $api_ns (the operator's)" >&2; exit 2; }
venv=$(bash "$root/hack/venv.sh")
k() { "$venv/bin/kubectl" "${kubeconfig[@]}" "$@"; }

key="ftk-$("$venv/bin/python" -c 'import secrets; print(secrets.token_urlsafe(32))')"
current=$(k -n "$api_ns" get secret finetune-api-keys -o 'jsonpath={.data.keys\.yaml}' 2>/dev/null | base64 -d || true)
updated=$(KEY="$key" NAME="$name" NS="$tenant_ns" CURRENT="$current" COMMUNITIES="$communities" \
  "$venv/bin/python" - <<'PY'
import hashlib, os, yaml
entries = yaml.safe_load(os.environ["CURRENT"] or "[]") or []
entries = [e for e in entries if isinstance(e, dict) and e.get("name") != os.environ["NAME"]]
entry = {"name": os.environ["NAME"], "sha256": hashlib.sha256(os.environ["KEY"].encode()).hexdigest(),
         "namespace": os.environ["NS"]}
if os.environ["COMMUNITIES"]:
    entry["communities"] = [c for c in os.environ["COMMUNITIES"].split(",") if c]
entries.append(entry)
print(yaml.safe_dump(entries, sort_keys=False), end="")
PY
)
k -n "$api_ns" create secret generic finetune-api-keys --from-literal=keys.yaml="$updated" \
  --dry-run=client -o yaml | k apply --server-side --force-conflicts --field-manager=api-key -f - >/dev/null
bash "$root/hack/tenant-namespace.sh" "$tenant_ns" --api-namespace "$api_ns" "${kubeconfig[@]}"
echo "key for $name (namespace $tenant_ns), shown once:" >&2
echo "$key"
