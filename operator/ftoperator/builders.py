"""Pure builders: a FineTuneJob in, the child objects' manifests out (plain dicts, no API calls).

Names, labels and the trainer's configuration follow docs/contract.md ("Child objects", "Operator ->
trainer"); every wire name comes from :mod:`ftcrd.names`. The trainer gets its resolved configuration as
one JSON document (:func:`trainer_config`) in a pod-template annotation, which a downwardAPI volume
exposes as a file: no extra API object per job, and no command-line quoting. Every function here is
deterministic, so creating the children twice yields the same objects and an operator restart adopts
rather than duplicates.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from typing import Any

from ftcrd.conditions import ExitCode
from ftcrd.names import (
    ANN_ENTRYPOINT,
    ANN_TRAINER_CONFIG,
    CHECKPOINT_DIR,
    CONTAINER,
    DATA_DIR,
    ENV_COMPLETION_INDEX,
    ENV_JOB_NAME,
    ENV_JOB_NAMESPACE,
    FIREBASE_DIR,
    GROUP,
    LABEL_COMMUNITY,
    LABEL_JOB,
    LABEL_MANAGED_BY,
    LABEL_QUEUE,
    MANAGED_BY,
    MODELS_DIR,
    SHM_DIR,
    STATUS_SUBRESOURCE,
    TERMINATION_LOG,
    TRAINER_CONFIG_DIR,
    TRAINER_CONFIG_FILE,
    TRAINER_CONFIG_PATH,
    TRAINER_IDENTITY,
    WORKSPACE_DIR,
)
from ftcrd.trainer_config import TrainerConfig, TrainerDataset, TrainerModel, TrainerOutput, TrainerRun
from ftcrd.types import API_VERSION, KIND, RESERVED_ENV, FineTuneJob, FineTuneJobSpec

from ftoperator.settings import Settings

# Re-exported for the operator's other modules (handlers select children by it).
__all__ = ["LABEL_JOB", "TRAINER_IDENTITY"]

RUN_DIR = f"{WORKSPACE_DIR}/run"


def parse(body: Mapping[str, Any]) -> FineTuneJob:
    """The FineTuneJob model of a raw object (raises pydantic.ValidationError on a bad spec)."""
    return FineTuneJob.model_validate(
        {"metadata": dict(body.get("metadata") or {}), "spec": dict(body.get("spec") or {})}
    )


def labels(ftj: FineTuneJob) -> dict[str, str]:
    """Labels of every child object (and of the trainer pods)."""
    out = {LABEL_JOB: ftj.metadata["name"], LABEL_MANAGED_BY: MANAGED_BY}
    if ftj.spec.community_id:
        out[LABEL_COMMUNITY] = ftj.spec.community_id
    return out


def owner_reference(ftj: FineTuneJob) -> dict[str, Any]:
    """The controller ownerReference: deleting the FineTuneJob lets the garbage collector remove the child."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": ftj.metadata["name"],
        "uid": ftj.metadata["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(ftj: FineTuneJob, name: str, extra_labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    md: dict[str, Any] = {
        "name": name,
        "namespace": ftj.metadata["namespace"],
        "labels": {**labels(ftj), **(extra_labels or {})},
        "ownerReferences": [owner_reference(ftj)],
    }
    return md


# ---------------------------------------------------------------------------------------------
# the trainer's configuration and command line
# ---------------------------------------------------------------------------------------------


def processes_per_node(spec: FineTuneJobSpec) -> int:
    res = spec.resources
    return res.gpus_per_node or res.processes_per_node or 1


def dataset_path(spec: FineTuneJobSpec) -> str | None:
    """Where the mounted dataset file is; None for an object, which the trainer downloads itself."""
    ds = spec.dataset
    if ds.config_map is not None:
        return f"{DATA_DIR}/{ds.config_map.key}"
    if ds.volume is not None:
        return f"{DATA_DIR}/{ds.volume.path}"
    return None


