"""Pure builders: a FineTuneJob in, the child objects' manifests out (plain dicts, no API calls).

Names, labels and the trainer command line follow docs/contract.md ("Child objects",
"Trainer command line"). Every function here is deterministic, so creating the children twice
yields the same objects and an operator restart adopts rather than duplicates.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from typing import Any

from ftcrd.types import API_VERSION, KIND, RESERVED_ENV, FineTuneJob, FineTuneJobSpec

from ftoperator.settings import Settings

LABEL_JOB = "finetune.dev/job"
LABEL_COMMUNITY = "finetune.dev/community-id"
LABEL_QUEUE = "kueue.x-k8s.io/queue-name"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_COMPONENT = "app.kubernetes.io/component"
MANAGED_BY = "finetune-operator"
TRAINER_IDENTITY = "finetune-trainer"  # ServiceAccount, Role and RoleBinding in each namespace with jobs
CONTAINER = "trainer"
ANNOTATION_COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
ANNOTATION_ENTRYPOINT = "finetune.dev/trainer-entrypoint"

# Exit codes of the trainer (docs/contract.md "Trainer -> operator").
EXIT_INVALID_INPUT = 2
EXIT_UPLOAD_FAILED = 3

DATA_DIR = "/data"
FIREBASE_DIR = "/var/run/secrets/firebase"
MODELS_DIR = "/models"
CHECKPOINT_DIR = "/checkpoints"
WORKSPACE_DIR = "/workspace"

_HYDRA_PLAIN = re.compile(r"^[A-Za-z0-9_./:@+-]*$")


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
# trainer command line
# ---------------------------------------------------------------------------------------------


def hydra_value(value: object) -> str:
    """One Hydra override value: booleans lower-case, None as null, odd strings single-quoted."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    text = str(value)
    if text and _HYDRA_PLAIN.match(text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def processes_per_node(spec: FineTuneJobSpec) -> int:
    res = spec.resources
    return res.gpus_per_node or res.processes_per_node or 1


def dataset_path(spec: FineTuneJobSpec) -> str:
    ds = spec.dataset
    if ds.config_map is not None:
        return f"{DATA_DIR}/{ds.config_map.key}"
    assert ds.volume is not None  # CEL: exactly one of configMap or volume
    return f"{DATA_DIR}/{ds.volume.path}"


def hydra_overrides(spec: FineTuneJobSpec, name: str) -> list[str]:
    """The spec as the trainer's Hydra overrides (docs/contract.md, same spelling as the reference)."""
    hp = spec.hyperparameters
    model_path = f"{MODELS_DIR}/{spec.model.name}" if spec.model.claim_name else spec.model.name
    pairs: list[tuple[str, object]] = [
        ("model", spec.model.preset),
        ("model.name_or_path", model_path),
        ("loss", spec.method.type),
        ("loss.beta", spec.method.beta),
        ("loss.label_smoothing", spec.method.label_smoothing),
        ("loss.reference_free", spec.method.reference_free),
    ]
    out = [f"{k}={hydra_value(v)}" for k, v in pairs]
    out.append(f"datasets=[{spec.dataset.format}]")
    pairs = [
        ("dataset.path", dataset_path(spec)),
        ("dataset.compression", spec.dataset.compression),
        ("dataset.validation_fraction", spec.dataset.validation_fraction),
        ("exp_name", name),
    ]
    if hp.epochs is not None:
        pairs.append(("n_epochs", hp.epochs))
    if hp.examples is not None:
        pairs.append(("n_examples", hp.examples))
    pairs += [
        ("lr", hp.learning_rate),
        ("batch_size", hp.batch_size),
        ("gradient_accumulation_steps", hp.gradient_accumulation_steps),
        ("max_length", hp.max_length),
        ("max_prompt_length", hp.max_prompt_length),
        ("warmup_steps", hp.warmup_steps),
        ("optimizer", hp.optimizer),
        ("seed", hp.seed),
        ("eval_every", hp.eval_every),
        ("max_grad_norm", hp.max_grad_norm),
        ("activation_checkpointing", hp.activation_checkpointing),
        ("checkpoint_every", hp.checkpoint_every),
        ("precompute_reference", hp.precompute_reference),
        ("checkpoint_dir", CHECKPOINT_DIR),
        ("run_dir", f"{WORKSPACE_DIR}/run"),
        ("upload.bucket", spec.output.bucket),
        ("upload.prefix", spec.output.prefix),
    ]
    if spec.community_id:
        pairs.append(("upload.community_id", spec.community_id))
    out += [f"{k}={hydra_value(v)}" for k, v in pairs]
    return out


def trainer_command(spec: FineTuneJobSpec, name: str, settings: Settings | None = None) -> list[str]:
    """``torchrun … -m fttrainer.train <overrides>`` for one pod of the job.

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
            "$(JOB_COMPLETION_INDEX)",
            "--master-addr",
            f"{name}-0.{name}",
            "--master-port",
            str(settings.master_port),
        ]
    return [*cmd, "-m", "fttrainer.train", *hydra_overrides(spec, name)]


# ---------------------------------------------------------------------------------------------
# child objects
# ---------------------------------------------------------------------------------------------


def _env(ftj: FineTuneJob) -> list[dict[str, Any]]:
    spec = ftj.spec
    env: list[dict[str, Any]] = [
        {"name": "FTJ_NAME", "value": ftj.metadata["name"]},
        {"name": "FTJ_NAMESPACE", "value": ftj.metadata["namespace"]},
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
    else:
        assert ds.volume is not None
        volumes.append(
            {"name": "dataset", "persistentVolumeClaim": {"claimName": ds.volume.claim_name, "readOnly": True}}
        )
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
    ]
    mounts += [
        {"name": "checkpoints", "mountPath": CHECKPOINT_DIR},
        {"name": "workspace", "mountPath": WORKSPACE_DIR},
        {"name": "dshm", "mountPath": "/dev/shm"},
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
    override = (ftj.metadata.get("annotations") or {}).get(ANNOTATION_ENTRYPOINT)
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
        "terminationMessagePath": "/dev/termination-log",
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
    return {"metadata": {"labels": labels(ftj)}, "spec": pod_spec}


def pod_failure_policy() -> dict[str, Any]:
    """Disruptions (preemption, eviction, node drain) are not the trainer's fault: they do not count against
    backoffLimit. Invalid input (exit 2) fails the Job at once: retrying the same data cannot help."""
    return {
        "rules": [
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            {
                "action": "FailJob",
                "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": [EXIT_INVALID_INPUT]},
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
                    "apiGroups": [API_VERSION.split("/")[0]],
                    "resources": ["finetunejobs/status"],
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
