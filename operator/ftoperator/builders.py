"""Pure builders: a FineTuneJob in, the child objects' manifests out (plain dicts, no API calls).

Names, labels and the trainer's configuration follow docs/contract.md ("Child objects", "Operator ->
trainer"); every wire name comes from :mod:`ftcrd.names`. The trainer gets its resolved configuration as
one JSON document (:func:`trainer_config`) in a pod-template annotation, which a downwardAPI volume
exposes as a file: no extra API object per job, and no command-line quoting. Every function here is
deterministic, so creating the children twice yields the same objects and an operator restart adopts
rather than duplicates.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
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
    ENV_MLFLOW_TOKEN,
    ENV_WANDB_API_KEY,
    ENV_WANDB_MODE,
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
    VALIDATION_DIR,
    WORKSPACE_DIR,
)
from ftcrd.trainer_config import (
    TrainerConfig,
    TrainerDataset,
    TrainerDatasetFile,
    TrainerModel,
    TrainerOutput,
    TrainerRun,
)
from ftcrd.types import API_VERSION, KIND, RESERVED_ENV, DatasetSource, FineTuneJob, FineTuneJobSpec, SecretKeyRef

from ftoperator.checkpointing import CheckpointStorage, checkpoint_storage, grace_seconds
from ftoperator.objects import parse_time
from ftoperator.settings import Settings

# Re-exported for the operator's other modules (handlers select children by it).
__all__ = ["LABEL_JOB", "TRAINER_IDENTITY"]

RUN_DIR = f"{WORKSPACE_DIR}/run"
SHUTDOWN_MARGIN_SECONDS = 5
"""torchrun's --shutdown-timeout is the pod's grace period minus this: the workers' SIGTERM checkpoint gets
(nearly) all of it, and torchrun still exits before the kubelet's SIGKILL."""


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """spec.model.from, resolved (ftoperator.sources): the export the trainer downloads and verifies."""

    uri: str
    sha256: str | None = None


@dataclasses.dataclass(frozen=True)
class Carryover:
    """What the Jobs this FineTuneJob already replaced used up (gang and watchdog restarts): failures counted
    against backoffLimit, and seconds of activeDeadlineSeconds."""

    failures: int = 0
    elapsed_seconds: int = 0

    @classmethod
    def from_status(cls, status: Mapping[str, Any], now: dt.datetime) -> Carryover:
        """What status.countedFailures and, once the operator restarted the job, the time since status.startTime
        say was used (none for the first Job, whose manifest stays deterministic)."""
        started = parse_time(status.get("startTime")) if status.get("restarts") else None
        elapsed = int((now - started).total_seconds()) if started else 0
        return cls(failures=int(status.get("countedFailures") or 0), elapsed_seconds=max(0, elapsed))


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


def dataset_path(source: DatasetSource, mount: str = DATA_DIR) -> str:
    """The file of a dataset source where the pod mounts it (training data at /data, validation data next to it)."""
    if source.config_map is not None:
        return f"{mount}/{source.config_map.key}"
    assert source.volume is not None  # CEL: exactly one of configMap or volume
    return f"{mount}/{source.volume.path}"


def _validation_file(spec: FineTuneJobSpec) -> TrainerDatasetFile | None:
    source = spec.dataset.validation
    if source is None:
        return None
    path = dataset_path(source, VALIDATION_DIR)
    return TrainerDatasetFile(path=path, format=source.format, compression=source.compression)


def trainer_config(
    spec: FineTuneJobSpec,
    name: str,
    *,
    storage: CheckpointStorage | None = None,
    source: ModelSource | None = None,
) -> TrainerConfig:
    """The trainer's resolved configuration: the spec's own models, the pod's paths, where the checkpoints live
    and the verified model to start from."""
    model = spec.model
    return TrainerConfig(
        job=name,
        model=TrainerModel(
            preset=model.preset,
            name_or_path=f"{MODELS_DIR}/{model.name}" if model.claim_name else model.name,
            revision=model.revision,
            tokenizer_name_or_path=model.tokenizer,
            source_uri=source.uri if source else None,
            source_sha256=source.sha256 if source else None,
        ),
        method=spec.method,
        hyperparameters=spec.hyperparameters,
        dataset=TrainerDataset(
            path=dataset_path(spec.dataset),
            format=spec.dataset.format,
            compression=spec.dataset.compression,
            validation_fraction=spec.dataset.validation_fraction,
            validation=_validation_file(spec),
        ),
        output=TrainerOutput(bucket=spec.output.bucket, prefix=spec.output.prefix, community_id=spec.community_id),
        tracking=spec.tracking,
        run=TrainerRun(
            run_dir=RUN_DIR,
            checkpoint_dir=CHECKPOINT_DIR,
            keep_checkpoints=spec.checkpoint.keep,
            checkpoint_location=(storage or CheckpointStorage()).location,
        ),
    )