def trainer_config(spec: FineTuneJobSpec, name: str) -> TrainerConfig:
    """The trainer's resolved configuration: the spec's own models, the pod's paths."""
    model = spec.model
    return TrainerConfig(
        job=name,
        model=TrainerModel(
            preset=model.preset,
            name_or_path=f"{MODELS_DIR}/{model.name}" if model.claim_name else model.name,
            revision=model.revision,
            tokenizer_name_or_path=model.tokenizer,
        ),
        method=spec.method,
        hyperparameters=spec.hyperparameters,
        dataset=TrainerDataset(
            path=dataset_path(spec),
            source=spec.dataset.object,
            format=spec.dataset.format,
            compression=spec.dataset.compression,
            validation_fraction=spec.dataset.validation_fraction,
        ),
        output=TrainerOutput(bucket=spec.output.bucket, prefix=spec.output.prefix, community_id=spec.community_id),
        run=TrainerRun(run_dir=RUN_DIR, checkpoint_dir=CHECKPOINT_DIR),
    )


def trainer_command(spec: FineTuneJobSpec, name: str, settings: Settings | None = None) -> list[str]:
    """``torchrun … -m fttrainer.train --config <file>`` for one pod of the job.

    Single node: ``--standalone`` (torchrun picks a free port; pods on the process node share the
    host network). Multi-node: static rendezvous on pod 0 through the headless Service; the node rank
    is the Indexed Job's completion index, ``$(JOB_COMPLETION_INDEX)`` expanded by the kubelet.
    """
    settings = settings or Settings()
    nodes = spec.resources.nodes
    cmd = ["torchrun", "--nnodes", str(nodes), "--nproc-per-node", str(processes_per_node(spec))]
    if nodes == 1:
        cmd += ["--standalone"]
    else:
        cmd += [
            "--node-rank",
            f"$({ENV_COMPLETION_INDEX})",
            "--master-addr",
            f"{name}-0.{name}",
            "--master-port",
            str(settings.master_port),
        ]
    return [*cmd, "-m", "fttrainer.train", "--config", TRAINER_CONFIG_PATH]


# ---------------------------------------------------------------------------------------------
# child objects
# ---------------------------------------------------------------------------------------------


def _env(ftj: FineTuneJob) -> list[dict[str, Any]]:
    spec = ftj.spec
    env: list[dict[str, Any]] = [
        {"name": ENV_JOB_NAME, "value": ftj.metadata["name"]},
        {"name": ENV_JOB_NAMESPACE, "value": ftj.metadata["namespace"]},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": "HOME", "value": WORKSPACE_DIR},
    ]
    if spec.output.credentials_secret is not None:
        env.append(
            {
                "name": "GOOGLE_APPLICATION_CREDENTIALS",
                "value": f"{FIREBASE_DIR}/{spec.output.credentials_secret.key}",
            }
        )
    if spec.model.hf_token_secret is not None:
        ref = spec.model.hf_token_secret
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}})
    if spec.model.claim_name:
        env.append({"name": "HF_HUB_OFFLINE", "value": "1"})
    # spec.env may override the conveniences above but never the reserved rank wiring (CEL rejects it too).
    user = {item.name: item.value for item in spec.env or [] if item.name not in RESERVED_ENV}
    env = [e for e in env if e["name"] not in user]
    env += [{"name": k, "value": v} for k, v in user.items()]
    return env


def scratch_volume(size_limit: str) -> dict[str, Any]:
    """An emptyDir, bounded when ``size_limit`` is set: beyond it the kubelet evicts the pod rather than let it
    fill the node's disk."""
    return {"sizeLimit": size_limit} if size_limit else {}


