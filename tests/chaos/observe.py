"""Watching a chaos run: every Job and trainer pod of its namespace, through every fault.

:class:`Recorder` keeps, from watches that reconnect and relist across apiserver restarts (``processnode.kube``'s
``Kube.watch``), the uids of every Job each FineTuneJob had and, for every rank, which pods were live at once: a pod
is live from its creation until it reaches ``Succeeded``/``Failed`` or disappears. The Job controller
(``podReplacementPolicy: Failed``) and the operator's restarts (Foreground deletion) promise one live pod per rank;
two at once is a duplicate. :func:`trainer_processes` finds the local processes the process node runs for a
namespace, to tell processes that outlived their pods.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from ftcrd.names import ANN_COMPLETION_INDEX, ENV_JOB_NAMESPACE, LABEL_JOB
from processnode.container import CONTAINER_MARKER, ID_PREFIX, STATE_MARKER
from processnode.kube import Kube

Obj = dict[str, Any]
TERMINAL_POD_PHASES = ("Succeeded", "Failed")


@dataclasses.dataclass
class PodSeen:
    name: str
    ftj: str
    index: str
    live: bool


class Recorder:
    """Jobs and pods of one namespace, as the run goes (thread-safe; ``start`` / ``stop``)."""

    def __init__(self, kube: Kube, namespace: str) -> None:
        self.kube, self.namespace = kube, namespace
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.job_uids: dict[str, set[str]] = defaultdict(set)
        self.pods: dict[str, PodSeen] = {}
        self.overlaps: dict[frozenset[str], dict[str, Any]] = {}
        self.threads: list[threading.Thread] = []
        self.t0 = time.monotonic()

    def start(self) -> Recorder:
        ns = self.namespace
        for path, handler, relisted in (
            (f"/apis/batch/v1/namespaces/{ns}/jobs", self._on_job, None),
            (f"/api/v1/namespaces/{ns}/pods", self._on_pod, self._on_pods_relisted),
        ):
            t = threading.Thread(target=self._watch, args=(path, handler, relisted), daemon=True, name=f"chaos{path}")
            t.start()
            self.threads.append(t)
        return self

    def stop(self) -> None:
        self.stopping.set()

    def _watch(self, path: str, handler: Callable[[str, Obj], None], relisted: Any) -> None:
        self.kube.watch(path, handler, self.stopping, relisted=relisted, labelSelector=LABEL_JOB)

    # -- events ------------------------------------------------------------------------------------

    def _on_job(self, etype: str, job: Obj) -> None:
        ftj = ((job.get("metadata") or {}).get("labels") or {}).get(LABEL_JOB)
        if ftj:
            with self.lock:
                self.job_uids[ftj].add(job["metadata"]["uid"])

    def _on_pods_relisted(self, pods: list[Obj]) -> None:
        present = {p["metadata"]["uid"] for p in pods}
        with self.lock:
            for uid, seen in self.pods.items():
                if uid not in present:
                    seen.live = False  # deleted while the watch was down
        for pod in pods:
            self._on_pod("ADDED", pod)

    def _on_pod(self, etype: str, pod: Obj) -> None:
        md = pod.get("metadata") or {}
        ftj = (md.get("labels") or {}).get(LABEL_JOB)
        if not ftj:
            return
        index = str((md.get("annotations") or {}).get(ANN_COMPLETION_INDEX, "0"))
        live = etype != "DELETED" and (pod.get("status") or {}).get("phase") not in TERMINAL_POD_PHASES
        with self.lock:
            seen = self.pods.setdefault(md["uid"], PodSeen(md["name"], ftj, index, live))
            seen.live = live
            if not live:
                return
            same_rank = [p.name for p in self.pods.values() if p.live and (p.ftj, p.index) == (ftj, index)]
            if len(same_rank) > 1:
                key = frozenset(same_rank)
                self.overlaps.setdefault(
                    key,
                    {"ftj": ftj, "rank": index, "pods": sorted(same_rank), "at": round(time.monotonic() - self.t0, 1)},
                )

    # -- results -----------------------------------------------------------------------------------

    def duplicate_pods(self) -> list[dict[str, Any]]:
        with self.lock:
            return sorted(self.overlaps.values(), key=lambda o: o["at"])

    def jobs(self) -> dict[str, set[str]]:
        with self.lock:
            return {k: set(v) for k, v in self.job_uids.items()}


def trainer_processes(state_dir: str, namespace: str) -> dict[str, list[int]]:
    """Container id (``processnode://…``) -> pids of the processes the process node of ``state_dir`` started for
    pods of ``namespace`` (found by the markers it puts in every container's environment)."""
    want_state = f"{STATE_MARKER}={state_dir}".encode()
    want_ns = f"{ENV_JOB_NAMESPACE}={namespace}".encode()
    found: dict[str, list[int]] = defaultdict(list)
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if want_state not in env or want_ns not in env:
            continue
        marker = next((e.split(b"=", 1)[1] for e in env if e.startswith(CONTAINER_MARKER.encode() + b"=")), None)
        if marker:
            found[ID_PREFIX + marker.decode()].append(int(entry.name))
    return dict(found)


def running_containers(pods: list[Obj]) -> set[str]:
    """Container ids the API reports running."""
    return {
        str(cs.get("containerID"))
        for p in pods
        for cs in (p.get("status") or {}).get("containerStatuses") or []
        if "running" in (cs.get("state") or {}) and cs.get("containerID")
    }
