"""Restarting the process node: pods are adopted from their API status, not forgotten or rerun blindly."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from tests.support.cluster import CLUSTER_SH, Cluster, pid_alive, py_container, wait_for

pytestmark = pytest.mark.cluster


def test_restarted_node_restarts_always_pods_and_fails_never_pods(cluster: Cluster, namespace: str, tmp_path):
    others = [p for p in (cluster.state_dir / "users").glob("*") if p.name != str(os.getpid())]
    if not cluster.started_here or others:
        pytest.skip("restarts the shared process node: only when this session owns the cluster")
    script = f"""
    import os, time
    open(os.path.join({str(tmp_path)!r}, os.environ["NAME"]), "w").write(str(os.getpid()))
    time.sleep(600)
    """

    def pod(name: str, policy: str) -> dict:
        env = [{"name": "NAME", "value": name}]
        mounts = [{"name": "tmp", "mountPath": str(tmp_path)}]
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name},
            "spec": {
                "restartPolicy": policy,
                "containers": [py_container(script, env=env, volumeMounts=mounts)],
                "volumes": [{"name": "tmp", "hostPath": {"path": str(tmp_path)}}],
            },
        }

    cluster.apply([pod("always", "Always"), pod("never", "Never")], namespace)
    # wait_for retries while a file is missing or still empty (created before its pid is written)
    pids = wait_for(lambda: {n: int((tmp_path / n).read_text()) for n in ("always", "never")}, 60, 0.2, "both pods")
    (tmp_path / "always").unlink()

    node_pid = int((cluster.state_dir / "run" / "processnode.pid").read_text())
    os.kill(node_pid, signal.SIGTERM)
    wait_for(lambda: not pid_alive(node_pid), 30, 0.2, "the process node to stop")
    assert not pid_alive(pids["always"]) and not pid_alive(pids["never"])  # it stopped its pods
    up = subprocess.run(["bash", str(CLUSTER_SH), "up"], capture_output=True, text=True, check=False, timeout=300)
    assert up.returncode == 0, up.stderr

    def restarted() -> dict | None:
        p = cluster.get_json("pod", "always", namespace=namespace)
        cs = p["status"]["containerStatuses"][0]
        return p if cs["restartCount"] == 1 and "running" in cs["state"] else None

    p = wait_for(restarted, 60, 0.3, "the Always pod to be restarted")
    last = p["status"]["containerStatuses"][0]["lastState"]["terminated"]
    assert last["reason"] == "ContainerStatusUnknown" and last["exitCode"] == 137
    wait_for((tmp_path / "always").exists, 30, 0.2, "the restarted container to run")
    never = wait_for(
        lambda: (p := cluster.get_json("pod", "never", namespace=namespace))["status"]["phase"] == "Failed" and p,
        60,
        0.3,
        "the Never pod to fail",
    )
    assert never["status"]["containerStatuses"][0]["state"]["terminated"]["reason"] == "ContainerStatusUnknown"
    assert never["status"]["containerStatuses"][0]["restartCount"] == 0