def trainer_command(spec: FineTuneJobSpec, name: str, settings: Settings | None = None) -> list[str]:
    """``torchrun … -m fttrainer.train --config <file>`` for one pod of the job.

    Single node: ``--standalone`` (torchrun picks a free port; pods on the process node share the
    host network). Multi-node: static rendezvous on pod 0 through the headless Service; the node rank
    is the Indexed Job's completion index, ``$(JOB_COMPLETION_INDEX)`` expanded by the kubelet.
    ``--shutdown-timeout``: on SIGTERM torchrun gives its workers (writing their checkpoint) the pod's grace
    period, not its own default of 30 s.
    """
    settings = settings or Settings()
    nodes = spec.resources.nodes
    shutdown = max(1, grace_seconds(spec, settings) - SHUTDOWN_MARGIN_SECONDS)
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
    return [*cmd, "--shutdown-timeout", str(shutdown), "-m", "fttrainer.train", "--config", TRAINER_CONFIG_PATH]


# ---------------------------------------------------------------------------------------------
# child objects
# ---------------------------------------------------------------------------------------------


def _secret_env(name: str, ref: SecretKeyRef) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}


def _tracking_env(spec: FineTuneJobSpec) -> list[dict[str, Any]]:
    """Tracker credentials by reference (never in the spec or the trainer's configuration); W&B without a key
    records offline, in the trainer's run directory."""
    tracking = spec.tracking
    env: list[dict[str, Any]] = []
    if tracking is not None and tracking.wandb is not None:
        key = tracking.wandb.api_key_secret
        env.append(_secret_env(ENV_WANDB_API_KEY, key) if key else {"name": ENV_WANDB_MODE, "value": "offline"})
    if tracking is not None and tracking.mlflow is not None and tracking.mlflow.token_secret is not None:
        env.append(_secret_env(ENV_MLFLOW_TOKEN, tracking.mlflow.token_secret))
    return env


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
        env.append(_secret_env("HF_TOKEN", spec.model.hf_token_secret))
    if spec.model.claim_name:
        env.append({"name": "HF_HUB_OFFLINE", "value": "1"})
    env += _tracking_env(spec)
    # spec.env may override the conveniences above but never the reserved rank wiring (CEL rejects it too).
    user = {item.name: item.value for item in spec.env or [] if item.name not in RESERVED_ENV}
    env = [e for e in env if e["name"] not in user]
    env += [{"name": k, "value": v} for k, v in user.items()]
    return env


def scratch_volume(size_limit: str) -> dict[str, Any]:
    """An emptyDir, bounded when ``size_limit`` is set: beyond it the kubelet evicts the pod rather than let it
    fill the node's disk."""
    return {"sizeLimit": size_limit} if size_limit else {}


def _dataset_volume(name: str, source: DatasetSource) -> dict[str, Any]:
    if source.config_map is not None:
        return {"name": name, "configMap": {"name": source.config_map.name}}
    assert source.volume is not None
    return {"name": name, "persistentVolumeClaim": {"claimName": source.volume.claim_name, "readOnly": True}}


