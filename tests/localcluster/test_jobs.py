"""Jobs on the process node: Indexed Jobs, scheduling on extended resources, deletion through the GC, DNS."""

from __future__ import annotations

import base64
import json
import os
from typing import Any

import pytest

from tests.support.cluster import (
    Cluster,
    free_port_block,
    job_condition,
    pid_alive,
    pod_condition,
    py_container,
    unique_name,
    wait_for,
)

pytestmark = pytest.mark.cluster


def job(name: str, containers: list[dict[str, Any]], completions: int = 1, **spec: Any) -> dict[str, Any]:
    template_spec = {"restartPolicy": "Never", "containers": containers, **spec.pop("pod", {})}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "completions": completions,
            "parallelism": completions,
            "completionMode": "Indexed",
            "backoffLimit": 0,
            "template": {"spec": template_spec},
            **spec,
        },
    }


def job_pods(cluster: Cluster, namespace: str, name: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = cluster.get_json("pods", "-l", f"job-name={name}", namespace=namespace)["items"]
    return items


def wait_job(cluster: Cluster, namespace: str, name: str, timeout: float = 90) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        j = cluster.get_json("job", name, namespace=namespace)
        if job_condition(j, "Failed"):
            logs = {
                p["metadata"]["name"]: cluster.pod_log(namespace, p["metadata"]["name"])
                for p in job_pods(cluster, namespace, name)
            }
            raise AssertionError(f"job {name} failed: {j['status']}\nlogs: {logs}")
        return j if job_condition(j, "Complete") else None

    try:
        return wait_for(done, timeout, 0.5, f"job {name} Complete")
    except AssertionError:
        logs = {
            p["metadata"]["name"]: (p["status"], cluster.pod_log(namespace, p["metadata"]["name"]))
            for p in job_pods(cluster, namespace, name)
        }
        raise AssertionError(f"job {name} did not complete; pods: {json.dumps(logs, indent=1)[:6000]}") from None


INDEXED_SCRIPT = """
import json, os, pathlib
idx = os.environ["JOB_COMPLETION_INDEX"]
try:
    open("/config/probe", "w")
    read_only = False
except OSError:
    read_only = True
msg = {
    "index": idx,
    "annotation": os.environ["ANNOTATION_INDEX"],
    "greeting": pathlib.Path("/config/greeting").read_text(),
    "blob": pathlib.Path("/config/nested/blob.bin").read_bytes().hex(),
    "readOnly": read_only,
    "hostname": os.environ["HOSTNAME"],
    "podName": os.environ["POD_NAME"],
    "node": os.environ["NODE"],
    "expanded": os.environ["EXPANDED"],
    "memMi": os.environ["MEM_MI"],
    "password": os.environ["PASSWORD"],
    "fromEnvFrom": os.environ["CFG_greeting"],
    "cwd": os.getcwd(),
    "path0": os.environ["PATH"].split(":")[0],
    "label": pathlib.Path("/podinfo/labels").read_text(),
}
pathlib.Path("/dev/termination-log").write_text(json.dumps(msg))
print("done", idx)
"""


def test_indexed_job_completes_with_config_index_and_termination_message(cluster: Cluster, namespace: str):
    cluster.apply(
        [
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "settings"},
                "data": {"greeting": "hello from a configmap"},
                "binaryData": {"blob": base64.b64encode(b"\x00\x01binary").decode()},
            },
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "creds"},
                "stringData": {"password": "s3cret"},
            },
        ],
        namespace,
    )
    container = py_container(
        INDEXED_SCRIPT,
        workingDir="/scratch",
        resources={"limits": {"memory": "256Mi", "cpu": "1"}},
        env=[
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {
                "name": "ANNOTATION_INDEX",
                "valueFrom": {
                    "fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}
                },
            },
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "EXPANDED", "value": "$(POD_NAME)/$(NODE)/$$(NOT_EXPANDED)/$(UNDEFINED)"},
            {
                "name": "MEM_MI",
                "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}},
            },
            {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
        ],
        envFrom=[{"configMapRef": {"name": "settings"}, "prefix": "CFG_"}],
        volumeMounts=[
            {"name": "config", "mountPath": "/config", "readOnly": True},
            {"name": "scratch", "mountPath": "/scratch"},
            {"name": "podinfo", "mountPath": "/podinfo"},
        ],
    )
    volumes = [
        {
            "name": "config",
            "configMap": {
                "name": "settings",
                "items": [{"key": "greeting", "path": "greeting"}, {"key": "blob", "path": "nested/blob.bin"}],
            },
        },
        {"name": "scratch", "emptyDir": {}},
        {
            "name": "podinfo",
            "downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]},
        },
    ]
    cluster.apply(job("indexed", [container], completions=2, pod={"volumes": volumes}), namespace)
    j = wait_job(cluster, namespace, "indexed")
    assert j["status"]["succeeded"] == 2
    assert j["status"].get("completedIndexes") == "0,1"

    pods = job_pods(cluster, namespace, "indexed")
    assert len(pods) == 2
    seen = set()
    for pod in pods:
        status = pod["status"]
        assert status["phase"] == "Succeeded"
        assert status["podIP"] == "127.0.0.1"
        assert status["startTime"]
        assert pod_condition(pod, "PodScheduled")["status"] == "True"
        assert pod_condition(pod, "Initialized")["status"] == "True"
        assert pod_condition(pod, "Ready")["status"] == "False"
        term = status["containerStatuses"][0]["state"]["terminated"]
        assert term["exitCode"] == 0 and term["reason"] == "Completed"
        msg = json.loads(term["message"])
        index = pod["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]
        assert msg["index"] == index == msg["annotation"]
        seen.add(index)
        assert msg["greeting"] == "hello from a configmap"
        assert bytes.fromhex(msg["blob"]) == b"\x00\x01binary"
        assert msg["readOnly"] is True
        assert msg["hostname"] == f"indexed-{index}"
        assert msg["podName"] == pod["metadata"]["name"]
        assert msg["node"] == "process-node"
        assert msg["expanded"] == f"{pod['metadata']['name']}/process-node/$(NOT_EXPANDED)/$(UNDEFINED)"
        assert msg["memMi"] == "256"
        assert msg["password"] == "s3cret"
        assert msg["fromEnvFrom"] == "hello from a configmap"
        assert msg["cwd"] == "/scratch"
        assert msg["path0"].endswith("/bin") and os.path.exists(os.path.join(msg["path0"], "python"))
        assert f'batch.kubernetes.io/job-completion-index="{index}"' in msg["label"]
        assert f"done {index}" in cluster.pod_log(namespace, pod["metadata"]["name"])
    assert seen == {"0", "1"}


def test_pod_asking_for_more_gpus_than_the_node_has_stays_pending(cluster: Cluster, namespace: str):
    def gpu_pod(name: str, gpus: int) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name},
            "spec": {
                "restartPolicy": "Never",
                "containers": [py_container("print('ran')", resources={"limits": {"nvidia.com/gpu": str(gpus)}})],
            },
        }

    cluster.apply(gpu_pod("too-many-gpus", 3), namespace)

    def unschedulable() -> dict[str, Any] | None:
        pod = cluster.get_json("pod", "too-many-gpus", namespace=namespace)
        cond = pod_condition(pod, "PodScheduled")
        return cond if cond.get("reason") == "Unschedulable" else None

    cond = wait_for(unschedulable, 60, 0.5, "PodScheduled=False/Unschedulable")
    assert cond["status"] == "False"
    assert "Insufficient nvidia.com/gpu" in cond["message"], cond["message"]
    # Two GPUs fit: the node really offers nvidia.com/gpu=2, and the big pod is still not placed.
    cluster.apply(gpu_pod("two-gpus", 2), namespace)
    wait_for(
        lambda: cluster.get_json("pod", "two-gpus", namespace=namespace)["status"].get("phase") == "Succeeded",
        60,
        0.5,
        "two-gpus pod Succeeded",
    )
    pod = cluster.get_json("pod", "too-many-gpus", namespace=namespace)
    assert pod["status"]["phase"] == "Pending"
    assert not pod["spec"].get("nodeName")
    events = cluster.get_json("events", "--field-selector", "involvedObject.name=too-many-gpus", namespace=namespace)
    assert any("Insufficient nvidia.com/gpu" in e.get("message", "") for e in events["items"])


