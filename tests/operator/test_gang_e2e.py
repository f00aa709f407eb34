"""Every pod restarts together, from the last checkpoint, exactly once, on the real cluster with the real trainer:

* gang semantics: rank 1 of a two-node job is killed mid-training; the operator replaces the whole Job (an
  Indexed Job alone would replace only rank 1 and leave rank 0 waiting for it), both ranks resume from the last
  checkpoint on the shared claim, and the job ends Succeeded with the weights of an uninterrupted run (1e-6);
  ``status.restarts`` counts it, and at no moment do two Jobs or two pods of one rank exist;
* the progress watchdog: a trainer that stops making progress is restarted after
  ``spec.runPolicy.progressDeadlineSeconds`` with a ``ProgressDeadlineExceeded`` Event, and the restart counts
  against ``backoffLimit``: the replacing Job may retry once less, and a job with none left fails.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from ftcrd.conditions import Reason
from ftdev.gcs import GcsEmulator

from tests.support.checkpoints import (
    TRAINER_ENV,
    all_trainer_logs,
    artifact_weights,
    checkpoint_claim,
    checkpoint_steps,
    dataset_rows,
    hooks,
    max_difference,
    reference_weights,
    release_claims,
    resumed_steps,
    trainer_config,
)
from tests.support.cluster import Cluster, wait_for
from tests.support.ftj import children, events_for, get_ftj, submit, tiny_ftj, wait_phase
from tests.support.trainer import Trainer

pytestmark = pytest.mark.cluster

STEPS = 4  # 32 examples, batch 8


@pytest.fixture
def claim(cluster: Cluster, namespace: str, tmp_path: Path):
    name = checkpoint_claim(cluster, namespace, tmp_path / "claim")
    yield name
    release_claims(cluster)


def job(name: str, gcs: GcsEmulator, claim: str, hook: dict[str, Any], **spec: object) -> dict:
    overrides = {
        "output.bucket": gcs.bucket,
        "hyperparameters.epochs": 1,
        "hyperparameters.examples": 8 * STEPS,
        "hyperparameters.evalEvery": 1000,
        "hyperparameters.checkpointEvery": 2,
        "checkpoint.claimName": claim,
        "checkpoint.terminationGracePeriodSeconds": 20,
        **spec,
    }
    env = {**TRAINER_ENV, **gcs.env(), "FTJ_TEST_HOOKS": hooks(**hook)}
    return tiny_ftj(name, env=env, **overrides)


class Census:
    """Watches the job's Jobs and pods until stopped: the most Jobs, and pods of one rank, alive at once."""

    def __init__(self, cluster: Cluster, namespace: str, name: str) -> None:
        self.cluster, self.namespace, self.name = cluster, namespace, name
        self.jobs = self.rank_pods = 0
        self.job_uids: set[str] = set()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                kids = children(self.cluster, self.namespace, self.name)
            except AssertionError:
                continue
            live = [j for j in kids["jobs"] if not j["metadata"].get("deletionTimestamp")]
            self.jobs = max(self.jobs, len(live))
            self.job_uids |= {j["metadata"]["uid"] for j in kids["jobs"]}
            ranks: dict[str, int] = {}
            for pod in kids["pods"]:
                if pod["status"].get("phase") in ("Pending", "Running") and not pod["metadata"].get(
                    "deletionTimestamp"
                ):
                    index = pod["metadata"]["annotations"].get("batch.kubernetes.io/job-completion-index", "?")
                    ranks[index] = ranks.get(index, 0) + 1
            self.rank_pods = max([self.rank_pods, *ranks.values()])
            time.sleep(0.3)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)


