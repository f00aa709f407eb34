"""train.py with upload: the export lands in a GCS emulator with its manifest (exit 0), and an
unreachable storage server gives exit code 3 with a failed termination message."""

from __future__ import annotations

import json

import pytest

from tests.support.gcs import GcsEmulator
from tests.support.trainer import Trainer, free_port, synthetic_rows

ARGS = ("n_examples=16", "checkpoint_every=100", "upload.prefix=models", "upload.community_id=c1")


@pytest.fixture
def emulator():
    with GcsEmulator() as emu:
        yield emu


def test_upload_to_storage(trainer: Trainer, emulator: GcsEmulator):
    trainer.extra_env.update(emulator.env())
    run = trainer.python("job-up", trainer.dataset(synthetic_rows(40)), f"upload.bucket={emulator.bucket}", *ARGS)
    assert run.returncode == 0, run.output[-4000:]
    msg = run.termination_message()
    assert msg["status"] == "succeeded"
    artifact = msg["artifact"]
    assert artifact["uri"] == f"gs://{emulator.bucket}/models/c1/job-up/"
    assert artifact["manifestUri"].endswith("manifest.json") and artifact["files"] >= 5
    names = emulator.list("models/c1/job-up/")
    for name in ("model.safetensors", "config.json", "tokenizer.json", "policy.pt", "manifest.json"):
        assert f"models/c1/job-up/{name}" in names, names
    manifest = json.loads(emulator.download("models/c1/job-up/manifest.json"))
    assert manifest["metrics"]["loss"] == pytest.approx(msg["metrics"]["loss"])


def test_upload_failure_exits_3(trainer: Trainer):
    trainer.extra_env.update(
        STORAGE_EMULATOR_HOST=f"http://127.0.0.1:{free_port()}", FTJ_UPLOAD_RETRIES="0", FTJ_UPLOAD_BACKOFF="0"
    )
    run = trainer.python("job-down", trainer.dataset(synthetic_rows(40)), "upload.bucket=nowhere", *ARGS)
    assert run.returncode == 3, run.output[-4000:]
    msg = run.termination_message()
    assert msg["status"] == "failed" and msg["reason"] == "UploadFailed"
    assert (run.run_dir / "export" / "model.safetensors").exists()  # the export survives for a retry
