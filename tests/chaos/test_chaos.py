"""The chaos benchmark in small (bench/chaos.py is the full one): a few fake-trainer jobs while one fault of each
kind hits the cluster (operator SIGKILLed, kube-apiserver restarted, a trainer pod deleted, a Job deleted, the process
node restarted), judged as the benchmark is: nothing stuck, nothing duplicated, every Succeeded job's artifact checked
against the bucket, nothing orphaned.

The run has a private cluster of its own (state directory and ports of its own, torn down at the end): restarting the
apiserver and the process node would break whatever else runs on the session's cluster.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from ftdev import cluster as localcluster

from tests.chaos.run import Options, private_cluster_env, run
from tests.chaos.schedule import KINDS, ONE_OF_EACH

pytestmark = pytest.mark.cluster

JOBS = 4
OPTIONS = Options(
    seed=7,
    jobs=JOBS,
    faults=ONE_OF_EACH,
    submit_window=4.0,
    fault_window=(6.0, 45.0),
    # Long enough that every job still trains while the faults fire (the pod and Job faults find a target).
    train_seconds=(30.0, 45.0),
    deadline=240.0,
)


@pytest.fixture(scope="module")
def chaos_cluster() -> Iterator[dict[str, str]]:
    env = private_cluster_env(f"{localcluster.state_dir()}-chaos-{os.getpid()}")
    localcluster.up(env=env)
    try:
        yield env
    finally:
        localcluster.down(env=env)


def test_every_job_finishes_exactly_once_through_one_fault_of_each_kind(
    chaos_cluster: dict[str, str], tmp_path: Path
) -> None:
    result = run(OPTIONS, chaos_cluster, tmp_path)
    detail = result["detail"]
    made = [f for f in result["faults"] if f.get("target") and not f.get("error")]
    assert sorted(f["kind"] for f in made) == sorted(KINDS), result["faults"]
    assert result["submitted"] == JOBS
    assert result["stuck"] == 0, detail["stuck"]
    assert result["duplicates"] == 0, (detail["duplicate_pods"], detail["extra_jobs"])
    assert result["unverified"] == 0, detail["unverified"]
    assert result["orphans"] == 0, detail["orphans"]
    # The fake trainer never fails by itself: every job survives the faults and succeeds.
    assert result["terminal"] == {"Succeeded": JOBS}, result["failed_reasons"]
