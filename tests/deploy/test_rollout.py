"""A Deployment that does not roll out explains itself: its pods' state, Events and logs (ftdev.deploy)."""

from __future__ import annotations

import pytest
from ftdev import deploy

from tests.support.cluster import Cluster, py_container, wait_for

CRASHING_POD = {
    "metadata": {"name": "finetune-api-7d9f-abcde"},
    "status": {
        "phase": "Running",
        "conditions": [
            {"type": "PodScheduled", "status": "True"},
            {"type": "Ready", "status": "False", "reason": "ContainersNotReady"},
        ],
        "containerStatuses": [
            {
                "name": "api",
                "restartCount": 3,
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 8s restarting"}},
                "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "message": "No module named ftapi\n"}},
            }
        ],
    },
}


def test_describe_pod_names_the_state_and_the_last_exit():
    text = deploy.describe_pod(CRASHING_POD)
    assert text.splitlines()[0] == "pod finetune-api-7d9f-abcde: phase Running; Ready=False (ContainersNotReady)"
    assert "container api: waiting (CrashLoopBackOff: back-off 8s restarting), restarts 3" in text
    assert "last run: terminated (Error, exit code 1: No module named ftapi)" in text
    assert not deploy.pod_ready(CRASHING_POD)


@pytest.mark.cluster
def test_a_crash_looping_deployment_reports_its_pod_and_logs(cluster: Cluster, namespace: str):
    script = "import sys; print('starting the api'); print('ModuleNotFoundError: No module named ftapi'); sys.exit(3)"
    # Never Ready (like the API's readiness probe while it cannot start): a crash-looping container without a
    # probe is Ready for a moment after each start, and a Deployment needs no more to count as rolled out.
    never_ready = {"tcpSocket": {"port": 1}, "periodSeconds": 1}
    labels = {"app": "crasher"}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "crasher", "namespace": namespace},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [py_container(script, name="api", readinessProbe=never_ready)]},
            },
        },
    }
    k = deploy.Kubectl(kubeconfig=str(cluster.kubeconfig))
    deploy.apply([deployment], k, log=lambda m: None)

    def restarted():
        pods = cluster.get_json("pods", "-l", "app=crasher", namespace=namespace)["items"]
        return pods and any(s.get("restartCount", 0) >= 1 for s in pods[0]["status"].get("containerStatuses") or [])

    wait_for(restarted, 60, 0.5, "the crasher restarted once")
    with pytest.raises(deploy.RolloutFailed) as failed:
        deploy.wait_rollout([deployment], k, timeout=3, log=lambda m: None)
    message = str(failed.value)
    pod = cluster.get_json("pods", "-l", "app=crasher", namespace=namespace)["items"][0]["metadata"]["name"]
    assert f"deployment/crasher in {namespace} did not roll out" in message
    assert f"pod {pod}: phase" in message
    assert "exit code 3" in message
    assert "ModuleNotFoundError: No module named ftapi" in message  # the container's own output
    assert "event: Normal Started: Started container api" in message  # its Events
