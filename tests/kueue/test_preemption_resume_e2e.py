"""Kueue preemption with the real trainer and durable checkpoints (issue 18): a higher-priority job preempts a running
one; the preempted job goes back to ``Queued`` (reason ``Preempted``), is re-admitted once the GPU is free, resumes
from its checkpoint (not step 0) and ends ``Succeeded`` with the weights of an uninterrupted run (1e-6, CPU).

The victim runs the tiny CPU trainer on a checkpoint claim and holds after the checkpoint of step 2 (test hook
``holdAtSteps``), so the preemption lands at a known step; the preemptor is the fake trainer, held by its gate file.
A ClusterQueue of one GPU and one-GPU jobs: one torch process at a time on a small CI machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
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
from tests.support.ftj import submit, wait_phase
from tests.support.kueue import Queues
from tests.support.trainer import Trainer

STEPS = 4  # 32 examples, batch 8: checkpoints at steps 2 and 4
HOLD = 2


@pytest.fixture
def claim(cluster: Cluster, namespace: str, tmp_path: Path):
    name = checkpoint_claim(cluster, namespace, tmp_path / "claim")
    yield name
    release_claims(cluster)


def preempted_status(q: Queues, name: str) -> dict[str, Any]:
    """The job's status once it is Queued because Kueue preempted it; empty before."""
    st = q.status(name)
    return st if st.get("phase") == "Queued" and st.get("reason") == "Preempted" else {}


def test_preempted_job_resumes_from_its_checkpoint_with_the_weights_of_an_uninterrupted_run(
    queues: Queues, running_operator, gcs: GcsEmulator, claim: str, trainer_session: Trainer
) -> None:
    q = queues.create(gpus=1, preempt_lower_priority=True)
    low, high = q.priority_classes()
    victim = "low"
    body = checkpointed_ftj(
        victim,
        gcs,
        claim,
        steps=STEPS,
        env={"FTJ_TEST_HOOKS": hooks(holdAtSteps=[HOLD])},
        **q.spec(gpus=1, priority_class=low),
    )
    submit(q.cluster, q.namespace, body)
    first = held_at(q.cluster, q.namespace, victim, HOLD, None)
    first_admission = first["status"]["admissionTime"]

    boss = q.submit("high", gpus=1, priority_class=high)
    # Kueue evicts the victim's Workload: its Job is suspended, its trainer gets SIGTERM, and it waits, saying why.
    preempted = wait_for(lambda: preempted_status(q, victim), 120, 0.5, "the victim Queued with reason Preempted")
    assert "Kueue Preempted" in preempted["message"], preempted["message"]
    wait_phase(q.cluster, q.namespace, boss, "Running", timeout=120)
    assert max(checkpoint_steps(q.ftj(victim))) == HOLD  # nothing trained past the hold

    q.release(boss)
    wait_phase(q.cluster, q.namespace, boss, "Succeeded", timeout=120)
    # Re-admitted on the freed GPU; the new pod continues from the checkpoint of step 2 to the end.
    done = wait_phase(q.cluster, q.namespace, victim, "Succeeded", timeout=600)
    status = done["status"]
    assert status["admissionTime"] > first_admission, "admitted a second time"
    assert status["progress"]["resumedFrom"] == HOLD and status["progress"]["step"] == STEPS, status["progress"]
    logs = all_trainer_logs(q.cluster, q.namespace)
    assert resumed_steps(logs) == [HOLD], logs[-4000:]  # once, from the checkpoint: never from step 0 again
    job = q.cluster.get_json("job", victim, namespace=q.namespace)
    assert not job["status"].get("failed"), job["status"]  # the preemption was not a failed attempt

    expected = reference_weights(trainer_session, trainer_config(q.cluster, q.namespace, victim), dataset_rows())
    assert max_difference(artifact_weights(gcs, status), expected) <= 1e-6
