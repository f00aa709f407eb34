"""Experiment-tracking backends: MLflow and Weights & Biases, one run per trainer attempt.

Each backend is used by :class:`fttrainer.tracking.Tracking` from its own thread, on rank 0 only, and may raise:
the caller logs the first failure and drops the backend (tracking never fails training). The client libraries
are imported in ``start`` (on that thread): importing mlflow takes seconds, and a job without tracking never
imports either.

* **MLflow** (``MlflowClient``, no global state): the experiment (created when missing), a run named after the
  job with tags ``finetune.job``/``finetune.namespace``, the parameters, every metric per step (status names),
  the samples as JSON artifacts ``samples/step-<N>.json`` and the uploaded model's URI as tag
  ``finetune.artifact_uri``; the run ends FINISHED or FAILED. A ``file:`` URI is MLflow's local file store
  (what the tests use; MLflow 3 wants ``MLFLOW_ALLOW_FILE_STORE`` for it, set here). HTTP requests give up
  after 2 retries and 10 s unless ``MLFLOW_HTTP_REQUEST_MAX_RETRIES``/``_TIMEOUT`` say otherwise.
* **W&B**: ``wandb.init`` with the spec's project, entity, name and tags, the parameters as the run config,
  metrics per step, samples as a ``wandb.Table`` and the artifact URI in the summary. Offline (files under the
  run directory's ``wandb/``) when ``WANDB_MODE=offline`` (the operator sets it when the job names no key
  Secret) or when no ``WANDB_API_KEY`` is set. A pod's run directory goes with the pod, so an offline run is
  *sealed* before the upload: finished (the artifact URI it will have in the summary) and copied into the
  export as ``wandb/offline-run-*/``, uploaded with the model for ``wandb sync``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

from ftcrd import names
from ftcrd.types import MlflowSpec, WandbSpec

from fttrainer.sampling import Completion

ARTIFACT_TAG = "finetune.artifact_uri"
JOB_TAG = "finetune.job"
NAMESPACE_TAG = "finetune.namespace"
TRACKER_TEXT_CHARS = 4000  # of a prompt or completion sent to a tracker
_MLFLOW_BATCH = 100  # MLflow's limit on params (and metrics) per log_batch call
_MLFLOW_PARAM_CHARS = 6000


class Backend(Protocol):
    name: str

    def start(self, params: dict[str, Any]) -> None: ...

    def metrics(self, step: int, values: dict[str, float]) -> None: ...

    def samples(self, step: int, samples: Sequence[Completion]) -> None: ...

    def seal(self, export_dir: Path, artifact_uri: str) -> None: ...

    def finish(self, artifact_uri: str | None, ok: bool) -> None: ...


def _clip(text: str | None) -> str | None:
    return None if text is None else text[:TRACKER_TEXT_CHARS]


def sample_rows(samples: Sequence[Completion]) -> list[dict[str, str | None]]:
    return [{k: _clip(v) for k, v in asdict(s).items()} for s in samples]


class MlflowTracker:
    name = "mlflow"

    def __init__(self, spec: MlflowSpec, job: str) -> None:
        self.spec, self.job = spec, job
        self.client: Any = None
        self.run_id = ""

    def start(self, params: dict[str, Any]) -> None:
        uri = self.spec.tracking_uri
        if uri.startswith("file:") or "://" not in uri:
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        from mlflow import MlflowClient
        from mlflow.entities import Param
        from mlflow.exceptions import MlflowException

        self.client = client = MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name(self.spec.experiment)
        if experiment is not None:
            experiment_id = experiment.experiment_id
        else:
            try:
                experiment_id = client.create_experiment(self.spec.experiment)
            except MlflowException:  # another job created it meanwhile
                experiment = client.get_experiment_by_name(self.spec.experiment)
                if experiment is None:
                    raise
                experiment_id = experiment.experiment_id
        tags = {JOB_TAG: self.job, NAMESPACE_TAG: os.environ.get(names.ENV_JOB_NAMESPACE, "")}
        self.run_id = client.create_run(experiment_id, run_name=self.job, tags=tags).info.run_id
        items = [Param(k, str(v)[:_MLFLOW_PARAM_CHARS]) for k, v in params.items()]
        for i in range(0, len(items), _MLFLOW_BATCH):
            client.log_batch(self.run_id, params=items[i : i + _MLFLOW_BATCH])

    def metrics(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, v, now, step) for k, v in values.items()]
        for i in range(0, len(items), _MLFLOW_BATCH):
            self.client.log_batch(self.run_id, metrics=items[i : i + _MLFLOW_BATCH])

    def samples(self, step: int, samples: Sequence[Completion]) -> None:
        text = json.dumps({"step": step, "samples": sample_rows(samples)}, indent=1, ensure_ascii=False)
        self.client.log_text(self.run_id, text, f"samples/step-{step:06d}.json")

    def seal(self, export_dir: Path, artifact_uri: str) -> None:
        """Nothing to keep locally: the run lives in the tracking store."""

    def finish(self, artifact_uri: str | None, ok: bool) -> None:
        if artifact_uri:
            self.client.set_tag(self.run_id, ARTIFACT_TAG, artifact_uri)
        self.client.set_terminated(self.run_id, "FINISHED" if ok else "FAILED")


class WandbTracker:
    name = "wandb"

    def __init__(self, spec: WandbSpec, job: str, run_dir: Path) -> None:
        self.spec, self.job, self.run_dir = spec, job, run_dir
        self.run: Any = None
        self.offline = False
        self.sealed = False

    def start(self, params: dict[str, Any]) -> None:
        import wandb

        mode = os.environ.get(names.ENV_WANDB_MODE) or (
            "online" if os.environ.get(names.ENV_WANDB_API_KEY) else "offline"
        )
        self.offline = mode == "offline"
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=self.spec.project,
            entity=self.spec.entity,
            name=self.spec.name or self.job,
            tags=self.spec.tags,
            config=params,
            dir=str(self.run_dir),
            mode=mode,  # type: ignore[arg-type]
            settings=wandb.Settings(console="off", silent=True, save_code=False, disable_git=True),
        )

    def metrics(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def samples(self, step: int, samples: Sequence[Completion]) -> None:
        import wandb

        columns: list[str | int] = ["step", "prompt", "policy", "reference"]
        rows = [[step, r["prompt"], r["policy"], r["reference"]] for r in sample_rows(samples)]
        self.run.log({"samples": wandb.Table(columns=columns, data=rows)}, step=step)

    def seal(self, export_dir: Path, artifact_uri: str) -> None:
        """Offline: finish the run and copy it (record log, config, media; no debug logs) into the export."""
        if not self.offline:
            return
        self.finish(artifact_uri, ok=True)
        folder = Path(self.run.dir).parent  # .../wandb/offline-run-<time>-<id>/files -> the run's folder
        target = export_dir / "wandb" / folder.name
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(folder, target, ignore=shutil.ignore_patterns("logs", "tmp", "debug*.log"))
        self.sealed = True

    def finish(self, artifact_uri: str | None, ok: bool) -> None:
        if self.sealed:
            return
        import wandb

        if artifact_uri:
            self.run.summary["artifact_uri"] = artifact_uri
        self.run.finish(exit_code=0 if ok else 1)
        # finish() returns before W&B's service has written (offline) or sent (online) everything, and the
        # trainer leaves through os._exit (no atexit hook runs): wait for the service here.
        wandb.teardown()
