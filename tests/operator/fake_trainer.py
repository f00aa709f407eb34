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
policy that keeps it to its own job), FAKE_TRAINER_STEPS to report every step of that many, spread over the sleep (unset: step 1 of 4 at the start
and the last at the end),
FAKE_TRAINER_NO_REPORT=1 to exit 0 without a termination message (an unverified upload), FAKE_TRAINER_UPLOAD=1 to
upload a small deterministic export with the trainer's own upload code (``fttrainer.upload``: every file verified,
``manifest.json`` last) to the bucket of the job's trainer config (``STORAGE_EMULATOR_HOST`` from spec.env) and
report that artifact, as the real trainer does (bench/chaos.py checks it against the bucket),
FAKE_TRAINER_TERM_SECONDS to take that long to exit on SIGTERM (as the real trainer writing its checkpoint).

Standard library only unless FAKE_TRAINER_UPLOAD is set: it starts 200 times in the operator benchmark.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import signal
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


def progress(step: int, steps: int, stage: str) -> dict[str, object]:
    percent = round(100.0 * step / steps, 1)
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "step": step,
        "totalSteps": steps,
        "percent": percent,
        "summary": f"{percent:g}% ({step}/{steps})",
        "stage": stage,
        "updatedAt": now,
    }


def upload(argv: list[str]) -> dict[str, object]:
    """A small export, the same bytes for every attempt of a job, uploaded and verified by fttrainer.upload into
    the job's output location; returns the artifact as the termination message carries it."""
    import tempfile

    from fttrainer.upload import upload_export

    with open(argv[argv.index("--config") + 1]) as f:
        config = json.load(f)
    out, job = config["output"], config["job"]
    with tempfile.TemporaryDirectory(prefix="fake-export-") as tmp:
        seed = hashlib.sha256(f"{os.environ.get('FTJ_NAMESPACE')}/{job}".encode()).digest()
        with open(os.path.join(tmp, "model.safetensors"), "wb") as f:
            f.write(seed * 2048)  # 64 KiB
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump({"fake": True, "job": job}, f)
        result = upload_export(
            tmp,
            bucket=out["bucket"],
            prefix=out.get("prefix") or "",
            community_id=out.get("communityId"),
            job=job,
            metrics={"loss": 0.5},
            config={"fake": True},
            retries=3,
            backoff=0.5,
        )
    return result.artifact()


def slow_to_terminate(seconds: float) -> None:
    def on_sigterm(signum: int, frame: object) -> None:
        print(f"fake-trainer: SIGTERM, exiting in {seconds:g}s", flush=True)
        time.sleep(seconds)
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, on_sigterm)


def main(argv: list[str]) -> int:
    rank = node_rank(argv)
    if term := float(os.environ.get("FAKE_TRAINER_TERM_SECONDS", "0") or 0):
        slow_to_terminate(term)
    sleep = float(os.environ.get("FAKE_TRAINER_SLEEP", "0") or 0)
    every_step = bool(os.environ.get("FAKE_TRAINER_STEPS"))
    steps = max(1, int(os.environ.get("FAKE_TRAINER_STEPS") or 4))
    code = int(os.environ.get("FAKE_TRAINER_EXIT", "0") or 0)
    reporting = os.environ.get("FAKE_TRAINER_REPORT") == "1" and rank == 0
    print(f"fake-trainer rank {rank} args {' '.join(argv)}", flush=True)
    if reporting:
        report(progress(1, steps, "training"))
    for step in range(2, steps + 1):
        time.sleep(sleep / steps)
        if reporting and every_step and step < steps:
            report(progress(step, steps, "training"))
    time.sleep(sleep / steps)
    gate = os.environ.get("FAKE_TRAINER_GATE")
    while gate and not os.path.exists(gate):
        time.sleep(0.2)
    if reporting:
        report(progress(steps, steps, "uploading"))
    if rank != 0 or os.environ.get("FAKE_TRAINER_NO_REPORT") == "1":
        return code
    if code == 0:
        if os.environ.get("FAKE_TRAINER_UPLOAD") == "1":
            try:
                artifact = upload(argv)
            except Exception as exc:  # the contract's upload failure: exit 3 with its reason
                print(f"fake-trainer: upload failed: {exc}", file=sys.stderr)
                code, artifact = 3, {}
        else:
            digest = hashlib.sha256(" ".join(argv).encode()).hexdigest()
            artifact = {"uri": "gs://fake/models/x/", "sizeBytes": 1, "sha256": digest, "files": 1}
        msg: dict[str, object] = {
            "status": "succeeded",
            "artifact": artifact,
            "metrics": {"loss": 0.5},
            "steps": steps,
            "examples": 8 * steps,
        }
        if code == 3:
            msg = {"status": "failed", "reason": "UploadFailed", "message": "fake trainer: the upload failed"}
    if code not in (0, 3):
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