def _volumes(ftj: FineTuneJob, settings: Settings | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    settings = settings or Settings()
    spec = ftj.spec
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    ds = spec.dataset
    if ds.config_map is not None:
        volumes.append({"name": "dataset", "configMap": {"name": ds.config_map.name}})
    elif ds.volume is not None:
        volumes.append(
            {"name": "dataset", "persistentVolumeClaim": {"claimName": ds.volume.claim_name, "readOnly": True}}
        )
    if volumes:  # an object dataset has no volume: the trainer downloads it (fttrainer.datasource)
        mounts.append({"name": "dataset", "mountPath": DATA_DIR, "readOnly": True})
    if spec.output.credentials_secret is not None:
        volumes.append(
            {
                "name": "firebase-credentials",
                "secret": {"secretName": spec.output.credentials_secret.name, "defaultMode": 0o440},
            }
        )
        mounts.append({"name": "firebase-credentials", "mountPath": FIREBASE_DIR, "readOnly": True})
    if spec.model.claim_name:
        volumes.append(
            {"name": "models", "persistentVolumeClaim": {"claimName": spec.model.claim_name, "readOnly": True}}
        )
        mounts.append({"name": "models", "mountPath": MODELS_DIR, "readOnly": True})
    volumes += [
        {"name": "checkpoints", "emptyDir": scratch_volume(settings.checkpoint_size_limit)},
        {"name": "workspace", "emptyDir": scratch_volume(settings.workspace_size_limit)},
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": spec.resources.shm_size}},
        {
            "name": "trainer-config",
            "downwardAPI": {
                "items": [
                    {
                        "path": TRAINER_CONFIG_FILE,
                        "fieldRef": {"fieldPath": f"metadata.annotations['{ANN_TRAINER_CONFIG}']"},
                    }
                ]
            },
        },
    ]
    mounts += [
        {"name": "checkpoints", "mountPath": CHECKPOINT_DIR},
        {"name": "workspace", "mountPath": WORKSPACE_DIR},
        {"name": "dshm", "mountPath": SHM_DIR},
        {"name": "trainer-config", "mountPath": TRAINER_CONFIG_DIR, "readOnly": True},
    ]
    return volumes, mounts


def _resources(spec: FineTuneJobSpec) -> dict[str, Any]:
    res = spec.resources
    limits: dict[str, str] = {}
    requests: dict[str, str] = {}
    if res.cpu is not None:
        limits["cpu"] = requests["cpu"] = res.cpu
    if res.memory is not None:
        limits["memory"] = requests["memory"] = res.memory
    if res.gpus_per_node:
        limits["nvidia.com/gpu"] = requests["nvidia.com/gpu"] = str(res.gpus_per_node)
    out: dict[str, Any] = {}
    if limits:
        out["limits"] = limits
    if requests:
        out["requests"] = requests
    return out


def pod_template(ftj: FineTuneJob, settings: Settings) -> dict[str, Any]:
    spec = ftj.spec
    name = ftj.metadata["name"]
    volumes, mounts = _volumes(ftj, settings)
    command = trainer_command(spec, name, settings)
    entrypoint = list(settings.trainer_entrypoint)
    override = (ftj.metadata.get("annotations") or {}).get(ANN_ENTRYPOINT)
    if override and settings.allow_entrypoint_annotation:
        entrypoint = shlex.split(override)
    uid = settings.trainer_uid
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": spec.image or settings.trainer_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": entrypoint,
        "args": command[1:],
        "env": _env(ftj),
        "resources": _resources(spec),
        "volumeMounts": mounts,
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "serviceAccountName": spec.service_account_name or TRAINER_IDENTITY,
        "automountServiceAccountToken": True,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": uid,
            "runAsGroup": uid,
            "fsGroup": uid,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": volumes,
    }
    if needs_service(ftj):
        container["ports"] = [{"name": "rendezvous", "containerPort": settings.master_port, "protocol": "TCP"}]
        pod_spec["subdomain"] = name
    res = spec.resources
    if res.node_selector:
        pod_spec["nodeSelector"] = dict(res.node_selector)
    if res.tolerations:
        pod_spec["tolerations"] = [t.wire() for t in res.tolerations]
    if res.priority_class_name:
        pod_spec["priorityClassName"] = res.priority_class_name
    annotations = {ANN_TRAINER_CONFIG: trainer_config(spec, name).render()}
    return {"metadata": {"labels": labels(ftj), "annotations": annotations}, "spec": pod_spec}


def pod_failure_policy() -> dict[str, Any]:
    """Disruptions (preemption, eviction, node drain) are not the trainer's fault: they do not count against
    backoffLimit. Invalid input (exit 2) fails the Job at once: retrying the same data cannot help."""
    return {
        "rules": [
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            {
                "action": "FailJob",
                "onExitCodes": {
                    "containerName": CONTAINER,
                    "operator": "In",
                    "values": [ExitCode.INVALID_INPUT.value],
                },
            },
        ]
    }


