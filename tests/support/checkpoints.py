"""Durable checkpoints in cluster tests: a claim the trainer pods can share, the trainer's own view of a job, and the
weights an uninterrupted run of the same job ends with.

* :func:`checkpoint_claim`: a PersistentVolumeClaim bound to a hostPath PersistentVolume (pre-bound both ways, so
  no other test's claim takes it), ReadWriteMany, labelled for trainer use: what ``spec.checkpoint.claimName`` names. The process node
  mounts hostPath and local volumes, so every pod of a job (and its replacements) sees the same directory;
* :func:`trainer_config`: the configuration the operator handed the job's pods (the Job's annotation);
* :func:`reference_weights`: the same configuration run to the end locally, uninterrupted (real torchrun), with
  ``nproc`` processes on one node (one node of two processes equals two nodes of one, bit for bit);
* :func:`artifact_weights`: the weights a job uploaded;
* :func:`checkpointed_ftj`: the tiny sample with a checkpoint every 2 steps on such a claim, and :func:`held_at`: the
  job once its trainer holds (test hook ``holdAtSteps``) at a given step, so a test acts at a known step.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import torch
import yaml
from ftcrd.names import ANN_TRAINER_CONFIG, LABEL_TRAINER_USE, TRAINER_USE_VALUE
from ftcrd.trainer_config import TrainerConfig
from ftdev.gcs import GcsEmulator
from safetensors.torch import load, load_file

from tests.support import ROOT
from tests.support.cluster import Cluster, unique_name, wait_for
from tests.support.ftj import DATASET, children, get_ftj, tiny_ftj
from tests.support.trainer import Trainer

TRAINER_ENV = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "FTJ_REPORT_INTERVAL": "1"}


def checkpoint_claim(cluster: Cluster, namespace: str, directory: Path) -> str:
    """A bound ReadWriteMany claim in ``namespace`` backed by ``directory`` (hostPath); its name."""
    claim = "ckpt"
    pv = unique_name(f"{namespace}-ckpt")[:63]
    directory.mkdir(parents=True, exist_ok=True)
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": pv, "labels": {"finetune-operator.test": "true"}},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteMany"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": "",
                "hostPath": {"path": str(directory), "type": "DirectoryOrCreate"},
                "claimRef": {"namespace": namespace, "name": claim},
            },
        }
    )
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            # opted in for trainer pods: the admission rules refuse a FineTuneJob naming any other claim
            "metadata": {"name": claim, "labels": {LABEL_TRAINER_USE: TRAINER_USE_VALUE}},
            "spec": {
                "accessModes": ["ReadWriteMany"],
                "storageClassName": "",
                "volumeName": pv,
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
        namespace,
    )
    wait_for(
        lambda: cluster.get_json("pvc", claim, namespace=namespace)["status"].get("phase") == "Bound",
        60,
        0.5,
        f"claim {claim} bound to {pv}",
    )
    return claim


def release_claims(cluster: Cluster) -> None:
    """Delete the test PersistentVolumes whose claims are gone (cluster-scoped: namespaces do not take them)."""
    for pv in cluster.get_json("pv", "-l", "finetune-operator.test=true")["items"]:
        if pv.get("status", {}).get("phase") in ("Released", "Failed"):
            cluster.kubectl("delete", "pv", pv["metadata"]["name"], "--wait=false", check=False)


def checkpointed_ftj(
    name: str, gcs: GcsEmulator, claim: str, *, steps: int, env: dict[str, str] | None = None, **spec: Any
) -> dict[str, Any]:
    """The tiny sample for one epoch of ``steps`` steps (batch 8), a checkpoint every 2 steps on ``claim``, uploading
    to the emulator; ``env`` is added to the trainer's, ``spec`` holds dotted-path overrides (as ``tiny_ftj``)."""
    overrides = {
        "output.bucket": gcs.bucket,
        "hyperparameters.epochs": 1,
        "hyperparameters.examples": 8 * steps,
        "hyperparameters.evalEvery": 1000,
        "hyperparameters.checkpointEvery": 2,
        "checkpoint.claimName": claim,
        "checkpoint.terminationGracePeriodSeconds": 20,
        **spec,
    }
    return tiny_ftj(name, env={**TRAINER_ENV, **gcs.env(), **(env or {})}, **overrides)


