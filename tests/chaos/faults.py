"""Carrying out a chaos plan's faults against the local cluster, one after the other, each at its time.

* ``operator``: SIGKILL (no cleanup, its peering heartbeat lingers), started again ``down`` seconds later by a
  thread of its own, so other faults hit while it is away;
* ``apiserver`` / ``node``: ``cluster.sh stop kube-apiserver|processnode``, ``down`` seconds, ``cluster.sh up``
  (the process node stops its pods' processes on SIGTERM and adopts the pods from their API status on start);
* ``pod``: deletes one running trainer pod (default grace period), as a user or a node drain would;
* ``job``: deletes one live Job (background propagation, as ``kubectl delete job``): the operator must create it
  again and the job must still finish exactly once.

A pod or Job fault that finds nothing to hit waits a little for a candidate (``target_wait``); API calls retry through apiserver restarts (:func:`retry`).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from ftcrd.names import LABEL_JOB
from ftdev import cluster as localcluster
from processnode.kube import ApiError, Kube

from tests.chaos.schedule import APISERVER, JOB, NODE, OPERATOR, POD, Fault, choose
from tests.support.operator_process import OperatorProcess

T = TypeVar("T")
Obj = dict[str, Any]


def retry(what: str, fn: Callable[[], T], timeout: float = 120.0) -> T:
    """``fn()``, tried again while the apiserver is away (connection errors, 5xx, 429) for up to ``timeout``."""
    deadline = time.monotonic() + timeout
    delay = 0.3
    while True:
        try:
            return fn()
        except ApiError as exc:
            if (exc.status < 500 and exc.status != 429) or time.monotonic() > deadline:
                raise
        except Exception:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what}: the apiserver did not answer for {timeout:g}s") from None
        time.sleep(delay)
        delay = min(delay * 2, 2.0)


def job_is_live(job: Obj) -> bool:
    conds = (job.get("status") or {}).get("conditions") or []
    done = any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True" for c in conds)
    return not done and not job["metadata"].get("deletionTimestamp")


def pod_is_running(pod: Obj) -> bool:
    return (pod.get("status") or {}).get("phase") == "Running" and not pod["metadata"].get("deletionTimestamp")


class Faults:
    """Runs the faults of a plan (``run``, in a thread) and records what each did (``log``)."""

    def __init__(
        self,
        kube: Kube,
        namespace: str,
        operator: OperatorProcess,
        cluster_env: Mapping[str, str],
        t0: float,
        *,
        target_wait: float = 30.0,
    ) -> None:
        self.kube, self.namespace, self.operator, self.cluster_env, self.t0 = kube, namespace, operator, cluster_env, t0
        self.log: list[dict[str, Any]] = []
        self.deleted_jobs: Counter[str] = Counter()
        self.operator_lock = threading.Lock()  # one kill/start at a time
        self.helpers: list[threading.Thread] = []
        self.target_wait = target_wait

    def run(self, faults: Sequence[Fault], stop: threading.Event) -> None:
        for fault in faults:
            if stop.wait(max(0.0, self.t0 + fault.at - time.monotonic())):
                return
            started = time.monotonic()
            record = {**fault.wire(), "fired_at": round(started - self.t0, 1)}
            try:
                record["target"] = self.fire(fault)
            except Exception as exc:  # a fault that could not be made is reported, never hidden
                record["error"] = f"{type(exc).__name__}: {exc}"
            record["took_s"] = round(time.monotonic() - started, 1)
            self.log.append(record)

    def wait(self, timeout: float = 300) -> None:
        """Every component that a fault stopped runs again (the operator restarts happen in helper threads)."""
        for t in self.helpers:
            t.join(timeout)

    def fire(self, fault: Fault) -> str | None:
        if fault.kind == OPERATOR:
            return self._operator(fault.down)
        if fault.kind == APISERVER:
            return self._component("kube-apiserver", fault.down)
        if fault.kind == NODE:
            return self._component("processnode", fault.down)
        if fault.kind == POD:
            return self._delete_pod(fault.pick)
        if fault.kind == JOB:
            return self._delete_job(fault.pick)
        raise ValueError(f"unknown fault {fault.kind!r}")

    # -- components -----------------------------------------------------------------------------------

    def _operator(self, down: float) -> str:
        with self.operator_lock:
            self.operator.kill()

        def start_again() -> None:
            time.sleep(down)
            self.start_operator()

        t = threading.Thread(target=start_again, daemon=True, name="chaos-operator-restart")
        t.start()
        self.helpers.append(t)
        return f"operator killed, back in {down:g}s"

    def start_operator(self, timeout: float = 300) -> None:
        """(Re)start the operator, waiting out an apiserver restart (minting its token needs the apiserver)."""
        deadline = time.monotonic() + timeout
        while True:
            with self.operator_lock:
                if self.operator.running():
                    return
                try:
                    self.operator.start(wait_ready=False)
                    return
                except (AssertionError, OSError):
                    if time.monotonic() > deadline:
                        raise
            time.sleep(1.0)

    def _component(self, component: str, down: float) -> str:
        localcluster.stop(component, env=self.cluster_env)
        time.sleep(down)
        localcluster.up(env=self.cluster_env)
        return f"{component} down for {down:g}s, then healthy again"

    # -- objects --------------------------------------------------------------------------------------

    def _list(self, path: str) -> list[Obj]:
        listing = retry(f"list {path}", lambda: self.kube.get(path, labelSelector=LABEL_JOB))
        return list(listing.get("items") or [])

    def _candidates(self, path: str, keep: Callable[[Obj], bool]) -> dict[str, Obj]:
        """The objects at ``path`` that a fault may hit, by name; waits up to ``target_wait`` seconds for one (after
        a node restart no pod runs for a moment), so that whether a fault hits depends on the plan, not on the
        machine's speed."""
        deadline = time.monotonic() + self.target_wait
        while True:
            found = {o["metadata"]["name"]: o for o in self._list(path) if keep(o)}
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.5)

    def _delete_pod(self, pick: int) -> str | None:
        path = f"/api/v1/namespaces/{self.namespace}/pods"
        name = choose(list(self._candidates(path, pod_is_running)), pick)
        if name is None:
            return None
        with contextlib.suppress(ApiError):  # 404: it finished and went meanwhile
            retry(f"delete pod {name}", lambda: self.kube.delete(f"{path}/{name}"))
        return f"pod {name}"

    def _delete_job(self, pick: int) -> str | None:
        path = f"/apis/batch/v1/namespaces/{self.namespace}/jobs"
        jobs = self._candidates(path, job_is_live)
        name = choose(list(jobs), pick)
        if name is None:
            return None
        body: Obj = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "propagationPolicy": "Background",
            "preconditions": {"uid": jobs[name]["metadata"]["uid"]},
        }
        try:
            retry(f"delete Job {name}", lambda: self.kube.delete(f"{path}/{name}", body))
        except ApiError as exc:
            if exc.status not in (404, 409):
                raise
            return None
        self.deleted_jobs[jobs[name]["metadata"]["labels"][LABEL_JOB]] += 1
        return f"Job {name}"