DELETE_SCRIPT = """
import os, pathlib, signal, subprocess, sys, time
data = pathlib.Path("/data")
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
# Like torchrun's workers: its own session (out of the process group), deaf to SIGTERM.
escaped = subprocess.Popen(
    [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"],
    start_new_session=True,
)
def on_term(signum, frame):
    (data / "sigterm").write_text(str(os.getpid()))
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
(data / "pids").write_text(f"{os.getpid()} {child.pid} {escaped.pid}")
while True:
    time.sleep(1)
"""


def test_deleting_a_job_deletes_its_pods_and_kills_their_processes(cluster: Cluster, namespace: str, tmp_path):
    host_dir = tmp_path / "pv"
    host_dir.mkdir()
    pv_name = unique_name(f"pv-{namespace}")
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": pv_name},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": "",
                "hostPath": {"path": str(host_dir), "type": "Directory"},
            },
        }
    )
    try:
        cluster.apply(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": "data"},
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "storageClassName": "",
                    "volumeName": pv_name,
                    "resources": {"requests": {"storage": "1Gi"}},
                },
            },
            namespace,
        )
        container = py_container(DELETE_SCRIPT, volumeMounts=[{"name": "data", "mountPath": "/data"}])
        spec = job(
            "sleeper",
            [container],
            pod={
                "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
                "terminationGracePeriodSeconds": 20,
            },
        )
        cluster.apply(spec, namespace)
        pids_file = host_dir / "pids"

        def three_pids() -> list[int] | None:  # the file exists before its content does
            pids = [int(p) for p in pids_file.read_text().split()]
            return pids if len(pids) == 3 else None

        pid, child, escaped = wait_for(three_pids, 60, 0.3, "the pod to write its pids to the hostPath PV")
        assert pid_alive(pid) and pid_alive(child) and pid_alive(escaped)
        pod = job_pods(cluster, namespace, "sleeper")[0]
        assert pod["status"]["phase"] == "Running"
        assert pod_condition(pod, "Ready")["status"] == "True"
        assert (cluster.pod_dir(namespace, pod["metadata"]["name"]) / "main.pid").read_text() == str(pid)

        cluster.kubectl("delete", "job", "sleeper", "-n", namespace, "--cascade=background", "--wait=false")
        wait_for(lambda: not job_pods(cluster, namespace, "sleeper"), 60, 0.5, "the GC to delete the job's pods")
        wait_for(lambda: not any(pid_alive(p) for p in (pid, child, escaped)), 10, 0.2, "the pod's processes to exit")
        # SIGTERM first (graceful), then the whole process group and the escaped session went too.
        assert (host_dir / "sigterm").read_text() == str(pid)
    finally:
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        cluster.kubectl("delete", "pv", pv_name, "--wait=false", check=False)


