"""A pod's status as the kubelet computes it from its containers' states. No I/O: the worker feeds it
container states and sends what :meth:`PodState.status` returns to ``pods/status``.

Also the pure pod facts other modules share (its key, hostname, the restart decision), so that neither the
node nor the log server needs the worker to know them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .container import Container
from .kube import now_rfc3339

Obj = dict[str, Any]

TERMINAL = ("Succeeded", "Failed")
POD_IP = "127.0.0.1"  # every pod shares the host network


def pod_key(pod: Obj) -> str:
    m = pod["metadata"]
    return f"{m['namespace']}/{m['name']}"


def pod_hostname(pod: Obj) -> str:
    """The short hostname (``spec.hostname`` or the pod name, as the kubelet truncates it)."""
    return str(pod["spec"].get("hostname") or pod["metadata"]["name"])[:63]


def container_hostname(pod: Obj) -> str:
    """What ``hostname`` says inside the pod: the FQDN with ``setHostnameAsFQDN`` and a subdomain."""
    spec = pod["spec"]
    host = pod_hostname(pod)
    if spec.get("setHostnameAsFQDN") and spec.get("subdomain"):
        host = f"{host}.{spec['subdomain']}.{pod['metadata']['namespace']}.svc.cluster.local"[:64]
    return host


def should_restart(restart_policy: str, c: Container, exit_code: int, deleting: bool) -> bool:
    """Whether an exited container runs again (the pod's ``restartPolicy``; sidecar init containers always)."""
    if deleting:
        return False
    if restart_policy == "Always" and not c.init:
        return True
    if c.init and c.spec.get("restartPolicy") == "Always":
        return True
    if restart_policy == "Never":
        return False
    return exit_code != 0


def container_status(c: Container) -> Obj:
    """One entry of ``containerStatuses``/``initContainerStatuses``."""
    image = c.spec.get("image") or "processnode"
    st: Obj = {
        "name": c.name,
        "image": image,
        "imageID": f"processnode://{image}",
        "ready": c.running and c.ready and not c.init,
        "started": c.running and c.started_ok,
        "restartCount": c.restart_count,
        "state": c.state,
        "lastState": c.last_state,
    }
    if c.container_id:
        st["containerID"] = c.container_id
    return st


def adopt(c: Container, previous: Obj, restart_policy: str, now: str | None = None) -> None:
    """After a process-node restart: take over what the API says a container did before.

    A container that was running is reported ``ContainerStatusUnknown`` (exit 137) and restarted if its policy
    allows, as the kubelet does after it lost track of a container; finished containers are not rerun.
    """
    c.restart_count = int(previous.get("restartCount", 0))
    c.last_state = previous.get("lastState") or {}
    c.container_id = previous.get("containerID", "")
    state = previous.get("state") or {}
    term = state.get("terminated")
    if "running" in state:
        term = {
            "exitCode": 137,
            "reason": "ContainerStatusUnknown",
            "message": "The process node restarted while the container was running",
            "startedAt": state["running"].get("startedAt"),
            "finishedAt": now or now_rfc3339(),
        }
    if term is None:
        return
    if should_restart(restart_policy, c, int(term["exitCode"]), deleting=False):
        c.last_state = {"terminated": term}
        c.restart_count += 1
        c.state = {"waiting": {"reason": "ContainerCreating"}}
    else:
        c.state = {"terminated": term}
        c.done = True


@dataclass
class PodState:
    """Phase and conditions of one pod, derived from its containers."""

    init_containers: list[Container]
    containers: list[Container]
    start_time: str
    phase: str = "Pending"
    conditions: dict[str, Obj] = field(default_factory=dict)

    @property
    def all_containers(self) -> list[Container]:
        return self.init_containers + self.containers

    def set_condition(self, ctype: str, ok: bool, reason: str | None = None) -> None:
        status = "True" if ok else "False"
        old = self.conditions.get(ctype)
        if old and old["status"] == status and old.get("reason") == reason:
            return
        cond: Obj = {"type": ctype, "status": status, "lastProbeTime": None, "lastTransitionTime": now_rfc3339()}
        if reason:
            cond["reason"] = reason
        self.conditions[ctype] = cond

    def set_not_ready(self, reason: str) -> None:
        self.set_condition("ContainersReady", False, reason)
        self.set_condition("Ready", False, reason)

    def starting(self) -> None:
        """The conditions and waiting reasons of a pod whose containers have not started yet."""
        self.set_condition("PodScheduled", True)
        self.set_condition("PodReadyToStartContainers", False)
        has_init = bool(self.init_containers)
        self.set_condition("Initialized", not has_init, "ContainersNotInitialized" if has_init else None)
        self.set_not_ready("ContainersNotReady")
        for c in self.all_containers:
            if "waiting" in c.state and not c.last_state and not c.done:
                c.state = {"waiting": {"reason": "ContainerCreating" if c.init else "PodInitializing"}}
        for c in self.containers:
            if not c.done and not has_init:
                c.state = {"waiting": {"reason": "ContainerCreating"}}

    def update(self, deleting: bool) -> None:
        """Phase and readiness while the main containers run (terminal once none runs or will restart)."""
        cs = self.containers
        if any(c.running for c in cs) or any(not c.done and c.restart_count > 0 for c in cs):
            self.phase = "Running"
        if cs and all(c.done for c in cs):
            self.finalize()
            return
        if cs and all(c.running and c.ready for c in cs) and not deleting:
            self.set_condition("ContainersReady", True)
            self.set_condition("Ready", True)
        else:
            self.set_not_ready("ContainersNotReady")

    def finalize(self) -> None:
        """The terminal phase once no container runs or will restart (also for deleted pods)."""
        if self.phase in TERMINAL:
            self.set_not_ready("PodFailed" if self.phase == "Failed" else "PodCompleted")
            return
        codes = [c.exit_code() for c in self.containers]
        init_failed = any(c.exit_code() not in (None, 0) for c in self.init_containers)
        if init_failed or any(code is None or code != 0 for code in codes):
            self.phase = "Failed"
            self.set_not_ready("PodFailed")
        else:
            self.phase = "Succeeded"
            self.set_not_ready("PodCompleted")
        for c in self.all_containers:
            if "waiting" in c.state:  # never started (deleted while creating): reported as the kubelet does
                c.state = {
                    "terminated": {
                        "exitCode": 137,
                        "reason": "ContainerStatusUnknown",
                        "message": "The container could not be located when the pod was terminated",
                        "finishedAt": now_rfc3339(),
                    }
                }

    def status(self, current: Obj, host_ip: str) -> Obj:
        """The ``status`` to send, given the one the API has (``current``): conditions that did not change keep
        their transition time, and conditions other components own (say a scheduler's) are left alone."""
        ours = set(self.conditions)
        previous = current.get("conditions") or []
        conditions = [c for c in previous if c["type"] not in ours]
        by_type = {c["type"]: c for c in previous}
        for ctype, cond in self.conditions.items():
            old = by_type.get(ctype)
            same = old and (old.get("status"), old.get("reason")) == (cond["status"], cond.get("reason"))
            conditions.append(old if old and (ctype == "PodScheduled" or same) else cond)
        status: Obj = {
            "phase": self.phase,
            "conditions": conditions,
            "hostIP": host_ip,
            "hostIPs": [{"ip": host_ip}],
            "podIP": POD_IP,
            "podIPs": [{"ip": POD_IP}],
            "startTime": self.start_time,
            "containerStatuses": [container_status(c) for c in self.containers],
        }
        if self.init_containers:
            status["initContainerStatuses"] = [container_status(c) for c in self.init_containers]
        return status