def held_at(cluster: Cluster, namespace: str, name: str, step: int, resumed: int | None) -> dict[str, Any]:
    """The job once its trainer holds at ``step`` (its checkpoint listed) in an attempt resumed from ``resumed``."""

    def holding() -> dict[str, Any]:
        ftj = get_ftj(cluster, namespace, name) or {}
        progress = (ftj.get("status") or {}).get("progress") or {}
        if step in checkpoint_steps(ftj) and progress.get("step") == step and progress.get("resumedFrom") == resumed:
            return ftj
        assert (ftj.get("status") or {}).get("phase") not in ("Failed", "Succeeded"), ftj.get("status")
        return {}

    return wait_for(holding, 300, 0.5, f"{name} holding at step {step}")


def dataset_rows() -> bytes:
    """The bytes of the tiny sample's dataset (crds/samples/tiny-dataset.yaml), as the trainer pods read them."""
    return str(yaml.safe_load(DATASET.read_text())["data"]["dataset.json"]).encode()


def trainer_config(cluster: Cluster, namespace: str, name: str) -> TrainerConfig:
    """What the operator handed the job's trainer: the Job's pod-template annotation."""
    job = children(cluster, namespace, name)["jobs"][0]
    return TrainerConfig.model_validate_json(job["spec"]["template"]["metadata"]["annotations"][ANN_TRAINER_CONFIG])


def reference_weights(trainer: Trainer, cfg: TrainerConfig, data: bytes, *, nproc: int = 1) -> dict[str, torch.Tensor]:
    """``cfg`` trained locally from step 0 to the end without interruption, no upload; the exported weights."""
    name = f"ref-{cfg.job}"
    work = trainer.tmp / name
    work.mkdir(parents=True, exist_ok=True)
    dataset = work / "dataset.json"
    dataset.write_bytes(data)
    run = cfg.run.model_copy(
        update={"run_dir": str(work / "run"), "checkpoint_dir": str(work / "checkpoints"), "checkpoint_location": None}
    )
    local = cfg.model_copy(
        update={"dataset": cfg.dataset.model_copy(update={"path": str(dataset)}), "output": None, "run": run}
    )
    config = work / "trainer-config.json"
    config.write_text(local.render())
    cmd = [sys.executable, "-m", "fttrainer.launch", "--standalone", "--nnodes=1", f"--nproc-per-node={nproc}"]
    result = trainer.run_command(name, [*cmd, "-m", "fttrainer.train", "--config", str(config)], timeout=600)
    assert result.returncode == 0, result.output[-4000:]
    return load_file(work / "checkpoints" / "export" / "model.safetensors")


def artifact_weights(gcs: GcsEmulator, status: dict[str, Any]) -> dict[str, torch.Tensor]:
    prefix = status["artifact"]["uri"].removeprefix(f"gs://{gcs.bucket}/")
    return load(gcs.download(prefix + "model.safetensors"))


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def pod_logs(cluster: Cluster, namespace: str, name: str) -> list[tuple[str, str]]:
    """(pod name, its trainer log) of every pod of the job still in the API, oldest first."""
    pods = sorted(children(cluster, namespace, name)["pods"], key=lambda p: p["metadata"]["creationTimestamp"])
    return [(p["metadata"]["name"], cluster.pod_log(namespace, p["metadata"]["name"])) for p in pods]


def all_trainer_logs(cluster: Cluster, namespace: str) -> str:
    """Every trainer log the process node kept for pods of ``namespace`` (deleted pods included)."""
    return "\n".join(
        path.read_text(errors="replace") for path in sorted(cluster.pods_dir.glob(f"{namespace}_*/trainer.log"))
    )


def resumed_steps(log: str) -> list[int]:
    return [int(m) for m in re.findall(r"resumed from step (\d+)", log)]


def checkpoint_steps(ftj: dict[str, Any]) -> list[int]:
    return [int(c["step"]) for c in (ftj.get("status") or {}).get("checkpoints") or []]


def hooks(**values: Any) -> str:
    """``FTJ_TEST_HOOKS`` for spec.env."""
    return json.dumps(values)


__all__ = ["ROOT", "TRAINER_ENV"]