def test_a_killed_rank_restarts_every_rank_from_the_checkpoint(  # noqa: PLR0917
    running_operator, cluster: Cluster, namespace: str, gcs: GcsEmulator, claim: str, trainer_session: Trainer
):
    name = "gang"
    body = job(
        name,
        gcs,
        claim,
        {"holdAtSteps": [2]},
        **{"resources.nodes": 2, "resources.processesPerNode": 1, "runPolicy.backoffLimit": 1},
    )
    submit(cluster, namespace, body)
    census = Census(cluster, namespace, name)
    try:
        held = wait_for(
            lambda: (f := get_ftj(cluster, namespace, name)) and 2 in checkpoint_steps(f) and f,
            600,
            0.5,
            "both ranks holding after the checkpoint of step 2",
        )
        first_job = children(cluster, namespace, name)["jobs"][0]["metadata"]["uid"]
        rank1 = next(
            p["metadata"]["name"]
            for p in children(cluster, namespace, name)["pods"]
            if p["metadata"]["annotations"].get("batch.kubernetes.io/job-completion-index") == "1"
        )
        cluster.kubectl("delete", "pod", rank1, "-n", namespace, "--wait=false")
        done = wait_phase(cluster, namespace, name, "Succeeded", 900)
    finally:
        census.close()
    status = done["status"]
    assert status["restarts"] == 1 and status["countedFailures"] == 1, status
    assert status["lastRestart"]["reason"] == Reason.GANG_RESTART and status["lastRestart"]["jobUid"] == first_job
    assert "restarting every rank from the last checkpoint" in status["lastRestart"]["message"]
    assert census.jobs == 1 and census.rank_pods == 1, (census.jobs, census.rank_pods)  # never two at once
    assert len(census.job_uids) == 2  # the Job was replaced once
    new_job = children(cluster, namespace, name)["jobs"][0]
    assert new_job["metadata"]["uid"] != first_job and new_job["spec"]["backoffLimit"] == 0
    # both ranks of the new Job resumed from the checkpoint; only rank 0 logs it
    assert resumed_steps(all_trainer_logs(cluster, namespace)) == [2]
    assert status["progress"]["resumedFrom"] == 2 and held["metadata"]["uid"] == done["metadata"]["uid"]
    assert any(e["reason"] == Reason.GANG_RESTART for e in events_for(cluster, namespace, name))

    expected = reference_weights(trainer_session, trainer_config(cluster, namespace, name), dataset_rows(), nproc=2)
    assert max_difference(artifact_weights(gcs, status), expected) <= 1e-6


def test_the_watchdog_restarts_a_stalled_trainer_and_counts_it(
    running_operator, cluster: Cluster, namespace: str, gcs: GcsEmulator, claim: str
):
    deadline = 20
    stalls, out_of_retries = "stall", "stall-no-retry"
    for name, limit in ((stalls, 1), (out_of_retries, 0)):
        spec = {"runPolicy.backoffLimit": limit, "runPolicy.progressDeadlineSeconds": deadline}
        submit(cluster, namespace, job(name, gcs, claim, {"holdAtSteps": [2]}, **spec))

    done = wait_phase(cluster, namespace, stalls, "Succeeded", 900)
    status = done["status"]
    assert status["restarts"] == 1 and status["countedFailures"] == 1, status
    assert status["lastRestart"]["reason"] == Reason.PROGRESS_DEADLINE_EXCEEDED
    assert f"no progress for {deadline}s" in status["lastRestart"]["message"]
    assert status["progress"]["resumedFrom"] == 2  # restarted from its last checkpoint
    # counted against backoffLimit 1: the replacing Job has no retry of its own left
    assert children(cluster, namespace, stalls)["jobs"][0]["spec"]["backoffLimit"] == 0
    warnings = [e for e in events_for(cluster, namespace, stalls) if e["reason"] == Reason.PROGRESS_DEADLINE_EXCEEDED]
    assert warnings and warnings[0]["type"] == "Warning", warnings

    failed = wait_phase(cluster, namespace, out_of_retries, "Failed", 600)["status"]
    assert failed["reason"] == Reason.PROGRESS_DEADLINE_EXCEEDED and "backoffLimit 0 used up" in failed["message"]
    assert not failed.get("restarts")
    wait_for(lambda: not children(cluster, namespace, out_of_retries)["pods"], 120, 0.5, "the failed job's pods gone")
