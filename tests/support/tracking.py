"""Reading what the trainer's trackers wrote: an MLflow file store (through MLflow's own client) and a W&B offline
run (its ``run-<id>.wandb`` record log, parsed with W&B's own protobuf messages)."""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_WANDB_MAGIC = b":W&B"
_WANDB_HEADER = 7  # ":W&B", a 2-byte magic, a version byte
_BLOCK = 32768  # W&B's record log is LevelDB's log format: 32 KiB blocks of [crc32, length, type] records
_RECORD_HEADER = 7
_FULL, _LAST = 1, 4


@dataclass
class WandbRun:
    """The records of an offline W&B run that tests look at."""

    name: str = ""
    project: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)  # one dict per logged step
    summary: dict[str, Any] = field(default_factory=dict)


def _record_bytes(data: bytes) -> list[bytes]:
    assert data[:4] == _WANDB_MAGIC, "not a W&B record log"
    out, pos, partial = [], _WANDB_HEADER, b""
    while pos + _RECORD_HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _RECORD_HEADER:  # a block's tail too short for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + _RECORD_HEADER])
        chunk = data[pos + _RECORD_HEADER : pos + _RECORD_HEADER + length]
        pos += _RECORD_HEADER + length
        if kind == 0 and length == 0:
            continue
        partial += chunk
        if kind in (_FULL, _LAST):
            out.append(partial)
            partial = b""
    return out


def _item_key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


def wandb_offline_runs(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))


def read_wandb_run(path: Path) -> WandbRun:
    from wandb.proto import wandb_internal_pb2 as pb

    run = WandbRun()
    for raw in _record_bytes(path.read_bytes()):
        record = pb.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.name, run.project, run.tags = record.run.display_name, record.run.project, list(record.run.tags)
            run.config.update({i.key: json.loads(i.value_json) for i in record.run.config.update})
        elif kind == "config":
            run.config.update({i.key: json.loads(i.value_json) for i in record.config.update})
        elif kind == "history":
            run.history.append({_item_key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            run.summary.update({_item_key(i): json.loads(i.value_json) for i in record.summary.update})
    return run


@dataclass
class MlflowRun:
    params: dict[str, str]
    tags: dict[str, str]
    status: str
    history: dict[str, list[tuple[int, float]]]  # metric -> [(step, value)]
    artifacts: dict[str, Any]  # artifact path -> parsed JSON


def read_mlflow_run(tracking_uri: str, experiment: str, job: str) -> MlflowRun:
    """The one MLflow run of ``job`` (tag finetune.job) in ``experiment``, with every metric's history."""
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no MLflow experiment {experiment!r} at {tracking_uri}"
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`finetune.job` = '{job}'")
    assert len(runs) == 1, f"{len(runs)} MLflow runs of job {job}"
    run = runs[0]
    rid = run.info.run_id
    history = {key: sorted((m.step, m.value) for m in client.get_metric_history(rid, key)) for key in run.data.metrics}
    artifacts: dict[str, Any] = {}
    for folder in client.list_artifacts(rid):
        for f in client.list_artifacts(rid, folder.path) if folder.is_dir else [folder]:
            local = client.download_artifacts(rid, f.path)
            artifacts[f.path] = json.loads(Path(local).read_text())
    return MlflowRun(dict(run.data.params), dict(run.data.tags), run.info.status, history, artifacts)
