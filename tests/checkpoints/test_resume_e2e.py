"""Durable checkpoints end to end: kubectl → operator → Indexed Job → process node → torchrun → the trainer, with
``spec.checkpoint.claimName`` on a real PersistentVolumeClaim (hostPath PV), uploads to the GCS emulator.

* a trainer pod deleted mid-training (after a checkpoint) is replaced by one that resumes from that checkpoint;
  pausing the job and resuming it continues from the next checkpoint, not from step 0; the final weights equal an
  uninterrupted run of the same configuration (1e-6, CPU);
* an upload that fails in a real pod is retried by the next pod from the export kept on the claim: one training
  run, whatever the number of upload attempts.

The test hook ``holdAtSteps`` (``FTJ_TEST_HOOKS``) stops the trainer right after given checkpoints until SIGTERM,
so the test acts at a known step instead of racing a fast CPU trainer.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from ftapi import mapping
from ftcrd.conditions import ExitCode
from ftdev.gcs import GcsEmulator

from tests.support.checkpoints import (
    all_trainer_logs,
    artifact_weights,
    checkpoint_claim,
    checkpoint_steps,
    checkpointed_ftj,
    dataset_rows,
    held_at,
    hooks,
    max_difference,
    reference_weights,
    release_claims,
    resumed_steps,
    trainer_config,
)
from tests.support.cluster import Cluster, wait_for
from tests.support.ftj import children, submit, wait_phase
from tests.support.trainer import Trainer

pytestmark = pytest.mark.cluster

STEPS = 6  # 48 examples, batch 8


@pytest.fixture
def claim(cluster: Cluster, namespace: str, tmp_path: Path):
    name = checkpoint_claim(cluster, namespace, tmp_path / "claim")
    yield name
    release_claims(cluster)


def job(name: str, gcs: GcsEmulator, claim: str, env: dict[str, str] | None = None, **spec: object) -> dict:
    return checkpointed_ftj(name, gcs, claim, steps=STEPS, env=env, **{"runPolicy.backoffLimit": 2, **spec})


def running_pod(cluster: Cluster, namespace: str, name: str) -> str:
    pods = [p for p in children(cluster, namespace, name)["pods"] if p["status"].get("phase") == "Running"]
    assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
    return str(pods[0]["metadata"]["name"])


def test_replaced_and_paused_trainer_resumes_from_its_checkpoints(  # noqa: PLR0917
    running_operator, cluster: Cluster, namespace: str, gcs: GcsEmulator, claim: str, trainer_session: Trainer
):
    name = "resume"
    submit(cluster, namespace, job(name, gcs, claim, {"FTJ_TEST_HOOKS": hooks(holdAtSteps=[2, 4])}))

    # 1. kill the trainer pod after the checkpoint of step 2: its replacement resumes from step 2
    first = held_at(cluster, namespace, name, 2, None)
    uid = first["metadata"]["uid"]
    assert first["status"]["checkpoints"][-1]["path"] == f"pvc://{claim}/{name}-{uid}/step-2"
    cluster.kubectl("delete", "pod", running_pod(cluster, namespace, name), "-n", namespace, "--wait=false")
    held_at(cluster, namespace, name, 4, 2)  # the replacement resumed from 2 and trained on to 4

    # 2. pause: the pod goes (SIGTERM), nothing runs; resume: a new pod continues from step 4
    cluster.kubectl(
        "patch", "ftj", name, "-n", namespace, "--type=merge", "-p", '{"spec":{"runPolicy":{"suspend":true}}}'
    )
    paused = wait_phase(cluster, namespace, name, "Suspended", 120)
    wait_for(lambda: not children(cluster, namespace, name)["pods"], 120, 0.5, "the paused job's pods gone")
    assert max(checkpoint_steps(paused)) == 4
    cluster.kubectl(
        "patch", "ftj", name, "-n", namespace, "--type=merge", "-p", '{"spec":{"runPolicy":{"suspend":false}}}'
    )
    done = wait_phase(cluster, namespace, name, "Succeeded", 600)
    status = done["status"]

    logs = all_trainer_logs(cluster, namespace)
    assert sorted(resumed_steps(logs)) == [2, 4], logs[-4000:]  # never from step 0 again
    assert status["progress"]["resumedFrom"] == 4 and status["progress"]["step"] == STEPS
    # only the newest spec.checkpoint.keep (2) are listed, and they are what the claim holds
    assert checkpoint_steps(done) == [4, 6]
    held = sorted(p.name for p in (Path(claim_dir(cluster, namespace, claim)) / f"{name}-{uid}").glob("step-*"))
    assert held == ["step-4", "step-6"]
    # the OpenAI checkpoints endpoint names them
    listed = mapping.to_checkpoints(done)
    assert [c["step_number"] for c in listed] == [6, 4]
    assert listed[0]["fine_tuned_model_checkpoint"] == f"pvc://{claim}/{name}-{uid}/step-6"

    expected = reference_weights(trainer_session, trainer_config(cluster, namespace, name), dataset_rows())
    assert max_difference(artifact_weights(gcs, status), expected) <= 1e-6


def claim_dir(cluster: Cluster, namespace: str, claim: str) -> str:
    pv = cluster.get_json("pvc", claim, namespace=namespace)["spec"]["volumeName"]
    return str(cluster.get_json("pv", pv)["spec"]["hostPath"]["path"])


def trained_steps(log: str) -> list[int]:
    """Steps the loop logged (at most one line a second: a subset of what it ran)."""
    return sorted({int(m) for m in re.findall(r"\bstep (\d+)/\d+ examples", log)})


def test_failed_upload_is_retried_by_the_next_pod_without_training_again(
    running_operator, cluster: Cluster, namespace: str, gcs: GcsEmulator, claim: str
):
    name = "upload-retry"
    bucket = f"late-{namespace}"[:63]  # does not exist yet: every upload fails until the test creates it
    env = {"FTJ_UPLOAD_RETRIES": "0", "FTJ_UPLOAD_BACKOFF": "0"}
    submit(cluster, namespace, job(name, gcs, claim, env, **{"output.bucket": bucket, "runPolicy.backoffLimit": 4}))

    def upload_failed() -> bool:
        for pod in children(cluster, namespace, name)["pods"]:
            for cs in pod["status"].get("containerStatuses") or []:
                if (cs["state"].get("terminated") or {}).get("exitCode") == ExitCode.UPLOAD_FAILED:
                    return True
        return False

    wait_for(upload_failed, 600, 0.5, "the first pod's upload to fail (exit 3)")
    gcs.create_bucket(bucket)
    done = wait_phase(cluster, namespace, name, "Succeeded", 600)

    logs = [
        (p["metadata"]["name"], cluster.pod_log(namespace, p["metadata"]["name"]))
        for p in sorted(children(cluster, namespace, name)["pods"], key=lambda p: p["metadata"]["creationTimestamp"])
    ]
    assert len(logs) >= 2
    assert "training dpo" in logs[0][1] and f"step {STEPS}/{STEPS}" in logs[0][1], logs[0][1][-3000:]
    for pod, log in logs[1:]:  # every later pod only uploaded the export kept on the claim
        assert "training dpo" not in log and not trained_steps(log), f"{pod} trained again:\n{log[-3000:]}"
        assert f"found the complete export of step {STEPS} of job {name}" in log
    succeeded = next(p for p in children(cluster, namespace, name)["pods"] if p["status"].get("phase") == "Succeeded")
    message = json.loads(succeeded["status"]["containerStatuses"][0]["state"]["terminated"]["message"])
    assert message["attemptSteps"] == 0 and message["steps"] == STEPS
    assert done["status"]["progress"]["step"] == STEPS
    assert done["status"]["artifact"]["uri"].startswith(f"gs://{bucket}/")
