"""One chaos run on a local cluster: submit the plan's jobs, fire its faults, wait for every job to finish, judge.

``run(options, cluster_env)`` returns the result (the JSON ``bench/chaos.py`` prints last; the chaos test asserts
on it). The cluster is ``localcluster/cluster.sh``'s, selected by ``cluster_env`` (``FTO_STATE_DIR``,
``FTO_APISERVER_PORT``) and started when it is not running; the operator is ``python -m ftoperator`` with the repo's
RBAC (:class:`tests.support.operator_process.OperatorProcess`); the bucket is a GCS emulator of the run's own.
"""

from __future__ import annotations

import dataclasses
import os
import random
import socket
import sys
import threading
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ftcrd.names import GROUP, LABEL_JOB, PLURAL, VERSION
from ftcrd.types import TERMINAL_PHASES
from ftdev import cluster as localcluster
from ftdev.gcs import GcsEmulator
from processnode.kube import ApiError, Kube

from tests.chaos import verdict
from tests.chaos.faults import Faults, retry
from tests.chaos.observe import Recorder, running_containers, trainer_processes
from tests.chaos.schedule import BENCH_FAULTS, JobPlan, Plan, plan
from tests.support.cluster import Cluster, wait_for
from tests.support.ftj import dataset_configmap, tiny_ftj
from tests.support.operator_process import OperatorProcess, install_crd_and_rbac

TINY_ENV = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "FTJ_REPORT_INTERVAL": "1"}
LABELLED_KINDS = (
    ("/api/v1", "pods", "Pod"),
    ("/apis/batch/v1", "jobs", "Job"),
    ("/api/v1", "services", "Service"),
    ("/api/v1", "configmaps", "ConfigMap"),
    ("/api/v1", "persistentvolumeclaims", "PersistentVolumeClaim"),
)


@dataclasses.dataclass(frozen=True)
class Options:
    seed: int
    jobs: int = 30
    tiny: int = 0
    faults: Mapping[str, int] = dataclasses.field(default_factory=lambda: dict(BENCH_FAULTS))
    submit_window: float = 30.0
    fault_window: tuple[float, float] = (5.0, 75.0)
    train_seconds: tuple[float, float] = (15.0, 60.0)
    deadline: float = 900.0
    """Seconds after the start by which every job must have finished; those that have not are ``stuck``."""
    settle: float = 60.0
    """Seconds after the last job finished within which what it left behind must be gone (garbage collection)."""
    backoff_limit: int = 6
    resync_seconds: float = 5.0
    keep: bool = False

    def plan(self) -> Plan:
        return plan(
            self.seed,
            jobs=self.jobs,
            tiny=self.tiny,
            faults=self.faults,
            submit_window=self.submit_window,
            fault_window=self.fault_window,
            train_seconds=self.train_seconds,
        )


def job_body(job: JobPlan, gcs: GcsEmulator, backoff_limit: int) -> dict[str, Any]:
    env = {**gcs.env(), "FTJ_UPLOAD_RETRIES": "3", "FTJ_UPLOAD_BACKOFF": "0.5"}
    spec: dict[str, Any] = {
        "output.bucket": gcs.bucket,
        "output.prefix": "chaos",
        "runPolicy.backoffLimit": backoff_limit,
    }
    if job.tiny:
        env.update(TINY_ENV)
        spec.update({"hyperparameters.epochs": 1, "hyperparameters.examples": 32, "hyperparameters.evalEvery": 1000})
    else:
        env.update(
            FAKE_TRAINER_SLEEP=str(job.train_seconds),
            FAKE_TRAINER_STEPS="8",
            FAKE_TRAINER_REPORT="1",
            FAKE_TRAINER_UPLOAD="1",
        )
        spec.update({"resources.cpu": "100m", "resources.memory": "256Mi"})
    return tiny_ftj(job.name, env=env, fake=not job.tiny, **spec)


