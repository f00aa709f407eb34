"""The Node: registration, Lease heartbeats, status updates, the pod and Service watches, one worker per pod."""

from __future__ import annotations

import glob
import logging
import os
import platform
import shutil
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from . import __version__
from .container import Runtime
from .hosts import Hosts
from .kube import ApiError, Kube, now_micro, now_rfc3339
from .logserver import LogServer
from .nodeconfig import NodeConfig, pod_base_env, pod_keep_paths
from .podstatus import pod_key
from .worker import PodHost, PodWorker

Obj = dict[str, Any]
log = logging.getLogger(__name__)

LEASE_DURATION = 40
LEASE_RENEW = 10
STATUS_EVERY = 30


class ProcessNode:
    """Registers the Node and runs a :class:`PodWorker` per pod bound to it."""

    def __init__(self, cfg: NodeConfig) -> None:
        self.cfg = cfg
        self.kube = Kube(cfg.kubeconfig)
        self.name = cfg.node_name
        self.host_ip = cfg.host_ip
        self.pods_dir = os.path.join(cfg.state_dir, "pods")
        os.makedirs(self.pods_dir, exist_ok=True)
        self.allocatable = {
            "cpu": cfg.cpu,
            "memory": cfg.memory,
            "pods": cfg.pods,
            "ephemeral-storage": cfg.ephemeral_storage,
        }
        if cfg.gpus and cfg.gpus != "0":
            self.allocatable["nvidia.com/gpu"] = cfg.gpus
        self.hosts = Hosts()
        self.workers: dict[str, PodWorker] = {}
        self.workers_lock = threading.Lock()
        self.stop_event = threading.Event()
        self.boot_id = str(uuid.uuid4())
        unshare = shutil.which("unshare") or "/usr/bin/unshare"
        self.pod_host = PodHost(
            kube=self.kube,
            pods_dir=self.pods_dir,
            state_dir=cfg.state_dir,
            host_ip=cfg.host_ip,
            allocatable=self.allocatable,
            base_env=pod_base_env(cfg),
            keep=pod_keep_paths(cfg),
            max_grace=cfg.max_grace,
            backoff=cfg.backoff,
            runtime=Runtime(
                unshare_cmd=[unshare, "--mount", "--uts", "--propagation", "private", "--"],
                python=sys.executable,
                launcher=os.path.join(os.path.dirname(os.path.abspath(__file__)), "launch.py"),
            ),
            hosts=self.hosts,
            get_configmap=self.get_configmap,
            get_secret=self.get_secret,
            event=self.event,
            done=self.worker_done,
        )

    # --- API helpers for workers -----------------------------------------------------------------
    def _get_optional(self, path: str) -> Obj | None:
        for attempt in range(10):
            try:
                obj: Obj = self.kube.get(path)
                return obj
            except ApiError as exc:
                if exc.status == 404:
                    return None
                if exc.status != 403 or attempt == 9:  # 403: the Node authorizer's graph lags
                    raise
                time.sleep(0.3)
        return None

    def get_configmap(self, ns: str, name: str) -> Obj | None:
        return self._get_optional(f"/api/v1/namespaces/{ns}/configmaps/{name}")

    def get_secret(self, ns: str, name: str) -> Obj | None:
        return self._get_optional(f"/api/v1/namespaces/{ns}/secrets/{name}")

    def event(self, pod: Obj, etype: str, reason: str, message: str) -> None:
        meta = pod["metadata"]
        ts = now_rfc3339()
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
                "resourceVersion": meta.get("resourceVersion"),
            },
            "reason": reason,
            "message": message[:1024],
            "type": etype,
            "source": {"component": "kubelet", "host": self.name},
            "reportingComponent": "kubelet",
            "reportingInstance": self.name,
            "firstTimestamp": ts,
            "lastTimestamp": ts,
            "count": 1,
        }
        try:
            self.kube.post(f"/api/v1/namespaces/{meta['namespace']}/events", body)
        except Exception as exc:
            log.debug("event %s for %s not posted: %s", reason, pod_key(pod), exc)

    # --- node object -----------------------------------------------------------------------------
    def _node_status(self) -> Obj:
        ts = now_rfc3339()

        def cond(ctype: str, status: str, reason: str, message: str) -> Obj:
            return {
                "type": ctype,
                "status": status,
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": ts,
                "lastTransitionTime": self._started,
            }

        status: Obj = {
            "capacity": dict(self.allocatable),
            "allocatable": dict(self.allocatable),
            "conditions": [
                cond(
                    "MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"
                ),
                cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                cond("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
                cond("Ready", "True", "KubeletReady", "processnode is posting ready status"),
            ],
            "addresses": [{"type": "InternalIP", "address": self.host_ip}, {"type": "Hostname", "address": self.name}],
            "nodeInfo": {
                "machineID": self.boot_id.replace("-", ""),
                "systemUUID": self.boot_id,
                "bootID": self.boot_id,
                "kernelVersion": platform.release(),
                "osImage": f"processnode {__version__} on {socket.gethostname()}",
                "containerRuntimeVersion": f"processnode://{__version__}",
                "kubeletVersion": self._version,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": _arch(),
            },
        }
        if self.cfg.kubelet_port:
            status["daemonEndpoints"] = {"kubeletEndpoint": {"Port": self.cfg.kubelet_port}}
        return status

    def register(self) -> None:
        self._started = now_rfc3339()
        try:
            self._version = str(self.kube.get("/version")["gitVersion"])
        except Exception:
            self._version = "v0.0.0-processnode"
        labels = {
            "kubernetes.io/hostname": self.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": _arch(),
            "beta.kubernetes.io/os": "linux",
            "beta.kubernetes.io/arch": _arch(),
            **self.cfg.labels,
        }
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.name, "labels": labels},
            "spec": {},
            "status": self._node_status(),
        }
        while not self.stop_event.is_set():
            try:
                try:
                    self.kube.post("/api/v1/nodes", node)
                    log.info("registered Node/%s", self.name)
                except ApiError as exc:
                    if exc.status != 409:
                        raise
                    self.kube.patch(f"/api/v1/nodes/{self.name}", {"metadata": {"labels": labels}})
                    log.info("Node/%s already registered", self.name)
                self._post_status()
                self._renew_lease()
                return
            except Exception as exc:
                log.warning("node registration failed (%s); retrying", exc)
                self.stop_event.wait(2)

    def _post_status(self) -> None:
        self.kube.patch(f"/api/v1/nodes/{self.name}/status", {"status": self._node_status()})

    def _renew_lease(self) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.name}"
        spec = {"holderIdentity": self.name, "leaseDurationSeconds": LEASE_DURATION, "renewTime": now_micro()}
        try:
            self.kube.patch(path, {"spec": spec}, kind="merge-patch")
        except ApiError as exc:
            if exc.status != 404:
                raise
            node = self.kube.get(f"/api/v1/nodes/{self.name}")
            self.kube.post(
                "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
                {
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {
                        "name": self.name,
                        "namespace": "kube-node-lease",
                        "ownerReferences": [
                            {"apiVersion": "v1", "kind": "Node", "name": self.name, "uid": node["metadata"]["uid"]}
                        ],
                    },
                    "spec": spec,
                },
            )

    def _heartbeat_loop(self) -> None:
        last_status = time.monotonic()
        while not self.stop_event.wait(LEASE_RENEW):
            try:
                self._renew_lease()
                if time.monotonic() - last_status >= STATUS_EVERY:
                    self._post_status()
                    last_status = time.monotonic()
            except ApiError as exc:
                if exc.status == 404 and "nodes" in str(exc):
                    log.warning("Node/%s was deleted; registering again", self.name)
                    self.register()
                else:
                    log.warning("heartbeat failed: %s", exc)
            except Exception as exc:
                log.warning("heartbeat failed: %s", exc)

    # --- pods ------------------------------------------------------------------------------------
    def _on_pod(self, etype: str, pod: Obj) -> None:
        uid = pod["metadata"]["uid"]
        with self.workers_lock:
            worker = self.workers.get(uid)
            if etype == "DELETED":
                if worker:
                    worker.update(pod)  # its last deletionGracePeriodSeconds (0 for --force)
                    worker.removed()
                return
            if worker is not None:
                worker.update(pod)
                return
            worker = PodWorker(self.pod_host, pod)
            self.workers[uid] = worker
        if pod["metadata"].get("deletionTimestamp"):
            worker.deleting.set()
        worker.start()

    def _on_relist(self, pods: list[Obj]) -> None:
        uids = {p["metadata"]["uid"] for p in pods}
        with self.workers_lock:
            vanished = [w for uid, w in self.workers.items() if uid not in uids]
        for w in vanished:
            w.removed()
        for p in pods:
            self._on_pod("ADDED", p)

    def worker_done(self, worker: PodWorker) -> None:
        with self.workers_lock:
            if self.workers.get(worker.uid) is worker:
                del self.workers[worker.uid]

    def locate_log(self, namespace: str, pod: str, container: str, previous: bool) -> tuple[str, bool]:
        """Path of a container's log file and whether the container still runs (for ``kubectl logs -f``)."""
        key = f"{namespace}/{pod}"
        with self.workers_lock:
            worker = next((w for w in self.workers.values() if w.key == key), None)
        if worker is not None:
            pod_dir, running = worker.dir, worker.container_running(container)
        else:  # a finished pod: its directory stays until the pod is deleted
            candidates = glob.glob(os.path.join(self.pods_dir, glob.escape(f"{namespace}_{pod}_") + "*"))
            if not candidates:
                raise FileNotFoundError(f"pod {key} has no logs on {self.name}")
            pod_dir, running = max(candidates, key=os.path.getmtime), False
        path = os.path.join(pod_dir, f"{container}.previous.log" if previous else f"{container}.log")
        if not os.path.exists(path):
            what = "previous terminated container" if previous else "container"
            raise FileNotFoundError(f'{what} "{container}" in pod "{pod}" not found')
        return path, running

    def _on_services(self) -> None:
        services: dict[tuple[str, str], bool] = {}
        lock = threading.Lock()

        def handler(etype: str, svc: Obj) -> None:
            key = (svc["metadata"]["namespace"], svc["metadata"]["name"])
            with lock:
                if etype == "DELETED":
                    services.pop(key, None)
                else:
                    services[key] = True
                snapshot = dict(services)
            self.hosts.set_services(snapshot)

        def relisted(items: list[Obj]) -> None:
            with lock:
                services.clear()
                for s in items:
                    services[(s["metadata"]["namespace"], s["metadata"]["name"])] = True
                snapshot = dict(services)
            self.hosts.set_services(snapshot)

        self.kube.watch("/api/v1/services", handler, self.stop_event, relisted=relisted)

    def _refresh_loop(self) -> None:
        while not self.stop_event.wait(self.cfg.sync_period):
            with self.workers_lock:
                workers = list(self.workers.values())
            for w in workers:
                try:
                    w.refresh_volumes()
                except Exception as exc:
                    log.warning("pod %s: volume refresh failed: %s", w.key, exc)

    def _thread(self, target: Callable[[], None], name: str) -> threading.Thread:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        return t

    def run(self) -> None:
        self.register()
        self._thread(self._heartbeat_loop, "heartbeat")
        self._thread(self._on_services, "services")
        self._thread(self._refresh_loop, "refresh")
        if self.cfg.kubelet_port:
            cfg = self.cfg
            server = LogServer(cfg.host_ip, cfg.kubelet_port, cfg.serving_cert, cfg.serving_key, cfg.client_ca)
            self._thread(lambda: server.serve(self.locate_log, self.stop_event), "logserver")
        self._thread(
            lambda: self.kube.watch(
                "/api/v1/pods",
                self._on_pod,
                self.stop_event,
                relisted=self._on_relist,
                fieldSelector=f"spec.nodeName={self.name}",
            ),
            "pods",
        )
        log.info("processnode %s running (state %s)", self.name, self.cfg.state_dir)
        if self.cfg.ready_file:
            with open(self.cfg.ready_file, "w") as f:
                f.write(str(os.getpid()))
        self.stop_event.wait()

    def shutdown(self) -> None:
        """Stop watching, stop every pod's processes and unmount their volumes (the API objects stay)."""
        self.stop_event.set()
        with self.workers_lock:
            workers = list(self.workers.values())
        for w in workers:
            w.stop()
        deadline = time.monotonic() + 10
        for w in workers:
            w.join(max(0.1, deadline - time.monotonic()))


def _arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)
