"""One pod on the process node, from binding to deletion: volumes, init containers, containers, probes, status.

The worker is a thread per pod. It needs a few things from its node, and only those: :class:`PodHost`. The
node feeds it pod updates (:meth:`PodWorker.update`, :meth:`PodWorker.removed`); it computes status with
:mod:`processnode.podstatus` and runs containers with :mod:`processnode.container`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from . import container as ctr
from .container import Container, ContainerFiles, Runtime
from .envvars import container_env
from .hosts import Hosts
from .kube import ApiError, Kube, now_rfc3339
from .launchspec import launch_spec
from .podstatus import TERMINAL, PodState, adopt, container_hostname, pod_key, should_restart
from .probes import Prober
from .volumes import VolumeManager, VolumeNotReady

Obj = dict[str, Any]
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PodHost:
    """What a pod worker needs from its node."""

    kube: Kube
    pods_dir: str
    state_dir: str
    host_ip: str
    allocatable: Mapping[str, str]
    base_env: Mapping[str, str]  # every container's environment before the pod's env/envFrom
    keep: list[str]  # paths no pod mount may hide (processnode.launchspec.keep_paths)
    max_grace: float
    backoff: tuple[float, float]  # restart back-off: initial, cap (seconds)
    runtime: Runtime
    hosts: Hosts
    get_configmap: Callable[[str, str], Obj | None]
    get_secret: Callable[[str, str], Obj | None]
    event: Callable[[Obj, str, str, str], None]  # (pod, type, reason, message)
    done: Callable[[PodWorker], None]  # the worker ended


class PodWorker(threading.Thread):
    """Drives one pod from binding to deletion."""

    def __init__(self, host: PodHost, pod: Obj) -> None:
        super().__init__(name=f"pod-{pod_key(pod)}", daemon=True)
        self.host = host
        self.pod = pod
        meta = pod["metadata"]
        self.uid: str = meta["uid"]
        self.key = pod_key(pod)
        self.dir = os.path.join(host.pods_dir, f"{meta['namespace']}_{meta['name']}_{self.uid}")
        self.hosts_file = os.path.join(self.dir, "etc-hosts")
        self.wake = threading.Event()
        self.deleting = threading.Event()
        self.gone = False  # the API object no longer exists
        self.node_stopping = False  # the process node shuts down: stop processes, keep the API object
        self.lock = threading.Lock()
        self.volumes = VolumeManager(host.kube, self.dir, host.host_ip, dict(host.allocatable), self._event)
        spec = pod["spec"]
        self.restart_policy: str = spec.get("restartPolicy") or "Always"
        self.state = PodState(
            init_containers=[Container(c, True) for c in spec.get("initContainers") or []],
            containers=[Container(c, False) for c in spec.get("containers") or []],
            start_time=(pod.get("status") or {}).get("startTime") or now_rfc3339(),
        )
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

    def stop(self) -> None:
        """Process-node shutdown: stop the containers (grace capped at 5 s) and unmount the volumes, but leave
        the API object alone (a restarted node resumes from its status)."""
        self.node_stopping = True
        self.deleting.set()
        self.wake.set()

    def refresh_volumes(self) -> None:
        if self.state.phase not in TERMINAL and not self.deleting.is_set() and self.volumes.volumes:
            with self.lock:
                pod = self.pod
            self.volumes.refresh(pod)

    # --- what the log server asks ------------------------------------------------------------------
    def container_running(self, name: str) -> bool:
        return any(c.name == name and c.proc is not None for c in self.state.all_containers)

    # --- main ------------------------------------------------------------------------------------
    def run(self) -> None:
        try:
            self._run()
        except Exception:
            log.exception("pod %s: worker failed", self.key)
            self._kill_all(0)
        finally:
            self.host.hosts.unregister(self.uid)
            self.host.done(self)

    def _run(self) -> None:
        status = self.pod.get("status") or {}
        if status.get("phase") in TERMINAL:
            self.state.phase = status["phase"]
            self._wait_deleted()
            self._finish()
            return
        os.makedirs(self.dir, exist_ok=True)
        self._resume(status)
        self.state.starting()
        self.host.hosts.register(self.pod, self.hosts_file)
        self._report()
        if self._setup_volumes():
            self.state.set_condition("PodReadyToStartContainers", True)
            if self._run_init_containers():
                self.state.set_condition("Initialized", True)
                self._run_containers()
        self._kill_all(self._grace())
        if self.node_stopping:
            self.volumes.teardown()
            return
        self.state.finalize()
        self._report()
        self.volumes.teardown()
        self.host.hosts.unregister(self.uid)
        self._wait_deleted()
        self._finish()

    def _resume(self, status: Obj) -> None:
        """After a process-node restart: adopt what the API says already ran, kill leftovers."""
        statuses = (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or [])
        by_name = {s["name"]: s for s in statuses}
        for c in self.state.all_containers:
            prev = by_name.get(c.name)
            if prev:
                ctr.kill_leftover(self._files(c), prev.get("containerID", ""))
                adopt(c, prev, self.restart_policy)

    def _event(self, etype: str, reason: str, message: str) -> None:
        self.host.event(self.pod, etype, reason, message)

    def _files(self, c: Container) -> ContainerFiles:
        return ContainerFiles.of(self.dir, c.name)

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
                    self._event("Warning", "FailedMount", f"MountVolume.SetUp failed: {msg}")
                    for c in self.state.all_containers:
                        if "waiting" in c.state:
                            c.state = {"waiting": {"reason": "ContainerCreating", "message": msg}}
                    self._report()
                self.wake.wait(delay)
                self.wake.clear()
                delay = min(delay * 2, 5)
        return False

    # --- containers ------------------------------------------------------------------------------
    def _run_init_containers(self) -> bool:
        for c in self.state.init_containers:
            while not c.done:
                if self.deleting.is_set():
                    return False
                if c.proc is None and time.monotonic() >= c.next_start:
                    self._start(c)
                    self._report()
                self._reap(c)
                if c.proc is None and not c.done and "terminated" in c.state:
                    message = f"back-off restarting failed container {c.name}"
                    c.state = {"waiting": {"reason": "CrashLoopBackOff", "message": message}}
                    self._report()
                if c.done:
                    break
                self._sleep_until(c.next_start if c.proc is None else None)
            if c.exit_code() != 0:
                self.state.phase = "Failed"
                self.state.set_condition("Initialized", False, "ContainersNotInitialized")
                return False
        return True

    def _run_containers(self) -> None:
        containers = self.state.containers
        for c in containers:
            if not c.done and "terminated" not in c.state:
                c.state = {"waiting": {"reason": "ContainerCreating"}}
        while not self.deleting.is_set():
            for c in containers:
                if c.done:
                    continue
                if c.proc is None and time.monotonic() >= c.next_start:
                    self._start(c)
                if c.unhealthy and c.proc is not None:
                    self._kill_unhealthy(c)
                if self._reap(c) and not c.done:
                    message = (
                        f"back-off {int(c.backoff)}s restarting failed container={c.name} "
                        f"pod={self.pod['metadata']['name']}"
                    )
                    c.state = {"waiting": {"reason": "CrashLoopBackOff", "message": message}}
            self.state.update(self.deleting.is_set())
            self._report()  # deduplicated: only changes (also readiness from probes) are sent
            if all(c.done for c in containers):
                return
            waits = [c.next_start for c in containers if c.proc is None and not c.done]
            self._sleep_until(min(waits) if waits else None)

    def _sleep_until(self, deadline: float | None) -> None:
        timeout = 30.0 if deadline is None else max(0.0, min(30.0, deadline - time.monotonic()))
        self.wake.wait(timeout)
        self.wake.clear()

    def _start(self, c: Container) -> None:
        files = self._files(c)
        ctr.prepare_files(files, restart=bool(c.container_id))
        marker = c.new_instance()
        base = dict(self.host.base_env)
        base["HOSTNAME"] = container_hostname(self.pod)
        base[ctr.CONTAINER_MARKER] = marker
        base[ctr.STATE_MARKER] = self.host.state_dir
        try:
            env = container_env(
                self.pod,
                c.spec,
                base,
                get_configmap=self.host.get_configmap,
                get_secret=self.host.get_secret,
                host_ip=self.host.host_ip,
                allocatable=self.host.allocatable,
            )
            spec = launch_spec(
                self.pod,
                c.spec,
                env=env,
                volumes={name: v.path for name, v in self.volumes.volumes.items()},
                files=files,
                hosts_file=self.hosts_file,
                pod_dir=self.dir,
                hostname=base["HOSTNAME"],
                keep=self.host.keep,
            )
        except (LookupError, ValueError, ApiError) as exc:
            c.state = {"waiting": {"reason": "CreateContainerConfigError", "message": str(exc)}}
            c.container_id = ""
            c.next_start = time.monotonic() + 2
            self._event("Warning", "Failed", f"Error: {exc}")
            return
        proc = self.host.runtime.start(files, spec)
        c.proc = proc
        c.state = {"running": {"startedAt": now_rfc3339()}}
        c.env = spec["env"]
        c.ready = "readinessProbe" not in c.spec
        c.started_ok = "startupProbe" not in c.spec
        c.unhealthy = ""
        if not c.init:
            self._start_probes(c, proc.pid, startup=True)
        threading.Thread(target=self._waiter, args=(proc,), daemon=True, name=f"wait-{proc.pid}").start()
        self._event("Normal", "Started", f"Started container {c.name} (pid {proc.pid})")
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
                    self._event("Warning", "Unhealthy", f"Readiness probe failed: {message}")
            else:
                what = "Startup" if kind == "startup" else "Liveness"
                c.unhealthy = f"{what} probe failed: {message}"
                self._event("Warning", "Unhealthy", c.unhealthy)
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
        if c.proc is None:
            return
        self._event("Normal", "Killing", f"Container {c.name} failed a probe ({c.unhealthy}), will be restarted")
        c.unhealthy = ""
        probe = c.spec.get("livenessProbe") or c.spec.get("startupProbe") or {}
        grace = probe.get("terminationGracePeriodSeconds")
        ctr.terminate(
            c.proc, c.container_id, self._grace() if grace is None else min(float(grace), self.host.max_grace)
        )

    def _waiter(self, proc: Any) -> None:
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
        term = ctr.collect(c, proc, self._files(c))
        c.state = {"terminated": term}
        if c.done:
            return True
        if should_restart(self.restart_policy, c, term["exitCode"], self.deleting.is_set()):
            c.last_state = {"terminated": term}
            c.restart_count += 1
            c.backoff = ctr.next_backoff(c.backoff, term["startedAt"], *self.host.backoff)
            c.next_start = time.monotonic() + c.backoff
        else:
            c.done = True
        log.info("pod %s: container %s exited %d", self.key, c.name, term["exitCode"])
        return True

    # --- termination -----------------------------------------------------------------------------
    def _grace(self) -> float:
        meta, spec = self.pod["metadata"], self.pod["spec"]
        grace = meta.get("deletionGracePeriodSeconds")
        if grace is None:
            grace = spec.get("terminationGracePeriodSeconds", 30)
        cap = 5.0 if self.node_stopping else self.host.max_grace
        return float(min(max(int(grace), 0), cap))

    def _kill_all(self, grace: float) -> None:
        running = [(c, c.proc) for c in self.state.all_containers if c.proc is not None]
        if not running:
            return
        if not self.node_stopping:
            for c, _ in running:
                self._event("Normal", "Killing", f"Stopping container {c.name}")
        ctr.terminate_all(running, grace)
        for c, _ in running:
            c.done = True
            if c.proc is not None and c.proc.poll() is not None:
                self._reap(c)
            elif c.proc is not None:  # unkillable (uninterruptible sleep): report it dead anyway
                c.proc = None
                c.state = {"terminated": {"exitCode": 137, "reason": "Error", "finishedAt": now_rfc3339()}}

    def _wait_deleted(self) -> None:
        while not self.deleting.is_set():
            self.wake.wait(60)
            self.wake.clear()

    def _finish(self) -> None:
        """The pod is being deleted and everything stopped: remove it from the API (grace 0)."""
        self.volumes.teardown()
        if self.node_stopping:
            return
        for c in self.state.all_containers:
            with contextlib.suppress(OSError):
                os.unlink(self._files(c).spec)
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
            self.host.kube.delete(f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}", body)
        except ApiError as exc:
            if exc.status not in (404, 409):
                log.warning("pod %s: final delete failed: %s", self.key, exc)
        log.info("pod %s: deleted", self.key)

    # --- status ----------------------------------------------------------------------------------
    def _report(self) -> None:
        if self.gone:
            return
        with self.lock:
            current = self.pod.get("status") or {}
        status = self.state.status(current, self.host.host_ip)
        if status == self._last_status:
            return
        meta = self.pod["metadata"]
        path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status"
        body = {"metadata": {"uid": self.uid}, "status": status}
        for attempt in range(5):
            try:
                updated = self.host.kube.patch(path, body, kind="merge-patch")
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
            except Exception as exc:
                log.warning("pod %s: status update error (%s), attempt %d", self.key, exc, attempt + 1)
            time.sleep(0.5 * (attempt + 1))
