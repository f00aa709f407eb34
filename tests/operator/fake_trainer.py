"""A stand-in for ``torchrun … -m fttrainer.train --config …`` that speaks the trainer's contract without torch.

Used by bench/operator_bench.py (200 jobs whose pods exit at once) and by operator cluster tests that exercise
lifecycle paths (restart, deletion, suspend) where the real trainer would only cost CPU. The operator runs
it only when started with FTO_ALLOW_ENTRYPOINT_ANNOTATION=true and the FineTuneJob carries the annotation
``finetune.dev/trainer-entrypoint: python /path/to/tests/operator/fake_trainer.py``; it receives the same args as
torchrun would.

Behaviour from the environment (spec.env): FAKE_TRAINER_SLEEP seconds (default 0), FAKE_TRAINER_GATE a file
path to wait for before finishing (a test releases each job when it wants; pods see the host's /tmp), FAKE_TRAINER_EXIT code
(default 0), FAKE_TRAINER_REPORT=1 to merge-patch progress into the FineTuneJob status with the pod's
ServiceAccount token (exercises the namespace's trainer identity ``finetune-trainer`` and the admission
policy that keeps it to its own job), FAKE_TRAINER_NO_REPORT=1 to exit 0 without a termination message (an
unverified upload).

Deliberately standard library only (no ftcrd import): it starts 200 times in the benchmark.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import ssl
import sys
import time
import urllib.request

SA = "/var/run/secrets/kubernetes.io/serviceaccount"


def node_rank(argv: list[str]) -> int:
    if "--node-rank" in argv:
        try:
            return int(argv[argv.index("--node-rank") + 1])
        except (IndexError, ValueError):
            return 0
    return 0


def report(progress: dict[str, object]) -> None:
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    ns, name = os.environ.get("FTJ_NAMESPACE"), os.environ.get("FTJ_NAME")
    if not (host and ns and name and os.path.exists(f"{SA}/token")):
        return
    with open(f"{SA}/token") as f:
        token = f.read().strip()
    url = f"https://{host}:{port}/apis/finetune.dev/v1alpha1/namespaces/{ns}/finetunejobs/{name}/status"
    body = json.dumps({"status": {"progress": progress, "metrics": {"loss": 0.5}}}).encode()
    req = urllib.request.Request(
        url,
        data=body,
        method="PATCH",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/merge-patch+json"},
    )
    ctx = ssl.create_default_context(cafile=f"{SA}/ca.crt")
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
            r.read()
    except Exception as exc:  # reporting never fails training (contract)
        print(f"fake-trainer: progress report failed: {exc}", file=sys.stderr)


def main(argv: list[str]) -> int:
    rank = node_rank(argv)
    sleep = float(os.environ.get("FAKE_TRAINER_SLEEP", "0") or 0)
    code = int(os.environ.get("FAKE_TRAINER_EXIT", "0") or 0)
    print(f"fake-trainer rank {rank} args {' '.join(argv)}", flush=True)
    if os.environ.get("FAKE_TRAINER_REPORT") == "1" and rank == 0:
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        report(
            {"step": 1, "totalSteps": 4, "percent": 25.0, "summary": "25% (1/4)", "stage": "training", "updatedAt": now}
        )
    time.sleep(sleep)
    gate = os.environ.get("FAKE_TRAINER_GATE")
    while gate and not os.path.exists(gate):
        time.sleep(0.2)
    if os.environ.get("FAKE_TRAINER_REPORT") == "1" and rank == 0:
        report({"step": 4, "totalSteps": 4, "percent": 100.0, "summary": "100% (4/4)", "stage": "uploading"})
    if rank != 0 or os.environ.get("FAKE_TRAINER_NO_REPORT") == "1":
        return code
    if code == 0:
        digest = hashlib.sha256(" ".join(argv).encode()).hexdigest()
        msg = {
            "status": "succeeded",
            "artifact": {"uri": "gs://fake/models/x/", "sizeBytes": 1, "sha256": digest, "files": 1},
            "metrics": {"loss": 0.5},
            "steps": 4,
            "examples": 32,
        }
    else:
        reason = "InvalidDataset" if code == 2 else "TrainerFailed"
        msg = {"status": "failed", "reason": reason, "message": f"fake trainer exit {code}"}
    try:
        with open("/dev/termination-log", "w") as f:
            json.dump(msg, f)
    except OSError as exc:
        print(f"fake-trainer: cannot write the termination message: {exc}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