def job_suspended(spec: FineTuneJobSpec) -> bool:
    """Created suspended when the user asks or when Kueue admits it (Kueue un-suspends on admission)."""
    return bool(spec.run_policy.suspend or spec.run_policy.queue_name)


def active_deadline_seconds(spec: FineTuneJobSpec, settings: Settings) -> int | None:
    """spec.runPolicy.activeDeadlineSeconds, else the operator's default: no Job retries for ever."""
    return spec.run_policy.active_deadline_seconds or settings.default_active_deadline_seconds or None


def render_job(ftj: FineTuneJob, settings: Settings | None = None) -> dict[str, Any]:
    """The batch/v1 Indexed Job: ``nodes`` completions and parallelism, one torchrun node per pod."""
    settings = settings or Settings()
    spec = ftj.spec
    extra = {LABEL_QUEUE: spec.run_policy.queue_name} if spec.run_policy.queue_name else None
    nodes = spec.resources.nodes
    job_spec: dict[str, Any] = {
        "completionMode": "Indexed",
        "completions": nodes,
        "parallelism": nodes,
        "backoffLimit": spec.run_policy.backoff_limit,
        "podFailurePolicy": pod_failure_policy(),
        "podReplacementPolicy": "Failed",
        "suspend": job_suspended(spec),
        "template": pod_template(ftj, settings),
    }
    deadline = active_deadline_seconds(spec, settings)
    if deadline:
        job_spec["activeDeadlineSeconds"] = deadline
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _metadata(ftj, ftj.metadata["name"], extra),
        "spec": job_spec,
    }


def render_service(ftj: FineTuneJob, settings: Settings | None = None) -> dict[str, Any]:
    """Headless Service giving pod ``<job>-<i>`` the DNS name ``<job>-<i>.<job>`` (rank wiring)."""
    settings = settings or Settings()
    name = ftj.metadata["name"]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(ftj, name),
        "spec": {
            "clusterIP": "None",
            "selector": {LABEL_JOB: name},
            "publishNotReadyAddresses": True,
            "ports": [{"name": "rendezvous", "port": settings.master_port, "targetPort": settings.master_port}],
        },
    }


def render_trainer_identity(namespace: str) -> list[dict[str, Any]]:
    """ServiceAccount, Role and RoleBinding ``finetune-trainer``: one trainer identity per namespace.

    The Role allows only ``patch`` on ``finetunejobs/status`` (progress reporting). Which job a trainer may
    patch is narrowed per pod by the ValidatingAdmissionPolicy ``finetune-trainer-own-job``
    (deploy/base/trainer): the pod-bound token names its pod, and a pod of FineTuneJob ``x`` is
    ``x-<index>-<suffix>``. One identity per namespace instead of three RBAC objects per job: creating a job
    costs one Job (plus a Service for multi-node), which is what bounds the time to pods under a burst."""
    md = {"name": TRAINER_IDENTITY, "namespace": namespace, "labels": {LABEL_MANAGED_BY: MANAGED_BY}}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": md, "automountServiceAccountToken": True},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": md,
            "rules": [
                {
                    "apiGroups": [GROUP],
                    "resources": [STATUS_SUBRESOURCE],
                    "verbs": ["patch"],
                }
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": md,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": TRAINER_IDENTITY},
            "subjects": [{"kind": "ServiceAccount", "name": TRAINER_IDENTITY, "namespace": namespace}],
        },
    ]


def needs_trainer_identity(ftj: FineTuneJob) -> bool:
    """False when spec.serviceAccountName names the user's own ServiceAccount."""
    return not ftj.spec.service_account_name


def needs_service(ftj: FineTuneJob) -> bool:
    """Only ranks on several pods need DNS names; one node runs torchrun --standalone."""
    return ftj.spec.resources.nodes > 1


def render_children(ftj: FineTuneJob, settings: Settings | None = None) -> list[dict[str, Any]]:
    """The job's own children: the headless Service (multi-node only) and the Job. The namespace's trainer
    identity (:func:`render_trainer_identity`) is shared and must exist before the Job's pods."""
    service = [render_service(ftj, settings)] if needs_service(ftj) else []
    return [*service, render_job(ftj, settings)]
