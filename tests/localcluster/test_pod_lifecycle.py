"""Pod lifecycle on the process node: restart policies, init containers, failures, volumes, Deployments."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.support.cluster import Cluster, pod_condition, py_container, wait_for

pytestmark = pytest.mark.cluster


def pod(name: str, containers: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"restartPolicy": "Never", "containers": containers, **spec},
    }


def wait_phase(cluster: Cluster, namespace: str, name: str, phases: tuple[str, ...], timeout: float = 60) -> dict:
    def check() -> dict | None:
        p = cluster.get_json("pod", name, namespace=namespace)
        return p if p["status"].get("phase") in phases else None

    try:
        return wait_for(check, timeout, 0.3, f"pod {name} in {phases}")
    except AssertionError:
        p = cluster.get_json("pod", name, namespace=namespace)
        raise AssertionError(
            f"{name}: {json.dumps(p['status'], indent=1)}\n{cluster.pod_log(namespace, name)}"
        ) from None


def test_on_failure_restarts_until_success(cluster: Cluster, namespace: str):
    script = """
    import pathlib, sys
    marker = pathlib.Path("/state/attempted")
    if not marker.exists():
        marker.write_text("1")
        print("first attempt fails")
        sys.exit(7)
    print("second attempt succeeds")
    """
    spec = pod(
        "flaky",
        [py_container(script, volumeMounts=[{"name": "state", "mountPath": "/state"}])],
        restartPolicy="OnFailure",
        volumes=[{"name": "state", "emptyDir": {}}],
    )
    cluster.apply(spec, namespace)
    p = wait_phase(cluster, namespace, "flaky", ("Succeeded", "Failed"))
    assert p["status"]["phase"] == "Succeeded"
    cs = p["status"]["containerStatuses"][0]
    assert cs["restartCount"] == 1
    assert cs["lastState"]["terminated"]["exitCode"] == 7
    assert cs["lastState"]["terminated"]["reason"] == "Error"
    assert cs["state"]["terminated"]["exitCode"] == 0
    pod_dir = cluster.pod_dir(namespace, "flaky")
    assert "first attempt fails" in (pod_dir / "main.previous.log").read_text()
    assert "second attempt succeeds" in (pod_dir / "main.log").read_text()


def test_failure_reports_exit_code_and_log_fallback_message(cluster: Cluster, namespace: str):
    script = """
    import sys
    for i in range(100):
        print(f"line {i}")
    print("fatal: the dataset is empty", flush=True)
    sys.exit(3)
    """
    spec = pod(
        "crasher",
        [
            py_container(script, terminationMessagePolicy="FallbackToLogsOnError"),
            py_container("import sys; sys.exit(4)", name="plain"),
        ],
    )
    cluster.apply(spec, namespace)
    p = wait_phase(cluster, namespace, "crasher", ("Succeeded", "Failed"))
    assert p["status"]["phase"] == "Failed"
    statuses = {c["name"]: c for c in p["status"]["containerStatuses"]}
    term = statuses["main"]["state"]["terminated"]
    assert term["exitCode"] == 3 and term["reason"] == "Error"
    assert term["message"].rstrip().endswith("fatal: the dataset is empty")
    assert "line 99" in term["message"] and "line 0\n" not in term["message"]  # the last 80 lines only
    plain = statuses["plain"]["state"]["terminated"]
    assert plain["exitCode"] == 4 and "message" not in plain  # File policy, empty file: no message
    assert pod_condition(p, "Ready")["status"] == "False"


def test_command_not_found_is_a_start_error(cluster: Cluster, namespace: str):
    spec = pod("missing", [{"name": "main", "image": "x", "command": ["definitely-not-a-command-xyz"]}])
    cluster.apply(spec, namespace)
    p = wait_phase(cluster, namespace, "missing", ("Failed",))
    term = p["status"]["containerStatuses"][0]["state"]["terminated"]
    assert term["exitCode"] == 128 and term["reason"] == "StartError"
    assert "definitely-not-a-command-xyz" in term["message"]


def test_init_containers_run_in_order_before_containers(cluster: Cluster, namespace: str):
    def step(n: int) -> dict[str, Any]:
        code = f"open('/shared/order', 'a').write('init{n} ')"
        return py_container(code, name=f"init{n}", volumeMounts=[{"name": "shared", "mountPath": "/shared"}])

    main = py_container(
        "import pathlib; pathlib.Path('/dev/termination-log').write_text(open('/shared/order').read() + 'main')",
        volumeMounts=[{"name": "shared", "mountPath": "/shared"}],
    )
    spec = pod("ordered", [main], initContainers=[step(1), step(2)], volumes=[{"name": "shared", "emptyDir": {}}])
    cluster.apply(spec, namespace)
    p = wait_phase(cluster, namespace, "ordered", ("Succeeded", "Failed"))
    assert p["status"]["phase"] == "Succeeded"
    assert p["status"]["containerStatuses"][0]["state"]["terminated"]["message"] == "init1 init2 main"
    inits = p["status"]["initContainerStatuses"]
    assert [c["name"] for c in inits] == ["init1", "init2"]
    assert all(c["state"]["terminated"]["reason"] == "Completed" for c in inits)
    assert inits[0]["state"]["terminated"]["finishedAt"] <= inits[1]["state"]["terminated"]["startedAt"]


def test_failed_init_container_fails_the_pod_without_running_containers(cluster: Cluster, namespace: str):
    spec = pod(
        "bad-init",
        [py_container("open('/dev/termination-log', 'w').write('main ran')")],
        initContainers=[py_container("raise SystemExit(9)", name="init")],
    )
    cluster.apply(spec, namespace)
    p = wait_phase(cluster, namespace, "bad-init", ("Failed", "Succeeded"))
    assert p["status"]["phase"] == "Failed"
    assert p["status"]["initContainerStatuses"][0]["state"]["terminated"]["exitCode"] == 9
    assert "terminated" not in p["status"]["containerStatuses"][0]["state"]
    assert pod_condition(p, "Initialized")["status"] == "False"


def test_memory_empty_dir_is_a_sized_tmpfs_and_secret_volume_is_read_only(cluster: Cluster, namespace: str):
    cluster.kubectl("create", "secret", "generic", "key", "--from-literal=api.key=abc123", "-n", namespace)
    script = """
    import json, os, pathlib
    st = os.statvfs("/dev/shm")
    try:
        with open("/dev/shm/big", "wb") as f:
            f.write(b"x" * (40 * 1024 * 1024))
        overflow = "no error"
    except OSError as exc:
        overflow = exc.strerror
    try:
        pathlib.Path("/keys/other").write_text("x")
        secret_ro = False
    except OSError:
        secret_ro = True
    mounts = [line.split()[1:3] for line in open("/proc/mounts")]
    pathlib.Path("/dev/termination-log").write_text(json.dumps({
        "size": st.f_blocks * st.f_frsize, "overflow": overflow, "secretRO": secret_ro,
        "key": pathlib.Path("/keys/api.key").read_text(),
        "mode": oct(os.stat("/keys/api.key").st_mode & 0o777),
        "shmType": dict((m[0], m[1]) for m in mounts).get("/dev/shm"),
    }))
    """
    container = py_container(
        script,
        volumeMounts=[
            {"name": "shm", "mountPath": "/dev/shm"},
            {"name": "keys", "mountPath": "/keys", "readOnly": True},
        ],
    )
    spec = pod(
        "volumes",
        [container],
        volumes=[
            {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "32Mi"}},
            {"name": "keys", "secret": {"secretName": "key", "defaultMode": 0o400}},
        ],
    )
    cluster.apply(spec, namespace)
    p = wait_phase(cluster, namespace, "volumes", ("Succeeded", "Failed"))
    msg = json.loads(p["status"]["containerStatuses"][0]["state"]["terminated"]["message"])
    assert msg["shmType"] == "tmpfs"
    assert msg["size"] == 32 * 1024 * 1024
    assert msg["overflow"] == "No space left on device"
    assert msg["secretRO"] is True
    assert msg["key"] == "abc123"
    assert msg["mode"] == "0o400"


def test_deployment_rolls_out_and_always_restarts_exited_containers(cluster: Cluster, namespace: str):
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "terminationGracePeriodSeconds": 5,
                    "containers": [
                        py_container("import time; time.sleep(3600)", name="server"),
                        py_container("import time; time.sleep(0.5); print('bye')", name="exits"),
                    ],
                },
            },
        },
    }
    cluster.apply(deployment, namespace)

    def restarted() -> list[dict] | None:
        pods = cluster.get_json("pods", "-l", "app=web", namespace=namespace)["items"]
        if len(pods) != 2:
            return None
        counts = [{c["name"]: c["restartCount"] for c in p["status"].get("containerStatuses") or []} for p in pods]
        return pods if all(c.get("exits", 0) >= 2 for c in counts) else None

    pods = wait_for(restarted, 90, 0.5, "the exiting container to be restarted twice (back-off 2s, 4s)")
    for p in pods:
        assert p["status"]["phase"] == "Running"
        server = next(c for c in p["status"]["containerStatuses"] if c["name"] == "server")
        assert server["restartCount"] == 0 and "running" in server["state"]
        exits = next(c for c in p["status"]["containerStatuses"] if c["name"] == "exits")
        assert exits["lastState"]["terminated"]["exitCode"] == 0

    # A Deployment whose containers stay up becomes Available through ReplicaSet + readiness.
    cluster.kubectl(
        "patch",
        "deployment",
        "web",
        "-n",
        namespace,
        "--type=json",
        "-p",
        json.dumps([{"op": "remove", "path": "/spec/template/spec/containers/1"}]),
    )
    cluster.kubectl("rollout", "status", "deployment/web", "-n", namespace, "--timeout=90s", timeout=120)
    d = cluster.get_json("deployment", "web", namespace=namespace)
    assert d["status"]["readyReplicas"] == 2 and d["status"]["updatedReplicas"] == 2
    wait_for(
        lambda: len(cluster.get_json("pods", "-l", "app=web", namespace=namespace)["items"]) == 2,
        60,
        0.5,
        "old pods to be deleted by the rollout",
    )


def test_kubectl_logs_goes_through_the_apiserver_to_the_node(cluster: Cluster, namespace: str):
    script = """
    import pathlib, sys, time
    first = not pathlib.Path("/state/ran").exists()
    pathlib.Path("/state/ran").touch()
    for i in range(5):
        print(("first" if first else "second"), "line", i, flush=True)
    if first:
        sys.exit(1)
    time.sleep(1.5)
    print("bye", flush=True)
    """
    spec = pod(
        "talker",
        [py_container(script, volumeMounts=[{"name": "state", "mountPath": "/state"}])],
        restartPolicy="OnFailure",
        volumes=[{"name": "state", "emptyDir": {}}],
    )
    cluster.apply(spec, namespace)
    wait_for(
        lambda: "second line 4" in cluster.kubectl("logs", "talker", "-n", namespace, check=False).stdout,
        60,
        0.3,
        "the second instance's output through kubectl logs",
    )
    followed = cluster.kubectl("logs", "-f", "talker", "-n", namespace, timeout=60).stdout
    assert followed.splitlines() == [f"second line {i}" for i in range(5)] + ["bye"]
    assert cluster.kubectl("logs", "talker", "-n", namespace, "--tail=2").stdout.splitlines() == [
        "second line 4",
        "bye",
    ]
    previous = cluster.kubectl("logs", "talker", "-n", namespace, "--previous").stdout
    assert previous.splitlines() == [f"first line {i}" for i in range(5)]
    assert cluster.kubectl("logs", "talker", "-n", namespace, "--limit-bytes=6").stdout == "second"


PROBED_SERVER = """
import http.server, os, pathlib, sys, time
port = int(os.environ["PORT"])
time.sleep(float(os.environ.get("DELAY", "0")))

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        healthy = not pathlib.Path("/state/sick").exists()
        self.send_response(200 if healthy or self.path == "/ready" else 500)
        self.end_headers()

    def log_message(self, *args):
        pass

