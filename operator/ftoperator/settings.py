"""Operator settings, read once from the environment (``FTO_*``).

Every knob is one field of :class:`Settings`, with its default and a docstring; ``FTO_<FIELD_NAME>`` sets it.
:meth:`Settings.from_env` is one loop over the fields, converting by the field's type (or by the parser in its
metadata), so a new setting is one declaration. Plain ``os.environ`` parsing on purpose: the operator image
installs only kopf, aiohttp and prometheus-client.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
from collections.abc import Callable, Mapping
from typing import Any

from ftcrd import admission

DEFAULT_TRAINER_IMAGE = "ghcr.io/finetune-operator/trainer:0.1.0"
PREFIX = "FTO_"
_QUANTITY = re.compile(r"^([0-9]+(\.[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")


def _bool(raw: str) -> bool:
    value = raw.lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ValueError("must be a boolean")


def _int(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ValueError("must be an integer") from None


def _float(raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise ValueError("must be a number") from None


def _words(raw: str) -> tuple[str, ...]:
    return tuple(w for w in raw.replace(",", " ").split() if w)


def _optional(raw: str) -> str:
    return "" if raw.lower() == "none" else raw


def _quantity(raw: str) -> str:
    if raw.lower() in {"none", "0"}:
        return ""
    if not _QUANTITY.match(raw):
        raise ValueError("must be a Kubernetes quantity such as 100Gi (or none)")
    return raw


_BY_TYPE: dict[str, Callable[[str], Any]] = {"str": str, "int": _int, "float": _float, "bool": _bool}


def _parse(parser: Callable[[str], Any]) -> dict[str, Any]:
    return {"parse": parser}


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything the operator can be told. Field ``x_y`` is read from ``FTO_X_Y``; an empty value keeps the
    default."""

    trainer_image: str = DEFAULT_TRAINER_IMAGE
    """Image of trainer pods when spec.image is unset."""
    image_pull_policy: str = "IfNotPresent"
    image_pull_grace_seconds: float = 300.0
    """How long a trainer pod may sit in ImagePullBackOff/ErrImagePull before the job fails
    (``ImagePullFailed``) and its Job is suspended so no pod keeps GPUs reserved."""
    missing_config_grace_seconds: float = 300.0
    """How long a trainer pod may wait for something that does not exist before the job fails: a Secret,
    ConfigMap or PVC volume the kubelet cannot mount (``VolumeMountFailed``), a Secret/ConfigMap key of the
    environment (``ContainerConfigError``), a PersistentVolumeClaim the scheduler cannot find
    (``VolumeClaimMissing``)."""
    crash_loop_grace_seconds: float = 300.0
    """How long an init container of a trainer pod may crash-loop before the job fails
    (``InitContainerCrashLoop``)."""
    unschedulable_grace_seconds: float = 0.0
    """0: a pod the scheduler cannot place is reported (``Pending/Unschedulable``) for as long as it lasts (the
    job waits for capacity). Above 0: the job fails (``UnschedulableTimeout``) after this many seconds."""
    resync_seconds: float = 60.0
    """Every FineTuneJob this replica follows is recomputed this often from its Job, pods and events, and
    whatever was lost is applied again: a status patch or Job suspension that failed, a deleted Job or
    trainer identity (0 disables the resync)."""
    default_active_deadline_seconds: int = 7 * 24 * 3600
    """The Job's activeDeadlineSeconds when spec.runPolicy.activeDeadlineSeconds is unset (0: none), so no job
    retries for ever."""
    checkpoint_size_limit: str = dataclasses.field(default="500Gi", metadata=_parse(_quantity))
    """sizeLimit of the trainer's /checkpoints emptyDir (``none``: unlimited; beyond it the kubelet evicts the pod
    instead of filling the node's disk), and the request of an operator-created checkpoint claim."""
    checkpoint_storage_class: str = dataclasses.field(default="", metadata=_parse(_optional))
    """Durable checkpoints for jobs whose spec.checkpoint names no storage: the operator creates a
    PersistentVolumeClaim ``<job>-checkpoints`` of this StorageClass (``default``: the cluster's default class),
    sized ``FTO_CHECKPOINT_SIZE_LIMIT``, ReadWriteMany for multi-node jobs, owned by the FineTuneJob. Empty or
    ``none``: an emptyDir, which does not survive the pod (a replaced pod starts from step 0)."""
    termination_grace_seconds: int = 300
    """terminationGracePeriodSeconds of trainer pods when spec.checkpoint.terminationGracePeriodSeconds is unset:
    the time the checkpoint written on SIGTERM (preemption, eviction, pause, restart) has."""
    workspace_size_limit: str = dataclasses.field(default="100Gi", metadata=_parse(_quantity))
    """sizeLimit of the trainer's /workspace emptyDir (the exported model is written there before upload)."""
    master_port: int = 29500
    """torchrun rendezvous port of multi-node jobs (single-node jobs use --standalone)."""
    trainer_entrypoint: tuple[str, ...] = dataclasses.field(
        default=("python", "-m", "fttrainer.launch"), metadata=_parse(lambda raw: tuple(shlex.split(raw)))
    )
    """The trainer container's command (shell-quoted in the environment); the torchrun options and Hydra
    overrides are its args. ``fttrainer.launch`` is torchrun that exits with the workers' exit code (torchrun
    itself exits 1 on any worker failure, which would hide exit code 2 from the Job's podFailurePolicy)."""
    allow_entrypoint_annotation: bool = False
    """Development/benchmarks only: honour the ``finetune.dev/trainer-entrypoint`` annotation of a FineTuneJob
    (a shell-quoted command replacing ``torchrun``, e.g. a stub trainer whose pods exit at once)."""
    operator_namespace: str = "finetune-system"
    """The operator's own namespace (the Deployment sets it from the downward API): FineTuneJobs there are refused,
    since the operator's ServiceAccount reaches every namespace (ftcrd.admission)."""
    allowed_images: tuple[str, ...] = dataclasses.field(
        default=admission.DEFAULT_IMAGES, metadata=_parse(admission.split_list)
    )
    """Trainer image repositories spec.image may name (any tag or digest; ``prefix/`` allows a path, ``*`` any).
    This and the other ``allowed_*`` lists come from ConfigMap finetune-admission, which the admission policies
    read too (deploy/base/admission)."""
    allowed_node_selector_keys: tuple[str, ...] = dataclasses.field(
        default=admission.DEFAULT_NODE_SELECTOR_KEYS, metadata=_parse(admission.split_list)
    )
    """Node labels spec.resources.nodeSelector may use."""
    allowed_toleration_keys: tuple[str, ...] = dataclasses.field(
        default=admission.DEFAULT_TOLERATION_KEYS, metadata=_parse(admission.split_list)
    )
    """Taint keys spec.resources.tolerations may tolerate (``*``: any, including a toleration without a key)."""
    allowed_priority_classes: tuple[str, ...] = dataclasses.field(
        default=admission.DEFAULT_PRIORITY_CLASSES, metadata=_parse(admission.split_list)
    )
    """PriorityClasses spec.resources.priorityClassName may name (none by default)."""
    trainer_uid: int = 1000
    """runAsUser/runAsGroup/fsGroup of trainer pods (the trainer image's non-root user)."""
    metrics_port: int = 9090
    """Prometheus /metrics port (0 disables)."""
    liveness_endpoint: str = dataclasses.field(default="http://0.0.0.0:8080/healthz", metadata=_parse(_optional))
    """kopf's liveness endpoint (``none`` disables it)."""
    ttl_sweep_seconds: float = 30.0
    """How often finished (and cancelled) FineTuneJobs are checked against spec.runPolicy.ttlSecondsAfterFinished."""
    peering_name: str = "finetune-operator"
    """ClusterKopfPeering object used for HA; without that object kopf runs standalone (one replica)."""
    priority: int = 0
    """Peering priority of this replica (replicas must differ; the highest acts)."""
    peering_lifetime: int = 60
    """Seconds a replica's peering heartbeat stays valid; a killed leader is replaced after at most this."""
    standalone: bool = False
    namespaces: tuple[str, ...] = dataclasses.field(default=(), metadata=_parse(_words))
    """Namespaces to watch (comma or space separated); empty = all namespaces (cluster-wide)."""
    api_connections: int = 64
    """HTTP connection pool of the operator's own API client."""
    status_debounce_seconds: float = 0.3
    """Status syncs wait this long after an event so a burst of events becomes one status patch."""
    status_yield_seconds: float = 2.0
    """While child creations are in flight (a burst of new jobs), a status write waits up to this long."""
    handler_retries: int = 8
    """Attempts at creating a job's children before it fails (``ChildCreateFailed``, naming the last error)."""
    handler_backoff: float = 5.0
    """Seconds before the second attempt; the n-th retry waits n times this."""
    handler_timeout: float = 180.0
    """Seconds from the first attempt after which no further attempt starts (the job fails). The default
    leaves room for every retry: 5 s × (1 + … + 7) = 140 s."""
    watch_server_timeout: int = 300
    watch_client_timeout: float = 330.0
    watch_inactivity_timeout: float = 70.0
    event_level: str = dataclasses.field(default="WARNING", metadata=_parse(str.upper))
    """Lowest level of handler log messages also posted as Kubernetes Events. Phase transitions are always
    posted; at INFO kopf would add "Handler … succeeded" and "Creation is processed" to every job: two
    more writes per job, and noise in ``kubectl describe``."""
    log_format: str = dataclasses.field(default="json", metadata=_parse(str.lower))
    """json (structured, one object per line) or plain."""
    verbose: bool = False

    def allow_lists(self) -> admission.AllowLists:
        return admission.AllowLists(
            **{field: getattr(self, f"allowed_{field}") for field in admission.LIST_KEYS},
        )

    @classmethod
    def env_name(cls, field: str) -> str:
        return PREFIX + field.upper()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            key = cls.env_name(f.name)
            raw = env.get(key, "").strip()
            if not raw:
                continue
            parser = f.metadata.get("parse") or _BY_TYPE[str(f.type)]
            try:
                values[f.name] = parser(raw)
            except ValueError as exc:
                raise ValueError(f"{key} {exc}, got {raw!r}") from None
        return cls(**values)
