"""End to end with the real trainer: kubectl apply → operator → Indexed Job → process node → torchrun →
fttrainer.train → GCS emulator → termination message → status. Kept tiny: the process node shares the
machine's CPUs with everything else."""

from __future__ import annotations

import hashlib
import json
import time

import pytest
from ftdev.gcs import GcsEmulator

from tests.support.ftj import children, dataset_configmap, get_ftj, submit, tiny_ftj, wait_phase

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def gcs():
    """A GCS emulator (bucket created) for this module; pods reach it on the shared host network."""
    with GcsEmulator() as emu:
        yield emu


TRAINER_ENV = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "FTJ_REPORT_INTERVAL": "1"}


def trainer_env(gcs_emulator) -> dict[str, str]:
    return {**TRAINER_ENV, "STORAGE_EMULATOR_HOST": gcs_emulator.host}


def tiny(name: str, gcs_emulator, **spec) -> dict:
    overrides = {
        "output.bucket": gcs_emulator.bucket,
        "hyperparameters.epochs": 1,
        "hyperparameters.examples": 32,
        "hyperparameters.evalEvery": 1000,
        "hyperparameters.checkpointEvery": 1000,
        **spec,
    }
    return tiny_ftj(name, env=trainer_env(gcs_emulator), **overrides)


def object_path(uri: str, bucket: str) -> str:
    prefix = f"gs://{bucket}/"
    assert uri.startswith(prefix), uri
    return uri[len(prefix) :]


def assert_uploaded(status: dict, gcs_emulator) -> None:
    art = status["artifact"]
    objects = gcs_emulator.list(object_path(art["uri"], gcs_emulator.bucket))
    assert objects, f"nothing uploaded under {art['uri']}"
    manifest = gcs_emulator.download(object_path(art["manifestUri"], gcs_emulator.bucket))
    assert hashlib.sha256(manifest).hexdigest() == art["sha256"]
    assert art["sizeBytes"] > 0 and art["files"] >= 1


def test_tiny_sample_end_to_end(running_operator, cluster, namespace, gcs):
    name = "tiny-e2e"
    # "007" once became the int 7 on the trainer's command line; the config file keeps it a string
    submit(cluster, namespace, tiny(name, gcs, communityId="007"))
    seen: list[str] = []
    wait_phase(cluster, namespace, name, ("Running", "Uploading"), 180, seen)
    progress_rows: list[str] = []
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        ftj = get_ftj(cluster, namespace, name) or {}
        phase = (ftj.get("status") or {}).get("phase")
        if seen[-1] != phase and phase:
            seen.append(phase)
        if phase in ("Running", "Uploading"):
            row = cluster.kubectl("get", "ftj", name, "-n", namespace, "--no-headers").stdout
            if "%" in row:
                progress_rows.append(row)
        if phase in ("Succeeded", "Failed"):
            break
        time.sleep(0.5)
    status = (get_ftj(cluster, namespace, name) or {}).get("status") or {}
    pods = children(cluster, namespace, name)["pods"]
    logs = "\n".join(cluster.pod_log(namespace, p["metadata"]["name"])[-3000:] for p in pods)
    assert status.get("phase") == "Succeeded", f"{json.dumps(status, indent=1)[:3000]}\n--- pod log ---\n{logs}"
    assert seen[0] in ("Pending", "Running") and "Running" in seen, seen
    assert progress_rows, "progress never visible in kubectl get ftj while running"
    assert status["reason"] == "Completed"
    uid = (get_ftj(cluster, namespace, name) or {})["metadata"]["uid"]
    assert status["artifact"]["uri"] == f"gs://{gcs.bucket}/models/{namespace}/007/{name}-{uid}/"
    assert_uploaded(status, gcs)
    loss = cluster.kubectl("get", "ftj", name, "-n", namespace, "-o", "jsonpath={.status.metrics.loss}").stdout
    assert len(loss.strip().lstrip("0.").replace(".", "")) <= 4, loss  # rounded for kubectl get ftj
    assert status["metrics"].get("loss") is not None
    assert status["progress"]["percent"] == 100.0
    # the real trainer ran under torchrun in the pod's processes
    job = children(cluster, namespace, name)["jobs"][0]
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "fttrainer.launch"]  # torchrun, exit codes preserved
    assert container["args"][:2] == ["--nnodes", "1"] and "--standalone" in container["args"]
    assert container["args"][-2:] == ["--config", "/etc/finetune/trainer-config.json"]  # one file, no overrides
    log = cluster.pod_log(namespace, pods[0]["metadata"]["name"])
    assert "done: gs://" in log, log[-3000:]
    assert len(pods) == 1 and status["attempts"] == 1


def test_two_node_cpu_job_wires_ranks_through_the_headless_service(running_operator, cluster, namespace, gcs):
    name = "two-node"
    submit(cluster, namespace, tiny(name, gcs, **{"resources.nodes": 2, "resources.processesPerNode": 1}))
    done = None
    try:
        done = wait_phase(cluster, namespace, name, "Succeeded", 900)
    finally:
        if done is None:
            for p in children(cluster, namespace, name)["pods"]:
                print(p["metadata"]["name"], cluster.pod_log(namespace, p["metadata"]["name"])[-3000:])
    assert done is not None
    kids = children(cluster, namespace, name)
    assert len(kids["pods"]) == 2
    hostnames = sorted(p["spec"].get("hostname") for p in kids["pods"])
    assert hostnames == [f"{name}-0", f"{name}-1"]
    assert all(p["spec"].get("subdomain") == name for p in kids["pods"])
    assert kids["services"][0]["spec"]["clusterIP"] == "None"
    args = kids["jobs"][0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--master-addr") + 1] == f"{name}-0.{name}"
    assert_uploaded(done["status"], gcs)


def test_malformed_dataset_fails_once_with_invalid_dataset(running_operator, cluster, namespace, gcs):
    name = "bad-data"
    cm = dataset_configmap()
    cm["metadata"]["name"] = "bad-dataset"
    cm["data"] = {"dataset.json": json.dumps([{"prompt": "hi", "chosen": "", "rejected": "no"}] * 8)}
    cluster.apply(cm, namespace)
    body = tiny(
        name, gcs, **{"dataset.configMap": {"name": "bad-dataset", "key": "dataset.json"}, "runPolicy.backoffLimit": 3}
    )
    cluster.apply(body, namespace)
    done = wait_phase(cluster, namespace, name, "Failed", 300)
    st = done["status"]
    assert st["reason"] == "InvalidDataset", st
    assert "chosen" in st["message"], st["message"]
    assert st["attempts"] == 1
    assert len(children(cluster, namespace, name)["pods"]) == 1
