"""Kueue objects for tests: a ResourceFlavor, a ClusterQueue with an ``nvidia.com/gpu`` quota and a LocalQueue in the
test's namespace (all uniquely named, deleted after), PriorityClasses, and FineTuneJobs of the fake trainer held
open by a gate file until the test releases them (``tests/operator/fake_trainer.py``, FAKE_TRAINER_GATE), or of any
trainer put on the queue with :meth:`Queues.spec`."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from ftcrd import names

from tests.support.cluster import Cluster, unique_name
from tests.support.ftj import get_ftj, submit, tiny_ftj
from tests.support.operator_process import TEST_PRIORITY_CLASSES

KUEUE_API = "kueue.x-k8s.io/v1beta2"
SECOND_NODE = "process-node-2"
# Everything but GPUs is plentiful: the tests are about the GPU quota.
CPU_QUOTA, MEMORY_QUOTA = "64", "256Gi"
PRIORITY_VALUES = (100, 1000)  # of TEST_PRIORITY_CLASSES: low, high


class Queues:
    def __init__(self, cluster: Cluster, namespace: str) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.flavor = unique_name("fto-flavor")
        self.cluster_queue = unique_name("fto-cq")
        self.local_queue = "team"
        self.made_priority_classes: list[str] = []
        self.gates = Path(tempfile.mkdtemp(prefix="fto-kueue-gates-"))

    def create(self, gpus: int, *, preempt_lower_priority: bool = False) -> Queues:
        """ResourceFlavor, ClusterQueue (``gpus`` nvidia.com/gpu) and LocalQueue ``team``; waits until it is Active."""
        cq_spec: dict[str, Any] = {
            "namespaceSelector": {},
            "resourceGroups": [
                {
                    "coveredResources": ["cpu", "memory", "nvidia.com/gpu"],
                    "flavors": [
                        {
                            "name": self.flavor,
                            "resources": [
                                {"name": "cpu", "nominalQuota": CPU_QUOTA},
                                {"name": "memory", "nominalQuota": MEMORY_QUOTA},
                                {"name": "nvidia.com/gpu", "nominalQuota": gpus},
                            ],
                        }
                    ],
                }
            ],
        }
        if preempt_lower_priority:
            cq_spec["preemption"] = {"withinClusterQueue": "LowerPriority"}
        self.cluster.apply(
            [
                {"apiVersion": KUEUE_API, "kind": "ResourceFlavor", "metadata": {"name": self.flavor}},
                {
                    "apiVersion": KUEUE_API,
                    "kind": "ClusterQueue",
                    "metadata": {"name": self.cluster_queue},
                    "spec": cq_spec,
                },
                {
                    "apiVersion": KUEUE_API,
                    "kind": "LocalQueue",
                    "metadata": {"name": self.local_queue, "namespace": self.namespace},
                    "spec": {"clusterQueue": self.cluster_queue},
                },
            ]
        )
        self.cluster.kubectl("wait", "--for=condition=Active", f"clusterqueue/{self.cluster_queue}", "--timeout=60s")
        self.cluster.kubectl(
            "wait", "--for=condition=Active", f"localqueue/{self.local_queue}", "-n", self.namespace, "--timeout=60s"
        )
        return self

    def priority_classes(self) -> tuple[str, str]:
        """The PriorityClasses (low, high) the test operator allows (values 100 and 1000), deleted after."""
        for name, value in zip(TEST_PRIORITY_CLASSES, PRIORITY_VALUES, strict=True):
            self.cluster.apply(
                {
                    "apiVersion": "scheduling.k8s.io/v1",
                    "kind": "PriorityClass",
                    "metadata": {"name": name},
                    "value": value,
                }
            )
            self.made_priority_classes.append(name)
        low, high = TEST_PRIORITY_CLASSES
        return low, high

    def spec(self, *, nodes: int = 1, gpus: int = 2, priority_class: str | None = None) -> dict[str, Any]:
        """``tiny_ftj`` overrides that put a job on the LocalQueue with ``nodes`` x ``gpus`` GPUs (any trainer)."""
        spec: dict[str, Any] = {
            "resources.nodes": nodes,
            "resources.gpusPerNode": gpus,
            "resources.processesPerNode": 1,
            "resources.cpu": "1",
            "resources.memory": "1Gi",
            "runPolicy.queueName": self.local_queue,
            "runPolicy.backoffLimit": 3,
        }
        if priority_class:
            spec["resources.priorityClassName"] = priority_class
        return spec

    def submit(self, name: str, *, nodes: int = 1, gpus: int = 2, priority_class: str | None = None) -> str:
        """A fake-trainer FineTuneJob on the LocalQueue that runs until :meth:`release`."""
        body = tiny_ftj(
            name,
            fake=True,
            env={"FAKE_TRAINER_GATE": str(self.gates / name)},
            **self.spec(nodes=nodes, gpus=gpus, priority_class=priority_class),
        )
        submit(self.cluster, self.namespace, body)
        return name

    def release(self, name: str) -> None:
        (self.gates / name).touch()

    def ftj(self, name: str) -> dict[str, Any]:
        got = get_ftj(self.cluster, self.namespace, name)
        assert got is not None, name
        return got

    def status(self, name: str) -> dict[str, Any]:
        return self.ftj(name).get("status") or {}

    def by_phase(self, names: list[str]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for name in names:
            out.setdefault(self.status(name).get("phase") or "", []).append(name)
        return out

    def pods(self, name: str) -> list[dict[str, Any]]:
        return self.cluster.get_json("pods", "-l", f"{names.LABEL_JOB}={name}", namespace=self.namespace)["items"]

    def workload(self, job: str) -> dict[str, Any]:
        """The Workload Kueue made for the FineTuneJob's Job."""
        items = self.cluster.get_json("workloads.kueue.x-k8s.io", namespace=self.namespace)["items"]
        mine = [
            w
            for w in items
            if any(r.get("kind") == "Job" and r.get("name") == job for r in w["metadata"].get("ownerReferences") or [])
        ]
        assert len(mine) == 1, [w["metadata"]["name"] for w in items]
        return mine[0]

    def delete(self) -> None:
        for path in self.gates.iterdir():
            path.unlink()
        self.gates.rmdir()  # a trainer still waiting ends with its namespace
        self.cluster.kubectl(
            "delete", "finetunejobs", "--all", "-n", self.namespace, "--wait=true", "--timeout=60s", check=False
        )
        self.cluster.kubectl(
            "delete", "localqueue", self.local_queue, "-n", self.namespace, "--ignore-not-found", check=False
        )
        self.cluster.kubectl(
            "delete", "clusterqueue", self.cluster_queue, "--ignore-not-found", "--wait=false", check=False
        )
        self.cluster.kubectl("delete", "resourceflavor", self.flavor, "--ignore-not-found", "--wait=false", check=False)
        for name in self.made_priority_classes:
            self.cluster.kubectl("delete", "priorityclass", name, "--ignore-not-found", check=False)
