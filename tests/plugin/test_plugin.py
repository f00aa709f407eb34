"""`kubectl finetune` against the local cluster, run as kubectl runs it (``plugin/kubectl-finetune`` found on PATH).

``describe`` and ``watch`` of a running job are compared with golden text (tests/plugin/golden/; the namespace and
creation time are filled in): the job's status is driven by patching its status subresource, as the operator and
the trainer do, with no operator running. ``logs -f`` follows a pod printing lines on the process node.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
from ftcrd import names

from tests.support import ROOT
from tests.support.cluster import KUBECTL, Cluster, py_container, unique_name, wait_for
from tests.support.ftj import submit, tiny_ftj

PLUGIN_DIR = ROOT / "plugin"
GOLDEN = Path(__file__).parent / "golden"
NOW = "2026-03-01T12:00:00Z"


def plugin_env(cluster: Cluster) -> dict[str, str]:
    return {
        **cluster.env,
        "PATH": f"{PLUGIN_DIR}{os.pathsep}{Path(KUBECTL).parent}{os.pathsep}{os.environ['PATH']}",
        "KUBECTL": KUBECTL,
    }


def finetune(cluster: Cluster, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``kubectl finetune ARGS``: kubectl itself finds the plugin on PATH."""
    proc = subprocess.run(
        [KUBECTL, "finetune", *args], env=plugin_env(cluster), capture_output=True, text=True, timeout=60, check=False
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def patch_status(cluster: Cluster, namespace: str, name: str, status: dict[str, Any]) -> None:
    cluster.kubectl(
        "patch",
        "finetunejob",
        name,
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": status}),
    )


def golden(file: str, **fill: str) -> str:
    text = (GOLDEN / file).read_text()
    for key, value in fill.items():
        text = text.replace("{" + key + "}", value)
    return text


def conditions(phase: str, reason: str, message: str) -> list[dict[str, str]]:
    def cond(ctype: str, status: bool, r: str = reason, m: str = message) -> dict[str, str]:
        return {
            "type": ctype,
            "status": "True" if status else "False",
            "reason": r,
            "message": m,
            "lastTransitionTime": NOW,
        }

    return [
        cond("Created", True, "JobCreated", "Job and Service exist"),
        cond("Scheduled", True, "Scheduled", "1 trainer pod(s) bound"),
        cond("Running", phase == "Running"),
        cond("Suspended", False),
        cond("Succeeded", phase == "Succeeded"),
        cond("Failed", False),
    ]


RUNNING = {
    "phase": "Running",
    "reason": "Training",
    "message": "1/1 trainer pods running; progress 60% (60/100)",
    "startTime": "2026-03-01T11:50:00Z",
    "admissionTime": "2026-03-01T11:49:58Z",
    "attempts": 1,
    "progress": {
        "step": 60,
        "totalSteps": 100,
        "percent": 60.0,
        "etaSeconds": 245,
        "stage": "training",
        "summary": "60% (60/100)",
    },
    "metrics": {"loss": 0.3125, "rewardAccuracy": 0.75, "rewardMargin": 1.25, "learningRate": 5e-07},
    "checkpoints": [
        {"step": s, "metrics": {"loss": loss}}
        for s, loss in ((10, 0.69), (20, 0.62), (30, 0.55), (40, 0.47), (50, 0.4))
    ],
    "conditions": conditions("Running", "Training", "1/1 trainer pods running"),
}


@pytest.fixture
def job(cluster: Cluster, namespace: str, operator_rbac: Cluster) -> str:
    """A FineTuneJob nothing reconciles (the operator runs after these tests): the test writes its status."""
    name = unique_name("plugin")
    submit(cluster, namespace, tiny_ftj(name, **{"runPolicy.queueName": "team"}))
    return name


def test_describe_a_running_job_matches_golden_text(cluster: Cluster, namespace: str, job: str) -> None:
    patch_status(cluster, namespace, job, RUNNING)
    out = finetune(cluster, "describe", job, "-n", namespace).stdout
    created = cluster.get_json("finetunejob", job, namespace=namespace)["metadata"]["creationTimestamp"]
    assert out == golden("describe-running.txt", name=job, namespace=namespace, created=created)

    listed = finetune(cluster, "-n", namespace, "list").stdout.splitlines()
    assert listed[0].split() == ["NAME", "PHASE", "PROGRESS", "LOSS", "ETA", "MODEL"]
    assert listed[1].split() == [job, "Running", "[██████░░░░]", "60.0%", "0.3125", "4m", "05s", "tiny"]


class Lines:
    """A subprocess's stdout, line by line, with a timeout per line (readline alone would block forever)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc, self.lines, self.queue = proc, [], queue.Queue()  # type: ignore[var-annotated]
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.queue.put(line)
        self.queue.put(None)

    def next(self, timeout: float = 30) -> str | None:
        line = self.queue.get(timeout=timeout)
        if line is not None:
            self.lines.append(line)
        return line


def test_watch_prints_a_line_per_change_until_the_job_ends(cluster: Cluster, namespace: str, job: str) -> None:
    proc = subprocess.Popen(
        [KUBECTL, "finetune", "watch", job, "-n", namespace], env=plugin_env(cluster), stdout=subprocess.PIPE, text=True
    )
    out = Lines(proc)
    try:
        assert "Pending" in (out.next() or "")  # no status yet
        steps = [
            {
                "phase": "Running",
                "reason": "Training",
                "progress": {"step": 25, "totalSteps": 100, "percent": 25.0, "etaSeconds": 300},
                "metrics": {"loss": 0.69},
            },
            {"progress": {"step": 50, "percent": 50.0, "etaSeconds": 200}, "metrics": {"loss": 0.5}},
            {"progress": {"step": 75, "percent": 75.0, "etaSeconds": 100}, "metrics": {"loss": 0.25}},
            {
                "phase": "Uploading",
                "reason": "Uploading",
                "progress": {"step": 100, "percent": 100.0, "etaSeconds": 0, "stage": "uploading"},
            },
            {
                "phase": "Succeeded",
                "reason": "Completed",
                "artifact": {
                    "uri": "gs://bucket/models/x/",
                    "sizeBytes": 3 * 1024 * 1024,
                    "sha256": "ab" * 32,
                    "files": 4,
                },
            },
        ]
        for status in steps:
            patch_status(cluster, namespace, job, status)
            assert out.next() is not None, "watch printed nothing for a status change"
        assert (out.next() or "").startswith("Artifact:")
        assert proc.wait(30) == 0
    finally:
        proc.kill()
    assert "".join(out.lines) == golden("watch-running.txt", name=job)


def test_logs_follow_rank_zero_while_it_runs(cluster: Cluster, namespace: str, job: str, tmp_path: Path) -> None:
    gate = tmp_path / "finish"
    script = f"""
        import os, sys, time
        for i in range(3):
            print(f"step {{i}} loss 0.{{9 - i}}", flush=True)
        while not os.path.exists({str(gate)!r}):
            time.sleep(0.2)
        print("training done", flush=True)
    """
    # Rank 1's pod logs something else: the plugin follows rank 0 (completion index 0).
    for index, code in ((1, "print('rank one', flush=True)"), (0, script)):
        cluster.apply(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": f"{job}-{index}-abcde",
                    "labels": {names.LABEL_JOB: job},
                    "annotations": {names.ANN_COMPLETION_INDEX: str(index)},
                },
                "spec": {"restartPolicy": "Never", "containers": [py_container(code, name=names.CONTAINER)]},
            },
            namespace,
        )
    proc = subprocess.Popen(
        [KUBECTL, "finetune", "logs", "-f", job, "-n", namespace],
        env=plugin_env(cluster),
        stdout=subprocess.PIPE,
        text=True,
    )
    out = Lines(proc)
    try:
        assert [out.next(60) for _ in range(3)] == [f"step {i} loss 0.{9 - i}\n" for i in range(3)]
        # Still following: the pod is running, and the next line arrives when it prints it.
        assert proc.poll() is None
        assert cluster.get_json("pod", f"{job}-0-abcde", namespace=namespace)["status"]["phase"] == "Running"
        gate.touch()
        assert out.next(60) == "training done\n"
        wait_for(
            lambda: cluster.get_json("pod", f"{job}-0-abcde", namespace=namespace)["status"]["phase"] == "Succeeded",
            60,
            0.5,
            "rank 0 Succeeded",
        )
        patch_status(cluster, namespace, job, {"phase": "Succeeded", "reason": "Completed"})
        assert proc.wait(30) == 0, "logs -f ends with the job"
    finally:
        proc.kill()
    assert "rank one" not in "".join(out.lines)


def test_cancel_suspend_resume_write_what_the_api_writes(cluster: Cluster, namespace: str, job: str) -> None:
    def spec_and_annotations() -> tuple[bool, str | None]:
        ftj = cluster.get_json("finetunejob", job, namespace=namespace)
        return ftj["spec"]["runPolicy"].get("suspend", False), ftj["metadata"].get("annotations", {}).get(
            names.ANN_CANCELLED
        )

    assert "suspended" in finetune(cluster, "suspend", job, "-n", namespace).stdout
    assert spec_and_annotations() == (True, None)
    finetune(cluster, "resume", job, "-n", namespace)
    assert spec_and_annotations() == (False, None)
    finetune(cluster, "cancel", job, "-n", namespace)
    assert spec_and_annotations() == (True, "true")
    refused = finetune(cluster, "resume", job, "-n", namespace, check=False)
    assert refused.returncode != 0 and "cancelled" in refused.stderr
    missing = finetune(cluster, "describe", "no-such-job", "-n", namespace, check=False)
    assert missing.returncode == 1 and "NotFound" in missing.stderr and "Traceback" not in missing.stderr
