"""`make demo`: a preference fine-tune from webhook to uploaded model, on CPU, on the local control plane.

What runs is what a GPU cluster runs: the `local` overlay of deploy/ (CRD, RBAC-bound ServiceAccounts, the
operator and the API as Deployments whose pods the process node runs with in-cluster config), the API's webhook,
the operator's Indexed Job, the trainer under torchrun with FSDP2 (gloo on CPU), the verified upload to a GCS
API (here gcp-storage-emulator on loopback). Only the model is tiny (random-initialised from a seed) so it trains
in a couple of minutes on two cores.

Steps: cluster -> GCS emulator -> deploy -> webhook -> watch phases -> download -> evaluate -> summary -> cleanup.
The last line is `job=<name> phase=<phase> artifact=<uri>`; the exit status is non-zero if any step failed.

    python -m ftdev.demo                       # what `make demo` runs (after hack/demo.sh prepared the tools)
    python -m ftdev.demo --keep                # leave everything running afterwards (prints how to stop it)
    python -m ftdev.demo --kubeconfig K --api-port 0 --gcs-port 0   # tests: reuse a cluster, free ports

Modules: ``cli`` (arguments), ``flow`` (the steps, in order), ``overlay`` (the local overlay made the demo's),
``watch`` (the FineTuneJob's updates), ``model`` (download, verify, evaluate), ``report`` (output).
"""

from ftdev.cluster import ROOT

DATA = ROOT / "hack" / "demo-data"
NAMESPACE = "finetune-system"
"""The operator's and the API's namespace."""
JOB_NAMESPACE = "finetune-jobs"
"""The default tenant namespace (deploy/base/tenant), where the demo key's jobs run: never the operator's."""
API_DEPLOYMENT = "finetune-api"
OPERATOR_DEPLOYMENT = "finetune-operator"
KEYS_SECRET = "finetune-api-keys"
DEMO_KEY_NAME = "make-demo"
DEFAULTS_CONFIGMAP = "finetune-defaults"
BUCKET = "finetune-demo"
COMMUNITY = "demo"
TERMINAL = frozenset({"Succeeded", "Failed"})


class DemoError(RuntimeError):
    """A step failed; the message says which and why."""