print("serving", port, flush=True)
http.server.HTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""


def test_probes_gate_readiness_and_liveness_restarts(cluster: Cluster, namespace: str):
    from tests.support.cluster import free_port_block

    port = free_port_block(1)
    container = py_container(
        PROBED_SERVER,
        env=[{"name": "PORT", "value": str(port)}, {"name": "DELAY", "value": "3"}],
        ports=[{"name": "http", "containerPort": port}],
        readinessProbe={"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 1},
        livenessProbe={
            "httpGet": {"path": "/healthz", "port": port},
            "initialDelaySeconds": 4,
            "periodSeconds": 1,
            "failureThreshold": 2,
        },
        startupProbe={"exec": {"command": ["test", "-d", "/state"]}, "periodSeconds": 1},
        volumeMounts=[{"name": "state", "mountPath": "/state"}],
    )
    spec = pod(
        "probed",
        [container],
        restartPolicy="Always",
        volumes=[{"name": "state", "emptyDir": {}}],
        terminationGracePeriodSeconds=2,
    )
    cluster.apply(spec, namespace)
    # Running but not ready while the server sleeps before listening: the readiness probe gates it.
    p = wait_phase(cluster, namespace, "probed", ("Running",))
    assert pod_condition(p, "Ready")["status"] == "False"
    p = wait_for(
        lambda: (
            (q := cluster.get_json("pod", "probed", namespace=namespace))
            and pod_condition(q, "Ready")["status"] == "True"
            and q
        ),
        30,
        0.3,
        "readiness",
    )
    cs = p["status"]["containerStatuses"][0]
    assert cs["ready"] is True and cs["started"] is True and cs["restartCount"] == 0
    # Make /healthz fail: the liveness probe kills the container and Always restarts it.
    emptydir = cluster.pod_dir(namespace, "probed") / "volumes" / "state"
    (emptydir / "sick").write_text("1")

    def restarted() -> dict | None:
        q = cluster.get_json("pod", "probed", namespace=namespace)
        return q if q["status"]["containerStatuses"][0]["restartCount"] >= 1 else None

    p = wait_for(restarted, 60, 0.3, "the liveness probe to restart the container")
    events = cluster.get_json("events", "--field-selector", "involvedObject.name=probed", namespace=namespace)
    reasons = {e["reason"] for e in events["items"]}
    assert "Unhealthy" in reasons and "Killing" in reasons
    assert any("Liveness probe failed" in e.get("message", "") for e in events["items"])


def test_configmap_volume_follows_edits(cluster: Cluster, namespace: str):
    """Like the kubelet, the node refreshes API-backed volumes (every FTO_NODE_SYNC_PERIOD s, default 30)."""
    cluster.kubectl("create", "configmap", "live", "--from-literal=value=one", "-n", namespace)
    script = """
    import pathlib, time
    path = pathlib.Path("/live/value")
    seen = [path.read_text()]
    deadline = time.time() + 90
    while seen[-1] != "two" and time.time() < deadline:
        time.sleep(0.2)
        seen.append(path.read_text())
    pathlib.Path("/dev/termination-log").write_text(seen[0] + "->" + seen[-1])
    """
    container = py_container(script, volumeMounts=[{"name": "live", "mountPath": "/live"}])
    cluster.apply(pod("watcher", [container], volumes=[{"name": "live", "configMap": {"name": "live"}}]), namespace)
    wait_phase(cluster, namespace, "watcher", ("Running",))
    cluster.kubectl("patch", "configmap", "live", "-n", namespace, "-p", '{"data": {"value": "two"}}')
    p = wait_phase(cluster, namespace, "watcher", ("Succeeded", "Failed"), timeout=120)
    assert p["status"]["containerStatuses"][0]["state"]["terminated"]["message"] == "one->two"