def private_cluster_env(state_dir: str) -> dict[str, str]:
    """``FTO_STATE_DIR``/``FTO_APISERVER_PORT`` for a second cluster beside the developer's: ``state_dir`` and an
    apiserver port whose derived ports (localcluster/cluster.sh: etcd at port-4064 and port-4063, the
    controller-manager, scheduler and process node at port+1..3) are all free now."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 60000)
        ports = (port - 4064, port - 4063, port, port + 1, port + 2, port + 3)
        if all(port_free(p) for p in ports):
            return {"FTO_STATE_DIR": state_dir, "FTO_APISERVER_PORT": str(port)}
    raise RuntimeError("no free port block for a private cluster")


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class Run:
    def __init__(self, options: Options, cluster_env: Mapping[str, str], workdir: Path) -> None:
        self.options, self.cluster_env, self.workdir = options, dict(cluster_env), workdir
        self.plan = options.plan()
        self.namespace = f"chaos-{options.seed}-{uuid.uuid4().hex[:5]}"
        self.state_dir = str(Path(self.cluster_env["FTO_STATE_DIR"]).resolve())
        self.submitted: list[str] = []
        self.stop = threading.Event()

    # -- setup --------------------------------------------------------------------------------------

    def _cluster(self) -> Cluster:
        env = self.cluster_env
        kubeconfig = localcluster.up(env=env)
        return Cluster(kubeconfig=kubeconfig, state_dir=Path(self.state_dir), env={**os.environ, **env})

    def _namespace(self, cluster: Cluster) -> None:
        cluster.kubectl("create", "namespace", self.namespace)
        wait_for(
            lambda: (
                cluster.kubectl("get", "configmap", "kube-root-ca.crt", "-n", self.namespace, check=False).returncode
                == 0
            ),
            60,
            0.3,
            "kube-root-ca.crt in the chaos namespace",
        )
        cluster.apply(dataset_configmap(), self.namespace)

    def _submit(self, kube: Kube, gcs: GcsEmulator, t0: float) -> None:
        path = f"/apis/{GROUP}/{VERSION}/namespaces/{self.namespace}/{PLURAL}"
        for job in sorted(self.plan.jobs, key=lambda j: j.submit_at):
            if self.stop.wait(max(0.0, t0 + job.submit_at - time.monotonic())):
                return
            body = job_body(job, gcs, self.options.backoff_limit)
            try:
                retry(f"create {job.name}", lambda body=body: kube.post(path, body))  # type: ignore[misc]
            except ApiError as exc:
                if exc.status != 409:  # 409: an earlier try went through before the apiserver went away
                    print(f"chaos: cannot create {job.name}: {exc}", file=sys.stderr)
                    continue
            self.submitted.append(job.name)

    # -- observing ----------------------------------------------------------------------------------

    def _ftjs(self, kube: Kube) -> list[dict[str, Any]]:
        path = f"/apis/{GROUP}/{VERSION}/namespaces/{self.namespace}/{PLURAL}"
        return list(retry("list FineTuneJobs", lambda: kube.get(path)).get("items") or [])

    def _leftovers(self, kube: Kube) -> list[str]:
        """Objects labelled for a FineTuneJob without a live controller, and trainer processes without a running
        container: what the run left behind."""
        objects: list[dict[str, Any]] = []
        for prefix, plural, kind in LABELLED_KINDS:
            path = f"{prefix}/namespaces/{self.namespace}/{plural}"
            items = retry(f"list {plural}", lambda path=path: kube.get(path, labelSelector=LABEL_JOB))  # type: ignore[misc]
            objects += [{**o, "kind": kind} for o in items.get("items") or []]
        live = {f["metadata"]["uid"] for f in self._ftjs(kube)} | {
            o["metadata"]["uid"] for o in objects if o["kind"] == "Job" and not o["metadata"].get("deletionTimestamp")
        }
        pods = [o for o in objects if o["kind"] == "Pod"]
        running = running_containers(pods)
        stray = [
            f"process {pids} of container {cid}"
            for cid, pids in trainer_processes(self.state_dir, self.namespace).items()
            if cid not in running
        ]
        return verdict.orphaned(objects, live) + stray

    # -- the run ------------------------------------------------------------------------------------

    def execute(self) -> dict[str, Any]:
        cluster = self._cluster()
        install_crd_and_rbac(cluster)
        kube = Kube(str(cluster.kubeconfig))
        operator = OperatorProcess(
            cluster,
            self.workdir,
            name=f"chaos-operator-{self.options.seed}",
            env={"FTO_RESYNC_SECONDS": str(self.options.resync_seconds), "FTO_LOG_FORMAT": "plain"},
        )
        with GcsEmulator() as gcs:
            self._namespace(cluster)
            operator.start()
            recorder = Recorder(kube, self.namespace).start()
            t0 = time.monotonic()
            faults = Faults(kube, self.namespace, operator, self.cluster_env, t0)
            threads = [
                threading.Thread(target=self._submit, args=(kube, gcs, t0), daemon=True, name="chaos-submit"),
                threading.Thread(
                    target=faults.run, args=(self.plan.faults, self.stop), daemon=True, name="chaos-faults"
                ),
            ]
            for t in threads:
                t.start()
            try:
                ftjs = self._wait(kube, threads, faults, t0)
                wall = time.monotonic() - t0
                left = self._settle(kube)
                settle = time.monotonic() - t0 - wall
                ftjs = self._ftjs(kube)
                result = self._judge(ftjs, recorder, faults, gcs, left)
            finally:
                self.stop.set()
                recorder.stop()
                faults.wait(60)
                operator.stop()
                if not self.options.keep:
                    cluster.kubectl("delete", "namespace", self.namespace, "--wait=false", check=False)
        result.update(
            wall_s=round(wall, 1),
            settle_s=round(settle, 1),
            namespace=self.namespace,
            operator_log=str(operator.log_path),
            operator_starts=operator.starts,
        )
        return result

    def _wait(self, kube: Kube, threads: list[threading.Thread], faults: Faults, t0: float) -> list[dict[str, Any]]:
        """Until every fault has been made, every job submitted and finished, and the operator is back; or the
        deadline."""
        deadline = t0 + self.options.deadline
        while True:
            ftjs = self._ftjs(kube)
            done = not any(t.is_alive() for t in threads) and all(verdict.phase_of(f) in TERMINAL_PHASES for f in ftjs)
            if done or time.monotonic() > deadline:
                self.stop.set()
                faults.wait(120)
                return ftjs
            time.sleep(1.0)

    def _settle(self, kube: Kube) -> list[str]:
        deadline = time.monotonic() + self.options.settle
        while True:
            left = self._leftovers(kube)
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(1.0)

    def _judge(
        self, ftjs: list[dict[str, Any]], recorder: Recorder, faults: Faults, gcs: GcsEmulator, left: list[str]
    ) -> dict[str, Any]:
        client = gcs.client()

        def read(bucket: str, name: str) -> bytes | None:
            blob = client.bucket(bucket).blob(name)
            return blob.download_as_bytes() if blob.exists() else None

        problems = {
            f["metadata"]["name"]: p
            for f in ftjs
            if verdict.phase_of(f) == "Succeeded" and (p := verdict.artifact_problem(f["status"], read))
        }
        extra = verdict.extra_jobs(ftjs, recorder.jobs(), faults.deleted_jobs)
        pods = recorder.duplicate_pods()
        stuck = verdict.stuck(ftjs)
        return {
            "seed": self.options.seed,
            "submitted": len(self.submitted),
            "terminal": verdict.terminal_counts(ftjs),
            "stuck": len(stuck),
            "duplicates": len(pods) + sum(e["jobs"] - e["expected"] for e in extra.values()),
            "unverified": len(problems),
            "orphans": len(left),
            "failed_reasons": verdict.failed_reasons(ftjs),
            "restarts": sum(int((f.get("status") or {}).get("restarts") or 0) for f in ftjs),
            "jobs_created": sum(len(v) for v in recorder.jobs().values()),
            "detail": {
                "stuck": stuck,
                "duplicate_pods": pods,
                "extra_jobs": extra,
                "unverified": problems,
                "orphans": left,
            },
            "faults": faults.log,
            "loadavg_1m": round(os.getloadavg()[0], 1),
        }


def run(options: Options, cluster_env: Mapping[str, str], workdir: Path) -> dict[str, Any]:
    return Run(options, cluster_env, workdir).execute()
