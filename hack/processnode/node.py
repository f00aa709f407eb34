"""The Node: registration, Lease heartbeats, status updates, the pod watch and /etc/hosts."""

from __future__ import annotations

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
from dataclasses import dataclass, field
from typing import Any

from . import __version__
from .kube import ApiError, Kube, now_micro, now_rfc3339
from .pod import PodWorker, pod_hostname, pod_key

Obj = dict[str, Any]
log = logging.getLogger(__name__)

LEASE_DURATION = 40
LEASE_RENEW = 10
STATUS_EVERY = 30


@dataclass
class NodeConfig:
    kubeconfig: str
    state_dir: str
    node_name: str = "process-node"
    apiserver_port: int = 16443
    host_ip: str = "127.0.0.1"
    cpu: str = "16"
    memory: str = "64Gi"
    pods: str = "110"
    gpus: str = "2"
    ephemeral_storage: str = "100Gi"
    venv: str = ""
    project_root: str = ""
    pythonpath: list[str] = field(default_factory=lambda: ["crds", "operator", "api", "trainer_image", "hack"])
    extra_env: dict[str, str] = field(default_factory=dict)
    pass_env: list[str] = field(
        default_factory=lambda: [
            "HF_HOME",
            "TORCH_HOME",
            "XDG_CACHE_HOME",
            "TMPDIR",
            "FTO_CACHE",
            "UV_CACHE_DIR",
            "PIP_CACHE_DIR",
        ]
    )
    max_grace: float = 30.0
    backoff: tuple[float, float] = (2.0, 60.0)
    kubelet_port: int = 0  # 0: no log server
    serving_cert: str = ""
    serving_key: str = ""
    client_ca: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    ready_file: str = ""  # written with our pid once the Node is registered and the pod watch runs
    sync_period: float = 30.0  # how often API-backed volumes are refreshed


class Hosts:
    """Per-pod ``/etc/hosts`` files, rewritten in place (same inode: they are bind-mounted)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pods: dict[str, tuple[Obj, str]] = {}  # uid -> (pod, hosts file)
        self.services: dict[tuple[str, str], bool] = {}  # (ns, name) -> present

    def register(self, pod: Obj, path: str) -> None:
        with self.lock:
            self.pods[pod["metadata"]["uid"]] = (pod, path)
            if not os.path.exists(path):
                os.makedirs(os.path.dirname(path), exist_ok=True)
                open(path, "w").close()
        self.refresh(pod["metadata"]["namespace"])

    def unregister(self, uid: str) -> None:
        with self.lock:
            entry = self.pods.pop(uid, None)
        if entry:
            self.refresh(entry[0]["metadata"]["namespace"])

    def set_services(self, services: dict[tuple[str, str], bool]) -> None:
        with self.lock:
            changed = services != self.services
            self.services = services
        if changed:
            self.refresh(None)

    def refresh(self, namespace: str | None) -> None:
        """Rewrite the hosts files of ``namespace``'s pods (all pods when None)."""
        with self.lock:
            shared: dict[str, list[str]] = {}
            for pod, path in self.pods.values():
                ns = pod["metadata"]["namespace"]
                if namespace is not None and ns != namespace:
                    continue
                if ns not in shared:
                    shared[ns] = self._namespace_lines(ns)
                content = self._render(pod, ns, shared[ns])
                try:
                    with open(path, "r+") as f:
                        if f.read() == content:
                            continue
                        f.seek(0)
                        f.write(content)
                        f.truncate()
                except OSError as exc:
                    log.debug("hosts file %s: %s", path, exc)

    def _namespace_lines(self, ns: str) -> list[str]:
        """Entries common to every pod of ``ns``: its pods' subdomain names and all Services."""
        lines: list[str] = []
        seen: set[str] = set()
        for other, _ in sorted(self.pods.values(), key=lambda e: e[0]["metadata"]["name"]):
            osub = other["spec"].get("subdomain")
            if other["metadata"]["namespace"] != ns or not osub:
                continue
            h = pod_hostname(other)
            entry = f"{h}.{osub} {h}.{osub}.{ns}.svc {h}.{osub}.{ns}.svc.cluster.local"
            if entry not in seen:
                seen.add(entry)
                lines.append("127.0.0.1\t" + entry)
        for sns, name in sorted(self.services):
            names = [name] if sns == ns else []
            names += [f"{name}.{sns}", f"{name}.{sns}.svc", f"{name}.{sns}.svc.cluster.local"]
            lines.append("127.0.0.1\t" + " ".join(names))
        return lines

    @staticmethod
    def _render(pod: Obj, ns: str, shared: list[str]) -> str:
        own = pod_hostname(pod)
        sub = pod["spec"].get("subdomain")
        names = [f"{own}.{sub}.{ns}.svc.cluster.local", own] if sub else [own]
        # The pod's own line comes first: its IP is 127.0.0.1 here, so a reverse lookup of it (what
        # socket.getfqdn() does) must find the pod's FQDN, as it would find it for a real pod IP.
        lines = [
            "# Kubernetes-managed hosts file (processnode): every pod shares the host network.",
            "127.0.0.1\t" + " ".join(names),
            "127.0.0.1\tlocalhost",
            "::1\tlocalhost ip6-localhost ip6-loopback",
            *shared,
        ]
        for alias in pod["spec"].get("hostAliases") or []:
            lines.append(f"{alias['ip']}\t" + " ".join(alias.get("hostnames") or []))
        return "\n".join(lines) + "\n"


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
        self.max_grace = cfg.max_grace
        self.backoff = cfg.backoff
        self.python = sys.executable
        self.launcher = os.path.join(os.path.dirname(os.path.abspath(__file__)), "launch.py")
        unshare = shutil.which("unshare") or "/usr/bin/unshare"
        self.unshare_cmd = [unshare, "--mount", "--uts", "--propagation", "private", "--"]
        self.base_env = self._base_env()
        self.hosts = Hosts()
        self.workers: dict[str, PodWorker] = {}
        self.workers_lock = threading.Lock()
        self.stop_event = threading.Event()
        self.boot_id = str(uuid.uuid4())

    def _base_env(self) -> dict[str, str]:
        cfg = self.cfg
        path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        env = {"PATH": f"{cfg.venv}/bin:{path}" if cfg.venv else path, "HOME": "/root", "LANG": "C.UTF-8"}
        if cfg.venv:
            env["VIRTUAL_ENV"] = cfg.venv
        if cfg.project_root:
            env["PYTHONPATH"] = ":".join(os.path.join(cfg.project_root, p) for p in cfg.pythonpath)
        env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
        for name in cfg.pass_env:
            if name in os.environ:
                env[name] = os.environ[name]
        port = str(cfg.apiserver_port)
        env.update(
            {
                "KUBERNETES_SERVICE_HOST": "127.0.0.1",
                "KUBERNETES_SERVICE_PORT": port,
                "KUBERNETES_SERVICE_PORT_HTTPS": port,
                "KUBERNETES_PORT": f"tcp://127.0.0.1:{port}",
                "KUBERNETES_PORT_443_TCP": f"tcp://127.0.0.1:{port}",
                "KUBERNETES_PORT_443_TCP_PROTO": "tcp",
                "KUBERNETES_PORT_443_TCP_PORT": port,
                "KUBERNETES_PORT_443_TCP_ADDR": "127.0.0.1",
            }
        )
        env.update(cfg.extra_env)
        return env

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
            worker = PodWorker(self, pod)
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
            from .logserver import serve_logs

            self._thread(lambda: serve_logs(self), "logserver")
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
