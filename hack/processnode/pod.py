"""One pod's lifecycle on the process node: volumes, init containers, containers, status, deletion."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .envvars import container_env, expand
from .kube import ApiError, now_rfc3339
from .probes import Prober
from .volumes import VolumeManager, VolumeNotReady

if TYPE_CHECKING:
    from .node import ProcessNode

Obj = dict[str, Any]
log = logging.getLogger(__name__)

MAX_TERMINATION_MESSAGE = 4096
FALLBACK_LOG_LINES = 80
FALLBACK_LOG_BYTES = 2048
TERMINAL = ("Succeeded", "Failed")
# Every process of a container inherits these (programs such as torchrun start their workers in new
# sessions, out of the container's process group): the final SIGKILL sweeps /proc for them.
CONTAINER_MARKER = "PROCESSNODE_CONTAINER_ID"
STATE_MARKER = "PROCESSNODE_STATE_DIR"


def marked_pids(name: str, value: str) -> list[int]:
    """Pids of processes whose environment has ``name=value``."""
    needle = f"{name}={value}".encode()
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def kill_container(pgid: int, container_id: str, sig: int) -> None:
    """Signal the container's process group and, with SIGKILL, every process that carries its marker."""
    if pgid > 1:  # never 0: that would be the process node's own group
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)
    container_id = container_id.removeprefix("processnode://")
    if sig == signal.SIGKILL and container_id:
        for pid in marked_pids(CONTAINER_MARKER, container_id):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)


def pod_key(pod: Obj) -> str:
    m = pod["metadata"]
    return f"{m['namespace']}/{m['name']}"


def pod_hostname(pod: Obj) -> str:
    return str(pod["spec"].get("hostname") or pod["metadata"]["name"])[:63]


@dataclass
class Container:
    """Runtime state of one container of the pod."""

    spec: Obj
    init: bool
    restart_count: int = 0
    proc: subprocess.Popen[bytes] | None = None
    state: Obj = field(default_factory=lambda: {"waiting": {"reason": "PodInitializing"}})
    last_state: Obj = field(default_factory=dict)
    container_id: str = ""
    next_start: float = 0.0  # monotonic time before which a restart waits (back-off)
    backoff: float = 0.0
    done: bool = False  # terminated and will not be restarted
    killed_by_node: bool = False
    ready: bool = True  # readiness probe passed (or none)
    started_ok: bool = True  # startup probe passed (or none)
    unhealthy: str = ""  # why a liveness/startup probe wants the container restarted
    env: dict[str, str] = field(default_factory=dict)
    probers: list[Prober] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    @property
    def running(self) -> bool:
        return "running" in self.state

    def exit_code(self) -> int | None:
        term = self.state.get("terminated")
        return int(term["exitCode"]) if term else None

    def status(self) -> Obj:
        image = self.spec.get("image") or "processnode"
        st: Obj = {
            "name": self.name,
            "image": image,
            "imageID": f"processnode://{image}",
            "ready": self.running and self.ready and not self.init,
            "started": self.running and self.started_ok,
            "restartCount": self.restart_count,
            "state": self.state,
            "lastState": self.last_state,
        }
        if self.container_id:
            st["containerID"] = self.container_id
        return st


