"""The operator on the local control plane, with its repo RBAC, driving pods on the process node.

These tests use bench/fake_trainer.py as the pods' entrypoint (torchrun's args, the trainer's exit codes,
termination message and progress reporting, but no torch) to cover lifecycle paths quickly; the real
trainer runs in test_operator_e2e.py.
"""

from __future__ import annotations

import json

import pytest

from tests.support.cluster import wait_for
from tests.support.ftj import (
    children,
    events_for,
    get_ftj,
    processes_with_env,
    submit,
    tiny_ftj,
    trainer_identity,
    wait_phase,
)

pytestmark = pytest.mark.cluster


def test_operator_runs_without_admin_rights(running_operator, cluster):
    kc = str(running_operator.kubeconfig)

    def can(*args: str) -> bool:
        proc = cluster.kubectl("--kubeconfig", kc, "auth", "can-i", *args, check=False)
        return proc.stdout.strip() == "yes"

    # kubectl's --kubeconfig given twice: the last wins (the operator's token)
    assert can("create", "jobs.batch", "-A")
    assert can("patch", "finetunejobs.finetune.dev/status", "-A")
    assert not can("list", "secrets", "-A")
    assert not can("create", "pods", "-A")
    assert can("delete", "jobs.batch", "-A")  # restarting every pod together replaces the Job (restarts.py)
    assert not can("delete", "pods", "-A")
    assert not can("*", "*")


def test_lifecycle_pending_running_succeeded(running_operator, cluster, namespace):
    name = "life"
    submit(cluster, namespace, tiny_ftj(name, fake=True, env={"FAKE_TRAINER_SLEEP": "6", "FAKE_TRAINER_REPORT": "1"}))
    seen: list[str] = []
    wait_phase(cluster, namespace, name, "Running", 90, seen)
    running = wait_for(
        lambda: (f := get_ftj(cluster, namespace, name)) and (f["status"].get("progress") or {}).get("summary") and f,
        30,
        0.3,
        "trainer progress in status",
    )
    assert running["status"]["progress"]["summary"] in ("25% (1/4)", "100% (4/4)")
    # progress is visible in `kubectl get ftj`
    table = cluster.kubectl("get", "ftj", name, "-n", namespace).stdout
    assert "%" in table, table
    done = wait_phase(cluster, namespace, name, "Succeeded", 90, seen)
    order = ["Pending", "Running", "Uploading", "Succeeded"]
    assert [order.index(p) for p in seen] == sorted(order.index(p) for p in seen), f"phase went back: {seen}"
    assert "Running" in seen and seen[-1] == "Succeeded", seen
    st = done["status"]
    assert st["reason"] == "Completed"
    assert st["artifact"]["uri"] == "gs://fake/models/x/"
    assert len(st["artifact"]["sha256"]) == 64
    assert st["metrics"]["loss"] == 0.5
    assert st["progress"]["percent"] == 100.0
    assert st["completionTime"] and st["startTime"]
    assert st["jobName"] == name and st["attempts"] == 1
    conds = {c["type"]: c for c in st["conditions"]}
    assert conds["Succeeded"]["status"] == "True" and conds["Failed"]["status"] == "False"
    assert conds["Created"]["status"] == "True"
    # no finalizer: deletion never depends on the operator
    assert not done["metadata"].get("finalizers")
    # children: deterministic names, labels, controller ownerReferences
    kids = children(cluster, namespace, name)
    uid = done["metadata"]["uid"]
    (job,) = kids["jobs"]
    assert job["metadata"]["name"] == name
    assert job["metadata"]["labels"]["finetune.dev/community-id"] == "demo"
    (ref,) = job["metadata"]["ownerReferences"]
    assert ref["uid"] == uid and ref["controller"] is True
    assert job["spec"]["completionMode"] == "Indexed"
    assert kids["services"] == []  # one node: torchrun --standalone, no peers to resolve
    # the pods ran as the namespace's trainer identity, which the operator created (shared, so no owner)
    assert kids["pods"][0]["spec"]["serviceAccountName"] == "finetune-trainer"
    identity = trainer_identity(cluster, namespace)
    assert all(obj is not None for obj in identity.values()), identity
    for obj in identity.values():
        assert obj is not None and not obj["metadata"].get("ownerReferences")
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "finetune-operator"
    # one Event per transition
    reasons = [e["reason"] for e in events_for(cluster, namespace, name)]
    assert {"JobCreated", "WaitingForPods"} & set(reasons), reasons  # Pending was announced
    assert "Completed" in reasons and "Training" in reasons, reasons