def _volumes(
    ftj: FineTuneJob, settings: Settings | None = None, storage: CheckpointStorage | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    settings = settings or Settings()
    storage = storage or checkpoint_storage(ftj, settings)
    spec = ftj.spec
    volumes: list[dict[str, Any]] = [_dataset_volume("dataset", spec.dataset)]
    mounts: list[dict[str, Any]] = [{"name": "dataset", "mountPath": DATA_DIR, "readOnly": True}]
    if spec.dataset.validation is not None:
        volumes.append(_dataset_volume("validation", spec.dataset.validation))
        mounts.append({"name": "validation", "mountPath": VALIDATION_DIR, "readOnly": True})
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
    if storage.claim is not None:
        checkpoints: dict[str, Any] = {"name": "checkpoints", "persistentVolumeClaim": {"claimName": storage.claim}}
    else:
        checkpoints = {"name": "checkpoints", "emptyDir": scratch_volume(settings.checkpoint_size_limit)}
    checkpoint_mount: dict[str, Any] = {"name": "checkpoints", "mountPath": CHECKPOINT_DIR}
    if storage.sub_path:
        checkpoint_mount["subPath"] = storage.sub_path
    volumes += [
        checkpoints,
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
        checkpoint_mount,
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


def pod_template(ftj: FineTuneJob, settings: Settings, source: ModelSource | None = None) -> dict[str, Any]:
    spec = ftj.spec
    name = ftj.metadata["name"]
    storage = checkpoint_storage(ftj, settings)
    volumes, mounts = _volumes(ftj, settings, storage)
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
        "terminationGracePeriodSeconds": grace_seconds(spec, settings),
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
    annotations = {ANN_TRAINER_CONFIG: trainer_config(spec, name, storage=storage, source=source).render()}
    return {"metadata": {"labels": labels(ftj), "annotations": annotations}, "spec": pod_spec}


def pod_failure_policy(nodes: int = 1) -> dict[str, Any]:
    """Disruptions (preemption, eviction, node drain) are not the trainer's fault: they do not count against
    backoffLimit. Invalid input (exit 2) fails the Job at once: retrying the same data cannot help.

    A multi-node Job restarts as a whole (gang semantics, ftoperator.restarts): any failed rank fails the Job (a
    disrupted one too, through FailJob, so the operator sees it was a disruption and does not count it), the Job
    controller stops the other ranks, and the operator replaces the Job."""
    disruption = "Ignore" if nodes == 1 else "FailJob"
    return {
        "rules": [
            {"action": disruption, "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
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


def active_deadline_seconds(spec: FineTuneJobSpec, settings: Settings, elapsed: int = 0) -> int | None:
    """spec.runPolicy.activeDeadlineSeconds, else the operator's default: no Job retries for ever. ``elapsed``: what
    replaced Jobs already used of it (the deadline is the whole job's, across restarts)."""
    deadline = spec.run_policy.active_deadline_seconds or settings.default_active_deadline_seconds or None
    return max(1, deadline - elapsed) if deadline else None


def job_backoff_limit(spec: FineTuneJobSpec, carry: Carryover) -> int:
    """The Job controller's own retries: a one-node job's pod is replaced by it (what is left of backoffLimit);
    a multi-node Job never retries a single rank (0): the operator restarts every rank together."""
    if spec.resources.nodes > 1:
        return 0
    return max(0, spec.run_policy.backoff_limit - carry.failures)


def render_job(
    ftj: FineTuneJob,
    settings: Settings | None = None,
    *,
    source: ModelSource | None = None,
    carry: Carryover | None = None,
) -> dict[str, Any]:
    """The batch/v1 Indexed Job: ``nodes`` completions and parallelism, one torchrun node per pod."""
    settings = settings or Settings()
    carry = carry or Carryover()
    spec = ftj.spec
    extra = {LABEL_QUEUE: spec.run_policy.queue_name} if spec.run_policy.queue_name else None
    nodes = spec.resources.nodes
    job_spec: dict[str, Any] = {
        "completionMode": "Indexed",
        "completions": nodes,
        "parallelism": nodes,
        "backoffLimit": job_backoff_limit(spec, carry),
        "podFailurePolicy": pod_failure_policy(nodes),
        "podReplacementPolicy": "Failed",
        "suspend": job_suspended(spec),
        "template": pod_template(ftj, settings, source),
    }
    deadline = active_deadline_seconds(spec, settings, carry.elapsed_seconds)
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


def render_checkpoint_claim(ftj: FineTuneJob, settings: Settings | None = None) -> dict[str, Any] | None:
    """The PersistentVolumeClaim ``<job>-checkpoints`` the operator creates (owned by the FineTuneJob, so deleted
    with it and kept across pods and Jobs), or None when the checkpoints go to a user's claim or an emptyDir."""
    storage = checkpoint_storage(ftj, settings)
    if not storage.owned or storage.claim is None:
        return None
    mode = "ReadWriteMany" if ftj.spec.resources.nodes > 1 else "ReadWriteOnce"
    spec: dict[str, Any] = {"accessModes": [mode], "resources": {"requests": {"storage": storage.size}}}
    if storage.storage_class is not None:
        spec["storageClassName"] = storage.storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _metadata(ftj, storage.claim),
        "spec": spec,
    }


def render_children(
    ftj: FineTuneJob,
    settings: Settings | None = None,
    *,
    source: ModelSource | None = None,
    carry: Carryover | None = None,
) -> list[dict[str, Any]]:
    """The job's own children: the checkpoint claim (when the operator makes one), the headless Service
    (multi-node only) and the Job, last. The namespace's trainer identity (:func:`render_trainer_identity`) is
    shared and must exist before the Job's pods."""
    claim = render_checkpoint_claim(ftj, settings)
    service = [render_service(ftj, settings)] if needs_service(ftj) else []
    return [*([claim] if claim else []), *service, render_job(ftj, settings, source=source, carry=carry)]
