#!/usr/bin/env bash
# Prepare a tenant namespace for FineTuneJobs (idempotent):
#
#   hack/tenant-namespace.sh <namespace> [--api-namespace finetune-system] [--kubeconfig PATH]
#
# Creates the namespace, binds ClusterRole finetune-api-tenant to ServiceAccount finetune-api there (the API may
# create jobs in it) and applies the trainer NetworkPolicy of deploy/base/tenant (trainer pods talk only to their
# peers, DNS, the API server and HTTPS outside the cluster). Refuses the API's own namespace: FineTuneJobs never
# run where the operator and the API run (docs/security.md). Credentials stay yours to create, one per tenant,
# labelled finetune.dev/trainer-use=true (deploy/base/tenant/firebase-secret.yaml says how).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
[[ $# -ge 1 ]] || { sed -n '2,10p' "$0" >&2; exit 2; }
tenant_ns=$1; shift
api_ns=finetune-system
kubeconfig=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --api-namespace) api_ns=$2; shift 2 ;;
    --kubeconfig) kubeconfig=(--kubeconfig "$2"); shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
if [[ $tenant_ns == "$api_ns" ]]; then
  echo "refusing $tenant_ns: FineTuneJobs may not run in the operator's and the API's namespace" >&2
  exit 2
fi
venv=$(bash "$root/hack/venv.sh")
k() { "$venv/bin/kubectl" "${kubeconfig[@]}" "$@"; }

k create namespace "$tenant_ns" --dry-run=client -o yaml | k apply -f - >/dev/null
k -n "$tenant_ns" create rolebinding finetune-api-tenant --clusterrole=finetune-api-tenant \
  --serviceaccount="$api_ns:finetune-api" --dry-run=client -o yaml | k apply -f - >/dev/null
NS="$tenant_ns" "$venv/bin/python" - "$root/deploy/base/tenant/networkpolicy.yaml" <<'PY' | k apply -f - >/dev/null
import os, sys, yaml
for doc in yaml.safe_load_all(open(sys.argv[1])):
    if doc:
        doc["metadata"]["namespace"] = os.environ["NS"]
        print("---\n" + yaml.safe_dump(doc, sort_keys=False), end="")
PY
echo "namespace $tenant_ns ready for FineTuneJobs (RoleBinding finetune-api-tenant, NetworkPolicy finetune-trainer)" >&2