PEER_SCRIPT = """
import json, os, pathlib, socket, threading, time
idx = int(os.environ["JOB_COMPLETION_INDEX"])
base = int(os.environ["BASE_PORT"])
job, svc = os.environ["JOB"], os.environ["SVC"]
other = 1 - idx
got = {}

def serve():
    srv = socket.create_server(("0.0.0.0", base + idx))
    conn, _ = srv.accept()
    with conn:
        got["request"] = conn.recv(1024).decode()
        conn.sendall(f"pong from {idx}".encode())

t = threading.Thread(target=serve)
t.start()
peer = f"{job}-{other}.{svc}"
deadline = time.time() + 60
while True:
    try:
        address = socket.gethostbyname(peer)
        with socket.create_connection((peer, base + other), timeout=5) as c:
            c.sendall(f"ping from {idx}".encode())
            got["reply"] = c.recv(1024).decode()
        break
    except OSError as exc:
        if time.time() > deadline:
            raise SystemExit(f"cannot reach {peer}: {exc}")
        time.sleep(0.3)
t.join(60)
got.update(peer=peer, address=address, fqdn=socket.getfqdn(), hostname=socket.gethostname())
pathlib.Path("/dev/termination-log").write_text(json.dumps(got))
"""


def test_indexed_pods_reach_each_other_by_hostname_through_a_headless_service(cluster: Cluster, namespace: str):
    base = free_port_block(2)
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "peers"},
            "spec": {
                "clusterIP": "None",
                "publishNotReadyAddresses": True,
                "selector": {"job-name": "ring"},
                "ports": [{"name": "p", "port": base}],
            },
        },
        namespace,
    )
    env = [
        {"name": "BASE_PORT", "value": str(base)},
        {"name": "JOB", "value": "ring"},
        {"name": "SVC", "value": "peers"},
    ]
    cluster.apply(
        job("ring", [py_container(PEER_SCRIPT, env=env)], completions=2, pod={"subdomain": "peers"}), namespace
    )
    wait_job(cluster, namespace, "ring", timeout=120)
    results = {}
    for pod in job_pods(cluster, namespace, "ring"):
        idx = int(pod["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"])
        results[idx] = json.loads(pod["status"]["containerStatuses"][0]["state"]["terminated"]["message"])
    assert set(results) == {0, 1}
    for idx, got in results.items():
        other = 1 - idx
        assert got["peer"] == f"ring-{other}.peers"
        assert got["address"] == "127.0.0.1"
        assert got["request"] == f"ping from {other}"
        assert got["reply"] == f"pong from {other}"
        assert got["hostname"] == f"ring-{idx}"
        assert got["fqdn"] == f"ring-{idx}.peers.{namespace}.svc.cluster.local"


