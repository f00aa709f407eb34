"""HA through kopf peering: two replicas, only the higher-priority one acts; the other takes over when it dies."""

from __future__ import annotations

import json

import pytest

from tests.support.cluster import wait_for
from tests.support.ftj import submit, tiny_ftj, wait_phase
from tests.support.operator_process import OperatorProcess

pytestmark = pytest.mark.cluster


def peers(cluster) -> dict[str, dict]:
    obj = json.loads(cluster.kubectl("get", "clusterkopfpeering", "finetune-operator", "-o", "json").stdout)
    return {k: v for k, v in (obj.get("status") or {}).items() if v}


def test_two_replicas_only_the_leader_acts_and_the_standby_takes_over(running_operator, cluster, namespace, tmp_path):
    standby = running_operator
    leader = OperatorProcess(cluster, tmp_path, name="replica-b")
    leader.start(priority=standby.priority + 5)
    try:
        wait_for(
            lambda: {standby.priority, leader.priority} <= {p.get("priority") for p in peers(cluster).values()},
            30,
            0.5,
            "both replicas in the ClusterKopfPeering status",
        )
        wait_for(lambda: "Pausing operations in favour of" in standby.logs(), 30, 0.5, "standby pauses")

        submit(cluster, namespace, tiny_ftj("ha-one", fake=True))
        wait_phase(cluster, namespace, "ha-one", "Succeeded", 90)
        ref = f"[{namespace}/ha-one]"
        assert ref in leader.logs()
        assert ref not in standby.logs(), "the paused replica must not handle anything"

        leader.kill()  # no goodbye: the standby waits for the leader's heartbeat to expire (10 s here)
        wait_for(lambda: "Resuming operations after the pause" in standby.logs(), 60, 0.5, "standby resumes")
        submit(cluster, namespace, tiny_ftj("ha-two", fake=True))
        wait_phase(cluster, namespace, "ha-two", "Succeeded", 90)
        assert f"[{namespace}/ha-two]" in standby.logs()
        assert f"[{namespace}/ha-two]" not in leader.logs()
    finally:
        leader.stop()
