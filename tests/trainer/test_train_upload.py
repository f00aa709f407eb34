"""train.py with upload, against a GCS emulator: the export lands with its manifest (exit 0); a failed upload
exits 3 and the retry uploads the kept export without training again; success is decided by the verified
upload, so a rank dying afterwards does not fail the pod (fttrainer.launch)."""

from __future__ import annotations

import json
import re

import pytest
from ftcrd.types import round_metric

from tests.support.gcs import GcsEmulator
from tests.support.trainer import Trainer, free_port, synthetic_rows

ARGS = ("n_examples=16", "checkpoint_every=100", "upload.prefix=models")
STEPS = 2  # 16 examples, batch 8


@pytest.fixture
def emulator():
    with GcsEmulator() as emu:
        yield emu


def trained_steps(output: str) -> list[int]:
    """The optimizer steps this process ran, from the training loop's log lines."""
    return sorted({int(m) for m in re.findall(r"\bstep (\d+)/\d+ examples", output)})


def test_upload_to_storage_keeps_the_community_string(trainer: Trainer, emulator: GcsEmulator):
    trainer.extra_env.update(emulator.env())
    # quoted on Hydra's command line, "007" stays a string (unquoted, 007 would not even parse as a number)
    run = trainer.python(
        "job-up",
        trainer.dataset(synthetic_rows(40)),
        f"upload.bucket={emulator.bucket}",
        "upload.community_id='007'",
        *ARGS,
    )
    assert run.returncode == 0, run.output[-4000:]
    msg = run.termination_message()
    assert msg["status"] == "succeeded"
    artifact = msg["artifact"]
    assert artifact["uri"] == f"gs://{emulator.bucket}/models/default/007/job-up/"
    assert artifact["manifestUri"].endswith("manifest.json") and artifact["files"] >= 5
    names = emulator.list("models/default/007/job-up/")
    for name in ("model.safetensors", "config.json", "tokenizer.json", "policy.pt", "manifest.json"):
        assert f"models/default/007/job-up/{name}" in names, names
    manifest = json.loads(emulator.download("models/default/007/job-up/manifest.json"))
    assert manifest["communityId"] == "007" and manifest["config"]["output"]["communityId"] == "007"
    # the status gets rounded metrics, the manifest keeps full precision
    full = manifest["metrics"]["loss"]
    assert msg["metrics"]["loss"] == round_metric(full) and len(repr(full)) > len(repr(msg["metrics"]["loss"]))


def test_failed_upload_exits_3_and_the_retry_only_uploads(trainer: Trainer, emulator: GcsEmulator):
    """Two runs sharing a checkpoint directory, as a retried pod with durable checkpoints would."""
    dataset = trainer.dataset(synthetic_rows(40))
    trainer.extra_env.update(
        STORAGE_EMULATOR_HOST=f"http://127.0.0.1:{free_port()}", FTJ_UPLOAD_RETRIES="0", FTJ_UPLOAD_BACKOFF="0"
    )
    first = trainer.python("job-retry", dataset, f"upload.bucket={emulator.bucket}", *ARGS)
    assert first.returncode == 3, first.output[-4000:]
    msg = first.termination_message()
    assert msg["status"] == "failed" and msg["reason"] == "UploadFailed"
    assert trained_steps(first.output) == list(range(1, STEPS + 1))
    ckpts = first.run_dir / "checkpoints"
    assert (ckpts / "export" / "model.safetensors").exists() and (ckpts / "export.json").exists()

    trainer.extra_env = dict(emulator.env())  # the storage is back
    second = trainer.python("job-retry", dataset, f"upload.bucket={emulator.bucket}", *ARGS)
    assert second.returncode == 0, second.output[-4000:]
    assert trained_steps(second.output) == [], second.output[-4000:]
    assert f"found the complete export of step {STEPS} of job job-retry" in second.output
    assert "models loaded" not in second.output
    msg = second.termination_message()
    assert msg["status"] == "succeeded" and msg["steps"] == STEPS and msg["attemptSteps"] == 0
    assert "models/default/default/job-retry/model.safetensors" in emulator.list("models/default/default/job-retry/")


def test_rank_dying_after_the_verified_upload_still_succeeds(trainer: Trainer, emulator: GcsEmulator):
    """Rank 1 aborts (SIGABRT) once rank 0 has written the verified upload: the pod's launcher exits 0.
    The same abort under plain torchrun fails the run, so the hook really kills a rank."""
    trainer.extra_env.update(emulator.env())
    dataset = trainer.dataset(synthetic_rows(40))
    args = (f"upload.bucket={emulator.bucket}", "crash_rank_after_upload=1", *ARGS)
    run = trainer.launch("job-abort", dataset, *args)
    assert run.returncode == 0, run.output[-4000:]
    assert "crash_rank_after_upload=1: aborting after the verified upload" in run.output
    assert "workers failed" in run.output and "after the verified upload of gs://" in run.output
    msg = run.termination_message()
    assert msg["status"] == "succeeded" and msg["artifact"]["sha256"] and msg["attemptSteps"] == STEPS

    # the same checkpoint directory: no training, the upload again, the same abort, and plain torchrun fails
    bare = trainer.torchrun("job-abort", dataset, *args)
    assert bare.returncode != 0, bare.output[-4000:]
    assert "crash_rank_after_upload=1: aborting" in bare.output and trained_steps(bare.output) == []