def test_hosts_file_is_refreshed_in_place_when_pods_appear(cluster: Cluster, namespace: str):
    """A pod started alone later resolves a peer created after it (same inode: it is bind-mounted)."""
    script = """
    import os, socket, time
    target = os.environ["TARGET"]
    deadline = time.time() + 60
    inode = os.stat("/etc/hosts").st_ino
    told = False
    while time.time() < deadline:
        try:
            print(socket.gethostbyname(target), os.stat("/etc/hosts").st_ino == inode)
            break
        except OSError:
            if not told:  # the test creates the peer only once this pod has failed to resolve it
                print("unresolved", flush=True)
                told = True
            time.sleep(0.2)
    else:
        raise SystemExit("never resolved " + target)
    """

    def pod(name: str, target: str, sleep: bool = False) -> dict[str, Any]:
        code = "import time; time.sleep(120)" if sleep else script
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "labels": {"app": "late"}},
            "spec": {
                "hostname": name,
                "subdomain": "late",
                "restartPolicy": "Never",
                "containers": [py_container(code, env=[{"name": "TARGET", "value": target}])],
            },
        }

    cluster.apply(pod("early", "later.late"), namespace)
    wait_for(
        lambda: "unresolved" in cluster.pod_log(namespace, "early"), 60, 0.2, "early to fail to resolve later.late"
    )
    cluster.apply(pod("later", "", sleep=True), namespace)
    wait_for(
        lambda: cluster.get_json("pod", "early", namespace=namespace)["status"].get("phase") == "Succeeded",
        60,
        0.3,
        "early to resolve later.late",
    )
    assert cluster.pod_log(namespace, "early").split() == ["unresolved", "127.0.0.1", "True"]


def test_active_deadline_fails_the_job_and_stops_its_pod(cluster: Cluster, namespace: str, tmp_path):
    pid_file = tmp_path / "pid"
    script = f"""
    import os, time
    open({str(pid_file)!r}, "w").write(str(os.getpid()))
    time.sleep(600)
    """
    container = py_container(script, volumeMounts=[{"name": "tmp", "mountPath": str(tmp_path)}])
    spec = job(
        "deadline",
        [container],
        activeDeadlineSeconds=4,
        pod={"volumes": [{"name": "tmp", "hostPath": {"path": str(tmp_path), "type": "Directory"}}]},
    )
    cluster.apply(spec, namespace)
    pid = wait_for(lambda: int(pid_file.read_text()), 60, 0.2, "the pod to write its pid")  # exists before written
    assert pid_alive(pid)

    def failed() -> dict[str, Any] | None:
        j = cluster.get_json("job", "deadline", namespace=namespace)
        return next((c for c in j["status"].get("conditions") or [] if c["type"] == "Failed"), None)

    cond = wait_for(failed, 60, 0.5, "the Job controller to fail the job")
    assert cond["reason"] == "DeadlineExceeded"
    wait_for(lambda: not pid_alive(pid), 40, 0.2, "the deadline to kill the pod's process")
    wait_for(lambda: not job_pods(cluster, namespace, "deadline"), 40, 0.5, "the pod to be removed")


def test_pod_failure_policy_fails_the_job_on_an_exit_code(cluster: Cluster, namespace: str):
    """The operator's contract: exit code 2 (invalid input) fails the Job at once, without retries."""
    spec = job(
        "invalid-input",
        [py_container("import sys; print('row 3: bad'); sys.exit(2)")],
        backoffLimit=3,
        podFailurePolicy={"rules": [{"action": "FailJob", "onExitCodes": {"operator": "In", "values": [2]}}]},
    )
    cluster.apply(spec, namespace)

    def failed() -> dict[str, Any] | None:
        j = cluster.get_json("job", "invalid-input", namespace=namespace)
        return next((c for c in j["status"].get("conditions") or [] if c["type"] == "Failed"), None)

    cond = wait_for(failed, 60, 0.5, "the Job to fail through its podFailurePolicy")
    assert cond["reason"] == "PodFailurePolicy"
    assert "exit code 2" in cond["message"]
    j = cluster.get_json("job", "invalid-input", namespace=namespace)
    assert j["status"].get("failed") == 1  # not retried although backoffLimit is 3