class PodWorker(threading.Thread):
    """Drives one pod from binding to deletion; the node feeds it pod updates."""

    def __init__(self, node: ProcessNode, pod: Obj) -> None:
        super().__init__(name=f"pod-{pod_key(pod)}", daemon=True)
        self.node = node
        self.pod = pod
        meta = pod["metadata"]
        self.uid: str = meta["uid"]
        self.key = pod_key(pod)
        self.dir = os.path.join(node.pods_dir, f"{meta['namespace']}_{meta['name']}_{self.uid}")
        self.hosts_file = os.path.join(self.dir, "etc-hosts")
        self.wake = threading.Event()
        self.deleting = threading.Event()
        self.gone = False  # the API object no longer exists
        self.node_stopping = False  # the process node shuts down: stop processes, keep the API object
        self.lock = threading.Lock()
        self.volumes = VolumeManager(
            node.kube, self.dir, node.host_ip, node.allocatable, lambda t, r, m: self.node.event(self.pod, t, r, m)
        )
        spec = pod["spec"]
        self.init_containers = [Container(c, True) for c in spec.get("initContainers") or []]
        self.containers = [Container(c, False) for c in spec.get("containers") or []]
        self.restart_policy: str = spec.get("restartPolicy") or "Always"
        self.phase = "Pending"
        self.start_time = (pod.get("status") or {}).get("startTime") or now_rfc3339()
        self.conditions: dict[str, Obj] = {}
        self.reason: str | None = None
        self.message: str | None = None
        self._last_status: Obj | None = None
        self._volume_error = ""

    # --- inputs from the node ------------------------------------------------------------------
    def update(self, pod: Obj) -> None:
        with self.lock:
            if pod["metadata"]["uid"] != self.uid:
                return
            self.pod = pod
        if pod["metadata"].get("deletionTimestamp"):
            self.deleting.set()
        self.wake.set()

    def removed(self) -> None:
        """The pod object is gone (force-deleted): stop everything, nothing left to report."""
        self.gone = True
        self.deleting.set()
        self.wake.set()

    # --- main ------------------------------------------------------------------------------------
    def run(self) -> None:
        try:
            self._run()
        except Exception:
            log.exception("pod %s: worker failed", self.key)
            self._kill_all(0)
        finally:
            self.node.hosts.unregister(self.uid)
            self.node.worker_done(self)

    def _run(self) -> None:
        status = self.pod.get("status") or {}
        if status.get("phase") in TERMINAL:
            self.phase = status["phase"]
            self._wait_deleted()
            self._finish()
            return
        os.makedirs(self.dir, exist_ok=True)
        self._resume(status)
        self._set_condition("PodScheduled", True)
        self._set_condition("PodReadyToStartContainers", False)
        self._set_condition(
            "Initialized", not self.init_containers, None if not self.init_containers else "ContainersNotInitialized"
        )
        self._set_not_ready("ContainersNotReady")
        for c in self.init_containers + self.containers:
            if "waiting" in c.state and not c.last_state and not c.done:
                c.state = {"waiting": {"reason": "PodInitializing" if not c.init else "ContainerCreating"}}
        for c in self.containers:
            if not c.done and not self.init_containers:
                c.state = {"waiting": {"reason": "ContainerCreating"}}
        self.node.hosts.register(self.pod, self.hosts_file)
        self._report()
        if self._setup_volumes():
            self._set_condition("PodReadyToStartContainers", True)
            if self._run_init_containers():
                self._set_condition("Initialized", True)
                self._run_containers()
        self._kill_all(self._grace())
        if self.node_stopping:
            self.volumes.teardown()
            return
        self._finalize_phase()
        self._report()
        self.volumes.teardown()
        self.node.hosts.unregister(self.uid)
        self._wait_deleted()
        self._finish()

    def _resume(self, status: Obj) -> None:
        """After a process-node restart: adopt what the API says already ran, kill leftovers."""
        by_name = {
            s["name"]: s for s in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or [])
        }
        for c in self.init_containers + self.containers:
            prev = by_name.get(c.name)
            if not prev:
                continue
            self._kill_leftover(c)
            c.restart_count = int(prev.get("restartCount", 0))
            c.last_state = prev.get("lastState") or {}
            c.container_id = prev.get("containerID", "")
            state = prev.get("state") or {}
            term = state.get("terminated")
            if "running" in state:
                term = {
                    "exitCode": 137,
                    "reason": "ContainerStatusUnknown",
                    "message": "The process node restarted while the container was running",
                    "startedAt": state["running"].get("startedAt"),
                    "finishedAt": now_rfc3339(),
                }
            if term is None:
                continue
            if self._should_restart(c, int(term["exitCode"])):
                c.last_state = {"terminated": term}
                c.restart_count += 1
                c.state = {"waiting": {"reason": "ContainerCreating"}}
            else:
                c.state = {"terminated": term}
                c.done = True

    # --- volumes ---------------------------------------------------------------------------------
    def _setup_volumes(self) -> bool:
        delay = 0.5
        while not self.deleting.is_set():
            try:
                self.volumes.setup(self.pod)
                return True
            except (VolumeNotReady, ApiError, OSError) as exc:
                msg = str(exc)
                if msg != self._volume_error:
                    self._volume_error = msg
                    self.node.event(self.pod, "Warning", "FailedMount", f"MountVolume.SetUp failed: {msg}")
                    for c in self.init_containers + self.containers:
                        if "waiting" in c.state:
                            c.state = {"waiting": {"reason": "ContainerCreating", "message": msg}}
                    self._report()
                self.wake.wait(delay)
                self.wake.clear()
                delay = min(delay * 2, 5)
        return False

    def refresh_volumes(self) -> None:
        if self.phase not in TERMINAL and not self.deleting.is_set() and self.volumes.volumes:
            with self.lock:
                pod = self.pod
            self.volumes.refresh(pod)

    # --- containers ------------------------------------------------------------------------------
    def _should_restart(self, c: Container, exit_code: int) -> bool:
        if self.deleting.is_set():
            return False
        if self.restart_policy == "Always" and not c.init:
            return True
        if c.init and c.spec.get("restartPolicy") == "Always":
            return True  # sidecar
        if self.restart_policy == "Never":
            return False
        return exit_code != 0

    def _run_init_containers(self) -> bool:
        for c in self.init_containers:
            while not c.done:
                if self.deleting.is_set():
                    return False
                if c.proc is None and time.monotonic() >= c.next_start:
                    self._start(c)
                    self._report()
                self._reap(c)
                if c.proc is None and not c.done and "terminated" in c.state:
                    c.state = {
                        "waiting": {
                            "reason": "CrashLoopBackOff",
                            "message": f"back-off restarting failed container {c.name}",
                        }
                    }
                    self._report()
                if c.done:
                    break
                self._sleep_until(c.next_start if c.proc is None else None)
            if c.exit_code() != 0:
                self.phase = "Failed"
                self._set_condition("Initialized", False, "ContainersNotInitialized")
                return False
        return True

    def _run_containers(self) -> None:
        for c in self.containers:
            if not c.done and "terminated" not in c.state:
                c.state = {"waiting": {"reason": "ContainerCreating"}}
        while not self.deleting.is_set():
            for c in self.containers:
                if c.done:
                    continue
                if c.proc is None and time.monotonic() >= c.next_start:
                    self._start(c)
                if c.unhealthy and c.proc is not None:
                    self._kill_unhealthy(c)
                if self._reap(c) and not c.done:
                    c.state = {
                        "waiting": {
                            "reason": "CrashLoopBackOff",
                            "message": f"back-off {int(c.backoff)}s restarting failed "
                            f"container={c.name} pod={self.pod['metadata']['name']}",
                        }
                    }
            self._update_phase()
            self._report()  # deduplicated: only changes (also readiness from probes) are sent
            if all(c.done for c in self.containers):
                return
            waits = [c.next_start for c in self.containers if c.proc is None and not c.done]
            self._sleep_until(min(waits) if waits else None)

    def _sleep_until(self, deadline: float | None) -> None:
        timeout = 30.0 if deadline is None else max(0.0, min(30.0, deadline - time.monotonic()))
        self.wake.wait(timeout)
        self.wake.clear()

    def _files(self, c: Container) -> dict[str, str]:
        base = os.path.join(self.dir, c.name)
        return {
            "log": base + ".log",
            "previous": base + ".previous.log",
            "pid": base + ".pid",
            "term": base + ".termination-log",
            "spec": base + ".launch.json",
            "error": base + ".start-error",
        }

    def _start(self, c: Container) -> None:
        files = self._files(c)
        if c.container_id:  # a restart: keep the previous instance's log for `kubectl logs --previous`
            with contextlib.suppress(OSError):
                os.replace(files["log"], files["previous"])
        for name in ("term", "error"):
            with open(files[name], "w"):
                pass
        c.killed_by_node = False
        c.container_id = f"processnode://{uuid.uuid4().hex}"
        try:
            spec = self._launch_spec(c, files)
        except (LookupError, ValueError, ApiError) as exc:
            c.state = {"waiting": {"reason": "CreateContainerConfigError", "message": str(exc)}}
            c.container_id = ""
            c.next_start = time.monotonic() + 2
            self.node.event(self.pod, "Warning", "Failed", f"Error: {exc}")
            return
        # It holds the resolved environment (Secret values): owner-only.
        with open(os.open(files["spec"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            json.dump(spec, f)
        logf = open(files["log"], "ab")  # noqa: SIM115 - handed to the child
        try:
            cmd = [*self.node.unshare_cmd, self.node.python, "-I", "-S", self.node.launcher, files["spec"]]
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
                env={"PATH": os.environ["PATH"]},
            )
        finally:
            logf.close()
        with open(files["pid"], "w") as f:
            f.write(str(proc.pid))
        c.proc = proc
        c.state = {"running": {"startedAt": now_rfc3339()}}
        c.env = spec["env"]
        c.ready = "readinessProbe" not in c.spec
        c.started_ok = "startupProbe" not in c.spec
        c.unhealthy = ""
        if not c.init:
            self._start_probes(c, proc.pid, startup=True)
        threading.Thread(target=self._waiter, args=(proc,), daemon=True, name=f"wait-{proc.pid}").start()
        self.node.event(self.pod, "Normal", "Started", f"Started container {c.name} (pid {proc.pid})")
        log.info("pod %s: started container %s pid %d", self.key, c.name, proc.pid)

    def _start_probes(self, c: Container, pid: int, startup: bool) -> None:
        cid = c.container_id

        def on_result(kind: str, ok: bool, message: str) -> None:
            if c.container_id != cid:
                return  # a previous instance's prober
            if kind == "startup" and ok:
                c.started_ok = True
                self._start_probes(c, pid, startup=False)
            elif kind == "readiness":
                c.ready = ok
                if not ok:
                    self.node.event(self.pod, "Warning", "Unhealthy", f"Readiness probe failed: {message}")
            else:
                what = "Startup" if kind == "startup" else "Liveness"
                c.unhealthy = f"{what} probe failed: {message}"
                self.node.event(self.pod, "Warning", "Unhealthy", c.unhealthy)
            self.wake.set()

        kinds = ["startup"] if startup and "startupProbe" in c.spec else ["readiness", "liveness"]
        for kind in kinds:
            probe = c.spec.get(f"{kind}Probe")
            if probe:
                prober = Prober(kind, probe, c.spec, pid=pid, env=c.env, on_result=on_result)
                c.probers.append(prober)
                prober.start()

    def _kill_unhealthy(self, c: Container) -> None:
        """A failed liveness/startup probe: stop the container; the restart policy decides what next."""
        proc = c.proc
        if proc is None:
            return
        self.node.event(
            self.pod, "Normal", "Killing", f"Container {c.name} failed a probe ({c.unhealthy}), will be restarted"
        )
        c.unhealthy = ""
        probe = c.spec.get("livenessProbe") or c.spec.get("startupProbe") or {}
        grace = probe.get("terminationGracePeriodSeconds")
        grace = self._grace() if grace is None else min(float(grace), self.node.max_grace)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)
        kill_container(proc.pid, c.container_id, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)

    def _waiter(self, proc: subprocess.Popen[bytes]) -> None:
        proc.wait()
        self.wake.set()

    def _reap(self, c: Container) -> bool:
        """Collect an exited container; returns True when it exited now."""
        if c.proc is None or c.proc.poll() is None:
            return False
        proc, c.proc = c.proc, None
        for prober in c.probers:
            prober.stop()
        c.probers = []
        code = proc.returncode
        # The container is over when its main process is: take all its processes with it.
        kill_container(proc.pid, c.container_id, signal.SIGKILL)
        files = self._files(c)
        with contextlib.suppress(OSError):
            os.unlink(files["pid"])
        exit_code = code if code >= 0 else 128 - code
        started = c.state.get("running", {}).get("startedAt", now_rfc3339())
        term: Obj = {
            "exitCode": exit_code,
            "startedAt": started,
            "finishedAt": now_rfc3339(),
            "containerID": c.container_id,
        }
        if code < 0:
            term["signal"] = -code
        start_error = _read(files["error"], MAX_TERMINATION_MESSAGE).strip()
        if exit_code == 128 and start_error:
            term["reason"] = "StartError"
            term["message"] = start_error
        else:
            term["reason"] = "Completed" if exit_code == 0 else "Error"
            message = _read(self._termination_source(c, files), MAX_TERMINATION_MESSAGE)
            if not message and exit_code != 0 and c.spec.get("terminationMessagePolicy") == "FallbackToLogsOnError":
                message = _tail(files["log"], FALLBACK_LOG_LINES, FALLBACK_LOG_BYTES)
            if message:
                term["message"] = message
        c.state = {"terminated": term}
        if c.done:
            return True
        if self._should_restart(c, exit_code):
            c.last_state = {"terminated": term}
            c.restart_count += 1
            base, cap = self.node.backoff
            c.backoff = min(cap, base if c.backoff == 0 else c.backoff * 2)
            # A container that ran long enough resets its back-off, as the kubelet does.
            if time.time() - _parse_time(started) > 2 * cap:
                c.backoff = base
            c.next_start = time.monotonic() + c.backoff
        else:
            c.done = True
        log.info("pod %s: container %s exited %d", self.key, c.name, exit_code)
        return True

    def _termination_source(self, c: Container, files: dict[str, str]) -> str:
        return files["term"]

    def _launch_spec(self, c: Container, files: dict[str, str]) -> Obj:
        pod = self.pod
        spec = c.spec
        node = self.node
        base = dict(node.base_env)
        base["HOSTNAME"] = self._hostname()
        base[CONTAINER_MARKER] = c.container_id.removeprefix("processnode://")
        base[STATE_MARKER] = self.node.cfg.state_dir
        env = container_env(
            pod,
            spec,
            base,
            get_configmap=node.get_configmap,
            get_secret=node.get_secret,
            host_ip=node.host_ip,
            allocatable=node.allocatable,
        )
        command = [expand(a, env) for a in spec.get("command") or []]
        args = [expand(a, env) for a in spec.get("args") or []]
        argv = command + args
        if not argv:
            raise ValueError(
                f"container {c.name}: no command or args (the process node ignores images, so it "
                "cannot run an image's entrypoint)"
            )
        mounts: list[Obj] = []
        for vm in spec.get("volumeMounts") or []:
            vol = self.volumes.volumes.get(vm["name"])
            if vol is None:
                raise ValueError(f"volumeMount {vm['name']!r}: no such volume")
            source = vol.path
            sub = vm.get("subPath") or (expand(vm["subPathExpr"], env) if vm.get("subPathExpr") else "")
            if sub:
                source = os.path.join(vol.path, sub)
                if not os.path.lexists(source):
                    os.makedirs(source, exist_ok=True)
                source = os.path.realpath(source)
            mounts.append({"source": source, "target": vm["mountPath"], "readOnly": bool(vm.get("readOnly"))})
        targets = {os.path.normpath(m["target"]) for m in mounts}
        term_path = spec.get("terminationMessagePath") or "/dev/termination-log"
        if os.path.normpath(term_path) not in targets:
            mounts.append({"source": files["term"], "target": term_path})
        if "/etc/hosts" not in targets:
            mounts.append({"source": self.hosts_file, "target": "/etc/hosts"})
        workdir = spec.get("workingDir") or os.path.join(self.dir, "workdir")
        return {
            "argv": argv,
            "env": env,
            "mounts": mounts,
            "hostname": self._hostname(),
            "workingDir": workdir,
            "startErrorFile": files["error"],
        }

    def _hostname(self) -> str:
        spec = self.pod["spec"]
        host = pod_hostname(self.pod)
        if spec.get("setHostnameAsFQDN") and spec.get("subdomain"):
            host = f"{host}.{spec['subdomain']}.{self.pod['metadata']['namespace']}.svc.cluster.local"[:64]
        return host

    # --- termination -----------------------------------------------------------------------------
    def _grace(self) -> float:
        meta, spec = self.pod["metadata"], self.pod["spec"]
        grace = meta.get("deletionGracePeriodSeconds")
        if grace is None:
            grace = spec.get("terminationGracePeriodSeconds", 30)
        cap = 5.0 if self.node_stopping else self.node.max_grace
        return float(min(max(int(grace), 0), cap))

    def _kill_all(self, grace: float) -> None:
        running = [(c, c.proc) for c in self.init_containers + self.containers if c.proc is not None]
        if not running:
            return
        for c, proc in running:
            c.killed_by_node = True
            if not self.node_stopping:
                self.node.event(self.pod, "Normal", "Killing", f"Stopping container {c.name}")
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(proc.poll() is None for _, proc in running):
            time.sleep(0.05)
        for c, proc in running:
            kill_container(proc.pid, c.container_id, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        for c, _ in running:
            c.done = True
            self._reap_final(c)

    def _reap_final(self, c: Container) -> None:
        if c.proc is not None and c.proc.poll() is not None:
            self._reap(c)
        elif c.proc is not None:  # unkillable (uninterruptible sleep): report it dead anyway
            c.proc = None
            c.state = {"terminated": {"exitCode": 137, "reason": "Error", "finishedAt": now_rfc3339()}}

    def _kill_leftover(self, c: Container) -> None:
        pid = _read(self._files(c)["pid"], 32).strip()
        if pid.isdigit():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(int(pid), signal.SIGKILL)
        if c.container_id:
            kill_container(0, c.container_id, signal.SIGKILL)

    def _wait_deleted(self) -> None:
        while not self.deleting.is_set():
            self.wake.wait(60)
            self.wake.clear()

    def _finish(self) -> None:
        """The pod is being deleted and everything stopped: remove it from the API (grace 0)."""
        self.volumes.teardown()
        if self.node_stopping:
            return
        for c in self.init_containers + self.containers:
            with contextlib.suppress(OSError):
                os.unlink(self._files(c)["spec"])
        if self.gone:
            return
        meta = self.pod["metadata"]
        body = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "gracePeriodSeconds": 0,
            "preconditions": {"uid": self.uid},
        }
        try:
            self.node.kube.delete(f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}", body)
        except ApiError as exc:
            if exc.status not in (404, 409):
                log.warning("pod %s: final delete failed: %s", self.key, exc)
        log.info("pod %s: deleted", self.key)

    # --- status ----------------------------------------------------------------------------------
    def _set_condition(self, ctype: str, ok: bool, reason: str | None = None) -> None:
        status = "True" if ok else "False"
        old = self.conditions.get(ctype)
        if old and old["status"] == status and old.get("reason") == reason:
            return
        cond: Obj = {"type": ctype, "status": status, "lastProbeTime": None, "lastTransitionTime": now_rfc3339()}
        if reason:
            cond["reason"] = reason
        self.conditions[ctype] = cond

    def _set_not_ready(self, reason: str) -> None:
        self._set_condition("ContainersReady", False, reason)
        self._set_condition("Ready", False, reason)

    def _update_phase(self) -> None:
        cs = self.containers
        if any(c.running for c in cs) or any(not c.done and c.restart_count > 0 for c in cs):
            self.phase = "Running"
        if cs and all(c.done for c in cs):
            self._finalize_phase()
            return
        if cs and all(c.running and c.ready for c in cs) and not self.deleting.is_set():
            self._set_condition("ContainersReady", True)
            self._set_condition("Ready", True)
        else:
            self._set_not_ready("ContainersNotReady")

    def _finalize_phase(self) -> None:
        """Terminal phase once no container runs or will restart (also for deleted pods)."""
        if self.phase in TERMINAL:
            self._set_not_ready("PodFailed" if self.phase == "Failed" else "PodCompleted")
            return
        codes = [c.exit_code() for c in self.containers]
        init_failed = any(c.exit_code() not in (None, 0) for c in self.init_containers)
        if init_failed or any(code is None for code in codes) or any(code != 0 for code in codes):
            self.phase = "Failed"
            self._set_not_ready("PodFailed")
        else:
            self.phase = "Succeeded"
            self._set_not_ready("PodCompleted")
        for c in self.init_containers + self.containers:
            if "waiting" in c.state:  # never started (deleted while creating): report as the kubelet does
                c.state = {
                    "terminated": {
                        "exitCode": 137,
                        "reason": "ContainerStatusUnknown",
                        "message": "The container could not be located when the pod was terminated",
                        "finishedAt": now_rfc3339(),
                    }
                }

    def _status(self) -> Obj:
        with self.lock:
            current = self.pod.get("status") or {}
        ours = set(self.conditions)
        conditions = [c for c in current.get("conditions") or [] if c["type"] not in ours]
        prev = {c["type"]: c for c in current.get("conditions") or []}
        for ctype, cond in self.conditions.items():
            old = prev.get(ctype)
            if old and (
                ctype == "PodScheduled"
                or (old.get("status"), old.get("reason")) == (cond["status"], cond.get("reason"))
            ):
                conditions.append(old)
            else:
                conditions.append(cond)
        status: Obj = {
            "phase": self.phase,
            "conditions": conditions,
            "hostIP": self.node.host_ip,
            "hostIPs": [{"ip": self.node.host_ip}],
            "podIP": "127.0.0.1",
            "podIPs": [{"ip": "127.0.0.1"}],
            "startTime": self.start_time,
            "containerStatuses": [c.status() for c in self.containers],
        }
        if self.init_containers:
            status["initContainerStatuses"] = [c.status() for c in self.init_containers]
        return status

    def _report(self) -> None:
        if self.gone:
            return
        status = self._status()
        if status == self._last_status:
            return
        meta = self.pod["metadata"]
        path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status"
        body = {"metadata": {"uid": self.uid}, "status": status}
        for attempt in range(5):
            try:
                updated = self.node.kube.patch(path, body, kind="merge-patch")
                self._last_status = status
                with self.lock:
                    if updated and updated["metadata"]["uid"] == self.uid:
                        self.pod = updated
                return
            except ApiError as exc:
                if exc.status == 404:
                    self.gone = True
                    self.deleting.set()
                    return
                log.warning("pod %s: status update failed (%s), attempt %d", self.key, exc, attempt + 1)
                time.sleep(0.5 * (attempt + 1))
            except Exception as exc:
                log.warning("pod %s: status update error (%s), attempt %d", self.key, exc, attempt + 1)
                time.sleep(0.5 * (attempt + 1))

    def stop(self) -> None:
        """Process-node shutdown: the worker stops the containers (grace capped at 5 s) and unmounts
        the volumes, but leaves the API object alone (a restarted node resumes from its status)."""
        self.node_stopping = True
        self.deleting.set()
        self.wake.set()


def _read(path: str, limit: int) -> str:
    try:
        with open(path, "rb") as f:
            return f.read(limit).decode("utf-8", "replace")
    except OSError:
        return ""


def _tail(path: str, lines: int, limit: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            data = f.read()
    except OSError:
        return ""
    text = b"\n".join(data.splitlines()[-lines:]).decode("utf-8", "replace")
    return text[-limit:]


def _parse_time(ts: str) -> float:
    import calendar

    try:
        return float(calendar.timegm(time.strptime(ts, "%Y-%m-%dT%H:%M:%SZ")))
    except (ValueError, TypeError):
        return time.time()


def remove_pod_dir(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)
