"""Operator settings, read once from the environment (``FTO_*``).

Plain ``os.environ`` parsing on purpose: the operator image installs only kopf,
kubernetes_asyncio and prometheus-client, and every knob is listed here with its default.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
from collections.abc import Mapping

DEFAULT_TRAINER_IMAGE = "ghcr.io/finetune-operator/trainer:0.1.0"


def _int(env: Mapping[str, str], key: str, default: int) -> int:
    raw = env.get(key, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ValueError(f"{key} must be an integer, got {raw!r}") from exc


def _float(env: Mapping[str, str], key: str, default: float) -> float:
    raw = env.get(key, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ValueError(f"{key} must be a number, got {raw!r}") from exc


def _bool(env: Mapping[str, str], key: str, default: bool) -> bool:
    raw = env.get(key, "").strip().lower()
    if not raw:
        return default
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"{key} must be a boolean, got {raw!r}")


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything the operator can be told. Field names map to ``FTO_<UPPER_NAME>``."""

    trainer_image: str = DEFAULT_TRAINER_IMAGE
    """Image of trainer pods when spec.image is unset."""
    image_pull_policy: str = "IfNotPresent"
    image_pull_grace_seconds: float = 300.0
    """How long a trainer pod may sit in ImagePullBackOff/ErrImagePull before the job fails (and its Job is
    suspended so no GPU stays reserved)."""
    master_port: int = 29500
    """torchrun rendezvous port of multi-node jobs (single-node jobs use --standalone)."""
    trainer_entrypoint: tuple[str, ...] = ("python", "-m", "fttrainer.launch")
    """The trainer container's command; the torchrun options and Hydra overrides are its args.
    ``fttrainer.launch`` is torchrun that exits with the workers' exit code (torchrun itself exits 1 on any
    worker failure, which would hide exit code 2 from the Job's podFailurePolicy)."""
    allow_entrypoint_annotation: bool = False
    """Development/benchmarks only: honour the ``finetune.dev/trainer-entrypoint`` annotation of a FineTuneJob
    (a shell-quoted command replacing ``torchrun``, e.g. a stub trainer whose pods exit at once)."""
    trainer_uid: int = 1000
    """runAsUser/runAsGroup/fsGroup of trainer pods (the trainer image's non-root user)."""
    metrics_port: int = 9090
    """Prometheus /metrics port (0 disables)."""
    liveness_endpoint: str = "http://0.0.0.0:8080/healthz"
    ttl_sweep_seconds: float = 30.0
    """How often finished FineTuneJobs are checked against spec.runPolicy.ttlSecondsAfterFinished."""
    peering_name: str = "finetune-operator"
    """ClusterKopfPeering object used for HA; without that object kopf runs standalone (one replica)."""
    priority: int = 0
    """Peering priority of this replica (replicas must differ; the highest acts)."""
    peering_lifetime: int = 60
    """Seconds a replica's peering heartbeat stays valid; a killed leader is replaced after at most this."""
    standalone: bool = False
    namespaces: tuple[str, ...] = ()
    """Namespaces to watch; empty = all namespaces (cluster-wide)."""
    api_connections: int = 64
    """HTTP connection pool of the operator's own API client."""
    status_debounce_seconds: float = 0.3
    """Status syncs wait this long after an event so a burst of events becomes one status patch."""
    status_yield_seconds: float = 2.0
    """While child creations are in flight (a burst of new jobs), a status write waits up to this long."""
    handler_retries: int = 8
    handler_timeout: float = 120.0
    handler_backoff: float = 5.0
    watch_server_timeout: int = 300
    watch_client_timeout: float = 330.0
    watch_inactivity_timeout: float = 70.0
    event_level: str = "WARNING"
    """Lowest level of handler log messages also posted as Kubernetes Events. Phase transitions are always
    posted; at INFO kopf would add "Handler … succeeded" and "Creation is processed" to every job: two
    more writes per job, and noise in ``kubectl describe``."""
    log_format: str = "json"
    """json (structured, one object per line) or plain."""
    verbose: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        d = cls()
        namespaces = tuple(ns for ns in env.get("FTO_NAMESPACES", "").replace(",", " ").split() if ns)
        return cls(
            trainer_image=env.get("FTO_TRAINER_IMAGE", "").strip() or d.trainer_image,
            image_pull_policy=env.get("FTO_IMAGE_PULL_POLICY", "").strip() or d.image_pull_policy,
            image_pull_grace_seconds=_float(env, "FTO_IMAGE_PULL_GRACE_SECONDS", d.image_pull_grace_seconds),
            master_port=_int(env, "FTO_MASTER_PORT", d.master_port),
            trainer_entrypoint=tuple(shlex.split(env.get("FTO_TRAINER_ENTRYPOINT", ""))) or d.trainer_entrypoint,
            allow_entrypoint_annotation=_bool(env, "FTO_ALLOW_ENTRYPOINT_ANNOTATION", d.allow_entrypoint_annotation),
            trainer_uid=_int(env, "FTO_TRAINER_UID", d.trainer_uid),
            metrics_port=_int(env, "FTO_METRICS_PORT", d.metrics_port),
            liveness_endpoint=env.get("FTO_LIVENESS_ENDPOINT", d.liveness_endpoint).strip(),
            ttl_sweep_seconds=_float(env, "FTO_TTL_SWEEP_SECONDS", d.ttl_sweep_seconds),
            peering_name=env.get("FTO_PEERING_NAME", "").strip() or d.peering_name,
            priority=_int(env, "FTO_PRIORITY", d.priority),
            peering_lifetime=_int(env, "FTO_PEERING_LIFETIME", d.peering_lifetime),
            standalone=_bool(env, "FTO_STANDALONE", d.standalone),
            namespaces=namespaces,
            api_connections=_int(env, "FTO_API_CONNECTIONS", d.api_connections),
            status_debounce_seconds=_float(env, "FTO_STATUS_DEBOUNCE_SECONDS", d.status_debounce_seconds),
            status_yield_seconds=_float(env, "FTO_STATUS_YIELD_SECONDS", d.status_yield_seconds),
            handler_retries=_int(env, "FTO_HANDLER_RETRIES", d.handler_retries),
            handler_timeout=_float(env, "FTO_HANDLER_TIMEOUT", d.handler_timeout),
            handler_backoff=_float(env, "FTO_HANDLER_BACKOFF", d.handler_backoff),
            watch_server_timeout=_int(env, "FTO_WATCH_SERVER_TIMEOUT", d.watch_server_timeout),
            watch_client_timeout=_float(env, "FTO_WATCH_CLIENT_TIMEOUT", d.watch_client_timeout),
            watch_inactivity_timeout=_float(env, "FTO_WATCH_INACTIVITY_TIMEOUT", d.watch_inactivity_timeout),
            event_level=env.get("FTO_EVENT_LEVEL", "").strip().upper() or d.event_level,
            log_format=env.get("FTO_LOG_FORMAT", "").strip().lower() or d.log_format,
            verbose=_bool(env, "FTO_VERBOSE", d.verbose),
        )