def test_unschedulable_gpu_request_shows_the_schedulers_reason(running_operator, cluster, namespace):
    name = "gpus"
    submit(
        cluster,
        namespace,
        tiny_ftj(name, fake=True, **{"resources.gpusPerNode": 16, "resources.processesPerNode": None}),
    )
    st = wait_for(
        lambda: (
            (f := get_ftj(cluster, namespace, name))
            and f.get("status", {}).get("reason") == "Unschedulable"
            and f["status"]
        ),
        60,
        0.5,
        "Pending/Unschedulable",
    )
    assert st["phase"] == "Pending"
    assert "Insufficient nvidia.com/gpu" in st["message"], st["message"]
    conds = {c["type"]: c for c in st["conditions"]}
    assert conds["Scheduled"]["status"] == "False" and conds["Scheduled"]["reason"] == "Unschedulable"
    # kubectl shows it
    assert "Pending" in cluster.kubectl("get", "ftj", name, "-n", namespace).stdout
    warnings = [e for e in events_for(cluster, namespace, name) if e["type"] == "Warning"]
    assert any(e["reason"] == "Unschedulable" for e in warnings)


def test_invalid_input_exit_code_fails_at_once(running_operator, cluster, namespace):
    name = "exit2"
    submit(
        cluster, namespace, tiny_ftj(name, fake=True, env={"FAKE_TRAINER_EXIT": "2"}, **{"runPolicy.backoffLimit": 3})
    )
    done = wait_phase(cluster, namespace, name, "Failed", 90)
    assert done["status"]["reason"] == "InvalidDataset", done["status"]
    assert done["status"]["attempts"] == 1
    assert len(children(cluster, namespace, name)["pods"]) == 1


def test_exit_0_without_verified_upload_fails(running_operator, cluster, namespace):
    name = "noreport"
    submit(cluster, namespace, tiny_ftj(name, fake=True, env={"FAKE_TRAINER_NO_REPORT": "1"}))
    done = wait_phase(cluster, namespace, name, "Failed", 90)
    assert done["status"]["reason"] == "UploadNotVerified"
    assert "artifact" not in done["status"]


def test_operator_restart_mid_job_adopts_and_converges(running_operator, cluster, namespace, tmp_path):
    name = "restart"
    gate = tmp_path / "finish"  # the trainer finishes only once the operator is gone (pods see the host's /tmp)
    submit(cluster, namespace, tiny_ftj(name, fake=True, env={"FAKE_TRAINER_GATE": str(gate)}))
    wait_phase(cluster, namespace, name, "Running", 90)
    running_operator.kill()
    gate.touch()
    # the workload finishes without the operator; the status is stale meanwhile
    wait_for(
        lambda: [p["status"].get("phase") for p in children(cluster, namespace, name)["pods"]] == ["Succeeded"],
        60,
        0.3,
        "the trainer pod to finish while the operator is down",
    )
    assert get_ftj(cluster, namespace, name)["status"]["phase"] == "Running"
    running_operator.start()
    done = wait_phase(cluster, namespace, name, "Succeeded", 120)
    kids = children(cluster, namespace, name)
    assert len(kids["jobs"]) == 1
    assert len(kids["pods"]) == 1, [p["metadata"]["name"] for p in kids["pods"]]
    assert done["status"]["attempts"] == 1


def test_operator_restart_mid_creation_adopts_existing_children(running_operator, cluster, namespace):
    """A previous operator run died after creating some children: the next one adopts, never duplicates."""
    from ftoperator import builders
    from ftoperator.settings import Settings

    name = "adopt"
    running_operator.stop()
    submit(cluster, namespace, tiny_ftj(name, fake=True, env={"FAKE_TRAINER_SLEEP": "10"}))
    live = get_ftj(cluster, namespace, name)
    assert live is not None
    model = builders.parse(live)
    settings = Settings(allow_entrypoint_annotation=True)
    # it died after the identity's ServiceAccount and the Job, before the Role and RoleBinding
    sa, _role, _binding = builders.render_trainer_identity(namespace)
    cluster.apply([sa, builders.render_job(model, settings)], namespace)
    running_operator.start()
    wait_phase(cluster, namespace, name, "Succeeded", 120)
    kids = children(cluster, namespace, name)
    assert len(kids["jobs"]) == 1 and len(kids["pods"]) == 1
    identity = trainer_identity(cluster, namespace)
    assert all(obj is not None for obj in identity.values()), identity
    assert "adopted existing Job adopt" in running_operator.logs()


