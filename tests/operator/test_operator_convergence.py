"""No job left behind: the operator converges from lost writes, deleted children, stuck pods and failing creates.

The session's operator is restarted for this module with short grace periods and a fast resync (the values a
test can wait for), then restarted with its usual settings. Every case runs against the real control plane:
the pods' states come from the process node and the scheduler, the failures from the real apiserver (a
ResourceQuota, a ValidatingAdmissionPolicy), never from a fake.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from ftcrd.names import ANN_CANCELLED

from tests.support.cluster import Cluster, wait_for
from tests.support.ftj import children, events_for, get_ftj, submit, tiny_ftj, trainer_identity, wait_phase
from tests.support.operator_process import OperatorProcess

pytestmark = pytest.mark.cluster

GRACE = 6
FAST = {
    "FTO_RESYNC_SECONDS": "1.5",
    "FTO_MISSING_CONFIG_GRACE_SECONDS": str(GRACE),
    "FTO_CRASH_LOOP_GRACE_SECONDS": str(GRACE),
    "FTO_UNSCHEDULABLE_GRACE_SECONDS": str(GRACE),
    "FTO_HANDLER_RETRIES": "3",
    "FTO_HANDLER_BACKOFF": "0.5",
}


@pytest.fixture(scope="module")
def fast_operator(operator: OperatorProcess) -> Iterator[OperatorProcess]:
    saved = dict(operator.extra_env)
    operator.stop()
    operator.extra_env.update(FAST)
    operator.start()
    try:
        yield operator
    finally:
        operator.stop()
        operator.extra_env = saved
        operator.start()


@pytest.fixture
def op(fast_operator: OperatorProcess) -> OperatorProcess:
    if not fast_operator.running():
        fast_operator.start()
    return fast_operator


def metric(op: OperatorProcess, name: str, **labels: str) -> float:
    """The sum of a Prometheus series (0 when absent)."""
    want = [f'{k}="{v}"' for k, v in labels.items()]
    total = 0.0
    for line in op.metrics().splitlines():
        if line.startswith(name) and all(w in line for w in want):
            total += float(line.rsplit(" ", 1)[1])
    return total


def job_uid(cluster: Cluster, namespace: str, name: str) -> str | None:
    jobs = children(cluster, namespace, name)["jobs"]
    return jobs[0]["metadata"]["uid"] if jobs else None


def assert_failed_and_freed(cluster: Cluster, namespace: str, name: str, reason: str, words: str) -> None:
    """Failed with ``reason`` (message naming ``words``), a Warning Event with that reason, the Job suspended
    and its pods gone."""
    done = wait_phase(cluster, namespace, name, "Failed", GRACE + 90)
    st = done["status"]
    assert st["reason"] == reason, st
    assert words in st["message"], st["message"]
    wait_for(
        lambda: any(e["type"] == "Warning" and e["reason"] == reason for e in events_for(cluster, namespace, name)),
        30,
        0.5,
        f"a Warning Event {reason}",
    )
    wait_for(lambda: not children(cluster, namespace, name)["pods"], 90, 0.5, "the Job's pods deleted")
    (job,) = children(cluster, namespace, name)["jobs"]
    assert job["spec"]["suspend"] is True


def without_dataset_configmap(body: dict[str, Any], volume: dict[str, Any]) -> dict[str, Any]:
    body["spec"]["dataset"].pop("configMap")
    body["spec"]["dataset"]["volume"] = volume
    return body


STUCK = {
    # case: (spec overrides or a body transform, reason, words the message must contain)
    "secret-volume": (
        {"output.credentialsSecret": {"name": "no-such-firebase", "key": "service-account.json"}},
        "VolumeMountFailed",
        "no-such-firebase",
    ),
    "configmap-volume": (
        {"dataset.configMap": {"name": "no-such-dataset", "key": "dataset.json"}},
        "VolumeMountFailed",
        "no-such-dataset",
    ),
    "env-secret": (
        {"model.hfTokenSecret": {"name": "no-such-token", "key": "token"}},
        "ContainerConfigError",
        "no-such-token",
    ),
    "missing-claim": (
        lambda body: without_dataset_configmap(body, {"claimName": "no-such-claim", "path": "d.json"}),
        "VolumeClaimMissing",
        "no-such-claim",
    ),
    "unschedulable": (
        {"resources.gpusPerNode": 16, "resources.processesPerNode": None},
        "UnschedulableTimeout",
        "Insufficient nvidia.com/gpu",
    ),
}


@pytest.mark.parametrize("case", list(STUCK))
def test_a_stuck_pod_fails_the_job_with_its_own_reason_and_frees_the_job(op, cluster, namespace, case):
    change, reason, words = STUCK[case]
    name = f"stuck-{case}"
    body = tiny_ftj(name, fake=True, env={"FAKE_TRAINER_SLEEP": "600"}, **(change if isinstance(change, dict) else {}))
    if callable(change):
        body = change(body)
    submit(cluster, namespace, body)
    assert_failed_and_freed(cluster, namespace, name, reason, words)


def test_a_crash_looping_init_container_fails_the_job(op, cluster, namespace):
    """Trainer pods have no init containers of their own; an adopted Job with one (restartPolicy OnFailure, the
    only way an init container loops) is what a crash loop looks like to the operator."""
    from ftoperator import builders
    from ftoperator.settings import Settings

    name = "init-loop"
    op.stop()
    try:
        submit(cluster, namespace, tiny_ftj(name, fake=True))
        live = get_ftj(cluster, namespace, name)
        assert live is not None
        job = builders.render_job(builders.parse(live), Settings(allow_entrypoint_annotation=True))
        spec = job["spec"]
        spec.pop("podFailurePolicy")  # only allowed with restartPolicy Never
        spec["backoffLimit"] = 100  # OnFailure restarts count against it
        pod = spec["template"]["spec"]
        pod["restartPolicy"] = "OnFailure"
        init = {k: v for k, v in pod["containers"][0].items() if k not in ("args", "ports")}
        pod["initContainers"] = [{**init, "name": "fetch", "command": [sys.executable, "-c", "raise SystemExit(1)"]}]
        cluster.apply(job, namespace)
    finally:
        op.start()
    assert_failed_and_freed(cluster, namespace, name, "InitContainerCrashLoop", "init container fetch")


def test_a_deleted_job_is_created_again(op, cluster, namespace):
    name = "lost-job"
    submit(cluster, namespace, tiny_ftj(name, fake=True, env={"FAKE_TRAINER_SLEEP": "8"}))
    wait_phase(cluster, namespace, name, "Running", 90)
    first = job_uid(cluster, namespace, name)
    repairs = metric(op, "finetune_operator_repairs_total", what="job")
    cluster.kubectl("delete", "job", name, "-n", namespace, "--wait=false")
    wait_for(lambda: job_uid(cluster, namespace, name) not in (None, first), 60, 0.5, "a new Job")
    done = wait_phase(cluster, namespace, name, "Succeeded", 120)
    assert done["status"]["reason"] == "Completed"
    assert "JobMissing" in [e["reason"] for e in events_for(cluster, namespace, name)]
    assert metric(op, "finetune_operator_repairs_total", what="job") > repairs


def test_a_deleted_job_is_created_again_only_once_its_pods_are_gone(op, cluster, namespace):
    """``kubectl delete job`` (background) leaves the Job's pod terminating; a Job of the same name created meanwhile
    would run a second rank-0 pod beside it, and the Job controller, which keys Jobs by name, could keep the old pod's
    tracking finalizer for ever (bench/chaos.py seed 1 found both)."""
    name = "slow-to-go"
    env = {"FAKE_TRAINER_SLEEP": "20", "FAKE_TRAINER_TERM_SECONDS": "8"}
    submit(cluster, namespace, tiny_ftj(name, fake=True, env=env))
    wait_for(
        lambda: any(p["status"].get("phase") == "Running" for p in children(cluster, namespace, name)["pods"]),
        90,
        0.5,
        "the trainer pod running",
    )
    first = job_uid(cluster, namespace, name)
    (old_pod,) = children(cluster, namespace, name)["pods"]
    cluster.kubectl("delete", "job", name, "-n", namespace, "--wait=false")
    wait_for(lambda: job_uid(cluster, namespace, name) not in (None, first), 90, 0.3, "a new Job")
    pods = [p["metadata"]["name"] for p in children(cluster, namespace, name)["pods"]]
    assert old_pod["metadata"]["name"] not in pods, "the Job was created again while the old pod was still there"
    done = wait_phase(cluster, namespace, name, "Succeeded", 120)
    assert done["status"]["reason"] == "Completed"


def test_a_deleted_trainer_identity_is_created_again(op, cluster, namespace):
    submit(cluster, namespace, tiny_ftj("before", fake=True))
    wait_phase(cluster, namespace, "before", "Succeeded", 90)
    for kind in ("rolebinding", "role", "serviceaccount"):
        cluster.kubectl("delete", kind, "finetune-trainer", "-n", namespace)
    # the operator created this namespace's identity already: only the resync can notice it is gone
    submit(cluster, namespace, tiny_ftj("after", fake=True))
    wait_phase(cluster, namespace, "after", "Succeeded", 120)
    identity = trainer_identity(cluster, namespace)
    assert all(obj is not None for obj in identity.values()), identity


def test_child_creation_that_keeps_failing_ends_failed_with_the_last_error(op, cluster, namespace):
    quota = {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": "no-jobs"},
        "spec": {"hard": {"count/jobs.batch": "0"}},
    }
    cluster.apply(quota, namespace)
    wait_for(
        lambda: cluster.get_json("resourcequota", "no-jobs", namespace=namespace).get("status", {}).get("hard"),
        60,
        0.5,
        "the quota's status",
    )
    name = "quota"
    submit(cluster, namespace, tiny_ftj(name, fake=True))
    st = wait_phase(cluster, namespace, name, "Failed", 90)["status"]
    assert st["reason"] == "ChildCreateFailed", st
    assert "gave up creating the workload after 3 attempt(s)" in st["message"], st["message"]
    assert "exceeded quota" in st["message"], st["message"]
    assert not children(cluster, namespace, name)["jobs"]


def deny_final_status(namespace: str) -> list[dict[str, Any]]:
    """A ValidatingAdmissionPolicy that rejects writing phase Succeeded in ``namespace``: the operator's final
    status patch fails as a real apiserver rejects it (an admission webhook or policy, an outage)."""
    name = f"deny-final-status-{namespace}"
    return [
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": name},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {
                    "resourceRules": [
                        {
                            "apiGroups": ["finetune.dev"],
                            "apiVersions": ["*"],
                            "operations": ["UPDATE"],
                            "resources": ["finetunejobs/status"],
                        }
                    ]
                },
                "validations": [
                    {
                        "expression": "!has(object.status) || !has(object.status.phase) "
                        "|| object.status.phase != 'Succeeded'",
                        "message": "test: final status writes are denied",
                    }
                ],
            },
        },
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": name},
            "spec": {
                "policyName": name,
                "validationActions": ["Deny"],
                "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}},
            },
        },
    ]


def test_a_lost_final_status_is_written_again_by_the_resync(op, cluster, namespace):
    name = "lost-final"
    policy = deny_final_status(namespace)
    cluster.apply(policy)
    try:
        submit(cluster, namespace, tiny_ftj(name, fake=True, **{"runPolicy.suspend": True}))
        wait_phase(cluster, namespace, name, "Suspended", 60)

        def denied() -> bool:
            probe = cluster.kubectl(
                "patch", "ftj", name, "-n", namespace, "--subresource=status", "--type=merge", "--dry-run=server",
                "-p", json.dumps({"status": {"phase": "Succeeded"}}), check=False,
            )  # fmt: skip
            return probe.returncode != 0 and "final status writes are denied" in probe.stderr

        wait_for(denied, 60, 0.5, "the policy in force")
        errors = metric(op, "finetune_operator_errors_total", handler="resync")
        cluster.kubectl(
            "patch", "ftj", name, "-n", namespace, "--type=merge", "-p", '{"spec":{"runPolicy":{"suspend":false}}}'
        )
        wait_for(
            lambda: any(
                c["type"] == "Complete" and c["status"] == "True"
                for c in (children(cluster, namespace, name)["jobs"][0].get("status") or {}).get("conditions") or []
            ),
            90,
            0.5,
            "the Job complete",
        )
        # the final write keeps failing, and the resync keeps trying it (no watch event is left to trigger one)
        wait_for(lambda: metric(op, "finetune_operator_errors_total", handler="resync") >= errors + 2, 60, 0.5)
        assert (get_ftj(cluster, namespace, name) or {}).get("status", {}).get("phase") != "Succeeded"
        repairs = metric(op, "finetune_operator_repairs_total", what="status")
    finally:
        cluster.kubectl("delete", "validatingadmissionpolicybinding", policy[1]["metadata"]["name"], check=False)
        cluster.kubectl("delete", "validatingadmissionpolicy", policy[0]["metadata"]["name"], check=False)
    done = wait_phase(cluster, namespace, name, "Succeeded", 60)
    assert done["status"]["artifact"]["uri"] == "gs://fake/models/x/"
    assert metric(op, "finetune_operator_repairs_total", what="status") > repairs


def test_a_cancelled_job_expires_with_its_ttl(op, cluster, namespace):
    name = "cancelled"
    body = tiny_ftj(name, fake=True, env={"FAKE_TRAINER_SLEEP": "600"}, **{"runPolicy.ttlSecondsAfterFinished": 3})
    submit(cluster, namespace, body)
    wait_phase(cluster, namespace, name, "Running", 90)
    cancel = {"metadata": {"annotations": {ANN_CANCELLED: "true"}}, "spec": {"runPolicy": {"suspend": True}}}
    cluster.kubectl("patch", "ftj", name, "-n", namespace, "--type=merge", "-p", json.dumps(cancel))
    seen = wait_for(
        lambda: (
            (f := get_ftj(cluster, namespace, name)) is None
            or (f.get("status", {}).get("reason") == "Cancelled" and f["status"])
        ),
        60,
        0.3,
        "Suspended/Cancelled",
    )
    if isinstance(seen, dict):
        assert seen["phase"] == "Suspended" and seen["completionTime"], seen
    wait_for(lambda: get_ftj(cluster, namespace, name) is None, 60, 0.5, "deleted after its ttl")
    wait_for(lambda: not any(children(cluster, namespace, name).values()), 90, 1, "children garbage-collected")
