"""HA through kopf peering: two replicas, only the higher-priority one acts; the other takes over when it dies."""

from __future__ import annotations

import json

import pytest

from tests.support.cluster import wait_for
from tests.support.ftj import submit, tiny_ftj, wait_phase
from tests.support.operator_process import OperatorProcess

pytestmark = pytest.mark.cluster
FAST_RESYNC = {"FTO_RESYNC_SECONDS": "1"}


def peers(cluster) -> dict[str, dict]:
    obj = json.loads(cluster.kubectl("get", "clusterkopfpeering", "finetune-operator", "-o", "json").stdout)
    return {k: v for k, v in (obj.get("status") or {}).items() if v}


def resync_rounds(op: OperatorProcess) -> float:
    line = next(x for x in op.metrics().splitlines() if x.startswith("finetune_operator_resync_rounds_total "))
    return float(line.rsplit(" ", 1)[1])


def test_two_replicas_only_the_leader_acts_and_the_standby_takes_over(running_operator, cluster, namespace, tmp_path):
    standby = running_operator
    saved = dict(standby.extra_env)
    standby.stop()
    standby.extra_env.update(FAST_RESYNC)
    standby.start()
    leader = OperatorProcess(cluster, tmp_path, name="replica-b", env=FAST_RESYNC)
    try:
        submit(cluster, namespace, tiny_ftj("ha-zero", fake=True))  # gives the standby's resync something to walk
        wait_phase(cluster, namespace, "ha-zero", "Succeeded", 90)
        wait_for(lambda: resync_rounds(standby) >= 1, 30, 0.5, "the standby's resync running while it leads")
        leader.start(priority=standby.priority + 5)
        wait_for(
            lambda: {standby.priority, leader.priority} <= {p.get("priority") for p in peers(cluster).values()},
            30,
            0.5,
            "both replicas in the ClusterKopfPeering status",
        )
        wait_for(lambda: "Pausing operations in favour of" in standby.logs(), 30, 0.5, "standby pauses")
        # the standby's own background resync pauses with it: only the leader's rounds go on
        paused_rounds = resync_rounds(standby) + 1  # a round that had already begun may still end
        wait_for(lambda: resync_rounds(leader) >= 3, 30, 0.5, "the leader's resync rounds")

        submit(cluster, namespace, tiny_ftj("ha-one", fake=True))
        wait_phase(cluster, namespace, "ha-one", "Succeeded", 90)
        ref = f"[{namespace}/ha-one]"
        assert ref in leader.logs()
        assert ref not in standby.logs(), "the paused replica must not handle anything"
        assert resync_rounds(standby) <= paused_rounds

        leader.kill()  # no goodbye: the standby waits for the leader's heartbeat to expire (10 s here)
        wait_for(lambda: "Resuming operations after the pause" in standby.logs(), 60, 0.5, "standby resumes")
        submit(cluster, namespace, tiny_ftj("ha-two", fake=True))
        wait_phase(cluster, namespace, "ha-two", "Succeeded", 90)
        assert f"[{namespace}/ha-two]" in standby.logs()
        assert f"[{namespace}/ha-two]" not in leader.logs()
        wait_for(lambda: resync_rounds(standby) > paused_rounds, 30, 0.5, "the standby's resync resumed")
    finally:
        leader.stop()
        standby.stop()
        standby.extra_env = saved
        standby.start()
