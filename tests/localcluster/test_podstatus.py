"""Pod status computation of the process node (processnode.podstatus), without a cluster."""

from __future__ import annotations

import pytest
from processnode.container import Container
from processnode.podstatus import PodState, adopt, container_hostname, container_status, should_restart

NOW = "2026-01-01T00:00:00Z"


def state(*containers: Container, init: tuple[Container, ...] = ()) -> PodState:
    return PodState(init_containers=list(init), containers=list(containers), start_time=NOW)


def running(name: str = "main", ready: bool = True) -> Container:
    c = Container({"name": name}, init=False)
    c.state, c.ready = {"running": {"startedAt": NOW}}, ready
    return c


def exited(name: str, code: int, init: bool = False) -> Container:
    c = Container({"name": name}, init=init)
    c.state, c.done = {"terminated": {"exitCode": code, "reason": "Error" if code else "Completed"}}, True
    return c


@pytest.mark.parametrize(
    ("policy", "init", "code", "deleting", "restart"),
    [
        ("Always", False, 0, False, True),
        ("Always", False, 1, True, False),  # a pod being deleted restarts nothing
        ("OnFailure", False, 0, False, False),
        ("OnFailure", False, 3, False, True),
        ("Never", False, 3, False, False),
        ("Always", True, 1, False, True),  # init containers follow OnFailure semantics under Always
        ("Never", True, 1, False, False),
    ],
)
def test_should_restart(policy, init, code, deleting, restart):
    assert should_restart(policy, Container({"name": "c"}, init=init), code, deleting) is restart


def test_sidecar_init_container_always_restarts():
    sidecar = Container({"name": "s", "restartPolicy": "Always"}, init=True)
    assert should_restart("Never", sidecar, 0, deleting=False)


def test_ready_when_every_container_runs_and_is_ready():
    s = state(running("a"), running("b"))
    s.update(deleting=False)
    assert s.phase == "Running"
    assert s.conditions["Ready"]["status"] == "True" and s.conditions["ContainersReady"]["status"] == "True"
    s.containers[1].ready = False
    s.update(deleting=False)
    assert s.conditions["Ready"] == {**s.conditions["Ready"], "status": "False", "reason": "ContainersNotReady"}


def test_a_deleting_pod_is_not_ready():
    s = state(running())
    s.update(deleting=True)
    assert s.conditions["Ready"]["status"] == "False"


@pytest.mark.parametrize(
    ("codes", "phase", "reason"),
    [((0, 0), "Succeeded", "PodCompleted"), ((0, 1), "Failed", "PodFailed"), ((137,), "Failed", "PodFailed")],
)
def test_terminal_phase_from_exit_codes(codes, phase, reason):
    s = state(*(exited(f"c{i}", code) for i, code in enumerate(codes)))
    s.update(deleting=False)
    assert s.phase == phase
    assert s.conditions["Ready"]["reason"] == reason


def test_failed_init_container_fails_the_pod():
    s = state(Container({"name": "main"}, init=False), init=(exited("setup", 2, init=True),))
    s.finalize()
    assert s.phase == "Failed"
    # The main container never started: reported the way the kubelet reports it.
    main = s.containers[0].state["terminated"]
    assert (main["exitCode"], main["reason"]) == (137, "ContainerStatusUnknown")


def test_status_keeps_unchanged_conditions_and_foreign_ones():
    s = state(Container({"name": "main"}, init=False))
    s.starting()
    assert s.containers[0].state == {"waiting": {"reason": "ContainerCreating"}}
    s.containers[0].state = {"running": {"startedAt": NOW}}
    s.update(deleting=False)
    current = {
        "conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": "then"},
            {"type": "Ready", "status": "True", "lastTransitionTime": "then"},
            {"type": "DisruptionTarget", "status": "True", "lastTransitionTime": "then"},
        ]
    }
    status = s.status(current, "127.0.0.1")
    by_type = {c["type"]: c for c in status["conditions"]}
    assert by_type["PodScheduled"]["lastTransitionTime"] == "then"  # kept
    assert by_type["Ready"]["lastTransitionTime"] == "then"  # same status: kept
    assert by_type["DisruptionTarget"]["status"] == "True"  # not ours: left alone
    assert status["phase"] == "Running" and status["podIP"] == "127.0.0.1"
    assert [c["name"] for c in status["containerStatuses"]] == ["main"]
    assert "initContainerStatuses" not in status


def test_container_status_shape():
    c = running()
    c.container_id, c.restart_count = "processnode://abc", 2
    st = container_status(c)
    assert st["ready"] and st["started"] and st["restartCount"] == 2 and st["containerID"] == "processnode://abc"
    assert not container_status(Container({"name": "i"}, init=True))["ready"]


def test_adopt_a_container_that_ran_when_the_node_died():
    c = Container({"name": "main"}, init=False)
    previous = {"restartCount": 1, "containerID": "processnode://x", "state": {"running": {"startedAt": NOW}}}
    adopt(c, previous, "OnFailure", now=NOW)
    # Lost track of it: exit 137 (ContainerStatusUnknown) is a failure, so OnFailure restarts it.
    assert c.restart_count == 2 and c.state == {"waiting": {"reason": "ContainerCreating"}}
    assert c.last_state["terminated"]["reason"] == "ContainerStatusUnknown"
    never = Container({"name": "main"}, init=False)
    adopt(never, previous, "Never", now=NOW)
    assert never.done and never.state["terminated"]["exitCode"] == 137


def test_adopt_keeps_finished_containers_finished():
    c = Container({"name": "main"}, init=False)
    adopt(c, {"state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}, "OnFailure")
    assert c.done and c.exit_code() == 0


def test_hostname_as_fqdn():
    pod = {"metadata": {"name": "p", "namespace": "ns"}, "spec": {"hostname": "h", "subdomain": "s"}}
    assert container_hostname(pod) == "h"
    pod["spec"]["setHostnameAsFQDN"] = True
    assert container_hostname(pod) == "h.s.ns.svc.cluster.local"