def test_delete_running_job_removes_pods_and_processes(running_operator, cluster, namespace):
    name = "delrun"
    submit(cluster, namespace, tiny_ftj(name, fake=True, env={"FAKE_TRAINER_SLEEP": "600"}))
    wait_phase(cluster, namespace, name, "Running", 90)
    pids = wait_for(lambda: processes_with_env("FTJ_NAME", name), 30, 0.5, "trainer processes")
    cluster.kubectl("delete", "finetunejob", name, "-n", namespace, "--wait=true", "--timeout=60s")
    wait_for(lambda: not any(children(cluster, namespace, name).values()), 90, 1, "children garbage-collected")
    wait_for(lambda: not processes_with_env("FTJ_NAME", name), 60, 0.5, f"processes {pids} gone")


def test_delete_with_operator_down_is_not_blocked(running_operator, cluster, namespace):
    name = "deldown"
    submit(cluster, namespace, tiny_ftj(name, fake=True, env={"FAKE_TRAINER_SLEEP": "600"}))
    wait_phase(cluster, namespace, name, "Running", 90)
    running_operator.stop()
    try:
        cluster.kubectl("delete", "finetunejob", name, "-n", namespace, "--wait=true", "--timeout=30s")
        assert get_ftj(cluster, namespace, name) is None
        wait_for(lambda: not any(children(cluster, namespace, name).values()), 90, 1, "children garbage-collected")
        wait_for(lambda: not processes_with_env("FTJ_NAME", name), 60, 0.5, "processes gone")
    finally:
        running_operator.start()


def test_suspend_and_resume(running_operator, cluster, namespace):
    name = "susp"
    submit(cluster, namespace, tiny_ftj(name, fake=True, env={"FAKE_TRAINER_SLEEP": "600"}))
    wait_phase(cluster, namespace, name, "Running", 90)
    cluster.kubectl(
        "patch", "ftj", name, "-n", namespace, "--type=merge", "-p", '{"spec":{"runPolicy":{"suspend":true}}}'
    )
    st = wait_phase(cluster, namespace, name, "Suspended", 60)["status"]
    assert {c["type"]: c for c in st["conditions"]}["Suspended"]["status"] == "True"
    wait_for(lambda: not processes_with_env("FTJ_NAME", name), 60, 0.5, "pods stopped while suspended")
    # Resumed while the operator is down: kopf's diff base lived in memory, so the restarted operator sees the
    # job as new and applies spec.runPolicy.suspend to the adopted Job.
    running_operator.stop()
    try:
        cluster.kubectl(
            "patch",
            "ftj",
            name,
            "-n",
            namespace,
            "--type=merge",
            "-p",
            json.dumps({"spec": {"runPolicy": {"suspend": False}}}),
        )
    finally:
        running_operator.start()
    wait_phase(cluster, namespace, name, ("Running", "Pending"), 60)
    assert wait_for(lambda: processes_with_env("FTJ_NAME", name), 60, 0.5, "pods resumed")
    assert (
        not (get_ftj(cluster, namespace, name) or {})
        .get("metadata", {})
        .get("annotations", {})
        .get("finetune.dev/last-handled-configuration")
    ), "kopf state is kept in memory, not on the object"


def test_ttl_after_finished_deletes_the_job(running_operator, cluster, namespace):
    name = "ttl"
    submit(cluster, namespace, tiny_ftj(name, fake=True, **{"runPolicy.ttlSecondsAfterFinished": 1}))
    wait_for(
        lambda: (
            (get_ftj(cluster, namespace, name) or {}).get("status", {}).get("phase") == "Succeeded"
            or get_ftj(cluster, namespace, name) is None
        ),
        90,
        0.5,
        "finished",
    )
    wait_for(lambda: get_ftj(cluster, namespace, name) is None, 60, 0.5, "deleted after ttl")
    wait_for(lambda: not any(children(cluster, namespace, name).values()), 90, 1, "children garbage-collected")


def test_metrics_and_liveness(running_operator):
    health = running_operator.healthz()
    assert isinstance(health, dict)
    text = running_operator.metrics()
    for metric in (
        "finetune_operator_jobs{",
        "finetune_operator_reconcile_duration_seconds_bucket",
        "finetune_operator_errors_total",
        "finetune_operator_status_patches_total",
    ):
        assert metric in text, metric
