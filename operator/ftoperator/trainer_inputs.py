"""What the trainer is handed: its resolved configuration (:func:`trainer_config`, a pod-template annotation
that a downwardAPI volume exposes as a file), its command line (:func:`trainer_command`) and its environment
(:func:`trainer_env`: identity, credentials by reference, the trackers). Pure and deterministic, like
:mod:`ftoperator.builders`, which puts them into the pod."""

from __future__ import annotations

import dataclasses
from typing import Any

from ftcrd.names import (
    CHECKPOINT_DIR,
    DATA_DIR,
    ENV_COMPLETION_INDEX,
    ENV_CREDENTIALS,
    ENV_HF_TOKEN,
    ENV_JOB_NAME,
    ENV_JOB_NAMESPACE,
    ENV_MLFLOW_TOKEN,
    ENV_WANDB_API_KEY,
    ENV_WANDB_MODE,
    FIREBASE_DIR,
    MODELS_DIR,
    TRAINER_CONFIG_PATH,
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
from ftcrd.types import RESERVED_ENV, DatasetSource, FineTuneJob, FineTuneJobSpec, SecretKeyRef

from ftoperator.checkpointing import CheckpointStorage, grace_seconds
from ftoperator.settings import Settings

RUN_DIR = f"{WORKSPACE_DIR}/run"
SHUTDOWN_MARGIN_SECONDS = 5
"""torchrun's --shutdown-timeout is the pod's grace period minus this: the workers' SIGTERM checkpoint gets
(nearly) all of it, and torchrun still exits before the kubelet's SIGKILL."""


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """spec.model.from, resolved (ftoperator.sources): the export the trainer downloads and verifies."""

    uri: str
    sha256: str | None = None


# ---------------------------------------------------------------------------------------------
# the trainer's configuration and command line
# ---------------------------------------------------------------------------------------------


def processes_per_node(spec: FineTuneJobSpec) -> int:
    res = spec.resources
    return res.gpus_per_node or res.processes_per_node or 1


def dataset_path(source: DatasetSource, mount: str = DATA_DIR) -> str | None:
    """The file of a dataset source where the pod mounts it (training data at /data, validation data next to it);
    None for an object, which the trainer downloads itself."""
    if source.config_map is not None:
        return f"{mount}/{source.config_map.key}"
    if source.volume is not None:
        return f"{mount}/{source.volume.path}"
    return None


def _validation_file(spec: FineTuneJobSpec) -> TrainerDatasetFile | None:
    source = spec.dataset.validation
    if source is None:
        return None
    path = dataset_path(source, VALIDATION_DIR)
    return TrainerDatasetFile(path=path, source=source.object, format=source.format, compression=source.compression)


def trainer_config(
    spec: FineTuneJobSpec,
    name: str,
    namespace: str | None = None,
    uid: str | None = None,
    *,
    storage: CheckpointStorage | None = None,
    source: ModelSource | None = None,
) -> TrainerConfig:
    """The trainer's resolved configuration: the spec's own models, the pod's paths, where the checkpoints live
    and the verified model to start from; the namespace and the job's uid place the upload in a folder of its own
    (ftcrd.trainer_config.TrainerOutput)."""
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
            source=spec.dataset.object,
            format=spec.dataset.format,
            compression=spec.dataset.compression,
            validation_fraction=spec.dataset.validation_fraction,
            validation=_validation_file(spec),
        ),
        output=TrainerOutput(
            bucket=spec.output.bucket,
            prefix=spec.output.prefix,
            community_id=spec.community_id,
            namespace=namespace,
            job_uid=uid,
        ),
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


def trainer_env(ftj: FineTuneJob) -> list[dict[str, Any]]:
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
                "name": ENV_CREDENTIALS,
                "value": f"{FIREBASE_DIR}/{spec.output.credentials_secret.key}",
            }
        )
    if spec.model.hf_token_secret is not None:
        env.append(_secret_env(ENV_HF_TOKEN, spec.model.hf_token_secret))
    if spec.model.claim_name:
        env.append({"name": "HF_HUB_OFFLINE", "value": "1"})
    env += _tracking_env(spec)
    # spec.env may override the conveniences above but never the reserved rank wiring (CEL rejects it too).
    user = {item.name: item.value for item in spec.env or [] if item.name not in RESERVED_ENV}
    env = [e for e in env if e["name"] not in user]
    env += [{"name": k, "value": v} for k, v in user.items()]
    return env
